"""A one-slice volume (one voxel along any axis, any orientation) reads as 2D data and keeps its place in
space: what is written on its grid (labels, maps) goes back to a one-slice 3D file where the slice was, so it
overlays the source in another viewer."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medgen._widgets._layers import layer_image, show_result
from napari_medgen.io import Geometry, ImageData, read_image, write_image

pydicom_data = pytest.importorskip("pydicom.data")
CT_Z, CT_THICKNESS = -75.699997, 5.0  # CT_small.dcm: ImagePositionPatient z, SliceThickness


@pytest.fixture(scope="module")
def ct():
    return read_image(pydicom_data.get_testdata_file("CT_small.dcm"))


def _mask(item: ImageData) -> np.ndarray:
    return (item.data > np.percentile(item.data, 70)).astype(np.uint8)


def _assert_ct_slice(path):
    """The file at ``path`` is CT_small's one slice: 128 x 128 x 1 at the CT's z, 5 mm thick, in-plane as the CT."""
    img = nib.load(str(path))
    assert img.shape == (128, 128, 1)
    np.testing.assert_allclose(img.header.get_zooms(), (0.661468, 0.661468, CT_THICKNESS), atol=1e-5)
    # LPS (-158.1358, -179.0358, -75.7) is RAS (158.1358, 179.0358, -75.7)
    np.testing.assert_allclose(img.affine[:3, 3], (158.135803, 179.035797, CT_Z), atol=1e-4)


def _slice_file(brain, tmp_path, name, index, affine=None):
    """A one-slice NIfTI cut from the sample brain's file with nibabel (its affine moved to the slice)."""
    src = nib.load(brain.metadata["source"]).slicer[index]
    out = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), src.affine if affine is None else affine @ src.affine), out)
    return out


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0], [0, 0, 0, 1]])
    return rz @ rx


def test_ct_slice_reads_2d_and_labels_on_it_are_written_at_its_z_and_thickness(ct, tmp_path):
    assert ct.data.shape == (128, 128) and ct.geometry.ndim == 2
    labels = ImageData(_mask(ct), ct.geometry, "ct_labels", "labels")
    out = write_image(tmp_path / "ct_labels.nii.gz", labels.data, labels.geometry)
    _assert_ct_slice(out)
    back = read_image(out)
    assert back.data.shape == (128, 128) and back.geometry.same_grid(ct.geometry)
    np.testing.assert_array_equal(back.data, labels.data)
    assert back.geometry.plane.volume.same_grid(ct.geometry.plane.volume)


def test_a_dicom_folder_of_one_slice_reads_as_the_file_does(ct, tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "ct.dcm").write_bytes(open(ct.metadata["source"], "rb").read())
    item = read_image(tmp_path / "series")
    assert item.data.shape == (128, 128) and item.geometry.same_grid(ct.geometry)
    _assert_ct_slice(write_image(tmp_path / "labels.nii.gz", _mask(item), item.geometry))


@pytest.mark.parametrize("index, shape", [((40, slice(None), slice(None)), (95, 117)),  # sagittal: x singleton
                                          ((slice(None), 50, slice(None)), (95, 99)),  # coronal: y singleton
                                          ((slice(None), slice(None), 30), (117, 99))])  # axial: z singleton
@pytest.mark.parametrize("oblique", [False, True])
def test_a_one_slice_nifti_of_any_axis_and_orientation_reads_2d_and_keeps_its_world_place(brain, tmp_path, index,
                                                                                           shape, oblique):
    index = tuple(slice(i, i + 1) if isinstance(i, int) else i for i in index)
    path = _slice_file(brain, tmp_path, "slice.nii.gz", index, _rotation(30, 20) if oblique else None)
    item = read_image(path)
    assert item.data.shape == shape and item.geometry.ndim == 2  # 2D data: a 2D network, no 1-step slider
    np.testing.assert_allclose(item.geometry.spacing, (2.0, 2.0))
    out = write_image(tmp_path / "result.nii.gz", item.data, item.geometry)
    src, back = nib.load(str(path)), nib.load(out)
    assert back.shape == src.shape
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj))


def test_an_axis_aligned_slice_is_shown_at_its_in_plane_place_and_an_oblique_one_at_the_origin(brain, tmp_path):
    sagittal = read_image(_slice_file(brain, tmp_path, "sag.nii.gz", (slice(40, 41),)))
    # napari (z, y) of voxel (0, 0): the file's z and y of its first voxel (LPS y = -RAS y)
    first = nib.load(str(tmp_path / "sag.nii.gz")).affine[:3, 3]
    np.testing.assert_allclose(sagittal.geometry.origin, (first[2], -first[1]), atol=1e-4)
    oblique = read_image(_slice_file(brain, tmp_path, "obl.nii.gz", (slice(40, 41),), _rotation(30, 20)))
    assert oblique.geometry.origin == (0.0, 0.0) and np.allclose(oblique.geometry.direction, np.eye(2))


def test_a_two_slice_volume_stays_3d(brain, tmp_path):
    item = read_image(_slice_file(brain, tmp_path, "two.nii.gz", (slice(40, 42),)))
    assert item.data.shape == (95, 117, 2) and item.geometry.ndim == 3 and item.geometry.plane is None


def test_the_place_survives_layer_metadata_and_is_dropped_for_another_grid(ct):
    geo = Geometry.from_dict(ct.geometry.to_dict())
    assert geo.same_grid(ct.geometry) and geo.plane.volume.same_grid(ct.geometry.plane.volume)
    halved = Geometry(tuple(s * 2 for s in ct.geometry.spacing), ct.geometry.origin, ct.geometry.direction,
                      plane=ct.geometry.plane)
    assert halved.plane is None  # a downsampled result is not on the slice's grid
    data, same = halved.as_volume(np.zeros((64, 64)))
    assert data.shape == (64, 64) and same is halved


def test_labels_saved_through_napari_keep_the_slice_place(make_napari_viewer, ct, tmp_path):
    viewer = make_napari_viewer()
    (image,) = viewer.open(ct.metadata["source"], plugin="napari-medgen")
    assert layer_image(image).geometry.plane is not None
    labels = ImageData(_mask(ct), ct.geometry, "ct_labels", "labels")
    data, kwargs, _ = labels.layer_data()
    layer = viewer.add_labels(data, **kwargs)
    layer.save(str(tmp_path / "from_layer.nii.gz"), plugin="napari-medgen")
    _assert_ct_slice(tmp_path / "from_layer.nii.gz")
    result = show_result(viewer, _mask(ct), ct.geometry, name="seg", kind="labels")  # how a widget shows a result
    assert layer_image(result).geometry.plane is not None
    result.save(str(tmp_path / "result.nii.gz"), plugin="napari-medgen")
    _assert_ct_slice(tmp_path / "result.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "result.nii.gz")).dataobj)[..., 0].T, _mask(ct))
