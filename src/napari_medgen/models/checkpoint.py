"""Models as MONAI networks plus a typed config, in one safe checkpoint file.

A checkpoint is ``torch.save({"format": "napari-medgen", "version": 2,
"config": <json str>, "networks": {name: state_dict}})`` and is loaded with
``torch.load(weights_only=True)``, so a shared model file cannot run code.
The config is a :class:`~napari_medgen.models.config.ModelConfig`.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import time
import zipfile
from pathlib import Path

import torch
from monai.networks import nets

from ..atomic import replacing
from ..errors import UserError
from .config import CONFIG_VERSION, ModelConfig, NetSpec, Task

FORMAT = "napari-medgen"
SUFFIX = ".medgen.pt"
MAX_PARAMETERS = 500_000_000  # a config asking for more is refused before anything is allocated


def is_torchscript(path: "str | os.PathLike") -> bool:
    """True for a TorchScript archive (a zip with a ``code/`` folder), found without loading it."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/")[1:2] == ["code"] for n in z.namelist())
    except (OSError, zipfile.BadZipFile, IndexError):
        return False


def load_plain(path: "str | os.PathLike"):
    """``torch.load`` of tensors and plain containers only: a file holding objects or code is an error, never run
    (a TorchScript file is refused before torch.load, which would only print a hint to call torch.jit.load)."""
    if is_torchscript(path):
        raise NotAModelFileError(f"{Path(path).name} is a TorchScript file (a program, not a napari-medgen model "
                                 "file).")
    return torch.load(path, map_location="cpu", weights_only=True)


class ModelFileError(UserError):
    """A model file that cannot be used."""


class NotAModelFileError(ModelFileError):
    """A file that is not a napari-medgen checkpoint at all."""


# plain torch layers a config may name besides MONAI networks (the recurrent part of sequence models)
TORCH_LAYERS = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "Linear": torch.nn.Linear}


def build_network(spec: NetSpec) -> torch.nn.Module:
    """Instantiate a MONAI network (or one of :data:`TORCH_LAYERS`) from its :class:`NetSpec`; a network that would
    fetch weights while being built (``pretrained=True``, a URL, a hub name) is refused: nothing reaches the network."""
    cls = (getattr(nets, spec.arch, None) or TORCH_LAYERS.get(spec.arch)) if isinstance(spec.arch, str) else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise ModelFileError(f"Unknown network architecture '{spec.arch}' (not in monai.networks.nets).")
    fetch = _fetching_arguments(cls, spec.args)
    if fetch:
        raise ModelFileError(f"The {spec.arch} network would download weights while being built ({fetch}); "
                             "napari-medgen never reaches the network: give it with that argument off.")
    with torch.device("meta"):  # count parameters without allocating them
        try:
            n = sum(p.numel() for p in cls(**copy.deepcopy(spec.args)).parameters())
        except Exception as err:  # noqa: BLE001 - any bad argument set is a bad config
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelFileError(f"The arguments of the {spec.arch} network are invalid ({why}).") from None
    if n > MAX_PARAMETERS:
        raise ModelFileError(f"The {spec.arch} network would have {n:,} parameters ({4 * n / 1e9:,.0f} GB); "
                             f"refusing to build more than {MAX_PARAMETERS:,}.")
    return cls(**copy.deepcopy(spec.args))  # some nets (SPADENet) edit their args


FETCHING = ("pretrained", "pretrained_url", "weights", "path_or_repo_id")  # constructor arguments that download


def _fetching_arguments(cls, args: dict) -> str:
    """``name=value`` of the constructor arguments (given or default) that would download weights; "" if none."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return ""
    found = {name: args.get(name, params[name].default) for name in FETCHING if name in params}
    return ", ".join(f"{k}={v!r}" for k, v in found.items() if v and v is not inspect.Parameter.empty)


class Model:
    """Networks plus the config that says how to build and use them."""

    def __init__(self, config: ModelConfig, networks: dict | None = None):
        self.config = config
        self.saved: dict = {}  # {"by": version, "at": UTC time, "weights": digest} of the file it was saved to
        self.networks = networks if networks is not None else {
            name: build_network(spec) for name, spec in config.networks.items()}

    @property
    def net(self) -> torch.nn.Module:
        """The main network (named ``net``)."""
        return self.networks["net"]

    @property
    def task(self) -> Task:
        return self.config.task

    @property
    def params(self):
        """The task's own parameters (a dataclass of :mod:`napari_medgen.models.config`)."""
        return self.config.params

    @property
    def name(self) -> str:
        return self.config.name

    def copy(self) -> "Model":
        """An independent copy (weights included), e.g. before fine-tuning."""
        return Model(copy.deepcopy(self.config), {k: copy.deepcopy(v) for k, v in self.networks.items()})

    def save(self, path: "str | os.PathLike") -> str:
        """Write the checkpoint atomically (temporary file, then rename)."""
        if any(spec.arch == "TorchScript" for spec in self.config.networks.values()):
            raise ModelFileError(f"{self.name} is a TorchScript program; a napari-medgen model file holds weights "
                                 "of MONAI networks only, so it cannot be saved as one (keep the TorchScript file).")
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        from .. import __version__

        weights = hashlib.sha256()
        for net in self.networks.values():
            for tensor in net.state_dict().values():
                weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.saved = {"by": f"napari-medgen {__version__}", "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                      "weights": weights.hexdigest()[:12]}
        payload = {"format": FORMAT, "version": CONFIG_VERSION, "config": json.dumps(self.config.to_dict()),
                   "saved": dict(self.saved),
                   "networks": {k: {n: t.detach().cpu() for n, t in v.state_dict().items()}
                                for k, v in self.networks.items()}}
        with replacing(p) as tmp:
            torch.save(payload, tmp)
        return str(p)

    @classmethod
    def load(cls, path: "str | os.PathLike", expect: "Task | str | None" = None) -> "Model":
        """Load a napari-medgen checkpoint; ``expect`` checks it is the right kind of model."""
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"Model file {p} does not exist.")
        try:
            payload = load_plain(p)
        except NotAModelFileError:
            raise
        except Exception as err:  # noqa: BLE001 - any unpickling problem is a bad file
            raise NotAModelFileError(f"{p.name} is not a napari-medgen model file ({type(err).__name__}).") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise NotAModelFileError(f"{p.name} is not a napari-medgen model file.")
        if "config" not in payload or not isinstance(payload.get("networks"), dict):
            raise ModelFileError(f"{p.name} is a napari-medgen file without its model config or weights.")
        try:
            raw = json.loads(payload["config"])
            if not isinstance(raw, dict):
                raise TypeError("not a mapping")
        except (TypeError, ValueError):
            raise ModelFileError(f"{p.name} has an unreadable model config.") from None
        config = ModelConfig.from_dict({"version": payload.get("version", 1), **raw}, p.name)
        if expect is not None and config.task != Task(expect):
            raise ModelFileError(f"{p.name} is a {config.task} model, not a {Task(expect)} model.")
        model = cls(config)
        saved = payload.get("saved")
        model.saved = {k: str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}
        for name, net in model.networks.items():
            try:
                net.load_state_dict(payload["networks"][name])
            except (KeyError, RuntimeError, TypeError, AttributeError):
                raise ModelFileError(f"The weights in {p.name} do not fit its '{name}' network "
                                     f"({config.networks[name].arch}).") from None
        return model


def as_model(model, expect: "Task | str") -> "Model":
    """``model`` itself, or the model file it names, checked to be an ``expect`` model (never unpickled)."""
    if isinstance(model, (str, os.PathLike)):
        return Model.load(model, expect=expect)
    not_a_model(model)
    return model


def not_a_model(model) -> None:
    """One sentence for an object that is neither a :class:`Model` nor a file name (a bare network, a dict)."""
    if not isinstance(model, Model):
        raise ModelFileError(f"Give a napari-medgen Model or a model file, not a {type(model).__name__}: a bare "
                             "network says nothing of its classes, spacing or intensity normalisation.")
