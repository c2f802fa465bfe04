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
    "models.segmentation": ["CodeNotAllowedError", "builtin_models", "load_segmentation_model", "segmentation_config"],
    "tasks.metrics": ["label_areas_cm2", "label_volumes_ml", "metrics_to_csv", "segmentation_metrics"],
    "tasks.segment": ["ImageInputError", "SegmentResult", "segment", "segment_result"],
    "tasks.model_fit": ["ModelMismatchWarning"],
    "tasks.anomaly": ["AnomalyResult", "anomaly_map"],
    "tasks.vae": ["interpolate_slices", "reconstruct", "synthesize_vae"],
    "tasks.vae_training": ["train_vae", "train_vae_cohort"],
    "tasks.diffusion_training": ["add_diffusion"],
    "data.annotations": ["AnnotationError"],
    "tasks.finetune": ["finetune", "complete_labels"],
    "data.interpolate": ["interpolate_labels"],
    "tasks.cohort": ["train_cohort"],
    "tasks.uncertainty": ["rank_slices"],
    "tasks.gan": ["interpolate_seeds", "synthesize", "train_gan"],
    "tasks.conditional_gan": ["load_conditional", "synthesize_from_labels", "train_conditional_gan"],
    "tasks.synthesis_report": ["synthesis_report"],
    "tasks.classify": ["ClassificationResult", "classify", "load_classifier", "train_classifier"],
    "tasks.sequence": ["SequenceResult", "predict_sequence", "train_sequence_model"],
    "io.timeseries": ["write_time_series"],
    "pacs.client": ["PacsError", "PacsServer", "find_series", "find_studies", "pull_series", "push_labels"],
    "pacs.seg": ["labels_to_seg", "read_seg", "write_seg"],
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
