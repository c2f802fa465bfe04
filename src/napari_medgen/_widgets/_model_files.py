"""Saving a widget's model through a file dialog, with one-sentence messages."""
from __future__ import annotations

import os
from typing import Optional

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QMessageBox

from ..errors import UserError
from ..io.write import check_writable
from ..models.checkpoint import SUFFIX


def save_model_file(parent, model, kind: str, path: Optional[str] = None) -> Optional[str]:
    """Save ``model`` to ``path`` (asking for one when None); returns the path written (None if not)."""
    if model is None:
        show_error(f"No {kind} to save yet: train one first.")
        return None
    if path is None:
        path, _ = QFileDialog.getSaveFileName(parent, f"Save {kind}", kind.lower().replace(" ", "-") + SUFFIX,
                                              f"Models (*{SUFFIX})")
        if not path:
            return None
    if not path.endswith(SUFFIX):
        path += SUFFIX  # a name nobody was asked about replacing yet
        if os.path.exists(path) and not _replace(parent, kind, path):
            return None
    try:
        check_writable(path, overwrite=True)  # torch's own write errors are RuntimeErrors without a sentence
        path = model.save(path)
    except UserError as err:
        show_error(str(err))
        return None
    except OSError as err:
        show_error(f"Could not write {path}: {err.strerror or err}.")
        return None
    show_info(f"Saved {path}")
    return path


def _replace(parent, kind: str, path: str) -> bool:
    """Ask before replacing ``path``."""
    answer = QMessageBox.question(parent, f"Save {kind}", f"{os.path.basename(path)} already exists. Replace it?",
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes
