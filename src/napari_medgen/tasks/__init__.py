"""The verbs, each a plain function over numpy arrays: segmentation and its metrics."""
from .metrics import segmentation_metrics
from .segment import ImageInputError, segment

__all__ = ["ImageInputError", "segment", "segmentation_metrics"]
