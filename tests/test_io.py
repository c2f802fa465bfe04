"""Reading and writing keeps voxels, dtype and physical geometry (checked in world coordinates)."""
from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen.io import Geometry, ImageData, read_image, read_path, write_image
from napari_medgen.io.read import ImageReadError, ImageReadWarning

CORNERS = [(0, 0, 0), (3, 5, 7), (10, 20, 30)]


def sitk_world(img: sitk.Image, index_zyx) -> np.ndarray:
    """SimpleITK's own physical point of a napari-order index, back in napari order."""
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(i) for i in index_zyx[::-1]]))[::-1]


def oblique_image(flip: bool = True) -> sitk.Image:
    arr = (np.arange(12 * 14 * 16) % 251).reshape(12, 14, 16).astype(np.int16) - 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((-12.5, 40.0, 7.25))
    rot = sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix()
    d = np.asarray(rot).reshape(3, 3)
    if flip:
        d = d @ np.diag([-1, 1, -1])
    img.SetDirection(tuple(d.ravel()))
    return img


def test_sample_nifti_geometry_matches_simpleitk(brain):
    img = sitk.ReadImage(brain.metadata["source"])
    assert brain.data.dtype == np.int16 and brain.data.shape == (95, 117, 99)
    for idx in CORNERS:
        np.testing.assert_allclose(brain.geometry.index_to_world(idx), sitk_world(img, idx), atol=1e-6)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".mhd", ".nii"])
def test_oblique_flipped_roundtrip_is_exact(tmp_path, ext):
    src = tmp_path / f"oblique{ext}"
    sitk.WriteImage(oblique_image(), str(src))
    first = read_image(src)
    out = write_image(tmp_path / f"copy{ext}", first.data, first.geometry)
    second = read_image(out)
    assert second.data.dtype == first.data.dtype == np.int16
    np.testing.assert_array_equal(second.data, first.data)
    assert second.geometry.same_grid(first.geometry, atol=1e-5)
    for idx in CORNERS[:2]:
        np.testing.assert_allclose(second.geometry.index_to_world(idx), sitk_world(oblique_image(), idx), atol=1e-4)


def test_napari_layer_places_voxels_where_simpleitk_does(make_napari_viewer):
    img = oblique_image()
    item = read_image_from(img)
    viewer = make_napari_viewer()
    data, kwargs, _ = item.layer_data()
    layer = viewer.add_image(data, **kwargs)
    for idx in CORNERS[:2]:
        np.testing.assert_allclose(layer.data_to_world(idx), sitk_world(img, idx), atol=1e-4)
    back = Geometry.from_layer(layer)
    assert back.same_grid(item.geometry, atol=1e-6)


def read_image_from(img: sitk.Image):
    from napari_medgen.io.read import _to_image_data

    return _to_image_data(img, "oblique", {})


def test_writer_refuses_to_overwrite(tmp_path, brain):
    target = tmp_path / "t1.nii.gz"
    write_image(target, brain.data, brain.geometry)
    before = target.read_bytes()
    with pytest.raises(FileExistsError):
        write_image(target, np.zeros_like(brain.data), brain.geometry)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob(".*partial*"))


def test_dicom_series_and_nifti_of_same_data_overlay(tmp_path, brain, dicom_writer):
    img = sitk.ReadImage(brain.metadata["source"])
    dicom_writer(img, tmp_path / "dicom", description="T1 sample")
    (series,) = read_path(tmp_path / "dicom")
    assert series.name == "T1 sample" and series.metadata["modality"] == "MR"
    np.testing.assert_array_equal(read_image(tmp_path / "dicom").data, series.data)  # every verb takes the folder
    np.testing.assert_array_equal(series.data, brain.data)  # ordered by position, not by file name
    for idx in CORNERS:
        np.testing.assert_allclose(series.geometry.index_to_world(idx), brain.geometry.index_to_world(idx), atol=1e-3)


def test_dicom_folder_with_several_series_gives_one_layer_each(dicomdir_tests):
    items = read_path(dicomdir_tests / "77654033")
    names = sorted(i.name for i in items)
    assert len(items) == 4 and "Routine Brain" in names and names.count("Cervical LAT") == 1
    ct = next(i for i in items if i.name == "Routine Brain")
    assert ct.metadata["modality"] == "CT" and ct.data.ndim == 3
    xray = next(i for i in items if i.name == "Cervical LAT")
    assert xray.data.ndim == 2 and xray.geometry.ndim == 2
    with pytest.raises(ImageReadError, match="holds 4 series"):  # a verb that takes one image asks for one series
        read_image(dicomdir_tests / "77654033")


def test_oblique_dicom_series_geometry_matches_simpleitk(tmp_path, dicom_writer):
    src = oblique_image()
    dicom_writer(src, tmp_path / "oblique")
    (item,) = read_path(tmp_path / "oblique")
    assert not np.allclose(np.abs(item.geometry.direction), np.eye(3))  # really oblique
    np.testing.assert_array_equal(item.data, sitk.GetArrayFromImage(src))
    for idx in [(0, 0, 0), (item.data.shape[0] - 1, 13, 3)]:
        np.testing.assert_allclose(item.geometry.index_to_world(idx), sitk_world(src, idx), atol=1e-3)


def test_images_of_different_orientations_are_a_2d_stack(dicomdir_tests):
    # rotating angiography projections: one series, seven orientations, not a volume
    with pytest.warns(ImageReadWarning, match="different orientations"):
        items = read_path(dicomdir_tests / "98892003" / "MR700")
    proj = next(i for i in items if i.name.startswith("ANGIO Projected"))
    assert proj.data.shape == (7, 16, 16) and proj.geometry.ndim == 2
    assert len(proj.layer_data()[1]["scale"]) == 3  # the leading axis is a slider


def test_label_files_open_as_labels(tmp_path, tissue, brain):
    assert tissue.kind == "labels" and brain.kind == "image"
    out = write_image(tmp_path / "case_seg.nrrd", tissue.data, tissue.geometry)
    assert read_image(out).kind == "labels"


def test_truncated_file_gives_one_sentence(tmp_path, brain):
    good = tmp_path / "ok.nii.gz"
    write_image(good, brain.data, brain.geometry)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ImageReadError, match="broken.nii.gz") as err:
        read_path(bad)
    assert "\n" not in str(err.value)


def test_empty_and_non_image_dicom_folders_are_refused_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(ImageReadError, match="no readable DICOM image series"):
        read_path(tmp_path / "empty")


def test_4d_and_rgb_images_are_shown(tmp_path):
    vol4 = sitk.JoinSeries([sitk.GetImageFromArray(np.full((4, 5, 6), t, np.float32)) for t in range(3)])
    sitk.WriteImage(vol4, str(tmp_path / "dyn.nii.gz"))
    dyn = read_image(tmp_path / "dyn.nii.gz")
    assert dyn.data.shape == (3, 4, 5, 6) and dyn.geometry.ndim == 3
    assert len(dyn.layer_data()[1]["scale"]) == 4
    rgb = sitk.GetImageFromArray(np.zeros((8, 9, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "photo.mha"))
    item = read_image(tmp_path / "photo.mha")
    assert item.rgb and item.data.shape == (8, 9, 3) and item.layer_data()[1]["rgb"]


def test_gzip_garbage_is_not_a_crash(tmp_path):
    bad = tmp_path / "x.nii.gz"
    bad.write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(ImageReadError):
        read_image(bad)


def test_napari_reader_shows_what_it_changed(tmp_path, dicom_writer, monkeypatch):
    import napari_medgen._reader as reader

    shown = []
    monkeypatch.setattr(reader, "show_warning", shown.append)
    vol = sitk.GetImageFromArray(np.arange(8 * 6 * 5, dtype=np.int16).reshape(8, 6, 5))
    vol.SetSpacing((1.0, 1.0, 3.0))
    files = dicom_writer(vol, tmp_path / "gap", reverse_names=False)
    files[4].unlink()
    (layer,) = reader.read_layers(str(tmp_path / "gap"))
    assert layer[0].shape == (8, 6, 5) and layer[1]["scale"][0] == pytest.approx(3.0)
    assert len(shown) == 1 and "not evenly spaced" in shown[0]


@pytest.mark.parametrize("ext", [".nii", ".mha", ".nrrd", ".mhd"])
@pytest.mark.parametrize("dtype,vector", [(np.complex64, False), (np.float64, False), (np.uint8, True),
                                          (np.float32, True)], ids=["complex", "float64", "rgb", "vector"])
def test_size_check_counts_every_pixel_type_right(tmp_path, ext, dtype, vector):
    from napari_medgen.io.header import voxel_bytes

    arr = np.ones((4, 5, 3) if vector else (3, 4, 5), dtype)
    path = tmp_path / f"img{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=vector), str(path), False)
    announced, present = voxel_bytes(path)
    assert announced == present == arr.nbytes
    read_image(path)  # no false "truncated"


def test_ct_opens_in_a_window_that_shows_soft_tissue(tmp_path, brain):
    """napari's default (the full range, air to bone) shows a CT's soft tissue as one flat grey: a CT without
    a DICOM window opens in a soft-tissue window, a DICOM file with one in its own, an MRI as napari shows it."""
    import pydicom.data

    ct = np.where(brain.data > 0, 40, -1000).astype(np.int16)  # soft tissue in air, Hounsfield units
    ct[:, :3] = 1200  # and some bone
    sitk.WriteImage(sitk.GetImageFromArray(ct), str(tmp_path / "head.nii.gz"))
    assert read_image(tmp_path / "head.nii.gz").layer_data()[1]["contrast_limits"] == (-160.0, 240.0)
    tagged = read_image(pydicom.data.get_testdata_file("MR_small.dcm"))  # Window Center 600, Width 1600
    assert tagged.layer_data()[1]["contrast_limits"] == (-200.0, 1400.0)
    assert "contrast_limits" not in brain.layer_data()[1]


def test_nifti_with_intensity_scaling_opens_and_a_short_one_is_still_refused(tmp_path):
    """Integer voxels with scl_slope/scl_inter (dcm2niix output, nilearn's templates) are read scaled; the size
    check counts the bytes stored on disk, not ITK's float pixels."""
    import nibabel as nib

    raw = (np.arange(20 * 24 * 16) % 300).reshape(16, 24, 20).astype(np.int16)
    img = nib.Nifti1Image(raw.T, np.diag([0.9, 0.9, 2.0, 1.0]))
    img.header.set_slope_inter(1.5, -10.0)
    nib.save(img, tmp_path / "scaled.nii")
    item = read_image(tmp_path / "scaled.nii")
    np.testing.assert_allclose(item.data, raw * 1.5 - 10.0)
    assert item.geometry.spacing == pytest.approx((2.0, 0.9, 0.9))
    data = (tmp_path / "scaled.nii").read_bytes()
    (tmp_path / "short.nii").write_bytes(data[: len(data) - 2000])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "short.nii")


def test_sheared_nifti_opens_on_the_rectangular_grid_of_its_slices(tmp_path, brain):
    """A NIfTI whose slices lean (a gantry-tilted CT converted without correction) was refused as 'corrupt':
    ITK reads no sheared affine.  It opens with the slices shifted back onto a rectangular grid."""
    import hashlib

    nib = pytest.importorskip("nibabel")
    from scipy import ndimage

    write_image(tmp_path / "rect.nii.gz", brain.data, brain.geometry)
    rect = nib.load(tmp_path / "rect.nii.gz")
    affine, vol = rect.affine.copy(), np.asarray(rect.dataobj)
    drift = 0.5  # mm per slice along y: slices sheared by 14 degrees
    sheared = np.stack([ndimage.shift(vol[:, :, k].astype(float), (0, -k * drift / affine[1, 1]), order=1,
                                      mode="nearest") for k in range(vol.shape[2])], axis=2).astype(vol.dtype)
    affine[1, 2] += drift
    img = nib.Nifti1Image(sheared, affine)
    img.set_qform(None, code=0)
    img.set_sform(affine, code=2)
    path = tmp_path / "sheared.nii.gz"
    nib.save(img, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.warns(ImageReadWarning, match="not at right angles .* 14.0 degrees"):
        out = read_image(path)
    assert out.geometry.same_grid(brain.geometry)
    inner = np.s_[:, 20:-20]  # away from the rows shifted in from outside
    assert np.abs(out.data[inner].astype(float) - brain.data[inner]).mean() < 0.05 * np.abs(brain.data).mean()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_volume_layer_names_its_axes(brain):
    """napari labelled the slider of a 3D layer "-3"; a time series already said t, z, y, x."""
    assert brain.layer_data()[1]["axis_labels"] == ("z", "y", "x")
    assert "axis_labels" not in ImageData(brain.data[40], Geometry((2.0, 2.0), (0, 0), np.eye(2))).layer_data()[1]


def test_a_dicom_without_pixel_spacing_says_its_millimetres_are_not_real(tmp_path):
    """A chest CR with PixelSpacing 0\\0 was silently taken as 1 mm per pixel."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelSpacing = [0, 0]
    ds.save_as(tmp_path / "nospacing.dcm")
    with pytest.warns(ImageReadWarning, match=r"no pixel spacing \(PixelSpacing 0(\.0)?/0"):
        read_image(tmp_path / "nospacing.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageReadWarning)
        read_image(get_testdata_file("CT_small.dcm"))  # a real spacing: nothing said


def _sheared_copy(path, data, affine, drift=0.5, qform=False):
    """``data`` (nibabel i, j, k order) written with its k axis leaning by ``drift`` mm per slice along y."""
    nib = pytest.importorskip("nibabel")
    a = affine.copy()
    a[1, 2] += drift
    img = nib.Nifti1Image(data, a)
    img.set_qform(affine if qform else None, code=1 if qform else 0)
    img.set_sform(a, code=2)
    nib.save(img, path)
    return path


def test_sheared_labels_qform_files_2d_4d_and_skewed_planes(tmp_path, tissue):
    """From the review: a sheared label map gained values not in the file (linear shift), a file with a qform as
    well opened silently 41 mm off, a 2D file crashed, a 4D file failed as 'corrupt'."""
    nib = pytest.importorskip("nibabel")
    write_image(tmp_path / "rect.nii.gz", tissue.data, tissue.geometry)
    rect = nib.load(tmp_path / "rect.nii.gz")
    labels = np.asarray(rect.dataobj)
    with pytest.warns(ImageReadWarning, match="not at right angles"):
        out = read_image(_sheared_copy(tmp_path / "lab.nii.gz", labels, rect.affine))
    assert set(np.unique(out.data)) <= set(np.unique(labels))
    with pytest.warns(ImageReadWarning, match="not at right angles"):
        both = read_image(_sheared_copy(tmp_path / "q.nii.gz", labels, rect.affine, qform=True))
    assert np.array_equal(both.data, out.data) and both.geometry.same_grid(out.geometry)
    with pytest.warns(ImageReadWarning, match="off right angles"):
        flat = read_image(_sheared_copy(tmp_path / "flat.nii.gz", labels[:, :, 40], rect.affine))
    assert flat.data.shape == labels[:, :, 40].T.shape
    series = np.stack([labels, labels], axis=-1).astype(np.int16)
    with pytest.warns(ImageReadWarning, match="not at right angles"):
        four = read_image(_sheared_copy(tmp_path / "4d.nii.gz", series, rect.affine))
    assert four.data.shape == (2, *out.data.shape) and np.array_equal(four.data[1], out.data)
    skewed = rect.affine.copy()
    skewed[0, 1] += 0.5  # the j axis leans towards x: in-plane axes not at right angles
    nib.save(nib.Nifti1Image(labels, skewed), tmp_path / "skew.nii.gz")
    with pytest.raises(ImageReadError, match="in-plane axes are .* degrees off a right angle"):
        read_image(tmp_path / "skew.nii.gz")


def test_a_nifti2_file_is_named_as_such(tmp_path, brain):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti2Image(brain.data[:4], np.eye(4)), tmp_path / "two.nii.gz")
    with pytest.raises(ImageReadError, match="is a NIfTI-2 file"):
        read_image(tmp_path / "two.nii.gz")
