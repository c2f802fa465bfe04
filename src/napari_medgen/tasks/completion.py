"""Completing a painting with a fine-tuned model (:func:`complete_labels`), and the interpolation prior
(:class:`Prior`) that both fine-tuning and completion take from the painted slices.

``finetune(keep_prior=True)`` leaves the Prior it built with the model it returns; ``complete_labels`` on that
model and the same painting takes it instead of building it again (seconds on a large CT).
"""
from __future__ import annotations

import hashlib
import weakref

import numpy as np
from scipy import ndimage, special

from ..data.annotations import IGNORE, AnnotationError, Targets, label_array, make_targets
from ..data.interpolate import extrapolate_ends, interpolate_labels, interpolation_reliability
from ..data.normalize import modality_of, normalize
from ..data.orientation import plane_turn, turn, turn_back, turned
from ..data.resample import resize
from ..data.sampling import grown, roi_box
from ..data.slices import take_slices
from ..engine.inference import predict
from ..engine.jobs import Job
from ..io.read import ImageData, opened
from ..models.segmentation import load_segmentation_model

SLAB = 8  # slices blended and decided at a time
_KEPT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> the Prior finetune built for it


def as_stored(item, how):
    """An ImageData or array stored as ``how`` says."""
    return turned(item, how) if isinstance(item, ImageData) else turn(np.asarray(item), how)


def painting_inputs(image, labels, spacing, modality):
    """(image, labels) as 3D arrays (a 2D image becomes one slice), spacing, modality; checks them."""
    img = np.asarray(getattr(image, "data", image))
    if img.ndim not in (2, 3):
        raise AnnotationError(f"Fine-tuning needs a 2D or 3D single-channel image, not {img.ndim}D.")
    lab = label_array(getattr(labels, "data", labels))  # float label files with whole values are taken
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
    margin), how well interpolation re-makes a painted slice (``reliability``) and the region of interest
    around the paint."""

    def __init__(self, lab: np.ndarray, t: Targets, spacing, *, sparse: bool, background_label=None,
                 interpolate: bool = True, caps: bool = True, job: Job | None = None):
        job = job or Job()  # checked between the steps (seconds each on a large CT): Cancelled on cancel
        self._made_of = (lab, t, spacing, sparse, background_label, interpolate)
        self.labels, self.margin = (interpolate_labels(lab, spacing=spacing, planes=t.planes, return_margin=True,
                                                       check=job.check)
                                    if interpolate and not sparse else (lab, np.full(lab.shape, np.inf, np.float32)))
        job.check()
        self._ends = (lab, t.axis, t.planes.get(t.axis, []), spacing) if interpolate and not sparse else None
        self._caps = None  # the sphere caps: now, or (``caps=False``) when first used; training does not use them
        if caps:
            self._sphere_caps(job.check)
        # how well interpolation re-makes a painted slice left out (None: fewer than three painted slices)
        self.reliability = interpolation_reliability(lab, t.planes, spacing) if interpolate and not sparse else None
        job.check()
        fg = self.labels != 0
        if sparse and background_label is not None:
            fg &= self.labels != background_label
        self.foreground = fg
        tight = roi_box(fg, 0) if fg.any() else roi_box(lab != 0, 0)
        extent = [(hi - lo) * s for (lo, hi), s in zip(tight, spacing)] if fg.any() else [0.0] * 3
        grow_mm = max(10.0, 0.5 * max(extent))
        self.box = grown(tight, [max(2, int(np.ceil(grow_mm / s))) for s in spacing], lab.shape)
        job.check()

    def pseudo(self, axis: int, band_mm: float, job: Job | None = None):
        """Pseudo-label slices along ``axis``: (indices, targets) with IGNORE off the interpolation and in the band;
        None when there are none (e.g. one painted slice).  A slice at a time (``job`` checked after each)."""
        job = job or Job()
        margins, labels = take_slices(self.margin, axis), take_slices(self.labels, axis)
        index, targets = [], []
        for k, margin in enumerate(margins):
            known = np.isfinite(margin) & (margin >= band_mm)
            if known.any():
                index.append(k)
                targets.append(np.where(known, labels[k].astype(np.int32), IGNORE))
            job.check()
        return (np.asarray(index), np.stack(targets)) if index else None

    @property
    def caps(self):
        return self._sphere_caps()[0]

    @property
    def cap_margin(self):
        return self._sphere_caps()[1]

    def _sphere_caps(self, check=None) -> tuple:
        """(labels, margin) of the sphere caps beyond the end slices (None, None without interpolation)."""
        if self._caps is None:
            self._caps = (None, None) if self._ends is None else extrapolate_ends(*self._ends, check=check)
            self._ends = None
        return self._caps

    def inplane_box(self, axis: int) -> tuple:
        (a0, a1), (b0, b1) = [self.box[i] for i in range(3) if i != axis]
        return a0, a1, b0, b1

    def keep_for(self, model) -> None:
        """Leave this Prior with ``model`` for :func:`complete_labels` (taken once; gone with the model), with the
        key of the painting it was made of."""
        self._sphere_caps()  # (if not built yet) from the painting, which is not held with it
        _KEPT[model] = (_prior_key(*self._made_of), self)
        self._made_of = None


def _prior_key(lab, t, spacing, sparse, background_label, interpolate) -> tuple:
    planes = tuple((int(a), tuple(int(i) for i in idx)) for a, idx in sorted(t.planes.items()))
    digest = hashlib.sha256(np.ascontiguousarray(lab)).digest()
    return (lab.shape, lab.dtype.str, digest, planes, int(t.axis), tuple(float(s) for s in spacing), bool(sparse),
            background_label, bool(interpolate))


def _prior_of(model, lab, t, spacing, *, sparse, background_label, job) -> Prior:
    """The Prior ``finetune`` left with ``model`` when it is of this painting, else a new one."""
    key, kept = _KEPT.pop(model, (None, None))
    if kept is not None and key == _prior_key(lab, t, spacing, sparse, background_label, True):
        return kept
    return Prior(lab, t, spacing, sparse=sparse, background_label=background_label, job=job)


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
        labels = turn_back(complete_labels(m, as_stored(image, how), as_stored(labels, how), sparse=sparse,
                                           background_label=background_label,
                                           spacing=None if spacing is None else [spacing[-3:][p] for p in how[0]],
                                           modality=modality, prior_weight=prior_weight, restrict=restrict,
                                           device=device, progress=progress, stop=stop), how)
        return labels
    img, lab, spacing, modality, flat = painting_inputs(image, labels, spacing, modality)
    axis = 0 if flat else int(m.params.axis)
    t = make_targets(lab, axis=axis, sparse=sparse, background_label=background_label)
    job.check()  # between the steps (seconds each on a large CT) and a slab at a time
    prior = _prior_of(m, lab, t, spacing, sparse=sparse, background_label=background_label, job=job)
    box = tuple(slice(a, b) for a, b in prior.box) if restrict else (slice(None),) * 3
    probs = _network_probs(m, img, spacing, modality, box, axis, device, job)
    job.check()
    pred = _combine(probs, lab, t, prior, box, axis, spacing, sparse=sparse, prior_weight=prior_weight,
                    restrict=restrict, job=job)
    job.check()
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


def _network_probs(m, img, spacing, modality, box, axis, device, job) -> np.ndarray:
    """The model's class probabilities (C, *box) in volume order."""
    norm = np.moveaxis(normalize(img, m.config.normalization, modality, box=box), axis, 0)  # (n, h, w) along axis
    shape = norm.shape[1:]
    job.check()
    if m.params.spacing:  # the model's grid (a 2D image's too)
        have = [s for i, s in enumerate(spacing) if i != axis]
        norm = resize(norm, [max(8, int(round(n * h / w))) for n, h, w in zip(shape, have, m.params.spacing)])
        job.check()
    args = m.config.networks["net"].args
    probs = predict(m.net, norm[None], spatial_dims=2, axis=0, context=int(m.params.context or 0),
                    device=device, divisor=int(np.prod(args.get("strides", (16,)))), progress=job)
    return np.moveaxis(resize(probs, shape), 1, 1 + axis)


def _first_max(probs: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = probs.argmax(0)`` (the first of equal maxima) a class at a time, without numpy's transposed copy."""
    best = probs[0].copy()
    out[...] = 0
    for c in range(1, len(probs)):
        np.copyto(out, c, where=probs[c] > best)
        np.maximum(best, probs[c], out=best)
    if not np.isfinite(best).all():  # NaN: argmax's own rule
        out[...] = probs.argmax(0)
    return out


def _blend(probs, labels, margin, caps, cap_margin, inplane: float, weight: float, few: bool) -> None:
    """``probs`` (C, ...) pulled towards the prior in place: the interpolated ``labels`` where ``margin`` is finite,
    else the sphere ``caps``; confident far from their boundary.  ``few``: fewer than three painted slices."""
    between = np.isfinite(margin)
    plab = np.where(between, labels, caps)
    pmar = np.where(between, margin, cap_margin)
    known = np.isfinite(pmar)
    w = np.where(known, pmar, 0.0)
    w /= inplane
    w -= 1.0
    special.expit(w, out=w)
    w *= known
    w *= weight
    n = probs.shape[0]
    if few:  # the network has seen too little to know where the structure ends (it under-segments there);
        # beyond the ends the sphere's signed-distance probability counts 4x the network's, which decides
        # only near the sphere's boundary
        beyond = known & ~between
        sure = special.expit(np.where(known, pmar, 0.0) / inplane)
        w = np.where(beyond, min(1.0, 1.6 * weight), w)
    keep = 1 - w
    for c in range(n):
        probs[c] *= keep
        if few:
            probs[c] += w * np.where(beyond, np.where(plab == c, sure, (1 - sure) / max(1, n - 1)),
                                     (plab == c).astype(np.float32))
        else:
            np.add(probs[c], w, out=probs[c], where=plab == c)


def _combine(probs, lab, t, prior, box, axis, spacing, *, sparse, prior_weight, restrict, job) -> np.ndarray:
    """Labels inside ``box`` from the network's ``probs`` and the prior (interpolation between painted
    slices, sphere caps beyond them), restricted to what continues the painting."""
    reliability = prior.reliability if not sparse else 0.0
    if prior_weight is None:  # trust the interpolation as far as it re-made painted slices it did not see
        prior_weight = 0.5 if reliability is None else 0.5 * float(np.clip((reliability - 0.6) / 0.3, 0, 1))
    prior_weight = float(prior_weight)
    inplane = min(s for i, s in enumerate(spacing) if i != axis)
    pred = np.empty(probs.shape[1:], lab.dtype)
    parts = [prior.labels[box], prior.margin[box], None, None] if prior_weight > 0 and not sparse else None
    if parts:
        parts[2:] = prior.caps[box], prior.cap_margin[box]
    for k in range(0, len(pred), SLAB):  # a slab at a time: the same labels, with small temporaries
        s = slice(k, k + SLAB)
        if parts:
            _blend(probs[:, s], *[a[s] for a in parts], inplane, prior_weight, reliability is None)
        _first_max(probs[:, s], pred[s])
        job.check()
    if restrict and not sparse:
        near = np.isfinite(prior.margin[box]) & ((reliability or 0.0) >= 0.8)  # stay near a good interpolation
        pred = _continuous(pred, prior.labels[box], near, t.planes.get(axis, []), box[axis].start or 0, axis, spacing)
        job.check()
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
        kept = np.zeros(n + 1, bool)  # by part number
        kept[parts[seeds & (parts > 0)]] = True
        np.copyto(out, c, where=kept[parts])
    return out
