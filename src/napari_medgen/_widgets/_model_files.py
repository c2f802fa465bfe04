"""Saving a widget's model through a file dialog, with one-sentence messages."""
from __future__ import annotations

from typing import Optional

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ..models.checkpoint import SUFFIX


def save_model_file(parent, model, kind: str, path: Optional[str] = None) -> Optional[str]:
    """Save ``model`` to ``path`` (asking for one when None); returns the path written."""
    if model is None:
        show_error(f"No {kind} to save yet: train one first.")
        return None
    if path is None:
        path, _ = QFileDialog.getSaveFileName(parent, f"Save {kind}", kind.lower() + SUFFIX, f"Models (*{SUFFIX})")
        if not path:
            return None
    if not path.endswith(SUFFIX):
        path += SUFFIX
    model.save(path)
    show_info(f"Saved {path}")
    return path
