"""Typed, versioned model configs: what a checkpoint says about its networks and how to use them.

A :class:`ModelConfig` names the task (:class:`Task`), the networks (:class:`NetSpec`:
a ``monai.networks.nets`` class and its arguments), the intensity normalisation,
the training record, and the task's own parameters as one dataclass registered
per task (:data:`PARAMS`).  It is stored as JSON in the checkpoint with
:data:`CONFIG_VERSION`; files written by older versions (a flat dict, version 1)
are migrated on load, and files from a newer version are refused.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from ..errors import UserError

CONFIG_VERSION = 2


class Task(str, Enum):
    SEGMENTATION = "segmentation"
    VAE = "vae"
    GAN = "gan"
    CONDITIONAL_GAN = "conditional-gan"
    CLASSIFICATION = "classification"
    SEQUENCE = "sequence"
    FEATURES = "features"

    def __str__(self) -> str:
        return self.value


@dataclass
class NetSpec:
    """A MONAI network: class name in ``monai.networks.nets`` (or "TorchScript") and its arguments."""

    arch: str
    args: dict = field(default_factory=dict)


# --- task parameters -------------------------------------------------------------------------------
@dataclass
class SegmentationParams:
    classes: list = field(default_factory=list)  # [{"name", "color"}], index = label value
    spatial_dims: int = 2  # 2: slice by slice along ``axis``; 3: sliding window of ``patch_size``
    in_channels: int = 1
    context: int = 0  # 2D models: neighbouring slices on each side given as extra channels (2.5D)
    spacing: Optional[list] = None  # training spacing, napari order (in-plane (y, x) for 2D models)
    axis: int = 0
    patch_size: Optional[list] = None
    finetune: Optional[dict] = None  # rounds, slices, ... of the annotate-then-train loop
    orientation: Optional[list] = None  # direction (napari order) of the training volumes' array axes, when one


@dataclass
class VAEParams:
    axis: int = 0
    size: list = field(default_factory=list)  # network input (H, W)
    slice_shape: list = field(default_factory=list)  # the training images' own (H, W)
    masked: bool = False
    beta: float = 0.05
    training_stats: Optional[dict] = None
    thresholds: Optional[dict] = None
    scoring: Optional[dict] = None
    spacing: Optional[list] = None  # in-plane (y, x) pixel spacing of the training slices, when known
    intensity: Optional[list] = None  # [low, high] training intensities mapped to [0, 1] (samples come back in them)
    tissue: Optional[dict] = None  # per-tissue intensity model of normal data (means, sds), for "combined" scoring
    diffusion: Optional[dict] = None  # network "diffusion": its schedule, noise level and DDIM steps (restoration)
    orientation: Optional[list] = None  # direction (napari order) the training volumes were stored in, when known


@dataclass
class SliceSynthesisParams:
    """What every 2D slice generator records about the slices it learned from."""

    axis: int = 0
    size: list = field(default_factory=list)  # network output (H, W)
    spacing: Optional[list] = None  # in-plane (y, x) spacing of the generated slices
    native_shape: Optional[list] = None  # the training slices' own (H, W)
    intensity: Optional[list] = None  # [low, high] training intensities mapped to the network's range
    downsample: int = 1
    n_train: int = 0


@dataclass
class GANParams(SliceSynthesisParams):
    latent_size: int = 64
    architecture: str = "single-scale"  # or "cascade": GAN on 4x reduced slices + refiner (network "refine")


@dataclass
class ConditionalGANParams(SliceSynthesisParams):
    classes: int = 2  # number of label values the generator takes
    present_classes: Optional[list] = None


@dataclass
class ClassificationParams:
    classes: list = field(default_factory=list)  # class names, index = output
    spatial_dims: int = 2
    size: list = field(default_factory=list)  # network input size
    spacing: Optional[list] = None  # images are resampled to this spacing before fitting to ``size``
    metrics: Optional[dict] = None
    pretrained: str = ""  # where the encoder came from
    sharpness: float = 5.0  # log-sum-exp pooling of the per-voxel class evidence (large: max, small: mean)
    pooling: str = "lse"  # "lse" (findings: where the evidence is strongest) or "mean" (whole-image properties)
    orientation: Optional[list] = None  # 3D: direction (napari order) the training volumes were stored in


@dataclass
class SequenceParams:
    kind: str = "classification"  # or "regression"
    classes: list = field(default_factory=list)
    spatial_dims: int = 2  # of one frame
    size: list = field(default_factory=list)
    spacing: Optional[list] = None
    target_scale: Optional[list] = None  # regression: (offset, scale) of the targets
    metrics: Optional[dict] = None
    recurrent: bool = True  # False: frame features averaged (order-blind)
    bidirectional: bool = False
    pretrained: str = ""  # where the frame encoder's starting weights came from
    readout: str = "final"  # regression: "fraction" = (max - min) / max of a per-frame value (e.g. EF)


@dataclass
class FeaturesParams:
    size: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


PARAMS: dict[Task, type] = {
    Task.SEGMENTATION: SegmentationParams, Task.VAE: VAEParams, Task.GAN: GANParams,
    Task.CONDITIONAL_GAN: ConditionalGANParams, Task.CLASSIFICATION: ClassificationParams,
    Task.SEQUENCE: SequenceParams, Task.FEATURES: FeaturesParams,
}


@dataclass
class ModelConfig:
    """Everything a checkpoint says besides the weights."""

    task: Task
    name: str
    networks: dict  # name -> NetSpec; "net" is the main network
    params: Any  # the task's PARAMS dataclass
    normalization: Optional[dict] = None  # a spec of napari_medgen.data.normalize
    description: str = ""
    training: dict = field(default_factory=dict)  # record: history summary, world_size, samples seen
    version: int = CONFIG_VERSION

    def __post_init__(self):
        self.task = Task(self.task)
        self.networks = {k: v if isinstance(v, NetSpec) else NetSpec(**v) for k, v in self.networks.items()}
        if isinstance(self.params, dict):
            self.params = PARAMS[self.task](**self.params)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["task"] = self.task.value
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "the model file") -> "ModelConfig":
        """Build from stored JSON, migrating version-1 files; one clear sentence for bad content."""
        version = int(d.get("version", 1))
        if version > CONFIG_VERSION:
            raise UserError(f"{source} was written by a newer napari-medgen (config version {version}; "
                            f"this one reads up to {CONFIG_VERSION}); update napari-medgen to use it.")
        if version == 1:
            d = _migrate_v1(d)
        try:
            task = Task(d["task"])
            allowed = {f.name for f in dataclasses.fields(PARAMS[task])}
            params = {k: v for k, v in (d.get("params") or {}).items() if k in allowed}
            return cls(task=task, name=d.get("name", task.value), networks=d["networks"], params=params,
                       normalization=d.get("normalization"), description=d.get("description", ""),
                       training=d.get("training") or {}, version=CONFIG_VERSION)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{source} has an unreadable model config ({type(err).__name__}: {err}).") from None


_TOP = {"task", "name", "networks", "normalization", "description", "version"}
_V1_TASKS = {"gan-conditional": "conditional-gan"}


def _migrate_v1(d: dict) -> dict:
    """Version 1 kept every key at the top level; the task's keys become ``params``."""
    task = _V1_TASKS.get(d.get("task"), d.get("task"))
    record = ("history", "training", "holdout")
    training = {**(d.get("training") or {}), **{k: d[k] for k in ("history", "holdout") if k in d}}
    params = {k: v for k, v in d.items() if k not in _TOP and k not in record}
    if "latent_dim" in params:  # v1 GANs: one name for the latent size in every config
        params["latent_size"] = params.pop("latent_dim")
    return {**{k: d[k] for k in _TOP if k in d}, "task": task, "params": params, "training": training}
