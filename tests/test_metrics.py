"""Dice and HD95 (physical units, napari axis order) on the shipped tissue labels."""
import numpy as np
import pytest

from napari_medgen import segmentation_metrics
from napari_medgen.sample_data import TISSUE_CLASSES, brain_tissue


@pytest.fixture(scope="module")
def labels():
    return brain_tissue().data


def test_identical_labels_are_perfect(labels):
    m = segmentation_metrics(labels, labels, (2, 2, 2), TISSUE_CLASSES)
    assert list(m) == TISSUE_CLASSES[1:]
    for v in m.values():
        assert v["dice"] == pytest.approx(1.0) and v["hd95"] == pytest.approx(0.0)


def test_hd95_scales_with_spacing(labels):
    shifted = np.roll(labels, 1, axis=2)
    vox = segmentation_metrics(shifted, labels, None, TISSUE_CLASSES)
    mm = segmentation_metrics(shifted, labels, (2, 2, 2), TISSUE_CLASSES)
    for name in vox:
        assert mm[name]["hd95"] == pytest.approx(2 * vox[name]["hd95"])
        assert 0.3 < mm[name]["dice"] < 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_uses_napari_axis_order(axis):
    # a one-voxel-thick plane shifted by one voxel along ``axis``: every surface point is spacing[axis] away
    spacing = (1.0, 2.0, 3.5)
    ref = np.zeros((12, 12, 12), np.uint8)
    np.moveaxis(ref, axis, 0)[5] = 1
    pred = np.roll(ref, 1, axis=axis)
    m = segmentation_metrics(pred, ref, spacing)
    assert m["label 1"]["hd95"] == pytest.approx(spacing[axis])
    assert m["label 1"]["dice"] == 0.0


def test_missing_class_scores_zero(labels):
    pred = np.where(labels == 1, 0, labels)  # no CSF predicted
    m = segmentation_metrics(pred, labels, (2, 2, 2), TISSUE_CLASSES)
    assert m["CSF"]["dice"] == 0.0 and m["CSF"]["hd95"] == float("inf")
    assert m["grey matter"]["dice"] == pytest.approx(1.0)


def test_shape_mismatch_is_one_sentence(labels):
    with pytest.raises(ValueError, match="different shapes"):
        segmentation_metrics(labels[1:], labels)
