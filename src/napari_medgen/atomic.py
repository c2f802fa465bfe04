"""Writing a file under a temporary name, then moving it into place: readers see the old file or the whole new
one, and a failed or cancelled write leaves neither a temporary file nor a changed file behind.

One naming rule for every writer: ``x.nii.gz`` is written as ``.x.partial.nii.gz`` beside it (hidden, same folder
so the move is atomic, same extension so ITK picks the same writer), or, for a writer of several files (a .mhd
header and its data file), into a folder of that name; :func:`final_path` maps a temporary name in an error back
to the user's path.  (The batch verbs' ``.out.csv.part*.partial`` files are another thing: progress logs that a
rerun resumes from, never moved into place.)
"""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .naming import image_stem

_PARTIAL = re.compile(r"\.(?P<stem>.+)\.partial(?P<ext>(?:\.\w+)*)")


def partial_path(path: "str | os.PathLike") -> Path:
    """The temporary name ``path`` is written under: ``.x.partial.nii.gz`` for ``x.nii.gz``,
    ``.m.medgen.partial.pt`` for ``m.medgen.pt``."""
    p = Path(path)
    stem = image_stem(p.name)
    stem = p.stem if stem == p.name else stem
    return p.with_name(f".{stem}.partial{p.name[len(stem):]}")


def final_path(path: "str | os.PathLike") -> Path:
    """The user's path for a temporary one (a file in a temporary folder goes beside it); other paths as given."""
    p = Path(path)
    if _PARTIAL.fullmatch(p.parent.name):
        return p.parent.parent / p.name
    temp = _PARTIAL.fullmatch(p.name)
    return p.with_name(temp["stem"] + temp["ext"]) if temp else p


def in_users_names(text: str, path: "str | os.PathLike") -> str:
    """``text`` (a library's error message) with the temporary names written for ``path`` put back as ``path``."""
    p, tmp = Path(path), partial_path(path)
    return text.replace(str(tmp / p.name), str(p)).replace(str(tmp), str(p))


@contextmanager
def replacing(path: "str | os.PathLike", overwrite: bool = True, folder: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write; when the block ends it replaces ``path``, when it raises it is removed.

    Refuses an existing ``path`` unless ``overwrite``; creates missing parent folders.  ``folder``: yield a
    temporary folder instead, for writers that put files side by side (a .mhd header and its data file): the
    caller writes ``path.name`` and its companions there; they are moved beside ``path``, ``path`` itself last.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; not overwriting it.")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(p)
    try:
        _remove(tmp)  # left by a killed run
        if folder:
            tmp.mkdir()
        yield tmp
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == p.name) if folder else [tmp]:
            os.replace(f, p.parent / f.name if folder else p)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
