"""Diffusion restoration as a second anomaly method: it takes lesions out more than it changes normal brain,
one model file keeps both networks, a model without one says how to add it, and a cancel changes nothing."""
import numpy as np
import pytest
import torch

from napari_medgen._widgets.vae_widget import VAEWidget
from napari_medgen.cli import main
from napari_medgen.data.lesions import inject_lesions
from napari_medgen.engine.jobs import Cancelled
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData, read_image, write_image
from napari_medgen.models.checkpoint import Model
from napari_medgen.models.config import Task
from napari_medgen.tasks.anomaly import anomaly_map, calibrate
from napari_medgen.tasks.diffusion_restore import NET, NoDiffusionError
from napari_medgen.tasks.diffusion_training import add_diffusion
from napari_medgen.tasks.vae import prepare
from napari_medgen.tasks.vae_training import train_vae

HELD_OUT = (40, 56)  # axial slices never trained on; lesions go here
GEO = Geometry((2.0, 6.0, 6.0))  # the sample brain at 6 mm in-plane: ~37 x 31 slices
# budgets in steps only: the same model whatever the machine load
TINY = {"channels": (8, 16, 32), "augment": False, "seconds": None, "device": "cpu"}


@pytest.fixture(scope="module")
def data(brain, tissue):
    return brain.data[:, ::3, ::3].astype(np.float32), tissue.data[:, ::3, ::3] > 0


def normals(data):
    vol, mask = data
    a, b = HELD_OUT
    return [ImageData(vol[:a], GEO, name="lower"), ImageData(vol[b:], GEO, name="upper")], [mask[:a], mask[b:]]


@pytest.fixture(scope="module")
def vae(data):
    model, _ = train_vae(*normals(data), steps=3, latent_size=8, **TINY)
    return model


@pytest.fixture(scope="module")
def model(vae, data):
    model, hist = add_diffusion(vae, *normals(data), steps=150, val_every=50, **TINY)
    assert hist["best_step"] > 0 and not hist["events"]
    return model


def lesioned(data, seed=0):
    vol, mask = data
    return inject_lesions(vol, mask, n=6, radii=(2.0, 2.5, 3.0), polarity="bright", contrast=0.8,
                          slices=range(44, 52), seed=seed)


def test_restoration_removes_lesions_more_than_it_changes_normal_brain(model, data):
    vol, mask = data
    img, truth = lesioned(data)
    a, b = HELD_OUT
    res = anomaly_map(model, ImageData(img[a:b], GEO), mask[a:b], method="diffusion", sign="positive", device="cpu")
    fg, les = mask[a:b], truth[a:b]
    change = res.score  # what the restoration took out (post-processed, as users see it)
    # measured 1.27 / 1.56 / 1.34 for training seeds 0-2 (noise level 0.25, 3 draws); a restoration that
    # changed lesion and normal brain alike would give 1
    assert change[les].mean() > 1.2 * change[fg & ~les].mean()
    again = anomaly_map(model, ImageData(img[a:b], GEO), mask[a:b], method="diffusion", sign="positive", device="cpu")
    np.testing.assert_array_equal(res.score, again.score)  # seeded: the same answer twice
    assert res.mask[~fg].sum() == 0 and "diffusion" in res.explanation


def test_threshold_is_calibrated_on_normal_slices(model, data):
    vol, mask = data
    a, b = HELD_OUT
    clean = anomaly_map(model, ImageData(vol[a:b], GEO), mask[a:b], method="diffusion", device="cpu")
    assert clean.mask[mask[a:b]].mean() < 0.05  # the 99th normal percentile flags few voxels of an unseen normal block
    again = model.copy()  # recalibrating the whole model calibrates the diffusion method too
    again.params.thresholds = None
    calibrate(again, prepare(model, ImageData(vol[b:b + 8], GEO), mask[b:b + 8]).stack[:, 0], device="cpu")
    assert {f"diffusion/{s}" for s in ("both", "positive", "negative")} <= set(again.params.thresholds["values"])


def test_one_file_keeps_both_networks(model, vae, data, tmp_path):
    path = model.save(tmp_path / "both.medgen.pt")
    back = Model.load(path, expect=Task.VAE)
    assert set(back.networks) == {"net", NET} and back.params.diffusion == model.params.diffusion
    img, _ = lesioned(data)
    a, b = HELD_OUT
    scored = [anomaly_map(m, ImageData(img[a:b], GEO), data[1][a:b], method="diffusion", device="cpu").score
              for m in (model, back)]
    np.testing.assert_allclose(scored[0], scored[1], atol=1e-5)
    assert NET not in vae.networks  # the VAE it was added to is unchanged


def test_a_model_without_diffusion_says_how_to_add_it(vae, data):
    with pytest.raises(NoDiffusionError, match=r"^This model has no diffusion network; add one .*add_diffusion"):
        anomaly_map(vae, data[0][40:56], method="diffusion")


def test_cancel_leaves_the_model_unchanged(vae, data):
    before = {k: v.clone() for k, v in vae.net.state_dict().items()}
    config = vae.config.to_dict()
    seen = []
    with pytest.raises(Cancelled):
        add_diffusion(vae, *normals(data), steps=500, cancel=lambda: len(seen) >= 3,
                      progress=lambda ev: seen.append(ev), **TINY)
    assert vae.config.to_dict() == config and set(vae.networks) == {"net"}
    assert all(torch.equal(before[k], v) for k, v in vae.net.state_dict().items())


def test_bad_settings_are_one_sentence(vae, data):
    with pytest.raises(UserError, match="noise level"):
        add_diffusion(vae, *normals(data), steps=1, noise_level=1.5, **TINY)
    images, _ = normals(data)
    with pytest.raises(UserError, match="inside foreground masks"):
        add_diffusion(vae, images, steps=1, **TINY)


def test_widget_offers_diffusion_when_the_model_has_it_and_cancel_keeps_the_model(make_napari_viewer, qtbot, vae,
                                                                                   model, data):
    vol, mask = data
    viewer = make_napari_viewer()
    img = viewer.add_image(vol, name="T1", **GEO.layer_kwargs())
    brain = viewer.add_labels(mask.astype(np.uint8), name="brain", **GEO.layer_kwargs())
    w = VAEWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model = vae
    w._describe("Loaded")
    methods = lambda: [w.method.itemText(i) for i in range(w.method.count())]  # noqa: E731
    assert "diffusion" not in methods() and "restoration" in methods()
    w.normals.value, w.train_mask.value = [img], brain
    w.add_diffusion()
    qtbot.waitUntil(lambda: len(w.loss_plot.series.get("diffusion noise error", ([], []))[0]) >= 2, timeout=60_000)
    w.runner.cancel()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.model is vae and NET not in vae.networks and "diffusion" not in methods()
    w.model = model
    w._describe("Loaded")
    assert "diffusion" in methods() and "diffusion restoration" in w.model_line.text()
    w.image.value, w.mask.value = img, brain
    w.method.setCurrentText("diffusion")
    w.score()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.result is not None and w.result.method == "diffusion" and w.explanation.text().startswith(
        "Method: diffusion restoration residual")


def test_cli_scores_with_diffusion_and_refuses_a_model_without(model, vae, data, tmp_path, capsys):
    img, _ = lesioned(data)
    image = write_image(tmp_path / "t1.nii.gz", img[40:56], GEO)
    brain = write_image(tmp_path / "brain.nii.gz", data[1][40:56].astype(np.uint8), GEO)
    both, plain = model.save(tmp_path / "both.medgen.pt"), vae.save(tmp_path / "vae.medgen.pt")
    args = ["vae-anomaly", image, "--mask", brain, "--method", "diffusion", "--quiet"]
    assert main([*args, "--model", both, "--out", str(tmp_path / "heat.nii.gz")]) == 0
    assert "diffusion restoration residual" in capsys.readouterr().out
    assert read_image(tmp_path / "heat.nii.gz").data.shape == img[40:56].shape
    assert main([*args, "--model", plain, "--out", str(tmp_path / "none.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vae-train --diffusion SECONDS" in err
    assert not (tmp_path / "none.nii.gz").exists()
    assert main(["vae-train", image, "--out", str(tmp_path / "x.medgen.pt"), "--diffusion", "-5"]) == 2
    assert "diffusion budget must be 0 (none) or more seconds" in capsys.readouterr().err
