"""Training targets from painted slices: which slices count (along any axis), dense vs sparse, bad annotations,
interpolation between painted slices, CT recognised by its values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.data.annotations import IGNORE, AnnotationError, annotated_slices, make_targets, painted_planes
from napari_medgen.data.augment import augment_batch
from napari_medgen.data.interpolate import interpolate_labels
from napari_medgen.data.normalize import resolve
from napari_medgen.data.sampling import PaintedPatchSampler


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


def test_slices_painted_along_another_axis_become_known_rows(tissue):
    ann = np.zeros_like(tissue.data)
    ann[:, :, [40, 50]] = tissue.data[:, :, [40, 50]]  # sagittal painting
    t = make_targets(ann, axis=0)  # trained along axis 0: each axial slice knows two columns
    assert t.planes.keys() == {2} and list(t.planes[2]) == [40, 50]
    known = t.targets != IGNORE
    assert known[:, :, [40, 50]].all() and not np.delete(known, [40, 50], axis=2).any()
    assert list(make_targets(ann).indices) == [40, 50] and make_targets(ann).axis == 2  # auto: the painted axis


def test_axial_coronal_and_sagittal_slices_in_one_layer_all_count(tissue):
    ann = np.zeros_like(tissue.data)
    ann[30], ann[:, 60], ann[:, :, 45] = tissue.data[30], tissue.data[:, 60], tissue.data[:, :, 45]
    planes = painted_planes(ann)
    assert {a: list(i) for a, i in planes.items()} == {0: [30], 1: [60], 2: [45]}
    t = make_targets(ann)
    moved = t.targets  # slices along t.axis
    assert t.known_pixels == int(sum(np.prod([s for i, s in enumerate(ann.shape) if i != a]) for a in range(3))
                                 - sum(ann.shape[a] for a in range(3)) + 1)  # three planes, overlaps counted once
    assert set(np.unique(moved)) == {IGNORE, 0, 1, 2, 3}


def test_interpolation_fills_between_painted_slices_only(tissue):
    brain = (tissue.data > 0).astype(np.uint8)
    ann = np.zeros_like(brain)
    ann[[30, 50]] = brain[[30, 50]]
    filled = interpolate_labels(ann, spacing=(2, 2, 2))
    np.testing.assert_array_equal(filled[[30, 50]], brain[[30, 50]])  # painted slices kept
    assert not filled[:30].any() and not filled[51:].any()  # nothing extrapolated
    between = slice(31, 50)
    dice = 2 * (filled[between] & brain[between]).sum() / (filled[between].sum() + brain[between].sum())
    assert dice > 0.9
    blob = np.zeros((11, 20, 20), np.uint8)
    blob[0, 5:15, 5:15] = 1
    blob[10, 2, 2] = 2  # the other end shows another label: label 1 ends between the two painted slices
    area = (interpolate_labels(blob) == 1).sum((1, 2))
    assert 100 > area[1] > area[2] > area[3] > 0 and not area[6:].any()


def test_a_structure_between_two_empty_slices_is_filled_from_slices_along_another_axis():
    """Axial slices painted at both ends of a ball (nothing of it there) and sagittal slices through it: the axial
    interpolation filled the whole slab with background first, so the ball was never interpolated between the
    sagittal slices."""
    z, y, x = np.mgrid[:21, :40, :40]
    ball = ((z - 10) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) <= 64
    ann = np.zeros(ball.shape, np.uint8)
    ann[[0, 1, 19, 20]] = ball[[0, 1, 19, 20]]  # empty: the ball spans z 2-18; more axial than sagittal slices
    ann[:, :, [14, 20, 26]] = ball[:, :, [14, 20, 26]]
    out = interpolate_labels(ann, spacing=(1, 1, 1), planes={0: [0, 1, 19, 20], 2: [14, 20, 26]})
    between = np.s_[:, :, 15:26]
    dice = 2 * (out[between] & ball[between]).sum() / (out[between].sum() + ball[between].sum())
    assert dice > 0.85, dice


def test_ct_is_recognised_by_hounsfield_values_whatever_the_dtype():
    rng = np.random.default_rng(0)
    ct = np.full((8, 64, 64), -1000.0, np.float32)  # air around a body
    ct[:, 16:48, 16:48] = rng.normal(40, 10, (8, 32, 32))
    ct[:, 30:34, 30:34] = 900  # bone
    for arr in (ct, ct.astype(np.int16), ct.astype(np.float64)):
        assert resolve(None, arr)["kind"] == "window"
    assert resolve(None, (ct + 1024) / 2000)["kind"] == "percentile"  # an MRI-like float image
    assert resolve(None, ct - 3000)["kind"] == "percentile"  # not HU
    assert resolve(None, np.zeros((4, 4)), "CT")["kind"] == "window"  # the metadata says CT


def test_full_label_map_is_accepted_on_every_axis(tissue):
    for axis in range(3):
        assert len(make_targets(tissue.data, axis=axis).indices) > 50


def test_patches_centre_on_painted_pixels_and_augmentation_keeps_unknown_unknown(painted, brain):
    t = make_targets(np.where(painted > 0, painted + 1, 0), sparse=True, background_label=None)
    vol = brain.data.astype(np.float32) / 1000
    sampler = PaintedPatchSampler(vol, t.targets, t.indices, (48, 48), context=1, seed=0)
    x, y = sampler.sample(32)
    assert x.shape == (32, 3, 48, 48) and y.shape == (32, 1, 48, 48)  # the slice and one neighbour on each side
    assert all((yy != IGNORE).any() for yy in y)  # every patch holds painted pixels
    xa, ya = augment_batch(x, y, np.random.default_rng(0), affine_prob=1.0)
    assert xa.shape == x.shape and ya.dtype == torch.int64
    assert set(np.unique(ya.numpy())) <= {IGNORE, 2, 3, 4} and (ya == IGNORE).sum() > (y == IGNORE).sum()  # unknown never turns into background 0


def test_unclipped_normalisation_keeps_values_beyond_the_window():
    """Bright lesions above a CT window keep their order when clipping is off; inside it nothing changes."""
    from napari_medgen.data.normalize import normalize

    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1500.0, 3000.0], np.float32)
    spec = {"kind": "window", "low": -1000, "high": 1000}
    clipped, raw = normalize(hu, spec), normalize(hu, spec, clip=False)
    assert np.allclose(clipped[:4], raw[:4]) and clipped[4] == clipped[5] == 1.0
    assert raw[5] > raw[4] > 1.0
