"""Fine-tune a 2D segmenter on the slices a user painted (the annotate-then-train loop).

``finetune(model, image, labels)`` trains a copy of ``model`` (a fresh U-Net, a built-in
name, a Model or a model file) on the annotated slices of ``labels`` and returns it with
the training history; inputs are only read.  Calling it again with the returned model
continues from its weights.
"""
from __future__ import annotations

import numpy as np

from ..data.annotations import AnnotationError, make_targets
from ..data.normalize import normalize, resolve
from ..data.slices import take_slices
from ..engine.jobs import Job
from ..engine.seg_training import train_segmenter
from ..models.checkpoint import Model, ModelFileError
from ..models.segmentation import default_classes, load_segmentation_model, segmentation_config

FRESH = "fresh"
LR_FRESH, LR_FINETUNE = 5e-3, 1e-3


def start_model(model, n_classes: int, image: np.ndarray, *, axis: int = 0, modality: str = "",
                spacing=None) -> tuple[Model, bool]:
    """A trainable copy of ``model`` (None/"fresh" builds a new U-Net); also says whether it is fresh."""
    if model is None or (isinstance(model, str) and model == FRESH):
        norm = resolve({"kind": "auto"}, image, modality)
        inplane = None if spacing is None or image.ndim == 2 else [s for i, s in enumerate(spacing) if i != axis]
        config = segmentation_config("fine-tuned", default_classes(n_classes), spatial_dims=2, axis=axis,
                                     normalization=norm, spacing=inplane,
                                     description="U-Net trained on painted slices by napari-medgen finetune.")
        return Model(config), True
    base = load_segmentation_model(model)
    arch = base.config.networks["net"].arch
    if arch == "TorchScript":
        raise ModelFileError("A TorchScript model cannot be fine-tuned; start from a napari-medgen model or a fresh network.")
    if base.params.spatial_dims != 2 or base.params.in_channels != 1:
        raise ModelFileError(f"'{base.name}' is not a one-channel 2D segmenter; fine-tuning trains 2D models only.")
    if n_classes > len(base.params.classes):
        raise AnnotationError(f"'{base.name}' knows label values 0-{len(base.params.classes) - 1} but label "
                              f"{n_classes - 1} is painted; start from a fresh network.")
    return base.copy(), False


def finetune(model, image, labels, *, axis: int = 0, slices="auto", sparse: bool = False,
             background_label: int | None = None, steps: int = 300, lr: float | None = None,
             batch_size: int = 4, patch_size=None, validation: bool = True, spacing=None,
             modality: str = "", seed: int = 0, device="auto", progress=None, stop=None) -> tuple[Model, dict]:
    """Train a copy of ``model`` on the painted slices of ``labels`` along ``axis``.

    ``labels``: 0 is background on painted slices (dense) or unknown everywhere (``sparse=True``,
    where ``background_label`` is the value painted on background); slices with nothing painted are
    unknown.  With two or more annotated slices one is held out and the weights with the best
    validation Dice on it are returned.  Returns ``(trained model, history)``; on stop, the best
    weights so far with ``history["stopped"] = True``.
    """
    job = Job.of(progress, stop)
    img = np.asarray(getattr(image, "data", image))
    lab = np.asarray(getattr(labels, "data", labels))
    if img.ndim not in (2, 3):
        raise AnnotationError(f"Fine-tuning needs a 2D or 3D single-channel image, not {img.ndim}D.")
    if img.shape != lab.shape:
        raise AnnotationError(f"The annotation {lab.shape} and the image {img.shape} have different shapes.")
    geos = [getattr(x, "geometry", None) for x in (image, labels)]
    if None not in geos and not geos[0].same_grid(geos[1]):
        raise AnnotationError("The annotation is not on the image's voxel grid (spacing, origin or direction differ).")
    if img.ndim == 3 and not 0 <= axis < 3:
        raise AnnotationError("axis must be 0, 1 or 2.")
    spacing = spacing or getattr(getattr(image, "geometry", None), "spacing", None)
    modality = modality or getattr(image, "metadata", {}).get("modality", "")
    t = make_targets(lab, axis=axis, slices=slices, sparse=sparse, background_label=background_label)
    net_model, fresh = start_model(model, max(t.classes) + 1, img, axis=axis, modality=modality, spacing=spacing)
    spec = resolve(net_model.config.normalization, img, modality)
    stack = take_slices(normalize(img, spec), axis, t.indices)

    val = _held_out(t.targets) if validation else None
    train_idx = [i for i in range(len(t.indices)) if i != val]
    history = train_segmenter(
        net_model.net, stack[train_idx], t.targets[train_idx],
        val_images=None if val is None else stack[[val]], val_targets=None if val is None else t.targets[[val]],
        steps=steps, lr=lr or (LR_FRESH if fresh else LR_FINETUNE), batch_size=batch_size,
        patch_size=patch_size, keep_initial=not fresh, device=device, seed=seed, progress=job)

    cfg = net_model.params
    cfg.axis = int(axis)
    if spacing is not None and img.ndim == 3:
        cfg.spacing = [float(s) for i, s in enumerate(spacing) if i != axis]
    rounds = (cfg.finetune or {}).get("rounds", 0) + 1
    cfg.finetune = {"rounds": rounds, "slices": [int(i) for i in t.indices], "sparse": bool(sparse),
                       "background_label": background_label, "steps": len(history["step"])}
    history.update(slices=[int(i) for i in t.indices], train_slices=[int(t.indices[i]) for i in train_idx],
                   val_slice=None if val is None else int(t.indices[val]), fresh=fresh,
                   known_pixels=int(t.known_pixels), classes=t.classes)
    return net_model, history


def _held_out(targets: np.ndarray) -> int | None:
    """The annotated slice kept for validation: the middle one with foreground, when there are two or more."""
    if len(targets) < 2:
        return None
    usable = [i for i in range(len(targets)) if (targets[i] > 0).any()]
    return usable[len(usable) // 2] if len(usable) >= 2 else None
