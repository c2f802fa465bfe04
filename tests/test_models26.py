"""Model files from elsewhere: MONAI bundles' axis order, what can be transferred or saved."""
import json
import os

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from napari_medgen import ImageData, ModelFileError, segment
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry
from napari_medgen.models.checkpoint import Model
from napari_medgen.models.config import ModelConfig, NetSpec, SegmentationParams, Task
from napari_medgen.models.encoders import pretrained_source
from napari_medgen.models.segmentation import load_segmentation_model, segmentation_config

ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
        "num_res_units": 0}


def _bundle(folder, transforms):
    os.makedirs(folder / "configs")
    os.makedirs(folder / "models")
    cfg = {"network_def": {"_target_": "UNet", **ARGS},
           "preprocessing": {"_target_": "Compose", "transforms": transforms},
           "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 24, 16]}}
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
    torch.save(UNet(**ARGS).state_dict(), folder / "models" / "model.pt")
    return load_segmentation_model(folder)


class Bright(torch.nn.Module):
    """Records the input's spatial shape and 'segments' voxels above 0.5 (so labels must land where they were)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return torch.cat([0.5 - x, x - 0.5], 1) * 10


def test_bundle_volumes_reach_the_network_in_its_own_axis_order(tmp_path):
    """A bundle with Orientationd(RAS) and pixdim/roi_size in (x, y, z) was fed napari's (z, y, x) arrays with its
    window transposed against its spacing; now the volume is turned to the bundle's order and its labels back."""
    m = _bundle(tmp_path / "ras", [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                                   {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 4.0]}])
    assert m.params.spacing == [1.0, 1.0, 4.0] and list(m.params.patch_size) == [32, 24, 16]
    m.networks["net"] = net = Bright()
    vol = np.zeros((10, 24, 32), np.float32)  # (z, y, x), 4 mm slices, LPS: x runs to the patient's left
    vol[2:5, 3:9, 20:30] = 1.0  # an asymmetric bright block
    labels = segment(ImageData(vol, Geometry((4.0, 1.0, 1.0))), m, device="cpu")
    assert net.shapes and all(s[0] >= 32 and s[2] <= 16 for s in net.shapes)  # x first, z last
    assert labels.shape == vol.shape and np.array_equal(labels == 1, vol > 0.5)  # back where it was


def test_bundle_without_orientation_gets_its_loaders_axis_order(tmp_path):
    """A bundle that names no orientation was fed napari's (z, y, x) arrays, transposed against the (x, y, z)
    arrays MONAI's loader gave it in training; it now gets them in RAS order (MONAI's canonical), and says so."""
    m = _bundle(tmp_path / "plain", [{"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 4.0]}])
    assert m.params.spacing == [1.0, 1.0, 4.0] and list(m.params.patch_size) == [32, 24, 16]
    assert "RAS" in m.config.description
    m.networks["net"] = net = Bright()
    vol = np.zeros((10, 24, 32), np.float32)
    vol[2:5, 3:9, 20:30] = 1.0
    labels = segment(ImageData(vol, Geometry((4.0, 1.0, 1.0))), m, device="cpu")
    assert net.shapes and all(s[0] >= 32 and s[2] <= 16 for s in net.shapes)  # x first, z last
    assert np.array_equal(labels == 1, vol > 0.5)


def test_only_unet_and_vae_encoders_transfer_in_one_sentence():
    seg = Model(ModelConfig(Task.SEGMENTATION, "segresnet-bundle", {"net": NetSpec(
        "SegResNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_filters": 8})},
        SegmentationParams()))
    with pytest.raises(UserError, match="Only U-Net and VAE networks can be transferred; segresnet-bundle is a "
                                        "SegResNet"):  # was KeyError('channels')
        pretrained_source(seg, 2)


def test_a_torchscript_model_is_not_saved_as_a_model_file(tmp_path):
    cfg = segmentation_config("ts", 2, channels=(4, 8), strides=(2,))
    path = tmp_path / "seg.pt"
    torch.jit.save(torch.jit.script(Model(cfg).net), str(path), _extra_files={"config.json": json.dumps(cfg.to_dict())})
    scripted = load_segmentation_model(path, allow_code=True)
    with pytest.raises(ModelFileError, match="TorchScript program"):  # it wrote a file no one could load again
        scripted.save(tmp_path / "copy.medgen.pt")
    assert not (tmp_path / "copy.medgen.pt").exists()
