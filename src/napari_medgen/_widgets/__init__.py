"""napari dock widgets: one per file, each a :class:`~._panel.Panel` running tasks through :class:`~._runner.JobRunner`.

Importing this package first makes the viewer process safe from triton's LLVM clash with
Mesa (see :mod:`._triton_guard`); every widget module lives here, so every panel gets it.
"""
from ._triton_guard import install as _install_triton_guard

_install_triton_guard()
