"""Options and output checks shared by the model verbs."""
from __future__ import annotations

import os
from pathlib import Path


def add_common(p) -> None:
    """``--device``, ``--overwrite`` and ``--quiet`` for a verb's parser."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def check_output(path: "str | os.PathLike", overwrite: bool) -> None:
    """Refuse to replace an existing file unless ``--overwrite`` was given."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; use --overwrite to replace it.")
