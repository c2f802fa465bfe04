"""A radiographer's 2D files: one-file DICOM series named after their files, folders named apart, pictures of
different sizes as separate images, ultrasound calibration from its regions, 16-bit colour and palette DICOM as
8-bit colour, a multi-frame ultrasound as frames in time."""
import warnings

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_medgen.io.read import ImageReadWarning, read_image, read_path
from napari_medgen.naming import distinct

CR, US = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.6.1"


def _dicom(path, pixels, modality="CR", photometric="MONOCHROME2", series_uid=None, **tags):
    """A DICOM file of ``pixels`` ((rows, cols), (rows, cols, 3) for colour, (frames, ...) when NumberOfFrames is
    given), series number 1 and no description, as CR/DX/US exports are."""
    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US if modality == "US" else CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.PatientName = modality, 1, 1, "Test"
    colour = photometric == "RGB"
    frame = pixels.shape[1:] if "NumberOfFrames" in tags else pixels.shape
    ds.Rows, ds.Columns = frame[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if colour else 1), photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _region(delta_x, delta_y, units=3):
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = 0, 0, 31, 23
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = units
    r.PhysicalDeltaX, r.PhysicalDeltaY = delta_x, delta_y
    return r


def _grey(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def _quiet_read(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageReadWarning)
        items = read_path(path)
    return items, [str(w.message) for w in caught if issubclass(w.category, ImageReadWarning)]


def test_one_file_dicoms_in_a_folder_are_named_after_their_files(tmp_path):
    _dicom(tmp_path / "xr" / "chest_pa.dcm", _grey((40, 30)))  # both: CR, series 1, no description
    _dicom(tmp_path / "xr" / "hand_left.dcm", _grey((30, 40), 1))
    _dicom(tmp_path / "xr" / "knee.dcm", _grey((30, 40), 2))
    assert [it.name for it in read_path(tmp_path / "xr")] == ["chest_pa", "hand_left", "knee"]  # in their files' order


def test_series_sharing_description_and_number_are_named_apart(tmp_path):
    for k, folder in enumerate(("a", "b")):
        uid = generate_uid()
        for i in range(2):
            _dicom(tmp_path / "study" / folder / f"IM{i}.dcm", _grey((16, 16), i + 2 * k), series_uid=uid,
                   SeriesDescription="AP", ImagePositionPatient=[0, 0, 2.0 * i], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    assert sorted(it.name for it in read_path(tmp_path / "study")) == ["AP (a)", "AP (b)"]  # number 1 both: folders
    uids = [generate_uid() for _ in range(2)]
    for uid, name in zip(uids, ("x1.dcm", "x2.dcm")):  # one folder, one description, one number: the UIDs' ends
        _dicom(tmp_path / "one" / name, _grey((16, 16)), series_uid=uid, SeriesDescription="CR chest")
    assert [it.name for it in read_path(tmp_path / "one")] == [f"CR chest ({u[-8:]})" for u in uids]


def test_distinct_uses_the_first_hint_that_tells_names_apart():
    hints = [["series 1", "a"], ["series 1", "b"], ["", "c"]]
    assert distinct(["AP", "AP", "LAT"], hints) == ["AP (a)", "AP (b)", "LAT"]
    assert distinct(["AP", "AP"], [[""], [""]]) == ["AP (1)", "AP (2)"]


def test_pictures_of_different_sizes_are_separate_images_and_of_one_size_a_series(tmp_path):
    import SimpleITK as sitk

    (tmp_path / "mixed").mkdir()
    for name, size in (("xr_00.png", 30), ("xr_01.png", 40)):  # a training set of exports
        sitk.WriteImage(sitk.GetImageFromArray(np.full((size, size), 7, np.uint8)), str(tmp_path / "mixed" / name))
    items = read_path(tmp_path / "mixed")
    assert [(it.name, it.data.shape) for it in items] == [("xr_00", (30, 30)), ("xr_01", (40, 40))]
    assert all("axis_labels" not in it.metadata for it in items)
    (tmp_path / "same").mkdir()
    for k in range(3):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 20), k, np.uint8)), str(tmp_path / "same" / f"f_{k}.png"))
    (series,) = read_path(tmp_path / "same")
    assert series.data.shape == (3, 20, 20) and series.metadata["axis_labels"] == ("t", "y", "x")


def test_ultrasound_takes_its_pixel_size_from_its_regions(tmp_path):
    doppler = _region(0.01, 0.0, units=4)  # seconds across: not spatial, does not count
    f = _dicom(tmp_path / "us.dcm", np.zeros((24, 32, 3), np.uint8), "US", "RGB",
               SequenceOfUltrasoundRegions=[_region(0.05, 0.04), doppler])
    (item,), notes = _quiet_read(f)
    assert item.rgb and item.geometry.spacing == pytest.approx((0.4, 0.5))  # (y, x) in mm from cm
    assert not any("no pixel spacing" in n for n in notes)
    dual = _dicom(tmp_path / "dual.dcm", np.zeros((24, 32, 3), np.uint8), "US", "RGB",
                  SequenceOfUltrasoundRegions=[_region(0.05, 0.05), _region(0.05, 0.05)])
    assert read_image(dual).geometry.spacing == pytest.approx((0.5, 0.5))


def test_ultrasound_regions_that_disagree_give_no_spacing_and_say_so(tmp_path):
    f = _dicom(tmp_path / "us.dcm", np.zeros((24, 32, 3), np.uint8), "US", "RGB",
               SequenceOfUltrasoundRegions=[_region(0.05, 0.05), _region(0.02, 0.02)])
    (item,), notes = _quiet_read(f)
    assert item.geometry.spacing == (1.0, 1.0) and any("no pixel spacing" in n for n in notes)


def test_16_bit_colour_dicom_opens_as_an_rgb_image_as_8_bit_colour_does(tmp_path):
    rgb8 = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    f = _dicom(tmp_path / "sc16.dcm", rgb8.astype(np.uint16) * 257, "OT", "RGB")
    (item,), notes = _quiet_read(f)
    data, kwargs, kind = item.layer_data()
    assert kind == "image" and kwargs["rgb"] and data.dtype == np.uint8
    np.testing.assert_array_equal(data, rgb8)
    assert not any("colour" in n for n in notes)  # nothing lost: nothing to say
    (odd,), notes = _quiet_read(_dicom(tmp_path / "odd.dcm", rgb8.astype(np.uint16) * 257 + 100, "OT", "RGB"))
    assert odd.rgb and any("16-bit colour is shown as 8-bit colour" in n for n in notes)


def test_16_bit_palette_ultrasound_opens_as_one_colour_image(tmp_path):
    ramp = np.minimum(np.arange(65536), 255).astype(np.uint16)  # 16-bit indices: 65536 entries (descriptor 0)
    tags = {f"{c}PaletteColorLookupTableDescriptor": [0, 0, 16] for c in ("Red", "Green", "Blue")}
    tags.update(RedPaletteColorLookupTableData=(ramp * 257).tobytes(),
                GreenPaletteColorLookupTableData=((255 - ramp) * 257).astype(np.uint16).tobytes(),
                BluePaletteColorLookupTableData=np.zeros(65536, np.uint16).tobytes())
    index = np.tile(np.arange(32, dtype=np.uint16) * 8, (24, 1))
    item = read_image(_dicom(tmp_path / "pal.dcm", index, "US", "PALETTE COLOR", **tags))
    assert item.rgb and item.data.shape == (24, 32, 3) and item.data.dtype == np.uint8
    np.testing.assert_array_equal(item.data[..., 0], index)  # red: the index itself
    np.testing.assert_array_equal(item.data[..., 1], 255 - index)


def test_multi_frame_ultrasound_is_frames_in_time(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 24, 32, 3)).astype(np.uint8)
    f = _dicom(tmp_path / "loop.dcm", frames, "US", "RGB", NumberOfFrames=3,
               SequenceOfUltrasoundRegions=[_region(0.03, 0.03)])
    (item,), notes = _quiet_read(f)
    assert item.data.shape == (3, 24, 32) and item.metadata["axis_labels"] == ("t", "y", "x")
    assert item.metadata["time_unit"] == "frame" and item.geometry.spacing == pytest.approx((0.3, 0.3))
    assert any("grey levels" in n for n in notes)  # colour frames, as a cine file's


def test_picking_this_reader_for_a_png_opens_it_with_the_1_mm_note(make_napari_viewer, tmp_path, monkeypatch):
    import SimpleITK as sitk

    from napari_medgen import _reader

    f = tmp_path / "xr.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(600, dtype=np.uint8).reshape(20, 30)), str(f))
    said = []
    monkeypatch.setattr(_reader, "show_warning", said.append)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(f), plugin="napari-medgen")  # napari's own reader claims it too: the user picked this
    assert type(layer).__name__ == "Image" and layer.data.shape == (20, 30) and layer.name == "xr"
    assert said == ["xr.png gives no pixel spacing, so 1 mm per pixel is assumed; its sizes in mm are not real."]


def test_a_folder_of_pictures_says_once_that_they_give_no_spacing(tmp_path):
    import SimpleITK as sitk

    for k, size in enumerate((10, 12, 14)):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((size, size), np.uint8)), str(tmp_path / f"xr_{k}.png"))
    items, notes = _quiet_read(tmp_path)
    assert len(items) == 3 and notes == ["3 pictures (xr_0.png, ...) give no pixel spacing, so 1 mm per pixel is "
                                         "assumed; their sizes in mm are not real."]
