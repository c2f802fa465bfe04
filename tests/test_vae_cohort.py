"""VAE on a cohort of normal scans: validation held out by subject, each scanner's scale standardised,
the CLI trains on a dataset folder, and a folder without scans is one sentence."""
import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData, write_image
from napari_medgen.tasks import vae_training
from napari_medgen.tasks.vae_training import normal_cohort, train_vae, train_vae_cohort

TINY = {"channels": (4, 8, 8), "latent_size": 4, "batch_size": 4, "augment": False, "seconds": None,
        "device": "cpu"}
SLABS = {"sub-a": (0, 12, 1.0), "sub-b": (12, 24, 2.5), "sub-c": (24, 36, 0.4), "sub-d": (36, 48, 7.0)}


@pytest.fixture(scope="module")
def small(brain, tissue):
    """The sample brain at 4 x 8 x 8 mm and its brain mask."""
    return brain.data[::2, ::4, ::4].astype(np.float32), tissue.data[::2, ::4, ::4] > 0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, small):
    """Four 'subjects' (disjoint slabs of the brain, intensities scaled as by different scanners) on disk."""
    vol, mask = small
    root = tmp_path_factory.mktemp("normals")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    geo = Geometry((4.0, 8.0, 8.0))
    for name, (a, b, scale) in SLABS.items():
        write_image(root / "imagesTr" / f"{name}_0000.nii.gz", vol[a:b] * scale, geo)
        write_image(root / "labelsTr" / f"{name}.nii.gz", mask[a:b].astype(np.uint8), geo)
    return root


class Spy(vae_training.VAETask):
    seen = {}

    def __init__(self, net, train, val, **kw):
        Spy.seen.update(train=train, val=val)
        super().__init__(net, train, val, **kw)


def test_validation_holds_out_whole_subjects(cohort, monkeypatch):
    monkeypatch.setattr(vae_training, "VAETask", Spy)
    model, hist = train_vae_cohort(cohort, steps=2, **TINY)
    held = hist["val_subjects"]
    assert hist["split"] == "subject" and len(held) == 1 and held[0] in SLABS
    assert model.config.training["val_subjects"] == held and model.config.training["subjects"] == sorted(SLABS)
    train, val = Spy.seen["train"], Spy.seen["val"]
    a, b, _ = SLABS[held[0]]
    assert len(val) <= b - a and len(train) + len(val) <= 48  # the held-out slab's slices only
    flat = train.reshape(len(train), -1)
    assert not any((flat == v.ravel()).all(1).any() for v in val)  # none of them is trained on
    assert model.params.thresholds["values"]  # calibrated on the held-out subject


def test_scanner_scales_are_standardised_per_subject(small, monkeypatch):
    vol, mask = small
    geo = Geometry((4.0, 8.0, 8.0))
    monkeypatch.setattr(vae_training, "VAETask", Spy)
    train_vae([ImageData(vol, geo, name="scanner 1"), ImageData(vol * 6.0 + 40.0, geo, name="scanner 2")],
              [mask, mask], steps=1, **TINY)
    train, val = Spy.seen["train"], Spy.seen["val"]
    assert train.shape == val.shape and np.allclose(train, val, atol=1e-5)  # the same anatomy, the same units
    assert 0.99 < train.max() <= 1.0


def test_one_subject_falls_back_to_a_slice_split(small):
    vol, mask = small
    _, hist = train_vae(ImageData(vol, Geometry((4.0, 8.0, 8.0))), mask, steps=1, **TINY)
    assert hist["split"] == "slices" and hist["val_subjects"] == []


def test_mixed_spacings_train_at_the_median(small):
    vol, mask = small
    imgs = [ImageData(vol[:24], Geometry((4.0, 8.0, 8.0)), name="a"),
            ImageData(vol[24:48], Geometry((4.0, 8.0, 8.0)), name="b"),
            ImageData(vol[:24, ::2, ::2], Geometry((4.0, 16.0, 16.0)), name="c")]
    model, _ = train_vae(imgs, [mask[:24], mask[24:48], mask[:24, ::2, ::2]], steps=1, **TINY)
    assert vol.shape[1:] == (30, 25) and model.params.spacing == [8.0, 8.0]
    assert model.params.slice_shape == [30, 26]  # c's 15 x 13 pixels at 16 mm are 30 x 26 at 8 mm


def test_cli_trains_on_a_dataset_folder(cohort, tmp_path, capsys):
    out = tmp_path / "cohort.medgen.pt"
    assert main(["vae-train", str(cohort), "--out", str(out), "--steps", "3", "--latent", "8", "--quiet",
                 "--device", "cpu"]) == 0
    assert "validated on held-out sub-" in capsys.readouterr().out
    for name in ("sub-c", "sub-d"):  # the dimmest and the brightest scanner: both in distribution
        scan, mask = cohort / "imagesTr" / f"{name}_0000.nii.gz", cohort / "labelsTr" / f"{name}.nii.gz"
        assert main(["vae-anomaly", str(scan), "--model", str(out), "--mask", str(mask), "--out",
                     str(tmp_path / f"heat-{name}.nii.gz"), "--method", "residual", "--quiet"]) == 0
        printed = capsys.readouterr().out
        assert "anomalous voxels" in printed and "Out of distribution" not in printed


def test_folder_without_scans_is_one_sentence(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["vae-train", str(tmp_path / "empty"), "--out", str(tmp_path / "m.medgen.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no normal scans" in err
    with pytest.raises(UserError, match="no mask of the same name"):
        (tmp_path / "ds" / "imagesTr").mkdir(parents=True)
        (tmp_path / "ds" / "labelsTr").mkdir()
        write_image(tmp_path / "ds" / "imagesTr" / "x.nii.gz", np.ones((4, 8, 8), np.float32))
        normal_cohort(tmp_path / "ds")
