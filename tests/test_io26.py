"""Reading and writing files: a code reader's findings (MONOCHROME1 windows, DICOM files without extension,
label maps by name, a bad SEG in a study folder, writes that leave nothing behind, RGB layers, series names)."""
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from napari_medgen._reader import get_reader
from napari_medgen._writer import write_single
from napari_medgen.data import datasets
from napari_medgen.data.normalize import apparent_modality, resolve
from napari_medgen.errors import UserError
from napari_medgen.io import read
from napari_medgen.io.display import CT_SOFT_TISSUE, initial_contrast
from napari_medgen.io.geometry import Geometry
from napari_medgen.io.read import ImageData, ImageReadWarning, is_supported, read_image, read_path
from napari_medgen.io.write import write_image


def _shown(item) -> np.ndarray:
    """Brightness on screen (0 black .. 1 white) under the contrast limits napari gets."""
    lo, hi = item.layer_data()[1]["contrast_limits"]
    return np.clip((item.data.astype(float) - lo) / (hi - lo), 0, 1)


def _unsigned_12bit(ds):
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = np.clip(ds.pixel_array.astype(np.int32) + 100, 0, 4095).astype(np.uint16).tobytes()


@pytest.mark.parametrize("source, rescale, make", [
    ("MR_small.dcm", None, None), ("CT_small.dcm", (2.0, -100.0), None), ("MR_small.dcm", None, _unsigned_12bit)])
def test_a_monochrome1_xray_shows_as_the_inverse_of_its_monochrome2_twin(tmp_path, source, rescale, make):
    ds = pydicom.dcmread(get_testdata_file(source))
    ds.Modality, ds.WindowCenter, ds.WindowWidth = "CR", 600, 1000
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if make:
        make(ds)
    shown = {}
    for pi in ("MONOCHROME2", "MONOCHROME1"):  # MONOCHROME1: 0 is white; ITK inverts the pixels, not the window
        ds.PhotometricInterpretation = pi
        ds.save_as(tmp_path / f"{pi}.dcm")
        shown[pi] = _shown(read_image(tmp_path / f"{pi}.dcm"))
    assert 0.05 < shown["MONOCHROME2"].mean() < 0.95  # the window shows the image (it was all black)
    np.testing.assert_allclose(shown["MONOCHROME1"], 1 - shown["MONOCHROME2"], atol=1e-6)


def test_a_dicom_file_without_extension_gets_a_reader(tmp_path):
    for name in ("IM0001", "1.2.840.113619.2.55.3.12"):  # CD / PACS exports, files named by their UID
        shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / name)
        assert is_supported(tmp_path / name) and get_reader(str(tmp_path / name)) is not None
        assert read_path(tmp_path / name)[0].data.shape == (128, 128)
    (tmp_path / "README").write_text("not an image " * 20)
    assert not is_supported(tmp_path / "README") and get_reader(str(tmp_path / "README")) is None


def test_a_scan_opens_as_labels_only_for_a_label_word_and_few_values(brain, tmp_path):
    grey = np.clip(brain.data / brain.data.max() * 255, 0, 255).astype(np.uint8)  # ~200 grey levels
    for name in ("T1_masked", "unlabelled_001", "Kseg_t1", "T1_seg"):  # the last: a word, but a scan's values
        write_image(tmp_path / f"{name}.nii.gz", grey, brain.geometry)
        assert read_image(tmp_path / f"{name}.nii.gz").kind == "image", name
    labels = (grey > 60).astype(np.uint16) + (grey > 120)
    for name in ("t1_seg", "brainmask", "Labels01"):
        write_image(tmp_path / f"{name}.nii.gz", labels, brain.geometry)
        assert read_image(tmp_path / f"{name}.nii.gz").kind == "labels", name


def _series(folder, n=4):
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    uid = generate_uid()
    folder.mkdir(parents=True)
    for z in range(n):
        ds = src.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), z + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 5.0 * z], [1, 0, 0, 0, 1, 0]
        ds.SeriesNumber = 7
        ds.save_as(folder / f"{z:03d}.dcm")
    return folder


def test_an_unreadable_seg_is_skipped_with_a_warning_and_the_series_still_opens(tmp_path):
    from napari_medgen.pacs.seg import labels_to_seg, write_seg

    series = _series(tmp_path / "study" / "series")
    (image,) = read_path(series)
    labels = np.zeros(image.data.shape, np.uint8)
    labels[1:3, 20:40, 20:40] = 1
    headers = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    write_seg(tmp_path / "study" / "seg.dcm", labels_to_seg(labels, image.geometry, headers, None))
    raw = (tmp_path / "study" / "seg.dcm").read_bytes()
    for cut in (0.3, 0.5, 0.67, 0.9, 0.99):  # damaged in transfer; some cuts left pydicom a struct.error
        (tmp_path / "study" / "seg.dcm").write_bytes(raw[: int(len(raw) * cut)])
        with pytest.warns(ImageReadWarning, match="Skipped the DICOM SEG seg.dcm"):
            items = read_path(tmp_path / "study")
        assert [i.kind for i in items] == ["image"] and np.array_equal(items[0].data, image.data)


def test_label_files_by_name_or_by_few_values():
    """An atlas named as labels with 191 regions (FreeSurfer's Destrieux) and an int16 map of 4 tissue values both
    open as labels; an 8-bit scan named *masked* does not."""
    atlas = np.random.default_rng(0).permutation(np.repeat(np.arange(191, dtype=np.int16), 50)).reshape(10, 5, 191)
    assert read._label_like(atlas, "aparc.a2009s+aseg")
    assert read._label_like(np.arange(4, dtype=np.int16).repeat(100).reshape(4, 10, 10), "brain_tissue")
    assert not read._label_like(np.arange(211, dtype=np.uint8).repeat(10).reshape(211, 10), "T1_masked")


def test_an_address_python_cannot_parse_is_one_sentence():
    from napari_medgen.pacs.client import PacsError, PacsServer

    with pytest.raises(PacsError, match="not a valid address"):
        PacsServer("http://[::1").client()


def test_a_series_without_description_is_named_by_modality_and_number(tmp_path):
    (item,) = read_path(_series(tmp_path / "s"))
    assert item.name == "MR series 7"  # was the study date, the same for every series of a visit


@pytest.mark.parametrize("ext, files", [(".mhd", {"out.mhd", "out.zraw"}), (".nhdr", {"out.nhdr", "out.raw.gz"}),
                                        (".nii.gz", {"out.nii.gz"})])
def test_a_write_leaves_only_its_files(tmp_path, ext, files):
    for _ in range(2):  # a second write overwrites both header and data file
        write_image(tmp_path / f"out{ext}", np.arange(120, dtype=np.int16).reshape(4, 5, 6), Geometry((2, 1, 1)),
                    overwrite=True)
    assert set(os.listdir(tmp_path)) == files
    assert np.array_equal(read_image(tmp_path / f"out{ext}").data, np.arange(120).reshape(4, 5, 6))


def test_a_path_with_tilde_is_written_in_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out = write_image("~/seg.nii.gz", np.zeros((2, 3, 4), np.uint8))
    assert out == str(tmp_path / "home" / "seg.nii.gz") and os.path.exists(out)
    assert not (tmp_path / "~").exists()


def test_a_float16_layer_is_saved_as_float32(tmp_path):
    data = np.linspace(0, 1, 24, dtype=np.float16).reshape(2, 3, 4)
    back = read_image(write_image(tmp_path / "half.nii.gz", data)).data
    assert back.dtype == np.float32 and np.array_equal(back, data.astype(np.float32))


@pytest.mark.parametrize("channels", [3, 4])
def test_an_rgb_layer_is_saved_and_reads_back_as_rgb(tmp_path, channels):
    data = np.random.default_rng(0).integers(0, 256, (8, 9, channels), dtype=np.uint8)
    meta = {"scale": (0.5, 0.25), "translate": (3.0, 4.0), "affine": np.eye(3), "rgb": True, "metadata": {}}
    (path,) = write_single(str(tmp_path / "photo.nii.gz"), data, meta)
    back = read_image(path)
    assert back.rgb and np.array_equal(back.data, data)
    assert back.geometry.spacing == (0.5, 0.25) and back.geometry.origin == (3.0, 4.0)
    with pytest.raises(UserError, match="RGB layers are saved with 3 or 4 channels of 8-bit"):
        write_single(str(tmp_path / "float.nii.gz"), data / 255.0, meta)


def test_case_names_come_from_the_one_stem_rule():
    assert datasets.case_stem is read._stem
    assert datasets.case_stem(Path("liver_0001_0000.nii.gz")) == "liver_0001_0000"


def _head_ct() -> np.ndarray:
    ct = np.full((4, 48, 48), -1000, np.int16)
    ct[:, 8:40, 8:40] = 40
    ct[:, 8:40, 8:11] = 1200
    return ct


def test_a_ct_exported_as_other_gets_the_ct_window_on_screen_as_in_models():
    item = ImageData(_head_ct(), Geometry((1.0, 1.0, 1.0)), metadata={"modality": "OT"})
    assert apparent_modality(item.data, "OT") == "CT"
    assert initial_contrast(item) == CT_SOFT_TISSUE and resolve(None, item.data, "OT")["kind"] == "window"
    assert apparent_modality(np.zeros((4, 8, 8)), "MR") == "MR"  # other values: the name says
