"""``napari-medgen segment``: NIfTI and DICOM round trips keep geometry; batch goes on past bad cases."""
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
    got = read_image(out / "dicom_seg.nii.gz")
    assert got.geometry.same_grid(series.geometry)
    ref = read_image(slab)
    assert got.geometry.same_grid(ref.geometry)  # DICOM and NIfTI describe the same space
    assert (got.data == segment(ref, "brain-tissue-2d", tta=True)).mean() > 0.99


def test_batch_continues_past_bad_cases(slab, tmp_path, capsys):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (folder / name).write_bytes(slab.read_bytes())
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    rgb = sitk.GetImageFromArray(np.zeros((20, 20, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(folder / "photo.mha"))
    out = tmp_path / "out"
    assert main(["segment", str(folder), str(out), "-q"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_seg.nii.gz", "b_seg.nii.gz"]
    err = capsys.readouterr().err
    assert "2 of 4 inputs failed" in err and "broken.nii.gz" in err and "RGB" in err
    # a glob picks the same files
    assert main(["segment", str(folder / "[ab].nii.gz"), str(tmp_path / "g"), "-q"]) == 0
    assert len(list((tmp_path / "g").iterdir())) == 2


def test_unknown_model_is_one_line(slab, tmp_path, capsys):
    assert main(["segment", str(slab), str(tmp_path / "x.nii.gz"), "--model", "nope.medgen.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a built-in model" in err[0]
