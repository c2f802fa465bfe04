"""Options and output checks shared by the model verbs."""
from __future__ import annotations

import os
from pathlib import Path


def add_common(p) -> None:
    """``--device``, ``--overwrite`` and ``--quiet`` for a verb's parser."""
    p.add_argument("--device", default="auto",
                   help="compute device: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar on stderr")


def add_budget(p, *, seconds: "float | None" = None, steps: "int | None" = None) -> None:
    """``--seconds`` and ``--steps``: the training budget every trainer takes (whichever ends first)."""
    p.add_argument("--seconds", type=float, default=seconds,
                   help="training budget in seconds of wall time; training stops at whichever of --seconds/--steps "
                        f"ends first (default: {seconds if seconds is not None else 'no time limit'})")
    p.add_argument("--steps", type=int, default=steps,
                   help=f"training budget in optimizer steps (default: {steps if steps is not None else 'no step limit'})")


def check_output(path: "str | os.PathLike", overwrite: bool) -> None:
    """Before any computation: refuse to replace an existing file unless ``--overwrite`` was given,
    and refuse an output that cannot be written (a read-only folder, a file in the way)."""
    from ..io.write import check_writable

    p = Path(path)
    if p.is_dir():  # an output folder
        check_writable(p / ".napari-medgen-check", overwrite=True)
        return
    if p.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; use --overwrite to replace it.")
    check_writable(p, overwrite=True)


def check_model_output(path: "str | os.PathLike", overwrite: bool) -> Path:
    """:func:`check_output` for a model file, whose name must end with ``.medgen.pt``."""
    from ..errors import UserError
    from ..models.checkpoint import SUFFIX

    p = Path(path)
    if not p.name.endswith(SUFFIX):
        raise UserError(f"The model file name must end with {SUFFIX}.")
    check_output(p, overwrite)
    return p
