"""napari-medgen: deep models for medical images, headless and in napari.

The headless API; every long function takes ``progress=`` (a callback receiving
:class:`ProgressEvent`) and ``stop=`` (a ``threading.Event`` or callable).
Names load on first use, so opening a file in napari does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "engine.device": ["describe_device", "select_device"],
    "engine.jobs": ["Cancelled", "Job", "ProgressEvent"],
    "io": ["Geometry", "ImageData", "read_image", "read_path", "write_image"],
    "models.checkpoint": ["Model", "ModelFileError"],
    "models.segmentation": ["builtin_models", "load_segmentation_model", "segmentation_config"],
    "tasks.metrics": ["segmentation_metrics"],
    "tasks.segment": ["ImageInputError", "segment"],
    "tasks.anomaly": ["AnomalyResult", "anomaly_map"],
    "tasks.vae": ["interpolate", "reconstruct", "sample_vae", "train_vae"],
    "data.annotations": ["AnnotationError"],
    "tasks.finetune": ["finetune"],
    "tasks.uncertainty": ["rank_slices"],
    "tasks.gan": ["interpolate_seeds", "synthesize", "train_gan"],
    "tasks.conditional_gan": ["load_conditional", "synthesize_from_labels", "train_conditional_gan"],
    "tasks.synthesis_report": ["synthesis_report"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'napari_medgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
