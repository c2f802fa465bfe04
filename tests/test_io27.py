"""Reading folders and DICOM: a study folder's SEG leaves its dynamic series a time series, MONOCHROME1 windows of
time series, one header read per volume of a folder, one stem rule, RGB slices written back where they lie."""
import shutil
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from napari_medgen._writer import write_single
from napari_medgen.io import read
from napari_medgen.io.read import read_image, read_path
from napari_medgen.naming import image_stem


def _series(folder, desc, times=(None,), n=3, photometric="MONOCHROME2"):
    """A series of ``n`` MR slices, at each of ``times`` (trigger times in ms) when given: a dynamic series."""
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    uid = generate_uid()
    folder.mkdir(parents=True)
    for t, when in enumerate(times):
        for z in range(n):
            ds = src.copy()
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), t * n + z + 1
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * z], [1, 0, 0, 0, 1, 0]
            ds.SeriesDescription, ds.PhotometricInterpretation = desc, photometric
            ds.WindowCenter, ds.WindowWidth = 600, 1000
            if when is not None:
                ds.TemporalPositionIdentifier, ds.TriggerTime = t + 1, when
                ds.PixelData = (src.pixel_array + 50 * t).astype(src.pixel_array.dtype).tobytes()
            ds.save_as(folder / f"{t}_{z:03d}.dcm")
    return folder


def _summary(items):
    return [(it.name, it.kind, it.data.shape, it.metadata.get("axis_labels")) for it in items]


def test_a_dynamic_series_beside_a_seg_opens_as_a_time_series_as_it_does_without_the_seg(tmp_path):
    from napari_medgen.pacs.seg import labels_to_seg, write_seg

    study = tmp_path / "study"
    t1 = _series(study / "t1", "T1")
    _series(study / "dce", "DCE", times=(0.0, 2000.0, 4000.0, 6000.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        without = read_path(study)
    assert _summary(without) == [("DCE", "image", (4, 3, 64, 64), ("t", "z", "y", "x")),
                                 ("T1", "image", (3, 64, 64), None)]
    (image,) = read_path(t1)
    labels = np.zeros(image.data.shape, np.uint8)
    labels[1, 20:40, 20:40] = 1
    headers = [pydicom.dcmread(f) for f in sorted(t1.iterdir())]
    write_seg(study / "seg.dcm", labels_to_seg(labels, image.geometry, headers))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = read_path(study)
    assert _summary(items[:2]) == _summary(without)
    assert np.array_equal(items[0].data, without[0].data) and items[0].metadata["time_step"] == pytest.approx(2.0)
    assert items[2].kind == "labels" and np.array_equal(items[2].data, labels)
    assert items[2].geometry.same_grid(image.geometry)
    # the SEG alone, and a folder of only the SEG, read as labels as before
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(study / "seg.dcm", only)
    for path in (study / "seg.dcm", only):
        (alone,) = read_path(path)
        assert alone.kind == "labels" and np.array_equal(alone.data, labels)


def _shown(item) -> np.ndarray:
    """Brightness on screen (0 black .. 1 white) under the contrast limits napari gets."""
    lo, hi = item.layer_data()[1]["contrast_limits"]
    return np.clip((item.data.astype(float) - lo) / (hi - lo), 0, 1)


def _cine(path, photometric):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    base = ds.pixel_array
    ds.PixelData = np.stack([base + 10 * k for k in range(4)]).astype(base.dtype).tobytes()
    ds.NumberOfFrames, ds.FrameTime = 4, 40
    ds.Modality, ds.WindowCenter, ds.WindowWidth, ds.PhotometricInterpretation = "XA", 600, 1000, photometric
    ds.save_as(path)
    return path


@pytest.mark.parametrize("kind", ["cine file", "dynamic series"])
def test_a_monochrome1_time_series_shows_as_the_inverse_of_its_monochrome2_twin(tmp_path, kind):
    shown = {}
    for pi in ("MONOCHROME2", "MONOCHROME1"):  # ITK inverts MONOCHROME1 pixels; the window must follow
        path = (_cine(tmp_path / f"{pi}.dcm", pi) if kind == "cine file"
                else _series(tmp_path / pi, "DCE", times=(0.0, 1000.0), photometric=pi))
        (item,) = read_path(path)
        assert item.metadata["axis_labels"][0] == "t"
        shown[pi] = _shown(item)
    assert 0.05 < shown["MONOCHROME2"].mean() < 0.95
    np.testing.assert_allclose(shown["MONOCHROME1"], 1 - shown["MONOCHROME2"], atol=1e-6)


@pytest.fixture
def header_reads(monkeypatch):
    """The files whose header SimpleITK reads (without the voxels)."""
    seen = []
    original = sitk.ImageFileReader.ReadImageInformation

    def counted(self):
        seen.append(self.GetFileName())
        return original(self)

    monkeypatch.setattr(sitk.ImageFileReader, "ReadImageInformation", counted)
    return seen


@pytest.mark.parametrize("names, series", [(["visit_1", "visit_2", "visit_3"], True),
                                           (["t1", "flair", "pd"], False)])
def test_a_folder_reads_each_volume_header_at_most_once(tmp_path, header_reads, names, series):
    rng = np.random.default_rng(0)
    for name in names:
        img = sitk.GetImageFromArray(rng.integers(0, 1000, (4, 5, 6)).astype(np.int16))
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
    items = read_path(tmp_path)
    assert len(items) == (1 if series else len(names))
    assert items[0].data.shape == ((3, 4, 5, 6) if series else (4, 5, 6))
    assert len(header_reads) == len(set(header_reads))  # a contrast's names decide, a visit's header is read once
    assert len(header_reads) <= (len(names) if series else 0)


def test_a_dicom_folder_reads_each_header_once_for_its_seg_objects_time_series_and_series(tmp_path, header_reads,
                                                                                         monkeypatch):
    from napari_medgen.pacs import files

    by_pydicom = []
    original = files._header
    monkeypatch.setattr(files, "_header", lambda path, tags: by_pydicom.append(path) or original(path, tags))
    _series(tmp_path / "t1", "T1")
    _series(tmp_path / "dce", "DCE", times=(0.0, 1000.0))
    items = read_path(tmp_path)
    assert [it.name for it in items] == ["DCE", "T1"]
    # one scan of the 9 files (the SEG search used to read each again); the static series' first file is read
    # again for its description
    assert len(header_reads) + len(by_pydicom) == 9 + 1


def test_file_names_lose_only_an_image_extension(tmp_path):
    for name in ("1.2.840.113619.2.55.3.12", "IM.0001"):  # DICOM files named by their UID or a number
        shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / name)
        assert read_image(tmp_path / name).name == name
    for name in ("liver_0001_0000.nii.gz", "echo.1.nrrd", "frame.PNG", "scan.dcm", "IM0001"):
        assert read._stem(tmp_path / name) == image_stem(name)


def _rgb_slice(path, axis):
    """A colour one-slice volume (its one voxel along ``axis``, napari order) placed at z = 42 mm."""
    shape = [6, 7, 8]
    shape[axis] = 1
    img = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8), isVector=True)
    img.SetOrigin((1.0, 2.0, 42.0))
    img.SetSpacing((0.5, 0.7, 3.0))
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("ext", [".mha", ".nrrd", ".nii.gz"])  # ITK reads a NIfTI colour slice 2D: placed from its header
def test_an_rgb_slice_is_saved_where_it_lies_like_a_grey_one(tmp_path, axis, ext):
    item = read_image(_rgb_slice(tmp_path / f"in{ext}", axis))
    assert item.rgb and item.data.ndim == 3 and item.geometry.plane is not None
    data, kwargs, _ = item.layer_data()
    (out,) = write_single(str(tmp_path / f"out{ext}"), data, kwargs)
    back = read_image(out)
    assert back.rgb and np.array_equal(back.data, item.data) and back.geometry.plane is not None
    volume = back.geometry.plane.volume  # the one-slice volume it was, at z = 42 mm
    assert volume.origin == pytest.approx((42.0, 2.0, 1.0)) and volume.spacing == pytest.approx((3.0, 0.7, 0.5))
    assert volume.same_grid(item.geometry.plane.volume) and back.geometry.plane.axis == axis
