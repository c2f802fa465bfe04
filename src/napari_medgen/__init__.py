"""napari-medgen: deep models for medical images, headless and in napari.

The headless API; every long function takes ``progress=`` (a callback receiving
:class:`ProgressEvent`) and ``stop=`` (a ``threading.Event`` or callable).
"""
from .engine.device import describe_device, select_device
from .engine.jobs import Cancelled, Job, ProgressEvent
from .io import Geometry, ImageData, read_image, read_path, write_image
from .models.checkpoint import Model, ModelFileError
from .models.segmentation import builtin_models, load_segmentation_model, segmentation_config
from .tasks.metrics import segmentation_metrics
from .tasks.segment import ImageInputError, segment
from .tasks.anomaly import AnomalyResult, anomaly_map
from .tasks.vae import interpolate, reconstruct, sample_vae, train_vae
from .data.annotations import AnnotationError
from .tasks.finetune import finetune
from .tasks.uncertainty import rank_slices
from .tasks.gan import interpolate_seeds, synthesize, train_gan
from .tasks.conditional_gan import load_conditional, synthesize_from_labels, train_conditional_gan
from .tasks.synthesis_report import synthesis_report

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "Geometry", "ImageData", "Job", "Model", "ModelFileError", "ProgressEvent",
    "describe_device", "read_image", "read_path", "select_device", "write_image",
    "ImageInputError", "builtin_models", "load_segmentation_model", "segment", "segmentation_config",
    "segmentation_metrics",
    "AnomalyResult", "anomaly_map", "interpolate", "reconstruct", "sample_vae", "train_vae",
    "AnnotationError", "finetune", "rank_slices",
    "interpolate_seeds", "load_conditional", "synthesis_report", "synthesize", "synthesize_from_labels",
    "train_conditional_gan", "train_gan",
]
