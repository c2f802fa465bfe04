"""Fine-tune a 2.5D segmenter on the slices a user painted (the annotate-then-train loop).

``finetune(model, image, labels)`` trains a copy of ``model`` (a fresh U-Net, a built-in
name, a Model or a model file) on every painted slice of ``labels`` (painted along any axis)
within a budget in seconds and returns it with the training history; inputs are only read.
The recipe: normalise by modality (a HU window for CT, recognised by value range), fill the
slices between painted ones by shape-based interpolation and use them as down-weighted
pseudo-labels (their uncertain boundary band ignored; weighted by how well interpolation
re-makes a painted slice left out), give the network neighbouring slices
as context channels, sample patches around the painted structure, its boundary and the far
background, and keep the weights that agree best with the painted slices and the
pseudo-labels.  :func:`complete_labels` then fills the user's volume: the network's
prediction near the painted structure, blended with the interpolation between painted
slices and with sphere caps beyond the end slices, and kept only where connected to the
paint.  Calling ``finetune`` again with the returned model continues from its weights.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch

from ..data.annotations import AnnotationError, make_targets
from ..data.normalize import apparent_modality, normalize, resolve, structure_window
from ..data.resample import resize
from ..data.sampling import patch_size_for
from ..data.orientation import box_back, index_back, plane_turn, stored_direction, turn_back
from ..data.slices import take_slices
from ..engine.device import select_device
from ..engine.jobs import Job
from ..io.read import opened
from ..engine.seg_training import predict_logits, train_segmenter
from ..models.checkpoint import Model, ModelFileError
from ..models.segmentation import default_classes, is_torchscript, load_segmentation_model, segmentation_config
from .completion import Prior, as_stored, complete_labels, painting_inputs
from .model_fit import ModelMismatchWarning, expected_modality, modality_doubt

__all__ = ["FRESH", "complete_labels", "finetune", "start_model"]  # complete_labels: from .completion

FRESH = "fresh"
LR_FRESH, LR_FINETUNE = 5e-3, 1e-3
CONTEXT = 1  # neighbouring slices on each side given to a fresh 2.5D network
BAND_VOXELS = 1.5  # interpolated boundaries: pseudo-labels this close (in-plane voxels) are left unknown
# the network, patch, batch and working resolution by device: the same seconds on a GPU buy a bigger
# network, bigger patches and a finer grid, not the same model sooner.  ``grid``: the region of interest
# is trained at a resolution where its larger in-plane side spans at most this many pixels.
NETS = {"cpu": {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "patch": 128, "batch": 8, "grid": 160,
                "norm": "batch"},
        "cuda": {"channels": (32, 64, 128, 256, 320), "strides": (2, 2, 2, 2), "patch": 256, "batch": 32,
                 "grid": 1024, "norm": "batch"}}


def start_model(model, n_classes: int, image: np.ndarray, *, axis: int = 0, modality: str = "", spacing=None,
                context: int | None = None, size: str = "cpu") -> tuple[Model, bool]:
    """A trainable copy of ``model`` (None/"fresh" builds a new 2.5D U-Net); also says whether it is fresh."""
    if model is None or (isinstance(model, str) and model == FRESH):
        ctx = (CONTEXT if image.ndim == 3 else 0) if context is None else int(context)
        norm = resolve({"kind": "auto"}, image, modality)
        inplane = None if spacing is None or image.ndim == 2 else [s for i, s in enumerate(spacing) if i != axis]
        net = NETS[size]
        config = segmentation_config("fine-tuned", default_classes(n_classes), spatial_dims=2, axis=axis,
                                     channels=net["channels"], strides=net["strides"], normalization=norm,
                                     spacing=inplane,
                                     description="2.5D U-Net trained on painted slices by napari-medgen finetune.")
        # batch norm, not instance norm: a slice's absolute intensities matter (a lesion is brighter than
        # tissue; an empty slice outside the body is background, not an arbitrary output of normalised zeros)
        config.networks["net"].args.update(in_channels=2 * ctx + 1, norm=net["norm"])
        config.params.context = ctx
        return Model(config), True
    if isinstance(model, (str, os.PathLike)) and is_torchscript(model):
        raise ModelFileError("A TorchScript model cannot be fine-tuned; start from a napari-medgen model or a fresh network.")
    base = load_segmentation_model(model)
    if base.params.spatial_dims != 2 or base.params.in_channels != 1:
        raise ModelFileError(f"'{base.name}' is not a one-channel 2D segmenter; fine-tuning trains 2D models only.")
    if n_classes > len(base.params.classes):
        raise AnnotationError(f"'{base.name}' knows label values 0-{len(base.params.classes) - 1} but label "
                              f"{n_classes - 1} is painted; start from a fresh network.")
    return base.copy(), False


def finetune(model, image, labels, *, axis: int | None = None, slices="auto", sparse: bool = False,
             background_label: int | None = None, seconds: float | None = 60.0, steps: int | None = None,
             lr: float | None = None, batch_size: int | None = None, patch_size=None, context: int | None = None,
             interpolate: bool = True, pseudo_weight: float = 0.5, patience: int | None = 8, spacing=None,
             modality: str = "", class_names=None, seed: int = 0, device="auto",
             preview_every: float | None = None, keep_prior: bool = False, progress=None, stop=None,
             cancel=None) -> tuple[Model, dict]:
    """Train a copy of ``model`` on every painted slice of ``labels``; returns ``(model, history)``.

    ``labels``: slices painted along any axis (``axis=None`` trains along the axis with the most
    painted slices); 0 is background on painted slices (dense) or unknown everywhere
    (``sparse=True``, ``background_label`` = the value painted on background); unpainted
    slices are unknown, never background.  ``slices``: "auto" (the painted slices along every axis) or the
    indices of the painted slices along ``axis`` (default 0), in the caller's axes.  ``seconds`` is the
    budget: training gets what preparation (interpolation, normalisation; seconds on a large CT) left of it,
    but at least half of it, so the call can take longer than ``seconds`` (``steps`` optionally bounds
    training too); training stops early after ``patience`` validations without improvement.
    ``history["returned"]`` says which weights came back and why.  Stop keeps the best weights
    (``history["stopped"]``); cancel, and a stop before training has begun, raise :class:`Cancelled` with
    nothing changed (answered between the preparation steps, each seconds at most on a large CT); a network that
    never predicts the painted structure raises :class:`NothingLearnedError`.  ``preview_every``
    (seconds) sends progress events whose ``preview`` is ``{"box", "labels"}``: the current
    prediction inside the region of interest.  ``class_names`` name the painted label values 1, 2, ...
    (0 is background): the model, its segmentations, volumes and DICOM SEG segments carry them
    (default: the start model's names, "class N" for a fresh network).  ``keep_prior``: leave the interpolation
    built here with the returned model for the :func:`complete_labels` call that follows (taken once; it saves
    rebuilding it, seconds on a large CT, and holds about 11 bytes per voxel until then; without it the sphere caps
    beyond the end slices, which only completion uses, are not built).
    """
    t0 = time.monotonic()
    job = Job.of(progress, stop, cancel)
    image, labels = opened(image), opened(labels)
    img, lab, spacing, modality, flat = painting_inputs(image, labels, spacing, modality)
    if axis is not None and not flat and not 0 <= axis < 3:
        raise AnnotationError("axis must be 0, 1 or 2.")
    listed = not (isinstance(slices, str) and slices == "auto")  # slice numbers along the user's axis (or 0)
    job.report(0, 1, "finding the painted slices")
    t = make_targets(lab, axis=0 if flat else axis, slices=slices, sparse=sparse, background_label=background_label)
    job.check()  # cancel (or a stop: there is nothing to keep yet) is answered between the preparation steps
    names = None if class_names is None else [str(n).strip() for n in class_names]
    if names is not None and (len(names) < max(t.classes) or not all(names)):
        raise AnnotationError(f"Give a name for each painted label value 1-{max(t.classes)} (got {len(names)}: "
                              f"{', '.join(names) or 'none'}).")
    dev = select_device(device)
    size = "cuda" if dev.type == "cuda" else "cpu"
    torch.manual_seed(seed)  # a fresh network's first weights come from the seed too
    net_model, fresh = start_model(model, max(t.classes) + 1, img[0] if flat else img, axis=t.axis,
                                   modality=modality, spacing=None if flat else spacing, context=context, size=size)
    how = None if fresh or axis is not None or flat or listed else plane_turn(image, net_model.params.orientation)
    if how is not None:  # a volume stored in another axis order than the model's: trained on as the model's were
        shape = img.shape
        image, labels = as_stored(image, how), as_stored(labels, how)
        img, lab, spacing, modality, flat = painting_inputs(image, labels, None if spacing is None else
                                                            [spacing[-3:][p] for p in how[0]], modality)
    if how is not None or (not fresh and axis is None and not flat and not listed and net_model.params.axis != t.axis):
        # the start model's axis (listed slices are trained along as listed, the user's axis)
        t = make_targets(lab, axis=net_model.params.axis, slices=slices, sparse=sparse,
                         background_label=background_label)
    ctx = int(net_model.params.context or 0)
    job.report(0, 1, "interpolating between painted slices")
    prior = Prior(lab, t, spacing, sparse=sparse, background_label=background_label, interpolate=interpolate,
                  caps=keep_prior, job=job)  # the sphere caps are for completion only
    job.report(0, 1, "normalising the image")
    spec = resolve(net_model.config.normalization, img, modality)
    doubt = "" if fresh else modality_doubt(img, expected_modality(net_model), net_model.name, modality,
                                            "fine-tuning keeps its intensity normalisation, so 'fresh' may be the "
                                            "better start")
    if doubt:
        warnings.warn(ModelMismatchWarning(doubt), stacklevel=2)
    if fresh and spec["kind"] == "window":  # CT: a window that spans the painted structure and its surroundings
        spec = net_model.config.normalization = structure_window(img, prior.foreground)
        job.check()
    volume = np.ascontiguousarray(take_slices(normalize(img, spec), t.axis))
    job.check()
    job.report(0, 1, "preparing the training slices")
    band = BAND_VOXELS * max(s for i, s in enumerate(spacing) if i != t.axis)
    reliability = prior.reliability
    if reliability is not None:  # pseudo-labels count as far as interpolation re-makes a painted slice left out
        pseudo_weight = pseudo_weight * float(np.clip((reliability - 0.6) / 0.3, 0, 1))
    pseudo = prior.pseudo(t.axis, band, job) if interpolate and not sparse and pseudo_weight > 0 else None
    box = prior.inplane_box(t.axis)
    inplane = [s for i, s in enumerate(spacing) if i != t.axis]
    factor = max(1.0, max(box[1] - box[0], box[3] - box[2]) / NETS[size]["grid"])
    if not fresh:  # a trained model keeps its own grid
        factor = net_model.params.spacing[0] / inplane[0] if net_model.params.spacing else 1.0
    targets = t.targets
    if abs(factor - 1.0) > 0.1:  # e.g. a large structure: train on a coarser in-plane grid
        grid = [max(8, int(round(n / factor))) for n in volume.shape[1:]]
        volume, targets = resize(volume, grid), resize(targets, grid, mode="nearest")
        pseudo = None if pseudo is None else (pseudo[0], resize(pseudo[1], grid, mode="nearest"))
        box = tuple(int(round(b / factor)) for b in box)
    job.check()
    patch = patch_size or patch_size_for((max(48, box[1] - box[0]), max(48, box[3] - box[2])), NETS[size]["patch"])
    preview = None
    if preview_every:
        def preview_fn(net, device):
            box, labels = prior.box, _box_labels(net, volume, prior.box, t.axis, ctx, device, factor)
            if how is not None:
                box, labels = box_back(how, shape, box), turn_back(labels, how)
            job.report(0, 1, "preview", preview={"box": box, "labels": labels})
        preview = (preview_fn, float(preview_every))
    left = None if seconds is None else max(0.5 * float(seconds), float(seconds) - (time.monotonic() - t0) - 1.0)
    history = train_segmenter(
        net_model.net, volume, (t.indices, targets), pseudo=pseudo, pseudo_weight=pseudo_weight, context=ctx,
        steps=steps, seconds=left, lr=lr or (LR_FRESH if fresh else LR_FINETUNE),
        batch_size=batch_size or NETS[size]["batch"], patch_size=patch, box=box, patience=patience,
        keep_initial=not fresh, preview=preview, device=dev, seed=seed, progress=job)

    cfg = net_model.params
    cfg.axis = int(t.axis)
    direction = stored_direction(image)  # the plane it learned, in the patient: volumes stored otherwise are turned
    cfg.orientation = None if direction is None or flat else direction.tolist()
    cfg.spacing = [float(s) * factor for s in inplane]  # the grid it learned (a 2D image's too: completion uses it)
    rounds = (cfg.finetune or {}).get("rounds", 0) + 1
    planes = {int(a): [int(i) for i in idx] for a, idx in t.planes.items()}
    steps_before = (cfg.finetune or {}).get("steps", 0)
    cfg.finetune = {"rounds": rounds, "planes": {str(a): v for a, v in planes.items()}, "sparse": bool(sparse),
                    "background_label": background_label, "steps": steps_before + len(history["step"])}
    earlier = (net_model.config.training or {}) if rounds > 1 else {}  # a fine-tuned start's record goes on, no other's
    net_model.config.training = {
        **{k: history[k] for k in ("best_step", "best_metric", "returned", "stopped", "stop_reason", "device")},
        "seconds": earlier.get("seconds", 0.0) + history["seconds"], "steps": cfg.finetune["steps"], "rounds": rounds,
        "painted_slices": sum(len(v) for v in planes.values()),
        "pseudo_slices": 0 if pseudo is None else int(len(pseudo[0])), "modality": apparent_modality(img, modality),
        "image_spacing": [float(s) for s in inplane]}  # the painted image's: the grid may be it shrunk to fit
    if interpolate and keep_prior:
        prior.keep_for(net_model)  # complete_labels on this model and painting takes it instead of building it again
    if names is not None:  # background first, then the painted values; a start model's further classes kept
        names = names[: len(cfg.classes) - 1]  # one per output of the network
        cfg.classes = default_classes(["background", *names, *[c["name"] for c in cfg.classes[len(names) + 1:]]])
    roi, user_axis = prior.box, int(t.axis)
    if how is not None:  # said in the caller's axes
        planes = dict(index_back(how, shape, a, idx) for a, idx in planes.items())
        roi, user_axis = box_back(how, shape, roi), int(how[0][t.axis])
    history.update(slices=planes.get(user_axis, []), planes=planes, axis=user_axis, context=ctx,
                   pseudo_slices=0 if pseudo is None else int(len(pseudo[0])), pseudo_weight=pseudo_weight,
                   interpolation_reliability=reliability, roi=[list(b) for b in roi],
                   patch_size=list(patch), fresh=fresh, known_pixels=int(t.known_pixels), classes=t.classes,
                   total_seconds=time.monotonic() - t0)
    return net_model, history


def _box_labels(net, volume, box, axis, context, device, factor=1.0) -> np.ndarray:
    """The network's labels inside the 3D ``box`` (volume: slices along ``axis``, in-plane shrunk by ``factor``)."""
    (a0, a1), (b0, b1) = [box[i] for i in range(3) if i != axis]
    inplane = [int(round(v / factor)) for v in (a0, a1, b0, b1)]
    logits = predict_logits(net, volume, np.arange(*box[axis]), device, context=context, box=tuple(inplane))
    labels = logits.argmax(1).numpy().astype(np.uint8)
    labels = resize(labels, (a1 - a0, b1 - b0), mode="nearest")
    return np.moveaxis(labels, 0, axis)
