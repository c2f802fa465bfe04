"""Training targets from painted slices: which slices count, dense vs sparse, and bad annotations."""
from __future__ import annotations

import numpy as np
import pytest

from napari_medgen.data.annotations import IGNORE, AnnotationError, annotated_slices, make_targets
from napari_medgen.data.augment import augment_batch, few_shot_transform
from napari_medgen.data.sampling import PatchSampler


@pytest.fixture(scope="module")
def painted(tissue):
    """Three axial slices of the real tissue map painted, everything else untouched."""
    ann = np.zeros_like(tissue.data)
    ann[[25, 40, 55]] = tissue.data[[25, 40, 55]]
    return ann


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_annotated_slices_found_along_any_axis(tissue, axis):
    ann = np.zeros_like(tissue.data)
    idx = [30, 50]
    sl = [slice(None)] * 3
    sl[axis] = idx
    ann[tuple(sl)] = tissue.data[tuple(sl)]
    assert list(annotated_slices(ann, axis)) == idx
    t = make_targets(ann, axis=axis)
    assert list(t.indices) == idx and t.classes == [0, 1, 2, 3]


def test_dense_targets_only_contain_painted_slices(painted, tissue):
    t = make_targets(painted)
    assert list(t.indices) == [25, 40, 55]
    assert t.targets.shape == (3, 117, 99)
    np.testing.assert_array_equal(t.targets, tissue.data[[25, 40, 55]])
    assert t.known_pixels == 3 * 117 * 99  # dense: 0 on a painted slice is background, nothing else known


def test_sparse_targets_ignore_unpainted_pixels_and_map_background(tissue):
    ann = np.zeros_like(tissue.data)
    sl = tissue.data[40].copy()
    strokes = np.zeros_like(sl)
    strokes[::10] = sl[::10] + 1  # scribbles on every 10th row: 1 = background, 2..4 = tissues
    ann[40] = strokes
    t = make_targets(ann, sparse=True, background_label=1)
    tgt = t.targets[0]
    assert (tgt[strokes == 0] == IGNORE).all()
    assert (tgt[strokes == 1] == 0).all()
    assert (tgt[strokes == 3] == 3).all()  # other painted values keep their class
    assert t.known_pixels == int((strokes > 0).sum())


def test_sparse_background_label_maps_to_class_zero(tissue):
    ann = np.zeros((20, 20), np.uint8)
    ann[2, 2:8], ann[10, 2:8] = 5, 2
    t = make_targets(ann, sparse=True, background_label=5)
    assert t.classes == [0, 2]
    assert t.targets[0, 2, 3] == 0 and t.targets[0, 10, 3] == 2 and t.targets[0, 0, 0] == IGNORE


@pytest.mark.parametrize("make, message", [
    (lambda lab: np.zeros_like(lab), "No annotated slice"),
    (lambda lab: np.where(np.arange(95)[:, None, None] == 40, (lab > 0).astype(lab.dtype) * 2, 0), None),
    (lambda lab: np.where(np.arange(95)[:, None, None] == 40, 3, 0).astype(lab.dtype), "Only one class"),
])
def test_bad_annotations_are_one_sentence(tissue, make, message):
    ann = make(tissue.data)
    if message is None:  # background + one class painted is fine
        assert make_targets(ann).classes == [0, 2]
        return
    with pytest.raises(AnnotationError, match=message):
        make_targets(ann)


def test_labels_painted_along_another_axis_are_refused(tissue):
    ann = np.zeros_like(tissue.data)
    ann[:, :, [40, 50]] = tissue.data[:, :, [40, 50]]  # sagittal painting
    with pytest.raises(AnnotationError, match="axis 2"):
        make_targets(ann, axis=0)
    assert list(make_targets(ann, axis=2).indices) == [40, 50]


def test_full_label_map_is_accepted_on_every_axis(tissue):
    for axis in range(3):
        assert len(make_targets(tissue.data, axis=axis).indices) > 50


def test_patches_centre_on_painted_pixels_and_augmentation_keeps_unknown_unknown(painted, brain):
    t = make_targets(np.where(painted > 0, painted + 1, 0), sparse=True, background_label=None)
    img = brain.data[t.indices].astype(np.float32) / 1000
    sampler = PatchSampler(img, t.targets, (48, 48), seed=0)
    x, y = sampler.sample(32)
    assert x.shape == (32, 1, 48, 48) and y.shape == (32, 1, 48, 48)
    assert all((yy != IGNORE).any() for yy in y)  # every patch holds painted pixels
    xa, ya = augment_batch(few_shot_transform(0), x, y)
    assert xa.shape == x.shape and ya.dtype == np.int64
    assert set(np.unique(ya)) <= {IGNORE, 2, 3, 4}  # unknown never turns into background 0
