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
from scipy import ndimage, special

from ..data.annotations import IGNORE, AnnotationError, Targets, make_targets
from ..data.interpolate import extrapolate_ends, interpolate_labels, interpolation_reliability
from ..data.normalize import modality_of, normalize, resolve, structure_window
from ..data.resample import resize
from ..data.sampling import patch_size_for, roi_box
from ..data.orientation import box_back, index_back, plane_turn, stored_direction, turn, turn_back, turned
from ..data.slices import take_slices
from ..engine.device import select_device
from ..engine.inference import predict
from ..engine.jobs import Job
from ..io.read import ImageData, opened
from ..engine.seg_training import predict_logits, train_segmenter
from ..models.checkpoint import Model, ModelFileError
from ..models.segmentation import default_classes, is_torchscript, load_segmentation_model, segmentation_config
from .model_fit import ModelMismatchWarning, expected_modality, modality_doubt

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


def _turned(item, how):
    """An ImageData or array stored as ``how`` says."""
    return turned(item, how) if isinstance(item, ImageData) else turn(np.asarray(item), how)


def _inputs(image, labels, spacing, modality):
    """(image, labels) as 3D arrays (a 2D image becomes one slice), spacing, modality; checks them."""
    img = np.asarray(getattr(image, "data", image))
    lab = np.asarray(getattr(labels, "data", labels))
    if img.ndim not in (2, 3):
        raise AnnotationError(f"Fine-tuning needs a 2D or 3D single-channel image, not {img.ndim}D.")
    if img.shape != lab.shape:
        raise AnnotationError(f"The annotation {lab.shape} and the image {img.shape} have different shapes.")
    geos = [getattr(x, "geometry", None) for x in (image, labels)]
    if None not in geos and not geos[0].same_grid(geos[1]):
        raise AnnotationError("The annotation is not on the image's voxel grid (spacing, origin or direction differ).")
    spacing = spacing or getattr(getattr(image, "geometry", None), "spacing", None)
    spacing = [float(s) for s in spacing][-img.ndim:] if spacing is not None else [1.0] * img.ndim
    modality = modality or modality_of(image)
    if img.ndim == 2:
        return img[None], lab[None], [1.0] + spacing, modality, True
    return img, lab, spacing, modality, False


class Prior:
    """What the painting says about the rest of the volume: the interpolated labels between painted
    slices, their distance to the interpolated boundary, sphere caps beyond the end slices (with their
    margin), and the region of interest around the paint."""

    def __init__(self, lab: np.ndarray, t: Targets, spacing, *, sparse: bool, background_label=None,
                 interpolate: bool = True):
        self.labels, self.margin = (interpolate_labels(lab, spacing=spacing, planes=t.planes, return_margin=True)
                                    if interpolate and not sparse else (lab, np.full(lab.shape, np.inf, np.float32)))
        self.caps, self.cap_margin = (extrapolate_ends(lab, t.axis, t.planes.get(t.axis, []), spacing)
                                      if interpolate and not sparse else (None, None))
        fg = self.labels != 0
        if sparse and background_label is not None:
            fg &= self.labels != background_label
        self.foreground = fg
        extent = [(hi - lo) * s for (lo, hi), s in zip(roi_box(fg, 0), spacing)] if fg.any() else [0.0] * 3
        grow_mm = max(10.0, 0.5 * max(extent))
        self.box = roi_box(fg if fg.any() else lab != 0, [max(2, int(np.ceil(grow_mm / s))) for s in spacing])

    def pseudo(self, axis: int, band_mm: float):
        """Pseudo-label slices along ``axis``: (indices, targets) with IGNORE off the interpolation and in the band;
        None when there are none (e.g. one painted slice)."""
        known = np.isfinite(self.margin) & (self.margin >= band_mm)
        target = np.where(known, self.labels.astype(np.int32), IGNORE)
        moved = take_slices(target, axis)
        index = np.flatnonzero((moved != IGNORE).reshape(len(moved), -1).any(1))
        return (index, np.ascontiguousarray(moved[index])) if index.size else None

    def inplane_box(self, axis: int) -> tuple:
        (a0, a1), (b0, b1) = [self.box[i] for i in range(3) if i != axis]
        return a0, a1, b0, b1


def finetune(model, image, labels, *, axis: int | None = None, slices="auto", sparse: bool = False,
             background_label: int | None = None, seconds: float | None = 60.0, steps: int | None = None,
             lr: float | None = None, batch_size: int | None = None, patch_size=None, context: int | None = None,
             interpolate: bool = True, pseudo_weight: float = 0.5, patience: int | None = 8, spacing=None,
             modality: str = "", class_names=None, seed: int = 0, device="auto",
             preview_every: float | None = None, progress=None, stop=None, cancel=None) -> tuple[Model, dict]:
    """Train a copy of ``model`` on every painted slice of ``labels``; returns ``(model, history)``.

    ``labels``: slices painted along any axis (``axis=None`` trains along the axis with the most
    painted slices); 0 is background on painted slices (dense) or unknown everywhere
    (``sparse=True``, ``background_label`` = the value painted on background); unpainted
    slices are unknown, never background.  ``seconds`` bounds the whole call (``steps``
    optionally too); training stops early after ``patience`` validations without improvement.
    ``history["returned"]`` says which weights came back and why.  Stop keeps the best weights
    (``history["stopped"]``); cancel raises :class:`Cancelled` with nothing changed; a network that
    never predicts the painted structure raises :class:`NothingLearnedError`.  ``preview_every``
    (seconds) sends progress events whose ``preview`` is ``{"box", "labels"}``: the current
    prediction inside the region of interest.  ``class_names`` name the painted label values 1, 2, ...
    (0 is background): the model, its segmentations, volumes and DICOM SEG segments carry them
    (default: the start model's names, "class N" for a fresh network).
    """
    t0 = time.monotonic()
    job = Job.of(progress, stop, cancel)
    image, labels = opened(image), opened(labels)
    img, lab, spacing, modality, flat = _inputs(image, labels, spacing, modality)
    if axis is not None and not flat and not 0 <= axis < 3:
        raise AnnotationError("axis must be 0, 1 or 2.")
    t = make_targets(lab, axis=0 if flat else axis, slices=slices, sparse=sparse, background_label=background_label)
    names = None if class_names is None else [str(n).strip() for n in class_names]
    if names is not None and (len(names) < max(t.classes) or not all(names)):
        raise AnnotationError(f"Give a name for each painted label value 1-{max(t.classes)} (got {len(names)}: "
                              f"{', '.join(names) or 'none'}).")
    dev = select_device(device)
    size = "cuda" if dev.type == "cuda" else "cpu"
    torch.manual_seed(seed)  # a fresh network's first weights come from the seed too
    net_model, fresh = start_model(model, max(t.classes) + 1, img[0] if flat else img, axis=t.axis,
                                   modality=modality, spacing=None if flat else spacing, context=context, size=size)
    listed = not (isinstance(slices, str) and slices == "auto")  # slice numbers the user gave, in their axes
    how = None if fresh or axis is not None or flat or listed else plane_turn(image, net_model.params.orientation)
    if how is not None:  # a volume stored in another axis order than the model's: trained on as the model's were
        shape = img.shape
        image, labels = _turned(image, how), _turned(labels, how)
        img, lab, spacing, modality, flat = _inputs(image, labels, None if spacing is None else
                                                    [spacing[-3:][p] for p in how[0]], modality)
    if how is not None or (not fresh and axis is None and not flat and net_model.params.axis != t.axis):  # its axis
        t = make_targets(lab, axis=net_model.params.axis, slices=slices, sparse=sparse,
                         background_label=background_label)
    ctx = int(net_model.params.context or 0)
    job.report(0, 1, "interpolating between painted slices")
    prior = Prior(lab, t, spacing, sparse=sparse, background_label=background_label, interpolate=interpolate)
    spec = resolve(net_model.config.normalization, img, modality)
    doubt = "" if fresh else modality_doubt(img, expected_modality(net_model), net_model.name, modality,
                                            "fine-tuning keeps its intensity normalisation, so 'fresh' may be the "
                                            "better start")
    if doubt:
        warnings.warn(ModelMismatchWarning(doubt), stacklevel=2)
    if fresh and spec["kind"] == "window":  # CT: a window that spans the painted structure and its surroundings
        spec = net_model.config.normalization = structure_window(img, prior.foreground)
    volume = np.ascontiguousarray(take_slices(normalize(img, spec), t.axis))
    band = BAND_VOXELS * max(s for i, s in enumerate(spacing) if i != t.axis)
    reliability = interpolation_reliability(lab, t.planes, spacing) if interpolate and not sparse else None
    if reliability is not None:  # pseudo-labels count as far as interpolation re-makes a painted slice left out
        pseudo_weight = pseudo_weight * float(np.clip((reliability - 0.6) / 0.3, 0, 1))
    pseudo = prior.pseudo(t.axis, band) if interpolate and not sparse and pseudo_weight > 0 else None
    box = prior.inplane_box(t.axis)
    inplane = [s for i, s in enumerate(spacing) if i != t.axis]
    factor = max(1.0, max(box[1] - box[0], box[3] - box[2]) / NETS[size]["grid"])
    if not fresh:  # a trained model keeps its own grid
        factor = net_model.params.spacing[0] / inplane[0] if net_model.params.spacing and not flat else 1.0
    targets = t.targets
    if abs(factor - 1.0) > 0.1:  # e.g. a large structure: train on a coarser in-plane grid
        shape = [max(8, int(round(n / factor))) for n in volume.shape[1:]]
        volume, targets = resize(volume, shape), resize(targets, shape, mode="nearest")
        pseudo = None if pseudo is None else (pseudo[0], resize(pseudo[1], shape, mode="nearest"))
        box = tuple(int(round(b / factor)) for b in box)
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
    if not flat:
        cfg.spacing = [float(s) * factor for s in inplane]
    rounds = (cfg.finetune or {}).get("rounds", 0) + 1
    planes = {int(a): [int(i) for i in idx] for a, idx in t.planes.items()}
    steps_before = (cfg.finetune or {}).get("steps", 0)
    cfg.finetune = {"rounds": rounds, "planes": {str(a): v for a, v in planes.items()}, "sparse": bool(sparse),
                    "background_label": background_label, "steps": steps_before + len(history["step"])}
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


def complete_labels(model, image, labels, *, sparse: bool = False, background_label: int | None = None,
                    spacing=None, modality: str = "", prior_weight: float | None = None, restrict: bool = True,
                    device="auto", progress=None, stop=None) -> np.ndarray:
    """The user's painting completed by ``model``: a new label array of ``labels``' shape and dtype.

    Painted slices are kept as painted.  Elsewhere: the model's prediction inside the region
    around the painted structure, blended (``prior_weight``; None: by how well interpolation
    re-makes a painted slice left out) with the shape-based interpolation between painted slices
    and sphere caps beyond the end slices (confident far from their boundary, undecided on it;
    with fewer than three painted slices the caps weigh 4x the network).  With ``restrict``: kept near a reliable
    interpolation, growing beyond the first/last painted slice by at most one slice spacing per
    slice, and only the connected parts that touch the paint or the interpolation.
    Raises :class:`Cancelled` on stop.  Inputs are only read.
    """
    job = Job.of(progress, stop)
    m, image, labels = load_segmentation_model(model), opened(image), opened(labels)
    how = plane_turn(image, m.params.orientation) if np.ndim(getattr(image, "data", image)) == 3 else None
    if how is not None:  # a volume stored in another axis order than the model's: completed as the model's were
        labels = turn_back(complete_labels(m, _turned(image, how), _turned(labels, how), sparse=sparse,
                                           background_label=background_label,
                                           spacing=None if spacing is None else [spacing[-3:][p] for p in how[0]],
                                           modality=modality, prior_weight=prior_weight, restrict=restrict,
                                           device=device, progress=progress, stop=stop), how)
        return labels
    img, lab, spacing, modality, flat = _inputs(image, labels, spacing, modality)
    axis = 0 if flat else int(m.params.axis)
    t = make_targets(lab, axis=axis, sparse=sparse, background_label=background_label)
    prior = Prior(lab, t, spacing, sparse=sparse, background_label=background_label)
    box = tuple(slice(a, b) for a, b in prior.box) if restrict else (slice(None),) * 3
    probs = _network_probs(m, img, spacing, modality, box, axis, flat, device, job)
    job.check()
    pred = _combine(probs, lab, t, prior, box, axis, spacing, sparse=sparse, prior_weight=prior_weight,
                    restrict=restrict)
    out = np.zeros_like(lab)
    out[box] = pred
    known = np.zeros(lab.shape, bool)
    if sparse:
        known = lab != 0
    else:
        for a, idx in t.planes.items():
            sel = [slice(None)] * 3
            sel[a] = idx
            known[tuple(sel)] = True
    out[known] = lab[known]
    if sparse and background_label is not None:
        out[lab == background_label] = 0
    return out[0] if flat else out


def _network_probs(m, img, spacing, modality, box, axis, flat, device, job) -> np.ndarray:
    """The model's class probabilities (C, *box) in volume order."""
    norm = np.moveaxis(normalize(img, m.config.normalization, modality)[box], axis, 0)  # (n, h, w) along axis
    shape = norm.shape[1:]
    if m.params.spacing and not flat:  # the model's grid
        have = [s for i, s in enumerate(spacing) if i != axis]
        norm = resize(norm, [max(8, int(round(n * h / w))) for n, h, w in zip(shape, have, m.params.spacing)])
    args = m.config.networks["net"].args
    probs = predict(m.net, norm[None], spatial_dims=2, axis=0, context=int(m.params.context or 0),
                    device=device, divisor=int(np.prod(args.get("strides", (16,)))), progress=job)
    return np.moveaxis(resize(probs, shape), 1, 1 + axis)


def _combine(probs, lab, t, prior, box, axis, spacing, *, sparse, prior_weight, restrict) -> np.ndarray:
    """Labels inside ``box`` from the network's ``probs`` and the prior (interpolation between painted
    slices, sphere caps beyond them), restricted to what continues the painting."""
    reliability = interpolation_reliability(lab, t.planes, spacing) if not sparse else 0.0
    if prior_weight is None:  # trust the interpolation as far as it re-made painted slices it did not see
        prior_weight = 0.5 if reliability is None else 0.5 * float(np.clip((reliability - 0.6) / 0.3, 0, 1))
    if prior_weight > 0 and not sparse:
        inplane = min(s for i, s in enumerate(spacing) if i != axis)
        plab = np.where(np.isfinite(prior.margin), prior.labels, prior.caps)[box]
        pmar = np.where(np.isfinite(prior.margin), prior.margin, prior.cap_margin)[box]
        known = np.isfinite(pmar)
        confidence = special.expit(np.where(known, pmar, 0.0) / inplane - 1.0) * known
        w = prior_weight * confidence
        target = [(plab == c).astype(np.float32) for c in range(probs.shape[0])]
        if reliability is None:  # fewer than three painted slices: the network has seen too little to know
            # where the structure ends (it under-segments there); beyond the ends the sphere's signed-distance
            # probability counts 4x the network's, which decides only near the sphere's boundary
            caps = np.isfinite(pmar) & ~np.isfinite(prior.margin[box])
            sure = special.expit(np.where(known, pmar, 0.0) / inplane)
            w = np.where(caps, min(1.0, 1.6 * prior_weight), w)
            n = probs.shape[0]
            target = [np.where(caps, np.where(plab == c, sure, (1 - sure) / max(1, n - 1)), tc)
                      for c, tc in enumerate(target)]
        for c in range(probs.shape[0]):
            probs[c] = (1 - w) * probs[c] + w * target[c]
    pred = probs.argmax(0).astype(lab.dtype)
    if restrict and not sparse:
        between = np.isfinite(prior.margin[box]) & ((reliability or 0.0) >= 0.8)  # stay near a good interpolation
        pred = _continuous(pred, prior.labels[box], between, t.planes.get(axis, []),
                           box[axis].start or 0, axis, spacing)
    if restrict:
        pred = _connected_to(pred, (lab != 0)[box] | prior.foreground[box])
    return pred


def _continuous(pred, prior, between, painted, offset: int, axis: int, spacing, band_mm: float = 3.0):
    """``pred`` kept only where it continues the painting: on slices between painted ones within
    ``band_mm`` (plus a quarter of the distance to the nearest painted slice) of the interpolation, and beyond the first/last painted slice growing by at most one
    slice spacing per slice (a 45-degree surface) from its neighbour nearer the paint."""
    p = np.moveaxis(pred, axis, 0).copy()
    ref = np.moveaxis(prior, axis, 0)
    inside = np.moveaxis(between, axis, 0).reshape(len(p), -1).any(1)
    anchors = sorted({int(k) - offset for k in painted if 0 <= int(k) - offset < len(p)} |
                     set(np.flatnonzero(inside).tolist()))
    if not anchors:
        return pred
    inplane = min(s for i, s in enumerate(spacing) if i != axis)
    step = max(1, round(spacing[axis] / inplane))
    local = sorted(int(k) - offset for k in painted)
    for c in np.unique(p[p > 0]):
        m = p == c
        for k in anchors:
            if k in local:
                m[k] = ref[k] == c
                continue
            gap_mm = min(abs(k - j) for j in local) * spacing[axis] if local else 0.0
            band = max(2, round((band_mm + 0.25 * gap_mm) / inplane))  # interpolation errs more far from paint
            m[k] &= ndimage.binary_dilation(ref[k] == c, iterations=band)
        for k in range(anchors[-1] + 1, len(p)):
            m[k] &= ndimage.binary_dilation(m[k - 1], iterations=step)
        for k in range(anchors[0] - 1, -1, -1):
            m[k] &= ndimage.binary_dilation(m[k + 1], iterations=step)
        p[(p == c) & ~m] = 0
    return np.moveaxis(p, 0, axis)


def _connected_to(pred: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``pred`` with each class's connected parts that touch none of ``seeds`` removed."""
    out = np.zeros_like(pred)
    for c in np.unique(pred):
        if c == 0:
            continue
        parts, n = ndimage.label(pred == c)
        keep = np.unique(parts[seeds & (parts > 0)])
        out[np.isin(parts, keep[keep > 0])] = c
    return out
