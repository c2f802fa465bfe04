"""One round of the fine-tune loop (the Fine-tune panel's Train): autosave the painting in a project folder,
fine-tune, complete the painting, autosave the model and its history."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..engine.jobs import Job
from ..io import ImageData, write_image
from .finetune import complete_labels, finetune

PREVIEW_EVERY = 5.0  # seconds between live previews of the prediction while training


def train_round(image: ImageData, labels: np.ndarray, start, *, project: Optional[str] = None,
                round_index: int = 1, axis: Optional[int] = None, device: str = "auto", sparse: bool = False,
                background_label: Optional[int] = None, progress=None, stop=None, **options) -> tuple:
    """One round of the loop: autosave the annotations, fine-tune, complete the painting, autosave
    the model.  Returns ``(model, history, prediction)``."""
    job = Job.of(progress, stop)
    folder = Path(project) if project else None
    if folder is not None:
        write_image(folder / f"annotations_round{round_index:02d}.nii.gz", labels, image.geometry, overwrite=True)
    model, history = finetune(start, image, labels, axis=axis, device=device, sparse=sparse,
                              background_label=background_label, preview_every=PREVIEW_EVERY, progress=job, **options)
    job.report(1, 1, "completing the painting")
    prediction = complete_labels(model, image, labels, sparse=sparse, background_label=background_label,
                                 device=device)
    if folder is not None:
        model.save(folder / f"model_round{round_index:02d}.medgen.pt")
        summary = {k: v for k, v in history.items() if k not in ("step", "loss", "pseudo_loss")}
        (folder / f"history_round{round_index:02d}.json").write_text(json.dumps(summary, indent=1, default=str))
    return model, history, prediction
