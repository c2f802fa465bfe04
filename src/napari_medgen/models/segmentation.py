"""Segmentation models: the config of a fresh MONAI U-Net, built-in models, and loading any model file.

A segmentation model's config has ``task=Task.SEGMENTATION`` and
:class:`~napari_medgen.models.config.SegmentationParams`: ``spatial_dims`` (2: applied slice by
slice along ``axis``; 3: sliding window of ``patch_size``), ``in_channels``, ``classes``
(``[{"name", "color"}]``, index = label value), ``spacing`` (the training spacing in napari
order; in-plane (y, x) for 2D models, or None); ``normalization`` is a spec of
:mod:`napari_medgen.data.normalize`.

:func:`load_segmentation_model` accepts a Model, a built-in name, a ``.medgen.pt`` file, a
local MONAI bundle folder (``configs/`` + ``models/model.pt``) or a TorchScript file. Only the
last is code: it is never loaded (let alone run) without ``allow_code=True``, and it must carry
an embedded ``config.json``, because napari-medgen never runs a model to find out what it is.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (SUFFIX, Model, ModelFileError, NotAModelFileError, build_network, is_torchscript, load_plain,
                         not_a_model)
from .config import ModelConfig, NetSpec, SegmentationParams, Task
from .palette import PALETTE
from ..errors import UserError

BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN = {"brain-tissue-2d": BUILTIN_DIR / f"brain-tissue-2d{SUFFIX}"}



def default_classes(names: "list[str] | int") -> list[dict]:
    """``[{"name", "color"}]`` for class names (or a count), background first."""
    if isinstance(names, int):
        names = ["background"] + [f"class {i}" for i in range(1, names)]
    return [{"name": str(n), "color": list(PALETTE[i % len(PALETTE)])} for i, n in enumerate(names)]


def segmentation_config(name: str = "segmenter", classes: "list[str] | list[dict] | int" = 2, *,
                        spatial_dims: int = 2, in_channels: int = 1,
                        channels: tuple = (16, 32, 64, 128), strides: tuple = (2, 2, 2),
                        num_res_units: int = 2, dropout: float = 0.0,
                        normalization: dict | None = None, spacing=None, axis: int = 0,
                        patch_size=None, orientation=None, description: str = "") -> ModelConfig:
    """The config of a fresh MONAI ``UNet`` segmenter (``Model(config)`` builds it)."""
    if spatial_dims not in (2, 3):
        raise UserError("spatial_dims must be 2 or 3.")
    if not (isinstance(classes, list) and classes and isinstance(classes[0], dict)):
        classes = default_classes(classes)
    if len(classes) < 2:
        raise UserError("A segmenter needs at least two classes (background and one more).")
    args = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": len(classes),
            "channels": list(channels), "strides": list(strides), "num_res_units": num_res_units,
            "dropout": dropout}
    params = SegmentationParams(classes=classes, spatial_dims=spatial_dims, in_channels=in_channels,
                                spacing=None if spacing is None else [float(s) for s in spacing],
                                axis=int(axis) if spatial_dims == 2 else 0,
                                patch_size=list(patch_size or (96, 96, 96)) if spatial_dims == 3 else None,
                                orientation=None if orientation is None else np.asarray(orientation, float).tolist())
    return ModelConfig(Task.SEGMENTATION, name, {"net": NetSpec("UNet", args)}, params,
                       normalization=dict(normalization or {"kind": "percentile", "lower": 0.5, "upper": 99.5}),
                       description=description)


def class_names(model: Model) -> list[str]:
    return [c["name"] for c in model.params.classes]


def class_colors(model: Model) -> dict:
    """``{label value: RGBA}`` for a napari Labels layer (``None`` = default colour)."""
    out = {i: tuple(c["color"]) for i, c in enumerate(model.params.classes) if c.get("color")}
    out[None] = (0.5, 0.5, 0.5, 1.0)
    return out


# What each built-in model was trained on; other models may carry a card in ``config.training["card"]``.
BUILTIN_CARDS = {"brain-tissue-2d": {"modality": "MR", "anatomy": "head", "field_of_view_mm": [190.0, 234.0, 198.0]}}


def model_card(model: Model) -> dict:
    """``{"modality", "anatomy", "field_of_view_mm"}`` of the data a model was trained on (keys may be missing).

    A model fine-tuned from a built-in one on other data no longer has the built-in card."""
    card = model.config.training.get("card")
    if card is None and not model.params.finetune:
        card = BUILTIN_CARDS.get(model.name)
    return dict(card or {})


def builtin_models() -> list[str]:
    """Names of the shipped models whose weights are present."""
    return [n for n, p in BUILTIN.items() if p.is_file()]


class CodeNotAllowedError(ModelFileError):
    """A model file that is code (TorchScript) and the user has not allowed running code."""


def load_segmentation_model(model: "Model | str | os.PathLike", *, allow_code: bool = False) -> Model:
    """A segmentation Model from a Model, a built-in name or a model file/folder (see module doc).

    A TorchScript file runs its own code once loaded; it is refused with
    :class:`CodeNotAllowedError` unless ``allow_code`` is True (only for files you trust).
    """
    if isinstance(model, Model):
        if model.task != Task.SEGMENTATION:
            raise ModelFileError(f"'{model.name}' is a {model.task or 'untyped'} model, not a segmentation model.")
        return model
    if not isinstance(model, (str, os.PathLike)):
        not_a_model(model)
    key = str(model)
    if key in BUILTIN:
        if not BUILTIN[key].is_file():
            raise ModelFileError(f"The built-in model '{key}' is not installed (run scripts/train_builtin_segmenter.py).")
        return Model.load(BUILTIN[key], expect=Task.SEGMENTATION)
    p = Path(key).expanduser()
    if not p.exists():
        known = ", ".join(BUILTIN)
        raise ModelFileError(f"'{key}' is neither a built-in model ({known}) nor an existing file or folder.")
    if p.is_dir():
        return _load_bundle(p)
    if is_torchscript(p):
        return _load_torchscript(p, allow_code)
    try:
        return Model.load(p, expect=Task.SEGMENTATION)
    except NotAModelFileError:
        if p.name.endswith(SUFFIX):
            raise
        raise NotAModelFileError(f"{p.name} is not a model file napari-medgen can read (expected {SUFFIX}, "
                                 "a MONAI bundle folder or TorchScript).") from None


# --- MONAI bundles -----------------------------------------------------------------------------
def _read_config(path: Path) -> dict:
    """A bundle's JSON or YAML config as data (``yaml.safe_load``: no python tags, no code)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        cfg = (yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)) or {}
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise ModelFileError(f"{path.parent.parent.name}: {path.name} is not a plain JSON/YAML config "
                             f"({type(err).__name__}).") from None
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path.parent.parent.name}: {path.name} is not a JSON/YAML mapping.")
    return cfg


def _find(folder: Path, stems: tuple) -> Path | None:
    for stem in stems:
        for ext in (".json", ".yaml", ".yml"):
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    return None


def _load_bundle(folder: Path) -> Model:
    """A bundle whose ``network_def`` is a MONAI network with literal arguments; no config code is run."""
    cfg_dir, weights = folder / "configs", folder / "models" / "model.pt"
    inference = _find(cfg_dir, ("inference",))
    if inference is None or not weights.is_file():
        raise ModelFileError(f"{folder.name} is not a MONAI bundle folder (needs configs/inference.json and models/model.pt).")
    cfg = _read_config(inference)
    meta_path = _find(cfg_dir, ("metadata",))
    meta = _read_config(meta_path) if meta_path else {}
    net_def = cfg.get("network_def")
    if not isinstance(net_def, dict) or not isinstance(net_def.get("_target_"), str):
        raise ModelFileError(f"{folder.name}: the bundle's network_def is not a plain network definition.")
    arch = net_def["_target_"].rsplit(".", 1)[-1]
    refs = {k: v for k, v in cfg.items() if not (isinstance(v, str) and v[:1] in "$@")}
    args = {k: refs.get(v[1:], v) if isinstance(v, str) and v.startswith("@") else v
            for k, v in net_def.items() if k != "_target_"}  # "@name" -> a literal top-level value
    if any(isinstance(v, str) and (v.startswith("$") or v.startswith("@")) for v in args.values()):
        raise ModelFileError(f"{folder.name}: the bundle's network arguments are code or references; "
                             "napari-medgen only loads literal arguments.")
    spec = NetSpec(arch, args)
    net = build_network(spec)
    try:
        state = load_plain(weights)  # never unpickles code
    except Exception as err:  # noqa: BLE001 - a pickle with objects, TorchScript, junk
        raise ModelFileError(f"{folder.name}/models/model.pt is not a plain weights file "
                             f"({type(err).__name__}); napari-medgen does not unpickle objects.") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise ModelFileError(f"The weights in {folder.name}/models/model.pt do not fit its {arch} network.") from None
    out_ch = args.get("out_channels", 2)
    fmt = meta.get("network_data_format", {})
    chdef = fmt.get("outputs", {}).get("pred", {}).get("channel_def") or {}
    names = [chdef.get(str(i), "background" if i == 0 else f"class {i}") for i in range(out_ch)]
    dims = int(args.get("spatial_dims", 3))
    # a bundle's arrays are in its loader's (x, y, z) order, so the volume is turned to it (its pixdim and roi_size
    # then apply as written): to its Orientation transform's axes, or to RAS (MONAI's canonical) when it names none
    description = meta.get("description", "MONAI bundle")
    orientation = None
    if dims == 3:
        orientation = _bundle_orientation(cfg)
        if orientation is None:
            orientation = _axes_of("RAS")
            description += " (the bundle names no orientation: volumes are given to it in RAS order)"
    order = (lambda v: v) if orientation is not None else (lambda v: None if v is None else v[::-1])
    config = segmentation_config(folder.name, names, spatial_dims=dims,
                                 in_channels=int(args.get("in_channels", 1)),
                                 normalization=_bundle_normalization(cfg), spacing=order(_bundle_spacing(cfg)),
                                 patch_size=order(_bundle_roi(cfg)) if dims == 3 else None, orientation=orientation,
                                 description=description)
    config.networks["net"] = spec
    return Model(config, {"net": net})


def _walk(obj):
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _bundle_normalization(cfg: dict) -> dict:
    """A CT window from ``ScaleIntensityRange(d)`` in the bundle's preprocessing, else ``auto``."""
    for d in _walk(cfg.get("preprocessing", cfg)):
        if str(d.get("_target_", "")).startswith("ScaleIntensityRange") and \
                all(isinstance(d.get(k), (int, float)) for k in ("a_min", "a_max")):
            return {"kind": "window", "low": float(d["a_min"]), "high": float(d["a_max"])}
        if str(d.get("_target_", "")).startswith("NormalizeIntensity"):
            return {"kind": "zscore"}
    return {"kind": "auto"}


def _bundle_spacing(cfg: dict):
    """The ``pixdim`` of the bundle's Spacing transform, in the bundle's (x, y, z) order."""
    for d in _walk(cfg.get("preprocessing", cfg)):
        if str(d.get("_target_", "")).startswith("Spacing") and isinstance(d.get("pixdim"), list):
            return [float(s) for s in d["pixdim"]]
    return None


AXCODES = {"R": (-1, 0, 0), "L": (1, 0, 0), "A": (0, -1, 0), "P": (0, 1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}  # LPS


def _bundle_orientation(cfg: dict):
    """The direction (napari order) of the array axes an ``Orientation(d)`` transform gives (e.g. ``"RAS"``)."""
    for d in _walk(cfg.get("preprocessing", cfg)):
        if str(d.get("_target_", "")).startswith("Orientation") and _axes_of(d.get("axcodes", "")) is not None:
            return _axes_of(d["axcodes"])
    return None


def _axes_of(codes):
    """The direction (napari order) of array axes named by orientation codes such as ``"RAS"``, else None."""
    codes = str(codes).upper()
    if len(codes) != 3 or not set(codes) <= set(AXCODES):
        return None
    axes = np.array([AXCODES[c][::-1] for c in codes], float).T  # column i: array axis i in (z, y, x)
    return axes.tolist() if abs(np.linalg.det(axes)) == 1 else None


def _bundle_roi(cfg: dict):
    roi = cfg.get("inferer", {}).get("roi_size") if isinstance(cfg.get("inferer"), dict) else None
    return roi if isinstance(roi, list) and all(isinstance(r, int) for r in roi) else None


# --- TorchScript ----------------------------------------------------------------------------------
def torchscript_config(path: "str | os.PathLike") -> ModelConfig:
    """The config embedded in a TorchScript file (``extra/config.json``), read without loading its code."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            name = next((n for n in z.namelist() if n.split("/")[1:] == ["extra", "config.json"]), None)
            raw = z.read(name) if name else b""
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{p.name} cannot be read ({type(err).__name__}).") from None
    if not raw:
        raise ModelFileError(f"{p.name} is a TorchScript file without an embedded config.json; napari-medgen "
                             "needs one (classes, dimensions, normalisation) and never runs a model to guess them.")
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("not a mapping")
        config = ModelConfig.from_dict(d, p.name)
    except ValueError as err:
        raise ModelFileError(str(err) if isinstance(err, UserError) else f"{p.name} has an unreadable config.json.") from None
    if config.task != Task.SEGMENTATION:
        raise ModelFileError(f"{p.name} is not a segmentation model.")
    return config


def _load_torchscript(path: Path, allow_code: bool) -> Model:
    """A TorchScript segmenter with an embedded config, loaded only when the user allows code."""
    config = torchscript_config(path)
    if not allow_code:
        raise CodeNotAllowedError(
            f"{path.name} is a TorchScript file, i.e. code that runs on this computer, so napari-medgen does not "
            "load it unless you allow it (allow_code=True in Python, --allow-torchscript on the command line, "
            "'Allow TorchScript' in the Segment widget); allow only files from people you trust.")
    try:
        with warnings.catch_warnings():  # torch announces TorchScript's deprecation; users still have such files
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # noqa: BLE001 - a damaged archive
        raise ModelFileError(f"{path.name} is a damaged TorchScript file.") from None
    net.eval()
    args = config.networks["net"].args if "net" in config.networks else {}
    config.networks = {"net": NetSpec("TorchScript", args)}  # args kept for padding rules
    return Model(config, {"net": net})
