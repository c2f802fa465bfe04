"""Image classification (2D slices or 3D volumes) with transfer learning and Grad-CAM heatmaps.

``train_classifier(images, labels)`` -> ``(model, history)``; ``classify(model, image)`` ->
:class:`ClassificationResult` with the label, the class probabilities, a Grad-CAM heatmap
on the image's own grid and, for volumes, per-slice scores.  The network is a U-Net whose
per-voxel class evidence is pooled (see :mod:`napari_medgen.models.encoders`), so the
heatmap has the input's resolution.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from monai.transforms import ScaleIntensity
from monai.visualize import GradCAM

from ..data.normalize import apparent_modality, modality_of
from ..data.orientation import as_stored_like, stored_alike, stored_direction, turn_back, turned
from ..engine.device import select_device
from ..engine.fit import Budget, fit
from ..engine.jobs import Job
from ..errors import UserError
from ..io import Geometry
from ..models.checkpoint import Model, ModelFileError
from ..models.config import ClassificationParams, ModelConfig, Task
from ..models.encoders import (HEATMAP_LAYER, EvidenceClassifier, check_pooling, classifier_specs, pretrained_source,
                               size_multiple, transfer)
from .classify_data import DEFAULT_SPEC, as_image, as_images, default_spacing, encode_labels, prepare, to_image_grid
from .classify_training import ClassifierTask, NotValidatedWarning, classification_metrics, predict
from .model_fit import ModelMismatchWarning, extent_doubt, modality_doubt, spacing_doubt

DEFAULT_SIZE = {2: (128, 128), 3: (64, 64, 64)}


@dataclass
class ClassificationResult:
    """One image's class, probabilities (class -> p), heatmap (image grid) and, for volumes, slice scores."""

    label: object
    probabilities: dict
    heatmap: Optional[np.ndarray] = None
    geometry: Optional[Geometry] = None
    target: object = None  # the class the heatmap explains
    slice_scores: Optional[np.ndarray] = None  # volumes: heatmap maximum per slice along axis 0
    top_slices: list = field(default_factory=list)  # slice indices, highest score first
    warnings: list = field(default_factory=list)  # sentences: how the image differs from the training images


def unit_scale(cam: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1], highest = 1 (MONAI's default CAM normaliser flips magnitudes)."""
    scale = ScaleIntensity(minv=0.0, maxv=1.0)
    return torch.stack([torch.as_tensor(scale(c)) for c in cam])


def network(model: Model) -> EvidenceClassifier:
    """The classifier as one module (shares the model's networks)."""
    p = model.params
    return EvidenceClassifier(model.networks["net"], model.networks["head"], p.sharpness, p.pooling)


def load_classifier(model) -> Model:
    """A classification Model from a Model or a ``.medgen.pt`` path."""
    if isinstance(model, Model):
        if model.task != Task.CLASSIFICATION:
            raise ModelFileError(f"{model.name} is a {model.task} model, not a classification model.")
        return model
    return Model.load(model, expect=Task.CLASSIFICATION)


def _split(y: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) indices: ``fraction`` of each class with >= 2 images, at least one each."""
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = 0 if len(idx) < 2 or fraction <= 0 else min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        val += list(idx[:k])
        train += list(idx[k:])
    return np.array(sorted(train)), np.array(sorted(val), int)


def train_classifier(images, labels, *, classes=None, val_images=None, val_labels=None,
                     val_fraction: float = 0.2, size=None, spacing=None, normalization: dict | None = None,
                     pretrained=None, freeze: float = 0.3, body: dict | None = None, pooling: str = "lse",
                     sharpness: float = 5.0,
                     steps: int | None = 300, seconds: float | None = None, lr: float | None = None,
                     batch_size: int = 8, augment: bool = True, patience: int | None = None,
                     val_every: int | None = None, device="auto", seed: int = 0, name: str = "classifier",
                     progress=None, stop=None, cancel=None) -> tuple[Model, dict]:
    """Train a classifier on ``images`` (arrays, ImageData or files; all 2D or all 3D) and their ``labels``.

    Every image is normalised (``normalization``; default ``auto``: a HU window for CT, per-image
    percentiles 0.5-99.95 for MRI), resampled to ``spacing`` (mm, one number for isotropic; default: the
    median field of view fits ``size``) and centred in ``size``; :func:`classify` does the same.  A finer
    grid (e.g. ``spacing=1.2, size=(160, 160)`` for a head) helps findings a few mm wide on fine scans,
    at more time per step.  ``pretrained``: a segmentation U-Net (``"brain-tissue-2d"``, a ``.medgen.pt``
    file, a MONAI bundle folder), a VAE ``.medgen.pt``, a MONAI UNet state dict or a torchvision ResNet
    state dict (2D: the body becomes a ResNet-encoder U-Net); its layers are frozen for the first
    ``freeze`` fraction of the budget.  Validation: ``val_images``/``val_labels``, else a stratified
    ``val_fraction``; ``history["metrics"]`` holds accuracy, balanced accuracy, AUROC per class and
    the confusion matrix of the returned weights.  ``pooling``: how per-voxel class evidence becomes
    the image's score: ``"lse"`` (log-sum-exp with ``sharpness``; a finding anywhere decides) or
    ``"mean"`` (the whole image decides: scan type, sequence, body part).  Budget, stop, cancel and
    progress are :func:`~napari_medgen.engine.fit.fit`'s.
    """
    job = Job.of(progress, stop, cancel)
    imgs = as_images(images)
    orientation = stored_direction(imgs[0])  # 3D: every volume stored as the first is (no resampling)
    imgs, _ = stored_alike(imgs, orientation)
    labels = list(labels)
    if len(labels) != len(imgs):
        raise UserError(f"There are {len(imgs)} images but {len(labels)} labels; give one label per image.")
    classes, y = encode_labels(labels, classes)
    check_pooling(pooling)  # before any image is prepared
    dims = imgs[0].data.ndim
    src_body, state, source = (None, None, "")
    if pretrained is not None:
        src_body, state, source = pretrained_source(pretrained, dims)
    specs = classifier_specs(len(classes), dims, {**(src_body or {}), **(body or {})})
    size = tuple(int(s) for s in (size or DEFAULT_SIZE[dims]))
    mult = size_multiple(specs["net"].args)
    if len(size) != dims or any(s % mult for s in size):
        raise UserError(f"The network size must be {dims} numbers, each a multiple of {mult} (got {list(size)}).")
    spacing = default_spacing(imgs, size) if spacing is None else spacing
    spacing = [float(spacing)] * dims if np.isscalar(spacing) else [float(s) for s in spacing]
    if len(spacing) != dims or min(spacing) <= 0:
        raise UserError(f"The grid spacing must be {dims} positive numbers in mm (got {spacing}).")
    spec = dict(normalization or DEFAULT_SPEC)
    params = ClassificationParams(classes=classes, spatial_dims=dims, size=list(size), spacing=spacing,
                                  pretrained=source, sharpness=float(sharpness), pooling=pooling,
                                  orientation=None if orientation is None else orientation.tolist())
    config = ModelConfig(task=Task.CLASSIFICATION, name=name, networks=specs, params=params,
                         normalization=spec, description=f"{dims}D classifier of {', '.join(map(str, classes))}"
                         + (f", from the {source}" if source else ""))
    torch.manual_seed(seed)
    model = Model(config)
    frozen = []
    if state is not None:
        frozen = ["body." + k for k in transfer(model.networks["net"], state)]
    job.report(0, 1, "preparing images")
    x = np.stack([prepare(im, spec, spacing, size)[0] for im in imgs])
    rng = np.random.default_rng(seed)
    if val_images is not None:
        vx = np.stack([prepare(im, spec, spacing, size)[0] for im in stored_alike(as_images(val_images), orientation)[0]])
        val = (vx, encode_labels(list(val_labels), classes)[1])
        tr = np.arange(len(x))
    else:
        tr, vi = _split(y, val_fraction, rng)
        val = (x[vi], y[vi]) if len(vi) else None
    net = network(model)
    task = ClassifierTask(net, x[tr], y[tr], classes, val=val, budget=Budget(steps, seconds), frozen=frozen,
                          freeze=freeze if frozen else 0.0, lr=lr or (5e-4 if frozen else 1e-3),
                          batch_size=batch_size, augment=augment, seed=seed)
    history = fit(task, Budget(steps, seconds), device=device, patience=patience,
                  val_every=val_every or max(1, (steps or 300) // 10), progress=job,
                  message="training classifier")
    if val is not None:
        history["metrics"] = classification_metrics(predict(net.eval(), val[0], "cpu"), val[1], classes)
    if val is None or np.bincount(val[1], minlength=len(classes)).min() < 2:
        warnings.warn(NotValidatedWarning("Fewer than 2 images of each class were held out for validation, so "
                                          "nothing says whether the classifier learned anything; give more "
                                          "images or val_images."), stacklevel=2)
    history.update(classes=classes, n_train=int(len(tr)), n_val=0 if val is None else int(len(val[1])),
                   pretrained=source, frozen_layers=len(frozen))
    model.config.params.metrics = history.get("metrics")
    model.config.training = {k: history[k] for k in ("best_step", "best_metric", "returned", "stopped", "seconds",
                                                     "device", "n_train", "n_val", "frozen_layers")}
    model.config.training.update(modality=training_modality(imgs), field_of_view_mm=field_of_view(imgs))
    return model, history


def classify(model, image, *, target=None, heatmap: bool = True, device="auto",
             progress=None, stop=None) -> ClassificationResult:
    """Classify one image (array, ImageData or file); the heatmap explains ``target`` (default: the label)."""
    job = Job.of(progress, stop)
    m = load_classifier(model)
    p = m.params
    img = as_image(image)
    if img.data.ndim != p.spatial_dims:
        raise UserError(f"This classifier takes {p.spatial_dims}D images; {img.name} is {img.data.ndim}D.")
    how = as_stored_like(img, p.orientation)
    if how is not None:  # a volume stored otherwise than the training volumes: classified as they were stored
        result = classify(m, turned(img, how), target=target, heatmap=heatmap, device=device, progress=job)
        result.geometry = img.geometry
        if result.heatmap is not None:
            result.heatmap = turn_back(result.heatmap, how)
            result.slice_scores, result.top_slices = _slices(result.heatmap)
        return result
    doubts = classifier_doubts(m, img)
    for doubt in doubts:
        warnings.warn(ModelMismatchWarning(doubt), stacklevel=2)
    dev = select_device(device)
    net = network(m).to(dev).eval()
    x, placement = prepare(img, m.config.normalization, p.spacing, p.size)
    job.report(0, 2, "classifying")
    job.check()
    with torch.no_grad():
        probs = predict(net, x[None], dev)[0]
    classes = list(p.classes)
    label = classes[int(probs.argmax())]
    result = ClassificationResult(label, {c: float(q) for c, q in zip(classes, probs)}, geometry=img.geometry,
                                  warnings=doubts)
    if heatmap:
        job.report(1, 2, "heatmap")
        job.check()
        result.target = label if target is None else target
        if result.target not in classes:
            raise UserError(f"'{result.target}' is not one of the classes {', '.join(map(str, classes))}.")
        cam = GradCAM(net, target_layers=HEATMAP_LAYER, postprocessing=unit_scale)
        xt = torch.as_tensor(x)[None, None].to(dev).requires_grad_(True)
        with torch.enable_grad():
            hm = cam(xt, class_idx=classes.index(result.target))[0, 0].detach().float().cpu().numpy()
        result.heatmap = to_image_grid(hm, placement, img.data.shape)
        if img.data.ndim == 3:
            result.slice_scores, result.top_slices = _slices(result.heatmap)
    net.cpu()
    job.report(2, 2, "done")
    return result


def classifier_doubts(model: Model, image) -> list[str]:
    """How ``image`` differs from the images ``model`` was trained on: modality, voxels coarser than its grid,
    a field of view far wider or narrower (one sentence each; segmentation's checks, :mod:`.model_fit`)."""
    p, name, spacing = model.params, model.name, np.asarray(image.geometry.spacing, dtype=float)
    view = float(max(np.asarray(p.size) * np.asarray(p.spacing)))  # the grid: what it sees of an image, mm
    fov = model.config.training.get("field_of_view_mm") or [view, view]  # (a model from before it was recorded)
    doubts = [modality_doubt(image.data, str(model.config.training.get("modality", "")), name, modality_of(image),
                             "its class is likely wrong"),
              spacing_doubt(spacing, p.spacing, name, finer=False),  # a finer image is shrunk as the training ones
              extent_doubt(float(max(np.asarray(image.data.shape) * spacing)), fov, name, view)]
    return [d for d in doubts if d]


def field_of_view(images: list) -> list[float]:
    """The narrowest and widest of the images' largest extents, mm."""
    extents = [float(max(np.asarray(im.data.shape) * np.asarray(im.geometry.spacing))) for im in images]
    return [min(extents), max(extents)]


def training_modality(images: list) -> str:
    """The one modality of all training images (named by their metadata, else CT when in Hounsfield units), else ""."""
    found = {apparent_modality(im.data, modality_of(im)) for im in images}
    return found.pop() if len(found) == 1 else ""


def _slices(heatmap: np.ndarray) -> tuple:
    """The heatmap's maximum per slice along axis 0, and the slices ranked by it."""
    scores = heatmap.reshape(len(heatmap), -1).max(1)
    return scores, [int(i) for i in np.argsort(-scores, kind="stable")]

