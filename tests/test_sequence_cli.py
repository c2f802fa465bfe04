"""`napari-medgen sequence-train` / `sequence-predict` on a folder + CSV."""
import csv

import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.io.timeseries import write_time_series


@pytest.fixture
def folder(tmp_path, brain):
    sl = brain.data[45, ::4, ::4].astype(np.float32)
    rows = []
    for i in range(6):
        gains = np.linspace(0.5, 1.5, 4 + i % 3)
        label = "up" if i % 2 == 0 else "down"
        write_time_series(tmp_path / f"s{i}.nii.gz", np.stack([sl * g for g in (gains if i % 2 == 0 else gains[::-1])]),
                          step=2.0)
        rows.append((f"s{i}.nii.gz", label))
    with open(tmp_path / "targets.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "target"), *rows])
    return tmp_path


def test_train_then_predict_writes_model_and_curves(folder, capsys):
    model = folder / "m.medgen.pt"
    assert main(["sequence-train", str(folder), str(folder / "targets.csv"), "--out", str(model),
                 "--steps", "2", "--size", "16", "16", "-q"]) == 0  # the CSV after FOLDER, as classify-train takes it
    assert model.exists()
    curves = folder / "curves.csv"
    assert main(["sequence-predict", str(folder / "s0.nii.gz"), str(folder / "s1.nii.gz"), "--model", str(model),
                 "--curves", str(curves), "-q"]) == 0
    out = capsys.readouterr().out
    assert "s0.nii.gz: " in out and ("up" in out or "down" in out)
    rows = list(csv.reader(open(curves)))
    assert rows[0][:3] == ["file", "frame", "time_s"] and len(rows) == 1 + 4 + 5
    assert float(rows[2][2]) == 2.0  # the second frame of s0, at the stored time step: a number, unit in the header
    # one unreadable file among several is skipped and said; the others are answered and their curves written
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    assert main(["sequence-predict", str(folder / "s0.nii.gz"), str(folder / "broken.nii.gz"), "--model", str(model),
                 "--curves", str(folder / "c2.csv"), "-q"]) == 1
    captured = capsys.readouterr()
    assert "s0.nii.gz: " in captured.out and "skipping" in captured.err and "1 of 2 inputs failed" in captured.err
    assert len(list(csv.reader(open(folder / "c2.csv")))) == 1 + 4


def test_csv_missing_or_given_twice_is_one_line(folder, capsys):
    out = ["--out", str(folder / "m.medgen.pt"), "-q"]
    assert main(["sequence-train", str(folder), *out]) == 2
    assert "Name the CSV" in capsys.readouterr().err
    (folder / "other.csv").write_text("file,target\n")
    assert main(["sequence-train", str(folder), str(folder / "targets.csv"), "--csv", str(folder / "other.csv"),
                 *out]) == 2
    assert "Two CSVs given" in capsys.readouterr().err


def test_bad_csv_is_one_line(folder, capsys):
    (folder / "bad.csv").write_text("name,score\n")
    assert main(["sequence-train", str(folder), "--csv", str(folder / "bad.csv"), "--out",
                 str(folder / "x.medgen.pt"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-medgen: error:") and "\n" not in err


def test_fraction_readout_from_the_command_line(folder, capsys):
    rows = [("file", "target")] + [(f"s{i}.nii.gz", 0.3 + 0.1 * i) for i in range(6)]
    with open(folder / "ef.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    model = folder / "ef.medgen.pt"
    assert main(["sequence-train", str(folder), "--csv", str(folder / "ef.csv"), "--task", "regression",
                 "--readout", "fraction", "--out", str(model), "--steps", "2", "--size", "16", "16", "-q"]) == 0
    assert main(["sequence-predict", str(folder / "s0.nii.gz"), "--model", str(model), "-q"]) == 0
    value = float(capsys.readouterr().out.split(":")[-1].split()[0])
    assert 0.0 <= value <= 1.0  # a fraction by construction, whatever two steps learned
    assert main(["sequence-train", str(folder), "--csv", str(folder / "targets.csv"), "--readout", "fraction",
                 "--out", str(folder / "x.medgen.pt"), "--steps", "2", "-q"]) == 2
    assert "for regression" in capsys.readouterr().err


def test_a_3d_volume_is_read_as_frames_with_a_warning(folder, brain, capsys):
    """A CT or MR volume given by mistake was silently answered as a time series of its slices."""
    from napari_medgen.io import write_image

    model = folder / "m.medgen.pt"
    assert main(["sequence-train", str(folder), "--csv", str(folder / "targets.csv"), "--out", str(model),
                 "--steps", "1", "--size", "16", "16", "-q"]) == 0
    capsys.readouterr()
    write_image(folder / "volume.nii.gz", brain.data[40:46, ::4, ::4], brain.geometry)
    assert main(["sequence-predict", str(folder / "s0.nii.gz"), str(folder / "volume.nii.gz"), "--model", str(model),
                 "-q"]) == 0
    err = capsys.readouterr().err
    assert "volume.nii.gz holds no time axis; its first axis (6 slices 2 mm apart) is read as 6 frames" in err
    assert "s0.nii.gz holds" not in err
