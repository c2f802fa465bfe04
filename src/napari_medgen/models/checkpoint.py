"""Models as MONAI networks plus a JSON config, in one safe checkpoint file.

A checkpoint is ``torch.save({"format": "napari-medgen", "version": 1,
"config": <json str>, "networks": {name: state_dict}})`` and is loaded with
``torch.load(weights_only=True)``, so a shared model file cannot run code.

The config names every network as ``{"arch": <monai.networks.nets class>,
"args": {...}}`` under ``config["networks"][name]``; the rest of the config
(task, classes, normalisation, spacing, ...) belongs to the task that made it.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from monai.networks import nets

FORMAT = "napari-medgen"
SUFFIX = ".medgen.pt"


class ModelFileError(ValueError):
    """A model file that cannot be used."""


def build_network(spec: dict) -> torch.nn.Module:
    """Instantiate a MONAI network from ``{"arch": name, "args": {...}}``."""
    arch = spec["arch"]
    cls = getattr(nets, arch, None)
    if cls is None:
        raise ModelFileError(f"Unknown network architecture '{arch}' (not in monai.networks.nets).")
    return cls(**copy.deepcopy(spec.get("args", {})))  # some nets (SPADENet) edit their args


class Model:
    """Networks plus the config that says how to build and use them."""

    def __init__(self, config: dict, networks: dict | None = None):
        self.config = config
        self.networks = networks if networks is not None else {
            name: build_network(spec) for name, spec in config["networks"].items()}

    @property
    def net(self) -> torch.nn.Module:
        """The main network (named ``net``)."""
        return self.networks["net"]

    @property
    def task(self) -> str:
        return self.config.get("task", "")

    @property
    def name(self) -> str:
        return self.config.get("name", self.task or "model")

    def copy(self) -> "Model":
        """An independent copy (weights included), e.g. before fine-tuning."""
        return Model(copy.deepcopy(self.config), {k: copy.deepcopy(v) for k, v in self.networks.items()})

    def save(self, path: "str | os.PathLike") -> str:
        """Write the checkpoint atomically (temporary file, then rename)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "version": 1, "config": json.dumps(self.config),
                   "networks": {k: {n: t.detach().cpu() for n, t in v.state_dict().items()}
                                for k, v in self.networks.items()}}
        tmp = p.with_name(p.name + ".partial")
        torch.save(payload, tmp)
        os.replace(tmp, p)
        return str(p)

    @classmethod
    def load(cls, path: "str | os.PathLike", task: str | None = None) -> "Model":
        """Load a napari-medgen checkpoint; ``task`` checks it is the right kind of model."""
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"Model file {p} does not exist.")
        try:
            payload = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling problem is a bad file
            raise ModelFileError(f"{p.name} is not a napari-medgen model file ({type(err).__name__}).") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ModelFileError(f"{p.name} is not a napari-medgen model file.")
        config = json.loads(payload["config"])
        if task and config.get("task") != task:
            raise ModelFileError(f"{p.name} is a {config.get('task')} model, not a {task} model.")
        model = cls(config)
        for name, net in model.networks.items():
            try:
                net.load_state_dict(payload["networks"][name])
            except (KeyError, RuntimeError):
                raise ModelFileError(f"The weights in {p.name} do not fit its '{name}' network "
                                     f"({config['networks'][name]['arch']}).") from None
        return model
