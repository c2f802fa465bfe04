"""Time series open with a time axis (4D NIfTI, cine DICOM, temporal DICOM series, folder of frames) and write back."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen._reader import get_reader, read_layers
from napari_medgen._writer import write_single
from napari_medgen.io import read_path
from napari_medgen.io.timeseries import write_time_series


def test_4d_nifti_round_trip_keeps_time_axis_and_step(tmp_path):
    nib_testing = pytest.importorskip("nibabel.testing")
    src = Path(nib_testing.data_path) / "example4d.nii.gz"
    data, kwargs, kind = read_layers(str(src))[0]
    assert kind == "image" and data.shape == (2, 24, 96, 128)
    assert kwargs["axis_labels"] == ("t", "z", "y", "x")
    assert kwargs["metadata"]["time_step"] == pytest.approx(2000.0)
    assert kwargs["scale"][1:] == pytest.approx((2.2, 2.0, 2.0), abs=1e-4)

    napari_layers = pytest.importorskip("napari.layers")
    layer = napari_layers.Image(data, **kwargs)
    out = write_single(str(tmp_path / "copy.nii.gz"), layer.data, layer._get_state())[0]
    data2, kwargs2, _ = read_layers(out)[0]
    np.testing.assert_array_equal(data2, data)
    assert kwargs2["axis_labels"] == ("t", "z", "y", "x")
    assert kwargs2["metadata"]["time_step"] == pytest.approx(2000.0)
    assert kwargs2["scale"] == pytest.approx(kwargs["scale"])


def test_2d_frames_round_trip(tmp_path, brain):
    frames = np.stack([brain.data[40] * (1 + 0.1 * k) for k in range(6)]).astype(np.float32)
    write_time_series(tmp_path / "cine.nii.gz", frames, step=0.04)
    item = read_path(tmp_path / "cine.nii.gz")[0]
    assert item.data.shape == frames.shape and item.metadata["axis_labels"] == ("t", "y", "x")
    assert item.metadata["time_step"] == pytest.approx(0.04)
    np.testing.assert_allclose(item.data, frames)


def test_folder_of_frames_in_natural_order_and_mismatch_is_one_sentence(tmp_path, brain):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in (1, 2, 10):  # frame_10 must come last, not after frame_1
        sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 9), k, np.int16)), str(folder / f"frame_{k}.nii.gz"))
    assert get_reader(str(folder)) is not None
    item = read_path(folder)[0]
    assert item.data.shape == (3, 8, 9) and item.metadata["axis_labels"] == ("t", "y", "x")
    assert list(item.data[:, 0, 0]) == [1, 2, 10]
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5), np.int16)), str(folder / "frame_11.nii.gz"))
    assert [it.data.shape for it in read_path(folder)] == [(8, 9)] * 3 + [(5, 5)]  # files of other sizes: one each
    for k in (1, 2):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 9, 3), k, np.uint8), isVector=True), str(folder / f"f{k}.png"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5, 3), np.uint8), isVector=True), str(folder / "f3.png"))
    items = read_path(folder)  # pictures of different sizes: one image each, as volumes of different sizes
    assert [(it.name, it.data.shape) for it in items][:3] == [("f1", (8, 9, 3)), ("f2", (8, 9, 3)), ("f3", (5, 5, 3))]


def test_cine_dicom_frames_are_times(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm")
    base = ds.pixel_array
    frames = np.stack([base + 10 * k for k in range(4)]).astype(base.dtype)
    ds.NumberOfFrames = 4
    ds.FrameTime = 40  # ms
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "cine.dcm")
    item = read_path(tmp_path / "cine.dcm")[0]
    assert item.data.shape == (4, *base.shape) and item.metadata["axis_labels"] == ("t", "y", "x")
    assert item.metadata["time_step"] == pytest.approx(0.04)
    np.testing.assert_array_equal(item.data[3], frames[3])


def test_dicom_series_with_temporal_positions(tmp_path):
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.77"
    for t in range(3):
        for z in range(4):
            sl = sitk.GetImageFromArray((np.full((1, 6, 7), 100 * t + z)).astype(np.int16))
            for key, val in {"0008|0060": "MR", "0020|000e": uid, "0020|000d": uid + ".0",
                             "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{2.0 * z}",
                             "0020|0100": str(t + 1), "0018|1060": str(1500.0 * t),
                             "0008|0018": f"{uid}.{t}.{z}", "0020|0013": str(t * 4 + z + 1)}.items():
                sl.SetMetaData(key, val)
            writer.SetFileName(str(tmp_path / f"IM{(11 - t * 4 - z):03d}.dcm"))  # names against the order
            writer.Execute(sl)
    item = read_path(tmp_path)[0]
    assert item.data.shape == (3, 4, 6, 7) and item.metadata["axis_labels"] == ("t", "z", "y", "x")
    assert item.metadata["time_step"] == pytest.approx(1.5)
    assert [int(item.data[t, z, 0, 0]) for t in (0, 2) for z in (0, 3)] == [0, 3, 200, 203]
