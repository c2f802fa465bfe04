"""Classifier networks and transfer learning: a dense U-Net body whose per-voxel class evidence is pooled.

The classifier is a MONAI ``UNet`` (the body, ``F`` feature channels at full resolution) and
a per-voxel linear head (MONAI ``FullyConnectedNet`` without hidden layers), so its last map
keeps the input's resolution: a class score is the log-sum-exp pool of that class's evidence
map, and Grad-CAM on the body's output points at the few voxels that drove the decision.

Transfer: the body can start from a network that already knows medical images:

- a segmentation U-Net (the built-in ``brain-tissue-2d``, a ``.medgen.pt`` file, a MONAI bundle
  folder): every layer whose name and shape fit (encoder and all but the output decoder level);
- the encoder of a napari-medgen VAE (``VarAutoEncoder``), trained e.g. on the user's own
  unlabelled scans: its down-sampling units in order onto the U-Net's;
- a state dict of a MONAI ``UNet`` (``.pt``/``.pth``, loaded with ``weights_only``), with the
  architecture read from its shapes;
- a torchvision ResNet state dict (2D, e.g. ImageNet weights the user saved with
  ``torch.save(resnet18(weights=...).state_dict(), path)``): the body is then a MONAI
  ``FlexibleUNet`` with that ResNet as encoder (its first convolution summed over the colour
  channels for one-channel images); its decoder still gives a full-resolution map.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .checkpoint import load_plain
from .config import NetSpec

FEATURES = 16  # channels of the body's output map
DEFAULT_BODY = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}
RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
           ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}  # (blocks per stage, bottleneck)
_DECODER = re.compile(r"(^|\.)(model|submodule)\.2\.")


POOLINGS = {"lse": "a class is present where its evidence is strongest (findings, lesions)",
            "mean": "a class is a property of the whole image (scan type, sequence, body part)"}


def check_pooling(pooling: str) -> None:
    """One sentence for a pooling that is not one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise UserError(f"Pooling must be one of {', '.join(POOLINGS)} (got '{pooling}').")


class EvidenceClassifier(nn.Module):
    """``body`` (dense features) -> per-voxel ``head`` (class evidence) -> pooled class logits.

    ``pooling="lse"``: log-sum-exp with ``sharpness`` (large: max, small: mean), for findings
    that occupy a few voxels; ``"mean"``: the average evidence, for a property of the whole image.
    """

    def __init__(self, body: nn.Module, head: nn.Module, sharpness: float = 5.0, pooling: str = "lse"):
        super().__init__()
        check_pooling(pooling)
        self.body, self.head, self.sharpness, self.pooling = body, head, float(sharpness), pooling

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel class evidence (B, C, *spatial)."""
        f = self.body(x)
        flat = torch.movedim(f, 1, -1)
        e = self.head(flat.reshape(-1, flat.shape[-1])).reshape(*flat.shape[:-1], -1)
        return torch.movedim(e, -1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.evidence(x).flatten(2).float()
        if self.pooling == "mean":
            return e.mean(2)
        r = self.sharpness
        return (torch.logsumexp(r * e, dim=2) - math.log(e.shape[2])) / r


HEATMAP_LAYER = "body"  # Grad-CAM target: the body's full-resolution output


def classifier_specs(n_classes: int, spatial_dims: int, body: dict | None = None) -> dict:
    """``{"net": body, "head": per-voxel linear head}`` as :class:`NetSpec` s; the body is a UNet, or a
    ``FlexibleUNet`` when ``body`` names a ResNet ``backbone``."""
    if body and body.get("backbone"):
        net = NetSpec("FlexibleUNet", {"spatial_dims": spatial_dims, "in_channels": 1, "out_channels": FEATURES,
                                       "backbone": str(body["backbone"]), "pretrained": False})
    else:
        b = {**DEFAULT_BODY, **(body or {})}
        net = NetSpec("UNet", {"spatial_dims": spatial_dims, "in_channels": 1, "out_channels": FEATURES,
                               "channels": list(b["channels"]), "strides": list(b["strides"]),
                               "num_res_units": int(b["num_res_units"])})
    return {"net": net,
            "head": NetSpec("FullyConnectedNet", {"in_channels": FEATURES, "out_channels": n_classes,
                                                  "hidden_channels": []})}


def is_encoder(name: str) -> bool:
    """True for a U-Net parameter on the down-sampling path (not an up-sampling level)."""
    return not _DECODER.search(name)


def size_multiple(args: dict) -> int:
    """Input sizes must be a multiple of this for the body's skip connections to line up."""
    return 32 if args.get("backbone") else int(math.prod(args["strides"]))


# --- pretrained sources --------------------------------------------------------------------------
def pretrained_source(source, spatial_dims: int) -> tuple[dict, dict, str]:
    """``(body args, state dict, description)`` of a pretrained network named by ``source``."""
    from .checkpoint import Model

    if isinstance(source, Model):
        model, name = source, source.name
    else:
        name = str(source)
        model = _load_model(name)
    if model is None:
        return _state_dict_file(Path(name), spatial_dims)
    net = model.net
    spec = model.config.networks["net"]
    args = spec.args
    if spec.arch not in ("UNet", "VarAutoEncoder"):
        raise UserError(f"Only U-Net and VAE networks can be transferred; {model.name} is a {spec.arch}.")
    if int(args.get("spatial_dims", 2)) != spatial_dims:
        raise UserError(f"{Path(name).name} is a {args.get('spatial_dims')}D network; these images need a "
                        f"{spatial_dims}D one.")
    channels = list(args["channels"])
    body = {"channels": channels, "strides": list(args["strides"])[:len(channels) - 1],
            "num_res_units": int(args.get("num_res_units", 0))}
    if spec.arch == "UNet":
        return body, net.state_dict(), f"U-Net of {model.name}"
    return body, _vae_encoder_as_unet(net, body, spatial_dims), f"VAE encoder of {model.name}"


def _load_model(name: str):
    from .checkpoint import SUFFIX, Model, ModelFileError
    from .segmentation import BUILTIN, load_segmentation_model

    p = Path(name)
    if name in BUILTIN or p.is_dir():
        return load_segmentation_model(name)
    if name.endswith(SUFFIX):
        return Model.load(p)
    if not p.is_file():
        raise ModelFileError(f"Pretrained network {name} is neither a built-in model nor a file.")
    return None


def _state_dict_file(path: Path, spatial_dims: int) -> tuple[dict, dict, str]:
    """A MONAI UNet state dict saved with ``torch.save(net.state_dict())``; the architecture from its shapes."""
    try:
        sd = load_plain(path)
    except Exception as err:  # noqa: BLE001 - any unpickling problem is a bad file
        raise UserError(f"{path.name} is not a weights file ({type(err).__name__}).") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        return _torchvision_resnet(sd, path, spatial_dims)
    enc = [k for k in (sd if isinstance(sd, dict) else {}) if k.endswith("conv.unit0.conv.weight")
           and k.startswith("model.") and is_encoder(k)]
    if not enc:
        raise UserError(f"{path.name} is not the state dict of a MONAI U-Net.")
    enc.sort(key=len)
    w = [sd[k] for k in enc]
    if w[0].ndim - 2 != spatial_dims:
        raise UserError(f"{path.name} holds a {w[0].ndim - 2}D network; these images need a {spatial_dims}D one.")
    units = max(int(k.split("conv.unit")[1].split(".")[0]) for k in sd if "conv.unit" in k) + 1
    body = {"channels": [int(t.shape[0]) for t in w], "strides": [2] * (len(w) - 1), "num_res_units": units}
    return body, sd, f"U-Net weights {path.name}"


def _torchvision_resnet(sd: dict, path: Path, spatial_dims: int) -> tuple[dict, dict, str]:
    """A torchvision ResNet state dict as the encoder of a FlexibleUNet body (first conv summed to one channel)."""
    if sd["conv1.weight"].ndim - 2 != spatial_dims:
        raise UserError(f"{path.name} holds 2D ResNet weights; these images need a {spatial_dims}D network.")
    blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    name = RESNETS.get((blocks, "layer1.0.conv3.weight" in sd))
    if name is None:
        raise UserError(f"{path.name} is a ResNet with {list(blocks)} blocks per stage; only ResNet 18, 34, 50, "
                        "101 and 152 can be transferred.")
    state = {"encoder." + k: v for k, v in sd.items() if not k.startswith("fc.")}
    state["encoder.conv1.weight"] = sd["conv1.weight"].sum(1, keepdim=True)
    return {"backbone": name}, state, f"torchvision {name} weights {path.name}"


def _vae_encoder_as_unet(vae: nn.Module, body: dict, spatial_dims: int) -> dict:
    """The VAE's down-sampling units, in order, renamed onto a U-Net's encoder of the same channels."""
    from .checkpoint import build_network

    unet = build_network(classifier_specs(2, spatial_dims, body)["net"])
    target = [k for k in unet.state_dict() if is_encoder(k)]
    source = [(k, v) for k, v in vae.state_dict().items() if k.startswith("encode.")]
    out, i = {}, 0
    for k in target:
        shape = unet.state_dict()[k].shape
        while i < len(source) and source[i][1].shape != shape:
            i += 1
        if i == len(source):
            break
        out[k] = source[i][1]
        i += 1
    return out


def transfer(body: nn.Module, state: dict) -> list[str]:
    """Copy every tensor of ``state`` whose name and shape fit ``body``; returns the parameter names copied."""
    own = body.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not any(k.endswith("weight") and own[k].ndim > 2 for k in fits):
        raise UserError("The pretrained network has no layer that fits the classifier.")
    body.load_state_dict(fits, strict=False)
    params = {n for n, _ in body.named_parameters()}
    return sorted(k for k in fits if k in params)
