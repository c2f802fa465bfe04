"""Synthetic lesions: exact masks inside the brain, both polarities, several sizes, reproducible."""
import numpy as np
import pytest
from scipy import ndimage

from napari_medgen.data.lesions import inject_lesions


@pytest.fixture(scope="module")
def brain_mask(tissue):
    return tissue.data > 0


def test_lesions_inside_mask_with_both_polarities(brain, brain_mask):
    img, les = inject_lesions(brain.data, brain_mask, n=6, radii=(2, 3.5, 5), polarity="both", seed=1)
    assert img.shape == brain.data.shape and les.shape == brain.data.shape
    assert les.any() and not (les & ~brain_mask).any()
    lab, n = ndimage.label(les)
    assert n == 6  # separate lesions
    sizes = np.bincount(lab.ravel())[1:]
    assert sizes.max() > 3 * sizes.min()  # several sizes
    diff = img - brain.data.astype(np.float32)
    means = [diff[lab == k].mean() for k in range(1, n + 1)]
    assert sum(m > 0 for m in means) == 3 and sum(m < 0 for m in means) == 3
    # untouched away from lesions, soft edge just outside them
    far = ~ndimage.binary_dilation(les, iterations=6)
    assert np.abs(diff[far]).max() < 1e-3
    rim = ndimage.binary_dilation(les, iterations=1) & ~les
    assert 0 < np.abs(diff[rim]).mean() < np.abs(diff[les]).mean()


def test_lesions_restricted_to_slices_and_reproducible(brain, brain_mask):
    a = inject_lesions(brain.data, brain_mask, n=4, polarity="dark", slices=range(40, 50), seed=3)
    b = inject_lesions(brain.data, brain_mask, n=4, polarity="dark", slices=range(40, 50), seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    zs = np.flatnonzero(a[1].any(axis=(1, 2)))
    assert zs.min() >= 40 - 7 and zs.max() <= 49 + 7
    assert (a[0] <= brain.data + 1e-3).all()  # dark only darkens


def test_lesions_bad_input(brain, brain_mask):
    with pytest.raises(ValueError, match="mask shape"):
        inject_lesions(brain.data, brain_mask[:-1])
    with pytest.raises(ValueError, match="polarity"):
        inject_lesions(brain.data, brain_mask, polarity="grey")
