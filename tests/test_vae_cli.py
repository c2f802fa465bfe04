"""``napari-medgen vae-*`` on real files: train, anomaly maps with geometry kept, sampling, clear errors."""
import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.data.slices import mask_box
from napari_medgen.io import read_image, write_image


@pytest.fixture(scope="module")
def files(tmp_path_factory, brain, tissue):
    d = tmp_path_factory.mktemp("vae")
    t1 = write_image(d / "t1.nii.gz", brain.data, brain.geometry)
    mask = write_image(d / "brain.nii.gz", (tissue.data > 0).astype(np.uint8), tissue.geometry)
    assert main(["vae-train", t1, "--mask", mask, "--out", str(d / "vae.medgen.pt"), "--steps", "15",
                 "--quiet", "--device", "cpu"]) == 0
    return d, t1, mask


def test_anomaly_files_keep_geometry(files, brain, capsys):
    d, t1, mask = files
    rc = main(["vae-anomaly", t1, "--model", str(d / "vae.medgen.pt"), "--mask", mask, "--out",
               str(d / "heat.nii.gz"), "--mask-out", str(d / "anom.nii.gz"), "--method", "residual", "--quiet"])
    assert rc == 0
    assert "most anomalous slices along axis 0" in capsys.readouterr().out
    for name in ("heat.nii.gz", "anom.nii.gz"):
        out = read_image(d / name)
        assert out.data.shape == brain.data.shape
        assert out.geometry.same_grid(brain.geometry)


def test_sample_and_interpolate(files, tissue):
    d, t1, mask = files
    assert main(["vae-sample", "--model", str(d / "vae.medgen.pt"), "-n", "3", "--out", str(d / "s.nii.gz"),
                 "--quiet"]) == 0
    samples = read_image(d / "s.nii.gz")
    brain_box = (tissue.data > 0)[mask_box(tissue.data > 0, 0)].shape[1:]  # what a masked model learned to draw
    assert samples.data.shape == (3, *brain_box) and samples.geometry.spacing[1:] == (2.0, 2.0)
    assert main(["vae-sample", "--model", str(d / "vae.medgen.pt"), "-n", "4", "--between", t1, "30", "60",
                 "--mask", mask, "--out", str(d / "i.nii.gz"), "--quiet"]) == 0
    assert read_image(d / "i.nii.gz").data.shape == (4, *brain_box)


def test_user_errors_are_one_line(files, capsys):
    d, t1, mask = files
    assert main(["vae-anomaly", t1, "--model", str(d / "missing.medgen.pt"), "--out", str(d / "x.nii.gz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["vae-sample", "--model", str(d / "vae.medgen.pt"), "--out", t1]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["vae-sample", "--model", str(d / "missing.medgen.pt"), "-n", "100000000",
                 "--out", str(d / "many.nii.gz")]) == 2  # refused before the model is even read
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "between 1 and 10000 samples" in err


def test_a_fixed_window_is_kept_in_the_model_and_a_reversed_one_refused(files, capsys):
    d, t1, mask = files
    out = d / "windowed.medgen.pt"
    assert main(["vae-train", t1, "--mask", mask, "--out", str(out), "--steps", "2", "--window", "10", "400",
                 "--quiet", "--device", "cpu"]) == 0
    from napari_medgen import Model
    assert Model.load(out).config.normalization == {"kind": "window", "low": 10.0, "high": 400.0}
    assert main(["vae-train", t1, "--out", str(d / "x.medgen.pt"), "--window", "400", "10", "--quiet"]) == 2
    assert "LOW below HIGH" in capsys.readouterr().err


def test_a_mask_on_another_grid_is_refused_and_warnings_said_once(files, capsys, brain):
    from napari_medgen.io import Geometry
    d, t1, mask = files
    geo = brain.geometry
    moved = write_image(d / "moved.nii.gz", read_image(mask).data,
                        Geometry(geo.spacing, tuple(o + 10 for o in geo.origin), geo.direction))
    assert main(["vae-anomaly", t1, "--model", str(d / "vae.medgen.pt"), "--mask", moved, "--out",
                 str(d / "m.nii.gz"), "--quiet", "--device", "cpu"]) == 2
    assert "grid" in capsys.readouterr().err
    head = read_image(mask).data > 0
    hu = np.where(head, 20 + 25 * brain.data / brain.data.max(), -1000).astype("int16")
    hu[:, :3] = 1000  # a little bone
    ct = write_image(d / "ct.nii.gz", hu, geo)
    main(["vae-anomaly", ct, "--model", str(d / "vae.medgen.pt"), "--mask", mask, "--out", str(d / "c.nii.gz"),
          "--quiet", "--device", "cpu"])
    said = capsys.readouterr()
    text = said.out + said.err
    assert text.count("Hounsfield") == 1, text
