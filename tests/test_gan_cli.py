"""``napari-medgen gan-train / gan-synthesize / gan-report`` on the sample brain files."""

from napari_medgen.cli import main
from napari_medgen.io import read_image
from napari_medgen.sample_data import T1_PATH, TISSUE_PATH


def test_gan_verbs(tmp_path, capsys):
    model = str(tmp_path / "gan.medgen.pt")
    assert main(["gan-train", str(T1_PATH), "--out", model, "--steps", "20", "--downsample", "4",
                 "--device", "cpu", "--quiet"]) == 0
    out = str(tmp_path / "samples.nii.gz")
    assert main(["gan-synthesize", "--model", model, "-n", "6", "--seed", "2", "--out", out, "--quiet"]) == 0
    samples = read_image(out)
    assert samples.data.shape == (6, 30, 25) and samples.geometry.spacing[1:] == (8.0, 8.0)
    walk = str(tmp_path / "walk.nii.gz")
    assert main(["gan-synthesize", "--model", model, "-n", "4", "--seed", "2", "--to-seed", "5", "--out", walk,
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["gan-report", out, "--model", model, "--real", str(T1_PATH), "--quiet",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert "FD-medgen" in capsys.readouterr().out
    assert main(["gan-report", out, "--model", model, "--real", str(T1_PATH), "--quiet",  # refused before computing
                 "--json", str(tmp_path / "r.json")]) == 2
    captured = capsys.readouterr()
    assert "already exists" in captured.err and "FD-medgen" not in captured.out
    assert main(["gan-synthesize", "--model", model, "-n", "100000", "--out", str(tmp_path / "x.nii.gz"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "between 1 and 10000" in err
    assert main(["gan-synthesize", "--model", model, "--out", out, "--quiet"]) == 2  # no silent overwrite

    cond = str(tmp_path / "cond.medgen.pt")
    assert main(["gan-train", str(T1_PATH), "--labels", str(TISSUE_PATH), "--out", cond, "--steps", "5",
                 "--downsample", "2", "--device", "cpu", "--quiet"]) == 0
    img = str(tmp_path / "from_labels.nii.gz")
    assert main(["gan-synthesize", "--model", cond, "--labels", str(TISSUE_PATH), "--out", img, "--quiet"]) == 0
    made, tissue = read_image(img), read_image(TISSUE_PATH)
    assert made.data.shape == tissue.data.shape and made.geometry.same_grid(tissue.geometry)
