"""VAE findings of a code reader: two subjects' files of one name are two subjects; masks and label maps checked
for their grid when training; interpolation keeps the pixel spacing, honours the stored orientation and gives
``steps`` slices; vae-sample uses --device; the --axis help says what the axis is; the diffusion model's
calibration fits its budget."""
import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.data.orientation import turned
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData, read_image, write_image
from napari_medgen.tasks import diffusion_training, vae, vae_training
from napari_medgen.tasks.gan import training_slices
from napari_medgen.tasks.vae import interpolate_slices
from napari_medgen.tasks.vae_training import train_vae

TINY = {"channels": (4, 8, 8), "latent_size": 4, "batch_size": 4, "augment": False, "seconds": None,
        "device": "cpu"}
GEO = Geometry((2.0, 4.0, 4.0), (10.0, -20.0, 30.0))


@pytest.fixture(scope="module")
def small(brain, tissue):
    """The sample brain at 2 x 4 x 4 mm and its brain mask, as ImageData on one grid."""
    return (ImageData(brain.data[:, ::2, ::2].astype(np.float32), GEO, name="t1"),
            ImageData((tissue.data[:, ::2, ::2] > 0).astype(np.uint8), GEO, name="brain"))


@pytest.fixture(scope="module")
def model(small):
    return train_vae(small[0], steps=2, **TINY)[0]


def shifted(item: ImageData) -> ImageData:
    """The same voxels 20 mm away: a mask from another scan or origin."""
    g = item.geometry
    return ImageData(item.data, Geometry(g.spacing, tuple(o + 20.0 for o in g.origin), g.direction), item.name)


class Spy(vae_training.VAETask):
    seen = {}

    def __init__(self, net, train, val, **kw):
        Spy.seen.update(train=train, val=val)
        super().__init__(net, train, val, **kw)


def test_files_of_one_name_in_two_folders_are_two_subjects(small, tmp_path, monkeypatch):
    vol = small[0].data
    paths = [write_image(tmp_path / k / "t1.nii.gz", part, GEO) for k, part in (("a", vol[:48]), ("b", vol[48:]))]
    monkeypatch.setattr(vae_training, "VAETask", Spy)
    _, hist = train_vae(paths, steps=1, **TINY)
    assert hist["split"] == "subject" and hist["val_subjects"][0] in map(str, paths)
    flat = Spy.seen["train"].reshape(len(Spy.seen["train"]), -1)
    assert not any((flat == v.ravel()).all(1).any() for v in Spy.seen["val"])  # no held-out slice is trained on


def test_cli_names_subjects_of_one_file_name_by_their_folders(small, tmp_path, capsys):
    vol = small[0].data
    paths = [write_image(tmp_path / k / "t1.nii.gz", part, GEO) for k, part in (("a", vol[:48]), ("b", vol[48:]))]
    out = tmp_path / "vae.medgen.pt"
    assert main(["vae-train", *map(str, paths), "--out", str(out), "--steps", "1", "--latent", "4", "--quiet",
                 "--device", "cpu"]) == 0
    from napari_medgen.models.checkpoint import Model

    tr = Model.load(out).config.training
    assert tr["split"] == "subject" and tr["subjects"] == ["a_t1", "b_t1"] and len(tr["val_subjects"]) == 1
    assert f"validated on held-out {tr['val_subjects'][0]}" in capsys.readouterr().out


def test_a_training_mask_on_another_grid_is_refused(small, tmp_path, capsys):
    img, mask = small
    with pytest.raises(UserError, match="^The mask is not on the image's voxel grid"):
        train_vae(img, shifted(mask), steps=1, **TINY)
    t1 = write_image(tmp_path / "t1.nii.gz", img.data, GEO)
    off = write_image(tmp_path / "mask.nii.gz", mask.data, shifted(mask).geometry)
    assert main(["vae-train", t1, "--mask", off, "--out", str(tmp_path / "m.medgen.pt"), "--steps", "1",
                 "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not on the image's voxel grid" in err
    assert not (tmp_path / "m.medgen.pt").exists()


def test_a_gan_label_map_on_another_grid_is_refused(small):
    img, mask = small
    with pytest.raises(UserError, match="^A label map is not on its image's voxel grid"):
        training_slices(img, labels=shifted(mask))
    assert training_slices(img, labels=mask.data)["labels"] is not None  # a bare array has no grid to differ


def test_interpolation_walks_the_slices_the_model_cuts_and_gives_steps_slices(model, small):
    img = small[0]
    axial = interpolate_slices(model, img, 30, 60, steps=4)
    x_first = turned(img, ((2, 1, 0), (False, False, False)))  # the same scan stored sagittal slice first
    assert np.array_equal(interpolate_slices(model, x_first, 30, 60, steps=4), axial)
    n = img.data.shape[0]
    reversed_z = turned(img, ((2, 1, 0), (False, False, True)))  # ... and with its slices numbered top down
    assert np.array_equal(interpolate_slices(model, reversed_z, n - 1 - 30, n - 1 - 60, steps=4),
                          axial)
    one = interpolate_slices(model, img, 30, 60, steps=1)
    assert one.shape == (1, *axial.shape[1:]) and np.allclose(one[0], axial[0], atol=1e-5)
    with pytest.raises(UserError, match=r"^Slice 95 is outside the image \(0..94 along its axis 2\)"):
        interpolate_slices(model, x_first, 95, 60)  # its axis 2 holds the 95 axial slices


def test_cli_walk_keeps_the_pixel_spacing_and_sampling_uses_the_device(model, small, tmp_path, monkeypatch):
    path = tmp_path / "vae.medgen.pt"
    model.save(path)
    t1 = write_image(tmp_path / "t1.nii.gz", small[0].data, GEO)
    assert main(["vae-sample", "--model", str(path), "-n", "3", "--between", t1, "30", "60",
                 "--out", str(tmp_path / "walk.nii.gz"), "--quiet", "--device", "cpu"]) == 0
    walk = read_image(tmp_path / "walk.nii.gz")
    assert walk.data.shape[0] == 3 and walk.geometry.spacing[1:] == (4.0, 4.0) == tuple(model.params.spacing)
    assert main(["vae-sample", "--model", str(path), "--between", t1, "30", "top", "--out",
                 str(tmp_path / "w.nii.gz"), "--quiet"]) == 2  # one sentence, not a traceback
    asked = []
    real = vae.select_device
    monkeypatch.setattr(vae, "select_device", lambda d="auto": asked.append(d) or real(d))
    assert main(["vae-sample", "--model", str(path), "-n", "2", "--out", str(tmp_path / "s.nii.gz"), "--quiet",
                 "--device", "cpu"]) == 0
    assert asked == ["cpu"]


def test_axis_help_says_it_is_a_stored_axis(capsys):
    assert main(["vae-train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0 is axial" not in text and "0 is its first stored axis" in text


@pytest.mark.parametrize("budget", [{"steps": 2, "seconds": None}, {"steps": None, "seconds": 2.0}])
def test_diffusion_calibration_is_capped_by_the_budget(model, small, monkeypatch, budget):
    import time

    calls = []

    def fake_calibrate(m, slices, **kw):  # 0.1 s a slice: a slow scorer
        time.sleep(0.1 * len(slices))
        calls.append(len(slices))

    monkeypatch.setattr(diffusion_training, "calibrate", fake_calibrate)
    monkeypatch.setattr(diffusion_training, "STEPS_CALIBRATION_SLICES", 3, raising=False)
    monkeypatch.setattr(diffusion_training.DiffusionTask, "nothing_learned", lambda self, best: None)
    kw = {**TINY, **budget}
    del kw["channels"], kw["latent_size"]
    new, hist = diffusion_training.add_diffusion(model, small[0], channels=(8, 8), ddim_steps=1, **kw)
    n_val, n_cal = new.config.training["diffusion"]["n_val"], calls[-1]
    assert n_val > 6 and 2 <= n_cal <= 6  # steps: the cap (3); seconds: what fits in 30 % of 2 s at 0.1 s a slice
    assert new.config.training["diffusion"]["n_calibration"] == n_cal
