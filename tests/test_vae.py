"""VAE on the sample brain: lesion heatmaps rank lesions first, outputs keep shape, bad input is refused."""
import json
import re
import threading
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from napari_medgen.data.lesions import inject_lesions
from napari_medgen.data.slices import mask_box
from napari_medgen.engine.jobs import Cancelled
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData
from napari_medgen.models.checkpoint import FORMAT, Model
from napari_medgen.models.config import Task
from napari_medgen.tasks.anomaly import anomaly_map
from napari_medgen.tasks.vae import (LOGVAR_LIMIT, NoModelError, OutOfDistributionWarning, interpolate_slices,
                                     reconstruct, synthesize_vae)
from napari_medgen.tasks.vae_training import train_vae
from napari_medgen.tasks.volume_input import NonFiniteWarning

HELD_OUT = (40, 56)  # axial slices never seen in training; lesions go here
# the sample brain at 4 mm in-plane keeps training in the test suite to ~20 s on one CPU thread
# budgets in steps only (no seconds limit): the same model whatever the machine load
TINY = {"channels": (8, 16, 32, 64), "latent_size": 32, "batch_size": 12, "lr": 3e-3, "seconds": None}


@pytest.fixture(scope="module")
def data(brain, tissue):
    return brain.data[:, ::2, ::2], tissue.data[:, ::2, ::2] > 0


@pytest.fixture(scope="module")
def model(data):
    vol, mask = data
    a, b = HELD_OUT
    geo = Geometry((2.0, 4.0, 4.0))
    m, hist = train_vae([ImageData(vol[:a], geo), ImageData(vol[b:], geo)], [mask[:a], mask[b:]], steps=350,
                        val_every=50, seed=0, device="cpu", **TINY)
    assert hist["reconstruction"][-1] < hist["reconstruction"][0]
    assert hist["best_step"] > 0 and not hist["events"]  # never the untrained start; no NaN on the way
    return m


def auroc(score, truth):
    return float(compute_roc_auc(torch.from_numpy(score.astype(np.float32)), torch.from_numpy(truth.astype(np.float32))))


RADII = (1.5, 2.5, 3.5)


@pytest.mark.parametrize("polarity,sign,method,expected", [
    ("dark", "negative", "residual", 0.8), ("bright", "positive", "residual", 0.65),
    ("bright", "positive", "combined", 0.9), ("dark", "negative", "combined", 0.8)])
def test_heatmap_ranks_lesions_above_normal_brain(model, data, polarity, sign, method, expected):
    vol, mask = data
    img, lesions = inject_lesions(vol, mask, n=6, radii=RADII, polarity=polarity, contrast=0.6,
                                  slices=range(44, 52), seed=0)
    res = anomaly_map(model, img, mask, method=method, sign=sign, device="cpu")
    assert res.score.shape == vol.shape and res.mask.shape == vol.shape and res.score.dtype == np.float32
    block = slice(*HELD_OUT)
    fg = mask[block]
    value = auroc(res.score[block][fg], lesions[block][fg])
    assert value > expected, value
    assert not res.score[~mask].any() and not res.mask[~mask].any()  # restricted to the foreground
    assert len(res.slice_scores) == vol.shape[0]
    assert res.explanation.startswith(method if method != "residual" else "plain VAE")
    if method == "combined":  # the held-out slice with the largest flagged area holds a lesion
        assert lesions[HELD_OUT[0] + int(np.argmax(res.slice_scores[block]))].any()


def test_a_volume_stored_in_another_orientation_is_scored_as_the_training_scans_were(model, data):
    """A sagittally stored or mirrored copy of a scan was sliced the wrong way or seen upside down: its heatmap
    held half the flagged voxels of the same scan stored as the training data (6789 against 3315)."""
    vol, mask = data
    assert model.params.orientation == np.eye(3).tolist()  # the training volumes' storage
    sub = slice(40, 56)
    geo = Geometry((2.0, 4.0, 4.0))
    plain = anomaly_map(model, ImageData(vol[sub], geo), mask[sub], method="residual", device="cpu")
    order, flip = (2, 0, 1), np.diag([1.0, -1.0, 1.0])  # stored x, z, y with z reversed
    stored = np.flip(np.transpose(vol[sub], order), 1)
    direction = (np.eye(3)[:, list(order)]) @ flip
    other = anomaly_map(model, ImageData(stored, Geometry((4.0, 2.0, 4.0), (0, 0, 0), direction)),
                        np.flip(np.transpose(mask[sub], order), 1), method="residual", device="cpu")
    np.testing.assert_allclose(other.score, np.flip(np.transpose(plain.score, order), 1), atol=1e-6)
    assert other.axis == 1 and np.array_equal(other.slice_scores, plain.slice_scores[::-1])  # z stored reversed
    rec = reconstruct(model, ImageData(vol[sub], geo), mask[sub], device="cpu")
    turned = reconstruct(model, ImageData(stored, Geometry((4.0, 2.0, 4.0), (0, 0, 0), direction)),
                         np.flip(np.transpose(mask[sub], order), 1), device="cpu")
    np.testing.assert_allclose(turned, np.flip(np.transpose(rec, order), 1), atol=1e-4)
    with pytest.raises(UserError, match=re.escape(f"differs from the image shape {stored.shape}")):  # as stored
        anomaly_map(model, ImageData(stored, Geometry((4.0, 2.0, 4.0), (0, 0, 0), direction)), mask[sub][0],
                    device="cpu")


def test_sign_selects_polarity(model, data):
    vol, mask = data
    img, lesions = inject_lesions(vol, mask, n=4, radii=RADII, polarity="dark", contrast=0.6,
                                  slices=range(44, 52), seed=2)
    pos = anomaly_map(model, img, mask, method="residual", sign="positive", device="cpu").score
    neg = anomaly_map(model, img, mask, method="residual", sign="negative", device="cpu").score
    assert neg[lesions].mean() > 3 * pos[lesions].mean()


def test_threshold_from_normal_validation(model, data):
    vol, mask = data
    res = anomaly_map(model, vol, mask, method="residual", percentile=99, device="cpu")
    # roughly 1% of normal brain voxels exceed the 99th percentile of normal scores (2D-calibrated)
    assert res.mask[mask].mean() < 0.05
    strict = anomaly_map(model, vol, mask, method="residual", percentile=99.9, device="cpu")
    assert strict.threshold > res.threshold and strict.mask.sum() <= res.mask.sum()
    res.rethreshold(strict.threshold)
    assert res.mask.sum() <= strict.mask.sum() + 1


def test_restoration_scores_lesions(model, data):
    vol, mask = data
    img, lesions = inject_lesions(vol, mask, n=4, radii=RADII, polarity="dark", contrast=0.6,
                                  slices=range(46, 50), seed=4)
    sub = slice(42, 54)  # a few slices keep the test quick
    res = anomaly_map(model, img[sub], mask[sub], method="restoration", sign="negative", device="cpu")
    plain = anomaly_map(model, img[sub], mask[sub], method="residual", sign="negative", device="cpu")
    value = auroc(res.score[mask[sub]], lesions[sub][mask[sub]])
    assert value > 0.75 and value > auroc(plain.score[mask[sub]], lesions[sub][mask[sub]]) - 0.05


def test_save_load_gives_same_scores(model, data, tmp_path):
    vol, mask = data
    path = model.save(tmp_path / "vae.medgen.pt")
    loaded = Model.load(path, expect=Task.VAE)
    assert loaded.params == model.params
    assert loaded.config.normalization == model.config.normalization
    a = anomaly_map(model, vol[40:50], mask[40:50], method="residual", device="cpu").score
    b = anomaly_map(loaded, vol[40:50], mask[40:50], method="residual", device="cpu").score
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_reconstruction_in_image_units(model, data):
    vol, mask = data
    rec = reconstruct(model, vol, mask, device="cpu")
    assert rec.shape == vol.shape
    rel = abs(rec[mask].mean() - vol[mask].mean()) / vol[mask].mean()
    assert rel < 0.25


def test_sampling_is_seeded_in_training_units_and_interpolation_walks(model, data):
    vol, mask = data
    a, b = synthesize_vae(model, 4, seed=7), synthesize_vae(model, 4, seed=7)
    box = mask_box(mask, 0)  # masked training sees the brain's bounding box: samples have its size
    plane = vol[box].shape[1:]
    assert a.data.shape == (4, *plane) and tuple(model.params.slice_shape) == plane
    assert np.array_equal(a.data, b.data)
    assert not np.array_equal(a.data, synthesize_vae(model, 4, seed=8).data)
    assert a.data.max() > 0.3 * vol.max()  # the training intensity scale, not [0, 1]
    lo, hi = model.params.intensity  # the scale the masked training slices were normalised by: the brain's
    assert lo > np.percentile(vol[mask], 0.1) and hi < vol[mask].max()
    path = interpolate_slices(model, vol, 30, 70, steps=5, mask=mask)
    assert path.shape == (5, *plane)
    # the walk leaves slice 30 and approaches slice 70
    d = lambda x, z: np.abs(x - vol[box][z]).mean()  # noqa: E731
    assert d(path[0], 30) < d(path[-1], 30) and d(path[-1], 70) < d(path[0], 70)
    with pytest.raises(UserError, match="between 1 and"):
        synthesize_vae(model, 100_000_000)


def test_bad_input_is_refused_clearly(model, data):
    vol, mask = data
    with pytest.raises(NoModelError, match="No VAE model"):
        anomaly_map(None, vol, mask)
    with pytest.raises(ValueError, match="mask shape"):
        anomaly_map(model, vol, mask[:-1])
    with pytest.raises(ValueError, match="single-channel"):
        anomaly_map(model, np.stack([vol, vol, vol], -1), None)
    with pytest.raises(UserError, match="at least 8 slices"):
        train_vae(vol[40:45], mask[40:45], steps=2)
    ct = np.where(mask[40:44], vol[40:44] / vol.max() * 80.0, -1000.0)  # the same slices in Hounsfield-like units
    with pytest.warns(OutOfDistributionWarning, match="looks like a CT"):
        res = anomaly_map(model, ct, mask[40:44], method="residual", device="cpu")
    assert res.warnings
    with pytest.warns(OutOfDistributionWarning, match="foreground mask"):
        anomaly_map(model, vol[40:44, 4:-4, 4:-4], None, method="residual", device="cpu")
    wide = np.pad(vol[40:44], ((0, 0), (20, 20), (20, 20)))  # a wider field of view than the brain's box
    with pytest.raises(UserError, match="give the foreground mask"):
        anomaly_map(model, wide, None, method="residual", device="cpu")
    padded = anomaly_map(model, wide, np.pad(mask[40:44], ((0, 0), (20, 20), (20, 20))), method="residual",
                         device="cpu")  # with its mask the same scan scores as without the padding
    plain = anomaly_map(model, vol[40:44], mask[40:44], method="residual", device="cpu")
    np.testing.assert_allclose(padded.score[:, 20:-20, 20:-20], plain.score, atol=1e-4)


def test_other_scanner_units_change_nothing(model, data):
    """An MRI model scales each scan by its own percentiles: another scanner's units give the same map, no warning."""
    vol, mask = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        ours = anomaly_map(model, vol[40:44], mask[40:44], method="combined", device="cpu")
        theirs = anomaly_map(model, vol[40:44] * 7.5 + 300.0, mask[40:44], method="combined", device="cpu")
    assert not theirs.warnings
    np.testing.assert_allclose(theirs.score, ours.score, atol=1e-3)


def test_stop_keeps_best_weights_and_cancels_scoring(model, data):
    vol, mask = data
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 6

    m, hist = train_vae(vol, mask, steps=1000, stop=stop, device="cpu", **TINY)
    assert hist["stopped"] and len(hist["step"]) < 10
    assert m.params.thresholds["values"]  # still calibrated and usable
    ev = threading.Event()
    ev.set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Cancelled):
            anomaly_map(model, vol, mask, stop=ev)


def test_cancel_during_calibration_after_stop_returns_nothing(data):
    vol, mask = data
    seen = {"steps": 0, "calibrating": False}

    def progress(ev):
        seen["steps"] += ev.message == "training"
        seen["calibrating"] |= ev.message == "calibrating thresholds"

    with pytest.raises(Cancelled):
        train_vae(vol, mask, steps=1000, progress=progress, stop=lambda: seen["steps"] >= 3,
                  cancel=lambda: seen["calibrating"], device="cpu", **TINY)
    assert seen["steps"] >= 3 and seen["calibrating"]  # stopped training, then cancelled calibration


def test_nan_voxels_are_ignored_with_a_warning(data):
    vol, mask = data
    bad = vol.astype(np.float32).copy()
    bad[50, :4, :4] = np.nan  # 16 NaN voxels
    with pytest.warns(NonFiniteWarning, match="16 NaN"):
        m, hist = train_vae(bad, mask, steps=3, device="cpu", **TINY)
    assert all(np.isfinite(hist["loss"]))
    with pytest.warns(NonFiniteWarning):
        res = anomaly_map(m, bad[45:55], mask[45:55], method="residual", device="cpu")
    assert np.isfinite(res.score).all()


def test_logvar_is_clamped(model):
    net = model.net
    with torch.no_grad():
        net.logvar.bias.add_(1e4)
        try:
            _, logvar = net.encode_forward(torch.zeros(1, 1, *model.params.size))
        finally:
            net.logvar.bias.sub_(1e4)
    assert float(logvar.max()) <= LOGVAR_LIMIT


def test_larger_slices_than_the_field_of_view_are_refused_or_resampled(model, data):
    vol, mask = data
    big = np.pad(vol[40:44], ((0, 0), (40, 40), (40, 40)))
    with pytest.raises(UserError, match="larger than the VAE's field of view"):
        anomaly_map(model, big, None, method="residual", device="cpu")
    # the same anatomy at half the pixel size is resampled to the training spacing and back
    fine = np.repeat(np.repeat(vol[40:50], 2, 1), 2, 2)
    fine_mask = np.repeat(np.repeat(mask[40:50], 2, 1), 2, 2)
    half = [s / 2 for s in model.params.spacing]
    res = anomaly_map(model, ImageData(fine, Geometry((2.0, *half))), fine_mask, method="residual", device="cpu")
    direct = anomaly_map(model, ImageData(vol[40:50], Geometry((2.0, *model.params.spacing))), mask[40:50],
                         method="residual", device="cpu")
    assert res.score.shape == fine.shape
    assert res.mask.mean() < 3 * direct.mask.mean() + 0.01  # not half the image flagged


@pytest.mark.parametrize("bad,match", [(np.zeros((0, 10, 10)), "empty"), (np.arange(50.0), "1 dimension"),
                                       (np.zeros((2, 3, 40, 40)), "4 dimensions")])
def test_unusable_arrays_give_one_sentence(bad, match):
    with pytest.raises(UserError, match=match):
        train_vae(bad, steps=2, device="cpu")


def test_batch_size_zero_is_refused(data):
    with pytest.raises(UserError, match="batch size"):
        train_vae(data[0], steps=2, batch_size=0, device="cpu")


def test_version_1_file_still_loads(model, data, tmp_path):
    """A VAE written by napari-medgen 0.1 (flat dict config, version 1) loads and scores."""
    v2 = model.config.to_dict()
    flat = {"task": "vae", "name": "old", "networks": v2["networks"], "normalization": v2["normalization"],
            "channels": 1, "history": {"val_step": [100]}, "bench_train_s": 3.0,
            **{k: v2["params"][k] for k in ("axis", "size", "slice_shape", "masked", "beta", "training_stats",
                                             "thresholds")}}
    path = tmp_path / "old.medgen.pt"
    torch.save({"format": FORMAT, "version": 1, "config": json.dumps(flat),
                "networks": {"net": model.net.state_dict()}}, path)
    old = Model.load(path, expect=Task.VAE)
    assert old.params.size == model.params.size and old.config.training["history"] == {"val_step": [100]}
    vol, mask = data
    res = anomaly_map(old, vol[40:50], mask[40:50], method="residual", device="cpu")
    assert res.score.shape == (10, *vol.shape[1:])
    with pytest.raises(UserError, match="no intensity model"):
        anomaly_map(old, vol[40:50], mask[40:50], method="combined", device="cpu")


def test_combined_matches_the_threshold_on_mixed_lesions(model, data):
    """Bright and dark lesions together, no sign chosen: the combined score ranks lesion voxels above normal
    brain, and does not fall behind a plain two-sided intensity threshold of the same scan."""
    vol, mask = data
    img, lesions = inject_lesions(vol, mask, n=6, radii=RADII, polarity="both", contrast=0.6,
                                  slices=range(44, 52), seed=3)
    block = slice(*HELD_OUT)
    res = anomaly_map(model, img[block], mask[block], method="combined", device="cpu")
    fg, truth = mask[block], lesions[block][mask[block]]
    ours = auroc(res.score[fg], truth)
    x = img[block]
    threshold = auroc(np.abs(x - np.median(x[fg]))[fg], truth)
    assert ours > 0.85 and ours > threshold - 0.02, (ours, threshold)
    assert "Flagged voxels, by the part that flagged them" in res.explanation


def test_combined_is_calibrated_on_normal_slices(model, data):
    """On normal slices never trained on, the 99th-percentile threshold flags about 1% of the brain, not more."""
    vol, mask = data
    block = slice(*HELD_OUT)
    res = anomaly_map(model, vol[block], mask[block], method="combined", device="cpu", min_size=1)
    assert res.mask[mask[block]].mean() < 0.04


def test_same_seed_same_model(data):
    """Seeded training is reproducible within one session (the starting weights are seeded too)."""
    vol, mask = data
    geo = Geometry((2.0, 4.0, 4.0))
    runs = [train_vae([ImageData(vol, geo)], [mask], steps=5, val_every=5, seed=3, device="cpu", **TINY)[0]
            for _ in range(2)]
    torch.manual_seed(99)  # whatever the global state before a third run
    runs.append(train_vae([ImageData(vol, geo)], [mask], steps=5, val_every=5, seed=3, device="cpu", **TINY)[0])
    first = runs[0].net.state_dict()
    for other in runs[1:]:
        assert all(torch.equal(first[k], v) for k, v in other.net.state_dict().items())


def test_scoring_reports_progress_while_restoring(model, data):
    """The restoration is the slow part of scoring (minutes on a CT volume): it reports slice by slice, so a user
    can tell it from a hang."""
    vol, mask = data
    seen = []
    anomaly_map(model, vol[20:80], mask[20:80], method="restoration", device="cpu", progress=seen.append)
    steps = [(ev.step, ev.total) for ev in seen if ev.message == "restoring slices"]
    assert len(steps) >= 2 and steps[-1][0] == steps[-1][1] and steps[0][0] < steps[-1][0]


def test_seconds_budget_covers_calibration(brain, tissue):
    """A user's --seconds is the whole run: calibrating the thresholds comes out of it (it used to follow it)."""
    import time
    t0 = time.monotonic()
    _, hist = train_vae([brain], [tissue.data > 0], val_every=None, device="cpu", **{**TINY, "seconds": 20.0})
    total = time.monotonic() - t0
    assert hist["seconds"] < 19 and total < 20.0 * 1.2, (hist["seconds"], total)


def test_a_cohort_calibrates_on_the_validation_slices_that_fit_the_budget(brain, tissue):
    """Three subjects: a whole held-out brain (95 slices) to calibrate on took 45 s of a 30 s budget."""
    import time
    subjects = [ImageData(brain.data, brain.geometry, f"subject {i}") for i in range(3)]
    t0 = time.monotonic()
    model, _ = train_vae(subjects, [tissue.data > 0] * 3, device="cpu", **{**TINY, "seconds": 15.0})
    total = time.monotonic() - t0
    training = model.config.training
    assert 2 <= training["n_calibration"] < training["n_val"] and total < 15.0 * 1.25, (training, total)


def test_a_ct_with_a_mask_gets_the_window_of_its_tissue(brain, tissue):
    """Brain lesions 15-140 HU from grey matter were a few hundredths of the fixed -1000..1000 HU window
    (head CT with 6 inserted lesions: combined score AP 0.072 -> 0.283 with the tissue's own window)."""
    mask = tissue.data > 0
    hu = np.where(mask, 20 + 25 * brain.data / brain.data.max(), -1000).astype(np.int16)
    ct = ImageData(hu, brain.geometry, "head CT", metadata={"modality": "CT"})
    model, _ = train_vae(ct, mask, steps=1, device="cpu", **TINY)
    spec = model.config.normalization
    assert spec["kind"] == "window" and -100 < spec["low"] < 20 and 45 < spec["high"] < 150, spec
    fixed = {"kind": "window", "low": -1000, "high": 1000}
    assert train_vae(ct, mask, steps=1, device="cpu", normalization=fixed, **TINY)[0].config.normalization == fixed


def test_a_ct_with_an_empty_mask_says_what_is_missing(brain, tissue):
    hu = np.where(tissue.data > 0, 20 + 25 * brain.data / brain.data.max(), -1000).astype(np.int16)
    with pytest.raises(UserError, match="slices with foreground"):
        train_vae(ImageData(hu, brain.geometry, "CT", metadata={"modality": "CT"}), np.zeros(hu.shape, bool),
                  steps=1, device="cpu", **TINY)


def test_a_steps_budget_calibrates_on_a_bounded_number_of_slices(brain, tissue, monkeypatch):
    """`vae-train --steps N` (no seconds) calibrated on every validation slice: minutes on a cohort."""
    from napari_medgen.tasks import vae_training

    monkeypatch.setattr(vae_training, "STEPS_CALIBRATION_SLICES", 3)
    subjects = [ImageData(brain.data, brain.geometry, f"subject {i}") for i in range(3)]
    model, _ = train_vae(subjects, [tissue.data > 0] * 3, steps=2, device="cpu", **TINY)
    assert model.config.training["n_calibration"] == 3 < model.config.training["n_val"]
