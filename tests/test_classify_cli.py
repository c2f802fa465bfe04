"""``napari-medgen classify-train`` on a folder + CSV and ``napari-medgen classify`` writing a CSV (+ heatmaps)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.io import Geometry, read_image, write_image
from napari_medgen.tasks.classify import load_classifier


@pytest.fixture(scope="module")
def folder(tmp_path_factory, brain, tissue):
    """T1 slices and T2-like slices (inverted inside the head) as NIfTI files, with labels.csv."""
    d = tmp_path_factory.mktemp("scans")
    vol, head = brain.data.astype(np.float32), tissue.data > 0
    geo = Geometry(brain.geometry.spacing[1:], brain.geometry.origin[1:], np.eye(2))
    rows = [("file", "label")]
    for i, z in enumerate(range(25, 70, 4)):
        t2 = i % 2 == 1
        data = np.where(head[z], vol[z].max() - vol[z], 0).astype(np.float32) if t2 else vol[z]
        name = f"s{z}.nii.gz"
        write_image(d / name, data, geo)
        rows.append((name, "T2" if t2 else "T1"))
    with open(d / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return d


def test_train_then_classify_with_heatmaps(folder, tmp_path, capsys):
    model = tmp_path / "clf.medgen.pt"
    # --csv and --out, as sequence-train and every other verb spell them (FOLDER CSV -o M works too, below)
    assert main(["classify-train", str(folder), "--csv", str(folder / "labels.csv"), "--out", str(model),
                 "--steps", "6", "--size", "32", "32", "--spacing", "7", "--pooling", "mean", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert model.exists() and "balanced accuracy" in err and "confusion matrix" in err
    params = load_classifier(model).params
    assert params.pooling == "mean" and params.spacing == [7.0, 7.0]
    out = tmp_path / "probs.csv"
    files = [str(folder / "s25.nii.gz"), str(folder / "s29.nii.gz")]
    assert main(["classify", *files, "-m", str(model), "--out", str(out), "--heatmaps", str(tmp_path / "hm"),
                 "--quiet"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["file", "label", "T1", "T2", "model"] and len(rows) == 3
    assert all(r[4].startswith("clf.medgen.pt (saved ") for r in rows[1:])  # which model made each row
    assert all(r[1] in ("T1", "T2") and abs(float(r[2]) + float(r[3]) - 1) < 1e-4 for r in rows[1:])
    hm, src = read_image(tmp_path / "hm" / "s25_heatmap.nii.gz"), read_image(folder / "s25.nii.gz")
    assert hm.data.shape == src.data.shape and hm.geometry.same_grid(src.geometry)
    # two patients' files of one name: a heatmap each (the second was refused as existing, with no CSV row)
    for patient, src in (("p1", files[0]), ("p2", files[1])):
        (tmp_path / patient).mkdir()
        (tmp_path / patient / "slice.nii.gz").write_bytes(open(src, "rb").read())
    assert main(["classify", str(tmp_path / "p*" / "slice.nii.gz"), "-m", str(model), "-o", str(tmp_path / "p.csv"),
                 "--heatmaps", str(tmp_path / "hm2"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "hm2").iterdir()) == ["p1_slice_heatmap.nii.gz", "p2_slice_heatmap.nii.gz"]
    assert len(list(csv.reader((tmp_path / "p.csv").open()))) == 3
    capsys.readouterr()
    assert main(["classify", *files, "-m", str(model), "-o", str(tmp_path / "p2.csv"), "--heatmaps", files[0]]) == 2
    assert capsys.readouterr().err.strip().endswith("--heatmaps takes a folder; " + files[0] + " is a file.")


def test_bad_csv_and_unknown_file_are_one_line(folder, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nmissing.nii.gz,T1\n")
    assert main(["classify-train", str(folder), str(bad), "-o", str(tmp_path / "m.medgen.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"napari-medgen: error: Row 2 of bad.csv names missing.nii.gz, which is not in {folder}."
    seg = tmp_path / "seg.medgen.pt"
    __import__("napari_medgen").load_segmentation_model("brain-tissue-2d").save(seg)
    assert main(["classify", str(folder / "s25.nii.gz"), "-m", str(seg), "-o", str(tmp_path / "p.csv")]) == 2
    assert "not a classification model" in capsys.readouterr().err


def test_parts_classify_each_file_once_and_a_plain_run_merges_them(folder, tmp_path, capsys):
    model = tmp_path / "clf.medgen.pt"
    assert main(["classify-train", str(folder), str(folder / "labels.csv"), "-o", str(model), "--steps", "2",
                 "--size", "32", "32", "-q"]) == 0
    out = tmp_path / "res" / "probs.csv"
    files = sorted(str(p) for p in folder.glob("*.nii.gz"))
    parts = []
    for part in ("0", "1"):
        assert main(["classify", str(folder), "-m", str(model), "-o", str(out), "--num-parts", "2",
                     "--part-id", part, "-q"]) == 0
        with open(out.with_name(f"probs.part{part}of2.csv")) as fh:
            parts.append(list(csv.DictReader(fh)))
    names = [r["file"] for p in parts for r in p]
    assert sorted(names) == files and len(set(names)) == len(files) and min(map(len, parts)) > 0
    assert not out.exists()
    capsys.readouterr()
    # a plain run classifies nothing again: it merges the parts into OUTPUT
    assert main(["classify", str(folder), "-m", str(model), "-o", str(out), "-q"]) == 0
    assert f"{len(files)} inputs were already classified" in capsys.readouterr().err
    with open(out) as fh:
        merged = list(csv.DictReader(fh))
    assert merged == sorted((r for p in parts for r in p), key=lambda r: r["file"])
    assert not list(out.parent.glob(".*.partial"))
    # an interrupted run left its progress file: the next run keeps those rows and does the rest
    for table in out.parent.glob("probs*.csv"):
        table.unlink()
    progress = out.with_name(".probs.csv.part0of1.rank0.99.partial")
    with open(progress, "w", newline="") as fh:
        csv.writer(fh).writerows([merged[0].keys(), merged[0].values(), ["truncated"]])
    assert main(["classify", *files[:2], "-m", str(model), "-o", str(out), "-q"]) == 0
    assert "1 inputs were already classified" in capsys.readouterr().err
    with open(out) as fh:
        assert list(csv.DictReader(fh)) == merged[:2] and not progress.exists()
    # someone else's CSV is never replaced without --overwrite
    before = (folder / "labels.csv").read_text()
    assert main(["classify", files[0], "-m", str(model), "-o", str(folder / "labels.csv"), "-q"]) == 2
    assert "is not a table of this classifier" in capsys.readouterr().err
    assert (folder / "labels.csv").read_text() == before
    assert main(["classify", files[0], "-m", str(model), "-o", str(out), "--num-parts", "2", "--part-id", "2"]) == 2
    assert "--part-id must be between 0 and 1" in capsys.readouterr().err


def test_a_seeded_run_in_steps_gives_the_same_model(folder, tmp_path):
    """--seed is every trainer's (classify-train had none), and --steps alone repeats exactly."""
    import torch

    def trained(name, seed):
        path = tmp_path / name
        assert main(["classify-train", str(folder), str(folder / "labels.csv"), "-o", str(path), "--steps", "4",
                     "--size", "32", "32", "--spacing", "7", "--seed", str(seed), "-q"]) == 0
        return load_classifier(f"{path}.medgen.pt").net.state_dict()  # the suffix is added

    a, b, c = trained("a", 3), trained("b", 3), trained("c", 4)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
