"""Folders open as what they hold: a study's time series next to its other series, a volume whose slices each have
their own time as a volume, volume files one layer each, colour frames in grey said aloud, and writes refused in
one sentence."""
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen._reader import get_reader, read_layers
from napari_medgen.errors import UserError
from napari_medgen.io import read as read_module
from napari_medgen.io import read_path, write_image
from napari_medgen.io.read import ImageReadWarning
from napari_medgen.io.timeseries import write_time_series

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402


def mr_series(folder: Path, name: str, n_slices: int, times=(None,), trigger=None) -> Path:
    """MR_small slices 5 mm apart, once per time (TemporalPositionIdentifier); ``trigger(t, z)`` -> TriggerTime."""
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    folder.mkdir(parents=True)
    uid, k = generate_uid(), 0
    for t in times:
        for z in range(n_slices):
            ds = src.copy()
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesDescription = uid, generate_uid(), name
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * z], [1, 0, 0, 0, 1, 0]
            ds.InstanceNumber = k + 1
            if t is not None:
                ds.TemporalPositionIdentifier = t
            if trigger is not None:
                ds.TriggerTime = trigger(t, z)
            ds.save_as(folder / f"{k:04d}.dcm")
            k += 1
    return folder


def test_study_folder_gives_its_time_series_and_its_other_series_each_file_read_once(tmp_path, monkeypatch):
    mr_series(tmp_path / "s1", "dynamic", 4, times=(1, 2, 3))
    mr_series(tmp_path / "s2", "T1 anatomy", 6)
    read_3d = []
    real = read_module._read_series
    monkeypatch.setattr(read_module, "_read_series", lambda files, sid: read_3d.append(len(files)) or real(files, sid))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing said
        items = {it.name: it for it in read_path(tmp_path)}
    assert set(items) == {"dynamic", "T1 anatomy"}
    assert items["dynamic"].data.shape == (3, 4, 64, 64) and items["dynamic"].metadata["axis_labels"][0] == "t"
    assert items["T1 anatomy"].data.shape == (6, 64, 64) and items["T1 anatomy"].geometry.spacing[0] == 5.0
    assert read_3d == [6]  # the dynamic series' 12 files were not read again as a 3D series


def test_slices_each_at_their_own_time_are_a_volume_and_repeated_positions_a_time_series(tmp_path):
    mr_series(tmp_path / "gated", "gated", 6, trigger=lambda t, z: 100.0 * z)  # each slice its own trigger delay
    (item,) = read_path(tmp_path / "gated")
    assert item.data.shape == (6, 64, 64) and "time_step" not in item.metadata
    assert item.geometry.spacing[0] == pytest.approx(5.0)
    # two phases of three slices, each slice triggered a little later than the one before: phases are times
    folder, uid = tmp_path / "cine", generate_uid()
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    folder.mkdir()
    for phase in range(2):
        for z in range(3):
            ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
            ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * z], [1, 0, 0, 0, 1, 0]
            ds.TriggerTime = 400.0 * phase + 10.0 * z
            ds.PixelData = (base + 100 * phase + z).astype(base.dtype).tobytes()
            ds.save_as(folder / f"{phase}{z}.dcm")
    (item,) = read_path(folder)
    assert item.data.shape == (2, 3, 64, 64) and item.metadata["time_step"] == pytest.approx(0.4)
    assert [int(item.data[t, z, 0, 0]) - int(base[0, 0]) for t in (0, 1) for z in (0, 2)] == [0, 2, 100, 102]


def test_folder_of_volumes_opens_one_layer_per_file(tmp_path, brain, tissue):
    case = tmp_path / "case01"
    case.mkdir()
    write_image(case / "case01.nii.gz", brain.data, brain.geometry)
    write_image(case / "case01_seg.nii.gz", tissue.data, tissue.geometry)
    items = read_path(case)
    assert [(it.name, it.kind, it.data.shape) for it in items] == [("case01", "image", brain.data.shape),
                                                                    ("case01_seg", "labels", tissue.data.shape)]
    assert not any("time_step" in it.metadata for it in items)
    assert get_reader(str(case)) is not None
    assert [kind for _data, _kw, kind in read_layers(str(case))] == ["image", "labels"]
    dataset = tmp_path / "imagesTr"  # cases of different sizes: one layer each, no "frames must match"
    dataset.mkdir()
    for k, size in enumerate((20, 24)):
        write_image(dataset / f"case_{k:03d}.nii.gz", brain.data[:size], brain.geometry)
    assert [it.data.shape[0] for it in read_path(dataset)] == [20, 24]


def test_follow_ups_of_one_size_are_still_one_time_series(tmp_path, brain):
    """The README's "folder of 3D frames" (follow-ups, a 4D CT one file per time point) stays a time series."""
    for k in (1, 2, 10):
        write_image(tmp_path / f"visit_{k}.nii.gz", brain.data + k, brain.geometry)
    (item,) = read_path(tmp_path)
    assert item.data.shape == (3, *brain.data.shape) and item.metadata["axis_labels"] == ("t", "z", "y", "x")
    assert [int(item.data[t].min() - brain.data.min()) for t in range(3)] == [1, 2, 10]  # natural order


def test_a_case_folder_of_contrasts_or_with_a_mask_picture_is_not_a_time_series(tmp_path, brain):
    case = tmp_path / "BraTS_001"
    case.mkdir()
    for name in ("t1", "t2"):  # named alike but for a contrast's number: two layers, not two time points
        write_image(case / f"BraTS_001_{name}.nii.gz", brain.data, brain.geometry)
    assert [it.name for it in read_path(case)] == ["BraTS_001_t1", "BraTS_001_t2"]
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("frame_1", "frame_2", "frame_1_mask"):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 9), 3, np.uint8)), str(frames / f"{name}.png"))
    items = read_path(frames)
    assert [(it.name, it.data.shape) for it in items] == [("frames", (2, 8, 9)), ("frame_1_mask", (8, 9))]


def test_a_repeated_slice_with_its_own_trigger_time_is_still_a_volume(tmp_path):
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    uid = generate_uid()
    for k, z in enumerate([0, 1, 2, 3, 4, 2]):  # slice 2 acquired twice, every slice at its own time
        ds = src.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * z], [1, 0, 0, 0, 1, 0]
        ds.TriggerTime = 10 * k
        ds.save_as(tmp_path / f"{k:03d}.dcm")
    with pytest.warns(ImageReadWarning, match="duplicated slice"):
        (item,) = read_path(tmp_path)  # was "the slice positions have different numbers of time points"
    assert item.data.shape == (5, 64, 64) and "time_step" not in item.metadata


def test_colour_frames_are_read_as_grey_with_a_warning(tmp_path):
    for k in range(3):
        rgb = np.zeros((16, 20, 3), np.uint8)
        rgb[..., 2] = 200  # pure blue
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / f"frame_{k}.png"))
    with pytest.warns(ImageReadWarning, match="grey levels"):
        (item,) = read_path(tmp_path)
    assert item.data.shape == (3, 16, 20) and item.metadata["axis_labels"] == ("t", "y", "x") and not item.rgb
    assert int(item.data.max()) == round(0.114 * 200)  # the blue's luminance, not an all-black red channel


def test_colour_cine_reads_the_same_as_a_file_and_in_its_folder(tmp_path):
    src = get_testdata_file("examples_ybr_color.dcm")
    shutil.copy(src, tmp_path)
    with pytest.warns(ImageReadWarning, match="grey levels"):
        (alone,) = read_path(src)
    with pytest.warns(ImageReadWarning, match="grey levels"):
        (in_folder,) = read_path(tmp_path)
    for item in (alone, in_folder):
        assert item.data.shape == (30, 240, 320) and item.metadata["axis_labels"] == ("t", "y", "x")
        assert item.metadata["time_step"] == pytest.approx(0.0333, abs=1e-3)
    np.testing.assert_array_equal(alone.data, in_folder.data)


def test_time_series_write_refusals_are_one_sentence(tmp_path):
    frames = np.zeros((3, 4, 5), np.float32)
    (tmp_path / "afile").write_text("")
    (tmp_path / "taken.nii.gz").mkdir()
    for target, overwrite, match in ((tmp_path / "afile" / "cine.nii.gz", False, "is a file, not a folder"),
                                     (tmp_path / "taken.nii.gz", True, "it is a folder")):
        with pytest.raises(UserError, match=match) as err:
            write_time_series(target, frames, overwrite=overwrite)
        assert "\n" not in str(err.value)
    assert (tmp_path / "taken.nii.gz").is_dir()
