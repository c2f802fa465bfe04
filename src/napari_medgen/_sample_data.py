"""npe2 sample data: the MNI152 brain T1 and its tissue labels."""
from __future__ import annotations

from .sample_data import brain_t1, brain_tissue


def brain_with_labels() -> list:
    """T1 image plus 4-class tissue Labels layer, in physical space."""
    labels = brain_tissue().layer_data()
    labels[1]["opacity"] = 0.4
    return [brain_t1().layer_data(), labels]


def brain_image() -> list:
    """The T1 image alone."""
    return [brain_t1().layer_data()]
