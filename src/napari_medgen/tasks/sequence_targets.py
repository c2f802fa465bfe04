"""The targets CSV of time-series models: one reader for the Time series panel and ``sequence-train``.

A header row names the series column (``layer``, ``file``, ``sequence``, ``path`` or ``name``: a layer
name, or a file or folder of frames relative to the training folder) and the target column (``target``,
``label``, ``value`` or ``class``: a class name, or a number for regression); an optional ``region``
column names a mask file.  Every table the reader refuses is refused with the same sentence in both.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Optional

from ..errors import UserError
from ..naming import image_stem

SERIES_COLUMNS = ("layer", "file", "sequence", "path", "name")
TARGET_COLUMNS = ("target", "label", "value", "class")
REGION_COLUMN = "region"


class TargetsError(UserError):
    """A targets CSV that cannot say which target is whose."""


@dataclass(frozen=True)
class TargetRow:
    """One row: the series as written, its target, its region as written ("" for none), its line in the file."""

    series: str
    target: str
    region: str
    line: int


def read_targets(path, numbers: bool = False) -> list[TargetRow]:
    """The rows of a targets CSV (a series named twice with one target counts once); ``numbers``: every target
    must be a number (regression).  One sentence (:class:`TargetsError`) for a table that cannot be used."""
    path = Path(path)
    title = path.name
    if path.is_dir():
        raise TargetsError(f"{path} is a folder; give the targets CSV file.")
    if not path.is_file():
        raise TargetsError(f"The targets CSV {path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = {c.strip().lower(): c for c in reader.fieldnames or [] if c and c.strip()}
            key = next((cols[c] for c in SERIES_COLUMNS if c in cols), None)
            val = next((cols[c] for c in TARGET_COLUMNS if c in cols), None)
            if key is None or val is None:
                raise TargetsError(f"{title} needs a 'layer' (or 'file' or 'sequence') column and a 'target' "
                                   f"column; its header has {', '.join(cols) or 'no names'}.")
            region = cols.get(REGION_COLUMN)
            rows = [_row(line, reader.line_num, key, val, region, title, numbers) for line in reader
                    if any((c or "").strip() for c in line.values() if isinstance(c, str))]
    except (csv.Error, UnicodeDecodeError) as err:
        raise TargetsError(f"{title} is not a CSV table of text ({err}).") from None
    except OSError as err:
        raise TargetsError(f"Cannot read {title}: {err.strerror or err}.") from None
    if not rows:
        raise TargetsError(f"{title} has a header but no rows; give one row per series: its {key} and {val}.")
    return _once(rows, title)


def _row(line: dict, num: int, key: str, val: str, region: Optional[str], title: str, numbers: bool) -> TargetRow:
    series, target = (line.get(key) or "").strip(), (line.get(val) or "").strip()
    for cell, col in ((series, key), (target, val)):
        if not cell:
            raise TargetsError(f"Line {num} of {title} has no {col}; give every row a {key} and a {val}.")
    if numbers and not _is_number(target):
        raise TargetsError(f"Line {num} of {title} gives '{series}' the target '{target}', which is not a number; "
                           "regression needs a number in every row.")
    return TargetRow(series, target, (line.get(region) or "").strip() if region else "", num)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _once(rows: list[TargetRow], title: str) -> list[TargetRow]:
    """Each image once: rows naming one image (less its extension) must agree on its target."""
    first: dict[PurePath, TargetRow] = {}
    out = []
    for r in rows:
        kept = first.setdefault(_image(r.series), r)
        if kept is r:
            out.append(r)
        elif kept.target != r.target:
            raise _conflict(title, kept.series, r.series)
    return out


def _image(series: str) -> PurePath:
    p = PurePath(series.replace("\\", "/"))
    return p.with_name(image_stem(p.name)) if p.name else p


def _conflict(title: str, a: str, b: str) -> TargetsError:
    return TargetsError(f"{title} gives '{a}' and '{b}' different targets, but both name the image "
                        f"'{_image(b).name}'; keep one row for it.")


def unknown(row: TargetRow, title: str, where: str, region: bool = False) -> TargetsError:
    """The sentence for a row whose series (or region) is not ``where`` (in a folder, an open layer)."""
    what = f"the region '{row.region}'" if region else f"'{row.series}'"
    return TargetsError(f"Line {row.line} of {title} names {what}, which is not {where}.")


def by_image(rows: list[TargetRow], title: str) -> dict:
    """``{file or layer name less its image extension: the first row naming it}`` for matching layers, which
    carry no folder: rows naming one image in different folders must agree on its target."""
    images: dict = {}
    for r in rows:
        kept = images.setdefault(_image(r.series).name, r)
        if kept.target != r.target:
            raise _conflict(title, kept.series, r.series)
    return images


def in_folder(rows: list[TargetRow], folder, title: str) -> list[tuple[Path, str, Optional[Path]]]:
    """``(series file, target, region file or None)`` per row, resolved against ``folder``; a series named
    without its image extension (as a layer is) is the one image file of that name there."""
    folder = Path(folder)
    out = []
    for r in rows:
        series = _find(folder, r.series)
        if series is None:
            raise unknown(r, title, f"in {folder}")
        region = None
        if r.region:
            region = _find(folder, r.region)
            if region is None:
                raise unknown(r, title, f"in {folder}", region=True)
        out.append((series, r.target, region))
    return out


def _find(folder: Path, cell: str) -> Optional[Path]:
    p = folder / cell
    if p.exists():
        return p
    if image_stem(p.name) != p.name or not p.parent.is_dir():
        return None
    found = [q for q in p.parent.iterdir() if image_stem(q.name) == p.name]
    return found[0] if len(found) == 1 else None
