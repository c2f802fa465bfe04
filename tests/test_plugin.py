"""The npe2 contributions: manifest, reader, writers and sample data, through napari itself."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from napari_medgen._reader import get_reader
from napari_medgen.io import read_image


def test_manifest_validates():
    res = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-medgen"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert res.returncode == 0, res.stdout + res.stderr


def test_reader_declines_unknown_files_so_napari_can_try_others(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM


def test_open_sample_gives_brain_with_labels_in_physical_space(make_napari_viewer, brain):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-medgen", "brain")
    image, labels = layers
    assert image.data.shape == labels.data.shape == (95, 117, 99)
    assert type(labels).__name__ == "Labels" and set(np.unique(labels.data)) == {0, 1, 2, 3}
    np.testing.assert_allclose(image.data_to_world((10, 20, 30)), brain.geometry.index_to_world((10, 20, 30)))
    np.testing.assert_allclose(labels.data_to_world((10, 20, 30)), image.data_to_world((10, 20, 30)))
    assert image.metadata["modality"] == "MR" and "geometry" in image.metadata


def test_open_then_save_through_napari_keeps_voxels_and_geometry(make_napari_viewer, tmp_path, tissue):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(tissue.metadata["source"], plugin="napari-medgen")
    assert type(layer).__name__ == "Labels"
    out = tmp_path / "saved_seg.nrrd"
    layer.save(str(out), plugin="napari-medgen")
    back = read_image(out)
    np.testing.assert_array_equal(back.data, tissue.data)
    assert back.geometry.same_grid(tissue.geometry)
    ref = sitk.ReadImage(tissue.metadata["source"])
    assert sitk.ReadImage(str(out)).GetDirection() == ref.GetDirection()


def test_a_sagittal_first_volume_opens_and_draws(make_napari_viewer, tmp_path, brain):
    """napari could not invert the permuted affine of a volume stored x-first: 'Singular matrix', then an abort."""
    path = tmp_path / "sagittal_first.nii.gz"
    sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(brain.metadata["source"]), [1, 2, 0]), str(path))
    stored = read_image(path)
    assert stored.data.shape != brain.data.shape  # the file really is stored in another axis order
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-medgen")
    viewer.screenshot(canvas_only=True)  # a draw: this is where it failed
    assert layer.data.shape == brain.data.shape
    np.testing.assert_array_equal(np.asarray(layer.data), brain.data)  # same voxels at the same world places
    np.testing.assert_allclose(layer.data_to_world((10, 20, 30)), brain.geometry.index_to_world((10, 20, 30)),
                               atol=1e-4)


def test_dicom_folder_opens_as_one_layer_per_series(make_napari_viewer, dicomdir_tests):
    viewer = make_napari_viewer()
    layers = viewer.open(str(dicomdir_tests / "77654033"), plugin="napari-medgen")
    assert len(layers) == 4
    assert {lay.name for lay in layers} >= {"Routine Brain", "Cervical LAT"}
