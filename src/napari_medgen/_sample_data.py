"""npe2 sample data: the MNI152 brain T1 and its tissue labels."""
from __future__ import annotations

from .models.palette import PALETTE
from .sample_data import TISSUE_CLASSES, brain_t1, brain_tissue


def tissue_colors() -> dict:
    """``{label value: RGBA}`` of the sample tissue map: the colours the built-in tissue model (and every
    segmenter) gives its classes, so the sample and a result compare by eye."""
    colors = {i: PALETTE[i % len(PALETTE)] for i in range(len(TISSUE_CLASSES))}
    colors[None] = (0.5, 0.5, 0.5, 1.0)  # a value painted beyond the classes
    return colors


def brain_with_labels() -> list:
    """T1 image plus 4-class tissue Labels layer, in physical space."""
    from napari.utils.colormaps import DirectLabelColormap

    labels = brain_tissue().layer_data()
    labels[1]["opacity"] = 0.4
    labels[1]["colormap"] = DirectLabelColormap(color_dict=tissue_colors())
    return [brain_t1().layer_data(), labels]


def brain_image() -> list:
    """The T1 image alone."""
    return [brain_t1().layer_data()]
