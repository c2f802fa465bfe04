"""The one family of errors a user can cause.

Anything raised as :class:`UserError` is shown as its one sentence (a napari
notification, one CLI line with exit status 2); any other exception is a bug and
is shown with its traceback in the log.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input, a wrong model file, an impossible request: one clear sentence, nothing changed."""


class NothingLearnedError(UserError):
    """Training ran but the model never learned what it was asked to; no model is handed back."""
