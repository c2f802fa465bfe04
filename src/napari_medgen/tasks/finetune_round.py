"""One round of the fine-tune loop (the Fine-tune panel's Train): fine-tune, complete the painting, and save the
round's painting, model and history in a project folder together (nothing of a cancelled round); and resuming a project folder another
day (:func:`open_project`: its last round's model and annotations, checked to be of the same image)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..engine.jobs import Job
from ..errors import UserError
from ..io import ImageData, read_image, write_image
from .finetune import complete_labels, finetune

PREVIEW_EVERY = 5.0  # seconds between live previews of the prediction while training
ROUND_FILES = ("annotations_round{:02d}.nii.gz", "history_round{:02d}.json", "model_round{:02d}.medgen.pt")
ROUND_FILE = re.compile(r"model_round(\d+)\.medgen\.pt")  # the model marks a round as saved


def saved_rounds(project) -> list[int]:
    """The round numbers whose model ``project`` holds, in order (none for a missing or empty folder)."""
    folder = Path(project) if project else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for f in folder.iterdir() if (m := ROUND_FILE.fullmatch(f.name)))


def open_project(project, image: ImageData) -> tuple[int, Optional[Path], Optional[ImageData]]:
    """``(last round, its model file, its annotations)`` saved in ``project`` (``(0, None, None)`` when it holds
    none; annotations None when that round's file is missing), refused in one sentence when that round's annotations
    are not on ``image``'s voxel grid."""
    rounds = saved_rounds(project)
    if not rounds:
        return 0, None, None
    folder, last = Path(project), rounds[-1]
    path, _, model = (folder / name.format(last) for name in ROUND_FILES)
    if not path.is_file():  # its model alone: nothing to check the image against, nothing to show
        return last, model, None
    annotations = read_image(path)
    if annotations.data.shape != np.shape(image.data) or not annotations.geometry.same_grid(image.geometry):
        raise UserError(f"The project folder {folder.name} holds the rounds of another image (its annotations are "
                        f"{'x'.join(map(str, annotations.data.shape))} voxels on another grid); choose another "
                        "folder for this image.")
    return last, model, annotations


def train_round(image: ImageData, labels: np.ndarray, start, *, project: Optional[str] = None,
                round_index: int = 1, axis: Optional[int] = None, device: str = "auto", sparse: bool = False,
                background_label: Optional[int] = None, progress=None, stop=None, cancel=None, **options) -> tuple:
    """One round of the loop: fine-tune, complete the painting, save the round's annotations, model and history.
    Returns ``(model, history, prediction)``.  A ``project`` folder that holds another image's rounds
    is refused before anything is written; the rounds saved there before are never overwritten (the round is
    numbered after them); a cancelled or failed round writes nothing there (its files are written at its end)."""
    job = Job.of(progress, stop, cancel)
    folder = Path(project) if project else None
    if folder is not None:
        round_index = max(round_index, open_project(folder, image)[0] + 1)
    model, history = finetune(start, image, labels, axis=axis, device=device, sparse=sparse,
                              background_label=background_label, preview_every=PREVIEW_EVERY, keep_prior=True,
                              progress=job, **options)
    job.report(1, 1, "completing the painting")
    prediction = complete_labels(model, image, labels, sparse=sparse, background_label=background_label,
                                 device=device, progress=Job(cancel=job.cancelled))  # Stop keeps this round
    job.check(stop_cancels=False)
    history["round"] = round_index
    if folder is not None:
        _save_round(folder, round_index, image, labels, model, history)
    return model, history, prediction


def _save_round(folder: Path, index: int, image: ImageData, labels, model, history: dict) -> None:
    """Write a round's annotations, history and model into ``folder`` together: each to a hidden name first, then
    renamed, the model (by which the round is found) last; nothing is left of a round whose writing failed."""
    summary = {k: v for k, v in history.items() if k not in ("step", "loss", "pseudo_loss")}
    names = [name.format(index) for name in ROUND_FILES]
    parts = [folder / f".part-{name}" for name in names]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        write_image(parts[0], labels, image.geometry, overwrite=True)
        parts[1].write_text(json.dumps(summary, indent=1, default=str))
        model.save(parts[2])
        for part, name in zip(parts, names):
            os.replace(part, folder / name)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
