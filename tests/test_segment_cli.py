"""``napari-medgen segment``: NIfTI and DICOM round trips keep geometry; batch goes on past bad cases."""
import csv

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen import read_image, read_path, segment
from napari_medgen.cli import main
from napari_medgen.sample_data import T1_PATH


@pytest.fixture(scope="module")
def slab(tmp_path_factory):
    """A 24-slice slab of the sample T1 as NIfTI (keeps its real geometry)."""
    img = sitk.ReadImage(str(T1_PATH))[:, :, 36:60]
    path = tmp_path_factory.mktemp("in") / "slab_t1.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def test_nifti_round_trip(slab, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(slab), str(out), "--model", "brain-tissue-2d", "-q"]) == 0
    src, got = read_image(slab), read_image(out)
    assert got.geometry.same_grid(src.geometry) and got.data.shape == src.data.shape
    assert np.array_equal(got.data, segment(src, "brain-tissue-2d"))
    assert str(out) in capsys.readouterr().out
    # refuses to overwrite, one line, exit 2
    assert main(["segment", str(slab), str(out), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_dicom_series_round_trip(slab, tmp_path, dicom_writer):
    dicom_writer(sitk.ReadImage(str(slab)), tmp_path / "dicom")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "dicom"), str(out), "--tta", "-q"]) == 0
    (series,) = read_path(tmp_path / "dicom")
    assert (out / "segment_summary.csv").is_file()  # an OUTPUT folder gets the summary, even for one input
    got = read_image(out / "dicom_seg.nii.gz")
    assert got.geometry.same_grid(series.geometry)
    ref = read_image(slab)
    assert got.geometry.same_grid(ref.geometry)  # DICOM and NIfTI describe the same space
    assert (got.data == segment(ref, "brain-tissue-2d", tta=True)).mean() > 0.99


def test_batch_continues_past_bad_cases(slab, tmp_path, capsys, dicom_writer):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (folder / name).write_bytes(slab.read_bytes())
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    rgb = sitk.GetImageFromArray(np.zeros((20, 20, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(folder / "photo.mha"))
    dicom_writer(sitk.ReadImage(str(slab)), folder / "series")  # a DICOM series folder beside the files
    view = sitk.GetArrayFromImage(sitk.ReadImage(str(slab)))[12]
    sitk.WriteImage(sitk.GetImageFromArray((255 * view / view.max()).astype(np.uint8)), str(folder / "view.png"))
    out = tmp_path / "out"
    assert main(["segment", str(folder), str(out), "-q"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_seg.nii.gz", "b_seg.nii.gz", "segment_summary.csv",
                                                     "series_seg.nii.gz", "view_seg.nii.gz"]
    err = capsys.readouterr().err
    assert "2 of 6 inputs failed" in err and "broken.nii.gz" in err and "RGB" in err
    # a glob picks the same files
    assert main(["segment", str(folder / "[ab].nii.gz"), str(tmp_path / "g"), "-q"]) == 0
    assert len(list((tmp_path / "g").glob("*_seg.nii.gz"))) == 2


def test_unknown_model_is_one_line(slab, tmp_path, capsys):
    assert main(["segment", str(slab), str(tmp_path / "x.nii.gz"), "--model", "nope.medgen.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a built-in model" in err[0]


def test_a_folder_of_two_series_into_one_file_is_refused(slab, tmp_path, capsys, dicom_writer):
    """It used to create a folder named out.nii.gz holding two label files."""
    img = sitk.ReadImage(str(slab))[:, :, :6]
    (tmp_path / "study").mkdir()
    for desc in ("T1 axial", "T1 repeat"):
        for f in dicom_writer(img, tmp_path / desc, description=desc):
            f.rename(tmp_path / "study" / f"{desc[3:]}_{f.name}")
    assert main(["segment", str(tmp_path / "study"), str(tmp_path / "out.nii.gz"), "-q"]) == 2
    assert "study holds 2 series, which give 2 label files; name a folder as OUTPUT" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()


def test_output_of_the_wrong_kind_is_refused(slab, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["segment", str(slab), str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Cannot write the labels to out.png" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_batch_skips_label_files_resumes_and_splits_into_parts(slab, tmp_path, capsys):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz", "a_mask.nii.gz", "b_seg.nii.gz", "Labels01.nii.gz"):
        (folder / name).write_bytes(slab.read_bytes())
    out = tmp_path / "out"
    assert main(["segment", str(folder), str(out), "-q", "--num-parts", "2", "--part-id", "1"]) == 0
    err = capsys.readouterr().err
    assert "skipping 3 label files" in err and "a_mask.nii.gz" in err
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["b_seg.nii.gz"]  # part 1 of 2: the 2nd file
    # scans whose names only contain the letters (Seguin, brain_masked) are scans, not label files
    from napari_medgen.cli.segment import find_cases
    for name in ("Seguin_T1.nii.gz", "T1_brain_masked.nii.gz"):
        (tmp_path / name).write_bytes(b"")
        assert find_cases(str(tmp_path / name.replace("_", "?")))[0] == [tmp_path / name]
    for name in ("t1_labelmap.nii.gz", "brainseg.nii.gz", "brainmask.nii.gz", "sub-01_dseg.nii.gz"):
        (tmp_path / name).write_bytes(b"")
        assert find_cases(str(tmp_path / "*.nii.gz"))[1].count(tmp_path / name) == 1
    first = (out / "b_seg.nii.gz").stat().st_mtime_ns
    # the whole batch again: the finished output is kept, the rest is done, each input once in the summary
    assert main(["segment", str(folder), str(out), "-q"]) == 0
    assert "1 outputs already existed" in capsys.readouterr().err
    assert (out / "b_seg.nii.gz").stat().st_mtime_ns == first
    with open(out / "segment_summary.csv") as fh:
        rows = {r["input"]: r["status"] for r in csv.DictReader(fh)}
    assert rows == {str(folder / "a.nii.gz"): "written", str(folder / "b.nii.gz"): "exists",
                    str(folder / "c.nii.gz"): "written", **{str(folder / n): "skipped" for n in
                                                         ("a_mask.nii.gz", "b_seg.nii.gz", "Labels01.nii.gz")}}
    assert (out / "segment_summary.part1of2.csv").is_file()
    assert main(["segment", str(folder), str(out), "--num-parts", "2", "--part-id", "2"]) == 2
    assert "--part-id must be between 0 and 1" in capsys.readouterr().err


def test_a_folder_holding_one_image_gets_its_summary(slab, tmp_path, capsys):
    """docs/cohorts.md promises OUTPUT folders a segment_summary.csv; one image in a folder wrote none."""
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes(slab.read_bytes())
    assert main(["segment", str(folder), str(tmp_path / "out"), "-q"]) == 0
    with open(tmp_path / "out" / "segment_summary.csv") as fh:
        assert [(r["input"], r["status"]) for r in csv.DictReader(fh)] == [(str(folder / "a.nii.gz"), "written")]
    assert str(tmp_path / "out" / "a_seg.nii.gz") in capsys.readouterr().out


def test_inputs_of_one_name_get_outputs_of_their_own(slab, tmp_path, capsys):
    """Two patients' t1.nii.gz (and sub00.nii beside sub00.nii.gz) wrote one output: the second was reported
    'exists' and never segmented, or with --overwrite silently replaced the first."""
    for folder in ("p1", "p2"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "t1.nii.gz").write_bytes(slab.read_bytes())
    sitk.WriteImage(sitk.ReadImage(str(slab))[:, :, :12], str(tmp_path / "in" / "p2" / "t1.nii"))
    assert main(["segment", str(tmp_path / "in" / "*" / "t1.nii*"), str(tmp_path / "out"), "-q"]) == 0
    with open(tmp_path / "out" / "segment_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["written"] * 3 and len({r["output"] for r in rows}) == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("*_seg.nii.gz")) == [
        "p1_t1_seg.nii.gz", "t1_nii_gz_seg.nii.gz", "t1_nii_seg.nii.gz"]
    assert read_image(tmp_path / "out" / "t1_nii_seg.nii.gz").data.shape[0] == 12  # each from its own input


def test_kept_outputs_of_another_model_are_named_and_said(slab, tmp_path, capsys):
    """A batch re-run with a retrained model kept the first model's outputs and said only 'kept'."""
    from napari_medgen import Model, segmentation_config

    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (folder / name).write_bytes(slab.read_bytes())
    model = tmp_path / "mine.medgen.pt"
    Model(segmentation_config("mine", 4, channels=(4, 8), strides=(2,))).save(model)
    assert main(["segment", str(folder), str(tmp_path / "out"), "-m", str(model), "-q"]) == 0
    with open(tmp_path / "out" / "segment_summary.csv") as fh:
        row = list(csv.DictReader(fh))[0]
    assert row["model"].startswith("mine.medgen.pt (saved ") and row["status"] == "written"
    capsys.readouterr()
    Model(segmentation_config("mine", 4, channels=(4, 8), strides=(2,))).save(model)  # retrained, same name
    (folder / "c.nii.gz").write_bytes(slab.read_bytes())
    assert main(["segment", str(folder), str(tmp_path / "out"), "-m", str(model), "-q"]) == 0
    err = capsys.readouterr().err
    assert "kept outputs were made by another model (mine.medgen.pt (saved " in err and "--overwrite" in err


def test_an_unexpected_error_in_one_case_does_not_end_the_batch(slab, tmp_path, capsys, monkeypatch):
    """Plain ValueErrors are no longer taken for the user's (they hid bugs): one in a case (a numpy or ITK surprise
    on an odd scan) stopped the whole batch with a traceback; it is that case's failure, said with its type."""
    import shutil
    from napari_medgen.cli import segment as verb

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a_t1.nii.gz", "b_t1.nii.gz"):
        shutil.copy(slab, folder / name)
    real = verb._segment_case

    def odd(case, *args):
        if case.name.startswith("a_"):
            raise ValueError("operands could not be broadcast together")
        return real(case, *args)

    monkeypatch.setattr(verb, "_segment_case", odd)
    assert main(["segment", str(folder), str(tmp_path / "out"), "-q"]) != 0
    err = capsys.readouterr().err
    assert "skipping a_t1.nii.gz: unexpected error (ValueError: operands could not" in err
    assert (tmp_path / "out" / "b_t1_seg.nii.gz").is_file()
    rows = list(csv.DictReader(open(tmp_path / "out" / "segment_summary.csv")))
    assert [r["status"] for r in rows if "a_t1" in r["input"]] == ["failed"]
