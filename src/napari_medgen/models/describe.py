"""What a model file says about itself, in a few lines of words (``napari-medgen info MODEL``)."""
from __future__ import annotations

from .checkpoint import Model
from .config import Task
from .segmentation import model_card

KINDS = {"auto": "a window for CT, each image's percentiles otherwise",
         "sequence-window": "each series' own window (percentiles over all its frames)"}


def _classes(params) -> str:
    classes = getattr(params, "classes", None)
    if isinstance(classes, int):
        return f"{classes} label values"
    names = [c.get("name", "?") if isinstance(c, dict) else str(c) for c in classes or []]
    return ", ".join(names)


def _normalisation(spec) -> str:
    spec = spec or {}
    if spec.get("kind") == "window":
        return f"a fixed window {spec.get('low'):g} to {spec.get('high'):g} (e.g. Hounsfield units)"
    if spec.get("kind") == "percentile":
        return f"each image's percentiles {spec.get('lower'):g} to {spec.get('upper'):g}"
    return KINDS.get(spec.get("kind"), spec.get("kind", "none"))


def describe(model: Model, name: str = "") -> list[str]:
    """Lines saying what ``model`` is, what it was trained on and how, and which version saved it."""
    cfg, params = model.config, model.params
    training = dict(cfg.training or {})
    lines = [f"{name or cfg.name}: a {cfg.task.value} model named '{cfg.name}'"]
    if cfg.description:
        lines.append(f"  {cfg.description}")
    if classes := _classes(params):
        lines.append(f"  classes: {classes}")
    card = model_card(model) if cfg.task == Task.SEGMENTATION else training.get("card") or {}
    modality = training.get("modality") or card.get("modality")
    if modality:
        lines.append(f"  trained on: {modality}" + (f" ({card['anatomy']})" if card.get("anatomy") else ""))
    if getattr(params, "spacing", None):
        lines.append(f"  voxel spacing it works at: {' x '.join(f'{s:g}' for s in params.spacing)} mm")
    lines.append(f"  intensities: {_normalisation(cfg.normalization)}")
    finetune = getattr(params, "finetune", None) or {}
    if finetune.get("rounds"):
        lines.append(f"  fine-tuned in {finetune['rounds']} round(s) on painted slices")
    done = [f"{float(training['seconds']):.0f} s"] if training.get("seconds") else []
    if training.get("returned") or training.get("best_step") is not None:
        done.append(str(training.get("returned") or f"best step {training['best_step']}"))
    if training.get("n_train"):
        what = "slices" if cfg.task in (Task.VAE, Task.GAN, Task.CONDITIONAL_GAN) else "images"
        done.append(f"{training['n_train']} training / {training.get('n_val', 0)} validation {what}")
    if training.get("device"):
        done.append(f"on {training['device']}")
    if done:
        lines.append("  training: " + ", ".join(done))
    metrics = getattr(params, "metrics", None) or {}
    if "balanced_accuracy" in metrics:
        lines.append(f"  validation: balanced accuracy {metrics['balanced_accuracy']:.2f} on {metrics.get('n', '?')} "
                     "images")
    if model.saved:
        lines.append(f"  saved by {model.saved.get('by', '?')} at {model.saved.get('at', '?')}")
    return lines
