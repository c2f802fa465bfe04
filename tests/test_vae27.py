"""The VAE on large 2D images (X-ray exports): a capped working grid, the budget kept, few steps warned,
wording by modality and no slice ranking for a single 2D image."""
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from napari_medgen._widgets.vae_widget import VAEWidget
from napari_medgen.cli import main
from napari_medgen.data.resample import resize
from napari_medgen.io import Geometry
from napari_medgen.io.read import ImageData
from napari_medgen.tasks.anomaly import anomaly_map
from napari_medgen.tasks.vae import reconstruct
from napari_medgen.tasks.vae_training import MAX_SIDE, UndertrainedWarning, train_vae

SMALL = {"channels": (4, 8, 16, 32), "latent_size": 8, "batch_size": 4, "device": "cpu"}


def xrays(brain, n=8, shape=(1200, 1000), spacing=0.3):
    """``n`` large 2D images (a brain slice upsampled, each shifted in brightness and place) at ``spacing`` mm."""
    mid = brain.data[brain.data.shape[0] // 2].astype(np.float32)
    big = resize(mid[None], shape)[0]
    rng = np.random.default_rng(0)
    return [ImageData(np.roll(big, 20 * k, axis=1) * (1 + 0.05 * k) + rng.normal(0, 2, shape).astype(np.float32),
                      Geometry((spacing, spacing), (0.0, 0.0), np.eye(2)), name=f"xray {k}") for k in range(n)]


@pytest.fixture(scope="module")
def large(brain):
    images = xrays(brain)
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndertrainedWarning)  # a short budget on a loaded machine
        model, hist = train_vae(images, seconds=8.0, **SMALL)
    return images, model, hist, time.monotonic() - t0


def test_large_2d_images_work_on_a_capped_grid_within_budget(large, tmp_path):
    images, model, hist, took = large
    assert max(model.params.size) <= MAX_SIDE  # was the full 1200 x 1000 field of view
    assert took < 8.0 + 4.0  # the calibration stays inside the budget
    assert model.params.spacing[0] == pytest.approx(0.3 * 1200 / MAX_SIDE, rel=0.01)  # the spacing grows
    path = tmp_path / "v.medgen.pt"
    model.save(path)
    assert path.stat().st_size < 2e6  # the dense layer to the latent no longer grows with the image
    res = anomaly_map(model, images[0])  # scored back on the image's own grid
    assert res.score.shape == images[0].data.shape and np.isfinite(res.score).all()
    assert "CSF" not in res.explanation  # an X-ray: neutral wording


def test_plain_large_arrays_are_capped_and_scored_on_their_grid(brain):
    arrays = [im.data for im in xrays(brain, shape=(600, 500))]
    model, _ = train_vae(arrays, steps=2, seconds=None, **SMALL)
    assert max(model.params.size) <= MAX_SIDE and model.config.training["pixel_grid"]
    assert reconstruct(model, arrays[0], device="cpu").shape == (600, 500)


def test_the_sample_brain_keeps_its_grid(brain, tissue):
    model, _ = train_vae(brain, tissue.data > 0, steps=1, seconds=None, **SMALL)
    assert model.params.spacing == list(brain.geometry.spacing[1:])
    assert model.params.size == [128, 112]  # the mask box with its room, as before the cap
    assert not model.config.training["pixel_grid"]
    res = anomaly_map(model, brain, tissue.data > 0, method="residual")
    assert "CSF" not in res.explanation  # only "combined" speaks of CSF
    assert "normal CSF is dark too" in anomaly_map(model, brain, tissue.data > 0).explanation  # brain MRI


def test_a_budget_ending_after_a_few_steps_is_warned(brain):
    done = {"n": 0}

    def progress(ev):
        done["n"] = max(done["n"], ev.metrics.get("steps", 0))

    with pytest.warns(UndertrainedWarning, match="only 3 steps"):
        _, hist = train_vae(brain.data[30:60], progress=progress, stop=lambda: done["n"] >= 3, seconds=60, **SMALL)
    assert hist["warnings"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndertrainedWarning)  # steps asked for: no warning
        assert train_vae(brain.data[30:60], steps=2, seconds=None, **SMALL)[1]["warnings"] == []


def test_cli_lists_no_slices_for_a_2d_image(large, tmp_path, capsys):
    images, model, _hist, _took = large
    png = tmp_path / "x.png"
    Image.fromarray(np.clip(images[1].data[::4, ::4], 0, 255).astype(np.uint8)).save(png)
    model.save(tmp_path / "v.medgen.pt")
    assert main(["vae-anomaly", str(png), "--model", str(tmp_path / "v.medgen.pt"),
                 "--out", str(tmp_path / "heat.nii.gz"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "anomalous pixels" in out and "voxels" not in out and "slices" not in out and "CSF" not in out


def test_panel_hides_the_slice_list_for_a_2d_image(make_napari_viewer, large, qtbot):
    images, model, _hist, _took = large
    viewer = make_napari_viewer()
    layer = viewer.add_image(images[2].data, name="xray", scale=images[2].geometry.spacing)
    widget = VAEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model = model
    widget._show_anomaly(anomaly_map(model, images[2], method="residual"), layer)
    assert widget.slices.isHidden() and widget.slices_label.isHidden()
    assert "CSF" not in widget.explanation.text()
