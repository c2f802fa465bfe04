"""Cancel inside the interpolation between painted slices (seconds on a large CT), and the region of interest."""
import numpy as np
import pytest

from napari_medgen.data.interpolate import extrapolate_ends, interpolate_labels
from napari_medgen.data.sampling import roi_box
from napari_medgen.engine.jobs import Cancelled


def _painted():
    lab = np.zeros((41, 48, 48), np.uint8)
    yy, xx = np.mgrid[:48, :48]
    for k, r in ((0, 8), (40, 14)):
        lab[k][(yy - 24) ** 2 + (xx - 24) ** 2 < r * r] = 1
    return lab


def _cancel_after(n):
    calls = []

    def check():
        calls.append(1)
        if len(calls) >= n:
            raise Cancelled()
    return check, calls


def test_cancel_is_answered_slice_by_slice_in_the_interpolation():
    check, calls = _cancel_after(3)
    with pytest.raises(Cancelled):
        interpolate_labels(_painted(), planes={0: [0, 40]}, check=check)
    assert len(calls) == 3  # stopped after the third of 39 filled slices


def test_cancel_is_answered_slice_by_slice_in_the_sphere_caps():
    lab = np.pad(_painted(), ((20, 20), (0, 0), (0, 0)))
    check, calls = _cancel_after(2)
    with pytest.raises(Cancelled):
        extrapolate_ends(lab, 0, [20, 60], check=check)
    assert len(calls) == 2


def test_roi_box_is_the_bounding_box_of_the_mask():
    rng = np.random.default_rng(0)
    for shape in ((30, 40, 50), (64, 64)):
        mask = np.zeros(shape, bool)
        mask[tuple(slice(int(rng.integers(1, 10)), int(rng.integers(12, 25))) for _ in shape)] = True
        mask[tuple(int(rng.integers(0, n)) for n in shape)] = True  # a stray voxel widens the box
        where = np.argwhere(mask)
        expected = tuple((max(0, int(lo) - 2), min(n, int(hi) + 1 + 2)) for lo, hi, n in
                         zip(where.min(0), where.max(0), shape))
        assert roi_box(mask, 2) == expected
    with pytest.raises(ValueError):
        roi_box(np.zeros((4, 4), bool), 0)
