"""Files for the last array-only functions (interpolate_labels, synthesis_report, add_diffusion), and one rule
for "which modality is this image" shared by normalisation, display, model-fit warnings and classifiers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.data.interpolate import interpolate_labels
from napari_medgen.data.normalize import apparent_modality, resolve
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData, read_image, write_image
from napari_medgen.io.display import CT_SOFT_TISSUE, initial_contrast
from napari_medgen.tasks.classify import training_modality
from napari_medgen.tasks.diffusion_restore import NET
from napari_medgen.tasks.diffusion_training import add_diffusion
from napari_medgen.tasks.model_fit import modality_doubt
from napari_medgen.tasks.synthesis_report import synthesis_report
from napari_medgen.tasks.vae_training import train_vae

TINY = {"channels": (8, 16, 32), "augment": False, "seconds": None, "device": "cpu"}


def test_interpolate_labels_takes_a_labels_file_and_keeps_its_grid(tissue, tmp_path):
    brain = (tissue.data > 0).astype(np.uint8)
    painted = np.zeros_like(brain)
    painted[[30, 50]] = brain[[30, 50]]
    geometry = Geometry((2.0, 1.0, 3.0), (5.0, -4.0, 7.0))  # anisotropic in-plane: the spacing changes the shapes
    path = tmp_path / "painted_labels.nii.gz"
    write_image(path, painted, geometry)
    from_file = interpolate_labels(path)
    assert isinstance(from_file, ImageData) and from_file.kind == "labels"
    assert from_file.geometry.same_grid(read_image(path).geometry)  # written back, it lies where the paint was
    expected = interpolate_labels(painted, spacing=(2.0, 1.0, 3.0))
    np.testing.assert_array_equal(from_file.data, expected)  # the file's own spacing was used
    assert not np.array_equal(expected, interpolate_labels(painted))
    filled, margin = interpolate_labels(ImageData(painted, geometry), return_margin=True)
    np.testing.assert_array_equal(filled.data, expected)
    assert margin.shape == painted.shape
    assert isinstance(interpolate_labels(painted), np.ndarray)  # an array in, an array out (the panels' way)
    np.testing.assert_array_equal(painted[[30, 50]], brain[[30, 50]])  # the input is only read


def test_synthesis_report_takes_files_and_image_data(brain, tmp_path):
    geometry = Geometry((2.0, 3.0, 3.0))
    reference = brain.data[30:40:2, ::3, ::3].astype(np.float32)
    samples = np.stack([s + np.random.default_rng(i).normal(0, 20, s.shape) for i, s in enumerate(reference)]
                       ).astype(np.float32)
    paths = []
    for name, arr in (("samples", samples), ("reference", reference)):
        paths.append(tmp_path / f"{name}.nii.gz")
        write_image(paths[-1], arr, geometry)
    from_arrays = synthesis_report(samples, reference, training=reference)
    from_files = synthesis_report(paths[0], paths[1], training=paths[1])
    from_items = synthesis_report(ImageData(samples, geometry), read_image(paths[1]), training=reference)
    for report in (from_files, from_items):
        for key in ("mmd", "fd_medgen", "ms_ssim_diversity", "swd"):
            np.testing.assert_allclose(report[key], from_arrays[key], rtol=1e-5)
        assert report["memorisation"] == from_arrays["memorisation"]
        assert report["memorisation_baseline"] == from_arrays["memorisation_baseline"]  # the reference is training
    with pytest.raises(UserError, match="needs at least two samples"):  # not an AttributeError on None
        synthesis_report(samples, None)


def test_add_diffusion_takes_a_model_file_and_image_files(brain, tissue, tmp_path):
    geometry = Geometry((2.0, 6.0, 6.0))
    vol, mask = brain.data[:, ::3, ::3].astype(np.float32), (tissue.data[:, ::3, ::3] > 0).astype(np.uint8)
    images, masks = [], []
    for name, part in (("lower", slice(0, 40)), ("upper", slice(56, None))):
        images.append(tmp_path / f"{name}.nii.gz")
        masks.append(tmp_path / f"{name}_mask.nii.gz")
        write_image(images[-1], vol[part], geometry)
        write_image(masks[-1], mask[part], geometry)
    vae, _ = train_vae([read_image(p) for p in images], [read_image(p).data for p in masks], steps=3,
                       latent_size=8, **TINY)
    vae_path = tmp_path / "vae.medgen.pt"
    vae.save(vae_path)
    model, history = add_diffusion(vae_path, images, masks, steps=30, val_every=15, **TINY)
    assert NET in model.networks and history["best_step"] > 0
    twin, _ = add_diffusion(vae, [read_image(p) for p in images], [read_image(p).data for p in masks],
                            steps=30, val_every=15, **TINY)
    for a, b in zip(model.networks[NET].state_dict().values(), twin.networks[NET].state_dict().values()):
        assert torch.equal(a, b)  # the same training as from the objects in memory


def head_ct() -> np.ndarray:
    ct = np.full((4, 48, 48), -1000, np.int16)  # air around a head
    ct[:, 8:40, 8:40] = 40
    ct[:, 8:40, 8:11] = 1200  # bone
    return ct


@pytest.mark.parametrize("named, hounsfield, apparent", [
    ("", True, "CT"), ("", False, ""), ("ct", False, "CT"), ("MR", False, "MR"), ("MR", True, "CT"), ("OT", True, "CT")])
def test_one_rule_says_which_modality_an_image_is(brain, named, hounsfield, apparent):
    data = head_ct() if hounsfield else brain.data[40:44]
    assert apparent_modality(data, named) == apparent
    item = ImageData(data, Geometry((1.0, 1.0, 1.0)), metadata={"modality": named} if named else {})
    assert (initial_contrast(item) == CT_SOFT_TISSUE) == (apparent == "CT")  # display
    assert training_modality([item]) == apparent  # classifiers
    assert (modality_doubt(data[0], "CT", "ct-model", named) == "") == (apparent == "CT")  # model fit
    # normalisation: a CT window also for Hounsfield values under another name (they need it whatever the tag)
    assert (resolve(None, data, named)["kind"] == "window") == (apparent == "CT" or hounsfield)
