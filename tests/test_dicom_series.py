"""DICOM series that ITK alone reads wrong: gantry tilt, enhanced multi-frame in a folder, a localiser mixed in."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from napari_medgen.io import Geometry, read_image, read_path
from napari_medgen.io.read import ImageReadWarning
from orthanc import start_orthanc

N, DZ, PIXEL = 10, 3.0, 1.0  # slices, step along the normal (mm), pixel spacing (mm)
BOX = (slice(40, 52), slice(50, 70))  # rows, columns of a bright box on the first slice
ORIGIN = np.array([-60.0, -70.0, -30.0])  # first slice's ImagePositionPatient (x, y, z)


def write_series(folder, shear_y: float = 0.0, localiser_size: int | None = None) -> list:
    """``N`` axial CT slices (file names in reverse order) of a box fixed in space; each slice's position
    moves ``shear_y`` mm in y per slice, as a gantry-tilted acquisition stores it."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    out = []
    for k in range(N):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        box = np.full((128, 128), 100.0)
        box[BOX] = 1500.0  # shifted against the slice's own shift: the box stays at one world position
        arr = np.rint(ndimage.shift(box, (-k * shear_y / PIXEL, 0), order=1, cval=100.0)).astype(np.int16)
        ds.PixelData, ds.PixelSpacing, ds.RescaleIntercept = arr.tobytes(), [PIXEL, PIXEL], 0
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ORIGIN + [0, k * shear_y, k * DZ]]
        ds.SliceLocation, ds.InstanceNumber = ORIGIN[2] + k * DZ, k + 1
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPInstanceUID = series, study, generate_uid()
        ds.SeriesDescription = "tilt test"
        ds.save_as(folder / f"IM{N - k:03d}.dcm")
        out.append(ds)
    if localiser_size:
        ds = out[0].copy()
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
        ds.Rows = ds.Columns = localiser_size
        ds.PixelData = np.zeros((localiser_size,) * 2, np.int16).tobytes()
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), N + 1
        ds.save_as(folder / "LOCALISER.dcm")
    return out


def box_world_centres(item) -> np.ndarray:
    """World (z, y, x) centre of the bright box on each slice (intensity-weighted: sub-pixel)."""
    centres = []
    rows, cols = np.indices(item.data.shape[1:])
    for k, sl in enumerate(item.data):
        w = np.clip(sl.astype(float) - 100, 0, None)
        assert w.sum() > 0, f"no box on slice {k}"
        centres.append(item.geometry.index_to_world((k, (w * rows).sum() / w.sum(), (w * cols).sum() / w.sum())))
    return np.array(centres)


def test_tilted_series_is_resampled_onto_a_rectangular_grid(tmp_path):
    write_series(tmp_path / "tilt", shear_y=1.0)  # 1 mm in y per 3 mm in z: 18.4 degrees
    with pytest.warns(ImageReadWarning, match=r"18\.4 degree gantry tilt.*rectangular grid"):
        (item,) = read_path(tmp_path / "tilt")
    geo = item.geometry
    np.testing.assert_allclose(geo.spacing, (DZ, PIXEL, PIXEL), atol=1e-4)  # along the normal, not 3.16
    np.testing.assert_allclose(geo.origin, ORIGIN[::-1], atol=1e-3)
    np.testing.assert_allclose(geo.direction, np.eye(3), atol=1e-6)
    centres = box_world_centres(item)
    np.testing.assert_allclose(centres[:, 1:], np.tile(centres[0, 1:], (N, 1)), atol=1e-3)  # same place on each
    np.testing.assert_allclose(np.diff(centres[:, 0]), DZ, atol=1e-4)
    assert item.data.dtype == np.int16 and "gantry tilt" in item.metadata["reader_notes"][0]


def test_fractional_tilt_keeps_the_box_in_place(tmp_path):
    write_series(tmp_path / "tilt", shear_y=0.4)  # sub-pixel steps: resampled by linear interpolation
    with pytest.warns(ImageReadWarning, match="gantry tilt"):
        (item,) = read_path(tmp_path / "tilt")
    centres = box_world_centres(item)
    np.testing.assert_allclose(centres[:, 1:], np.tile(centres[0, 1:], (N, 1)), atol=0.02)  # was 3.6 mm off


def test_sheared_oblique_series_reads_as_the_unsheared_one(tmp_path, dicom_writer):
    arr = (np.arange(8 * 20 * 16) % 97).reshape(8, 20, 16).astype(np.int16) + 10
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((-12.5, 40.0, 7.25))
    img.SetDirection(sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix())
    files = dicom_writer(img, tmp_path / "sheared")  # then each slice k moved k rows along its columns
    col_dir = np.asarray(img.GetDirection()).reshape(3, 3)[:, 1]
    for f in files:
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + k * 0.9 * col_dir]
        moved = np.full_like(arr[k], 10)
        moved[: 20 - k] = arr[k, k:]
        ds.PixelData = moved.tobytes()
        ds.save_as(f)
    with pytest.warns(ImageReadWarning, match="gantry tilt"):
        (item,) = read_path(tmp_path / "sheared")
    assert item.geometry.same_grid(Geometry.from_sitk(img), atol=1e-4)
    np.testing.assert_array_equal(item.data[:, 8:], arr[:, 8:])  # rows a slice covers: as before the shear


def test_straight_series_is_not_touched(tmp_path):
    write_series(tmp_path / "straight")
    (item,) = read_path(tmp_path / "straight")
    assert "reader_notes" not in item.metadata
    np.testing.assert_allclose(item.geometry.spacing, (DZ, PIXEL, PIXEL), atol=1e-4)


def test_tilted_series_is_refused_as_a_seg_source_naming_the_tilt(tmp_path):
    from napari_medgen.pacs.seg import SegError, labels_to_seg

    source = write_series(tmp_path / "tilt", shear_y=1.0)
    with pytest.warns(ImageReadWarning):
        (item,) = read_path(tmp_path / "tilt")
    labels = (item.data > 1000).astype(np.uint8)
    with pytest.raises(SegError, match=r"18\.4 degree gantry tilt"):
        labels_to_seg(labels, item.geometry, source, ["background", "box"])


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc PACS (DICOMweb) for one test."""
    server = start_orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


def write_enhanced(tmp_path):
    """The series of :func:`write_series` converted to one enhanced multi-frame CT file (highdicom), alone in a folder."""
    legacy = pytest.importorskip("highdicom.legacy")
    slices = write_series(tmp_path / "series")
    enhanced = legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "enh").mkdir()
    enhanced.save_as(tmp_path / "enh" / "ct.dcm")
    return tmp_path / "enh" / "ct.dcm"


def test_enhanced_multiframe_folder_reads_as_its_file(tmp_path):
    path = write_enhanced(tmp_path)
    as_file = read_image(path)
    (as_folder,) = read_path(path.parent)
    (series,) = read_path(tmp_path / "series")
    assert as_folder.data.shape == (N, 128, 128) and as_folder.geometry.ndim == 3
    assert as_folder.geometry.same_grid(as_file.geometry)
    np.testing.assert_array_equal(as_folder.data, as_file.data)
    centres = box_world_centres(as_folder)  # the box in the same places as in the slice-per-file series
    np.testing.assert_allclose(centres[np.argsort(centres[:, 0])], box_world_centres(series), atol=1e-3)


def test_enhanced_multiframe_with_unsorted_frames_is_placed_by_their_positions(tmp_path):
    path = write_enhanced(tmp_path)
    ds = pydicom.dcmread(path)
    order = np.random.default_rng(0).permutation(N)
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[order]).tobytes()
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([ds.PerFrameFunctionalGroupsSequence[i] for i in order])
    ds.save_as(path)  # GDCM then stacks the frames as stored and gives up the spacing
    (series,) = read_path(tmp_path / "series")
    shuffled = read_image(path)
    assert shuffled.geometry.same_grid(series.geometry)
    np.testing.assert_array_equal(shuffled.data, series.data)


def test_enhanced_multiframe_pulls_from_a_pacs_as_a_volume(orthanc, tmp_path, monkeypatch):
    from napari_medgen.cli import main
    from napari_medgen.pacs.client import PacsServer, pull_series

    path = write_enhanced(tmp_path)
    orthanc.upload([path])
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    pulled = pull_series(PacsServer(orthanc.url, orthanc.user, orthanc.password), uid)
    as_file = read_image(path)
    assert pulled.geometry.same_grid(as_file.geometry)
    np.testing.assert_array_equal(pulled.data, as_file.data)
    monkeypatch.setenv("MEDGEN_PACS_PASSWORD", orthanc.password)
    out = tmp_path / "pulled.nii.gz"  # was "Cannot write a 3D array with 2D geometry"
    assert main(["pacs", "pull", "-q", "--url", orthanc.url, "--user", orthanc.user, "--series", uid, str(out)]) == 0
    assert read_image(out).geometry.same_grid(as_file.geometry, atol=1e-4)


@pytest.mark.parametrize("size", [128, 64], ids=["same-size", "other-size"])
def test_localiser_in_an_axial_series_is_left_out(tmp_path, size):
    write_series(tmp_path / "plain")
    write_series(tmp_path / "mixed", localiser_size=size)
    (plain,) = read_path(tmp_path / "plain")
    with pytest.warns(ImageReadWarning, match="1 image with another orientation than the other 10"):
        (mixed,) = read_path(tmp_path / "mixed")
    assert mixed.data.shape == plain.data.shape and mixed.geometry.same_grid(plain.geometry)
    np.testing.assert_array_equal(mixed.data, plain.data)
