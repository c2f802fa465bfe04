"""The images one batch input holds, in the order of their files, each with a name and a source of its own.

A folder may hold several images whose own names say nothing apart: every single-file DICOM series of an X-ray
folder is "CR series 1".  Each image is named by the file it came from where it came from one file (a volume
file, a one-file DICOM series), else by its own name, and a name two images would still share gets a count;
the batch verbs write one output and one table row per image with it, never overwriting each other's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..naming import image_stem

SERIES_UID = "0020|000e"


@dataclass
class CaseItem:
    """One image of a batch input: ``name`` tells it apart from the input's other images ("" when it is the
    only one); ``source`` is what a table row names (its file, else ``<input>/<name>``)."""

    image: object
    name: str
    source: str


def case_items(case: Path) -> list[CaseItem]:
    """The images of ``case`` (a file or a folder), in the order of the (first) file each came from."""
    from ..io import read_path

    images = read_path(case)
    if len(images) == 1:
        return [CaseItem(images[0], "", str(case))]
    files = _files_of(case, images)
    order = sorted(range(len(images)), key=lambda i: (not files[i], str(files[i][:1]), i))
    images, files = [images[i] for i in order], [files[i] for i in order]
    one = [f[0] if len(f) == 1 else None for f in files]  # an image of one file is named by it
    own = [image_stem(f.name) if f else str(im.name) for im, f in zip(images, one)]
    names = [f"{n} ({own[:i].count(n) + 1})" if own.count(n) > 1 else n for i, n in enumerate(own)]
    return [CaseItem(im, name, str(f) if f else f"{case}/{name}") for im, f, name in zip(images, one, names)]


def _files_of(case: Path, images: list) -> list[list[Path]]:
    """The files each image came from, sorted (empty where unknown: a time series of picture frames)."""
    from ..io.timeseries import dicom_headers

    uids = {im.metadata.get("series_uid") for im in images} - {None}
    by_uid: dict = {}
    if uids and case.is_dir():  # which DICOM files hold which series
        for f, info in dicom_headers(case).items():
            uid = info.GetMetaData(SERIES_UID).strip() if info is not None and info.HasMetaDataKey(SERIES_UID) else ""
            if uid in uids:
                by_uid.setdefault(uid, []).append(f)
    out = []
    for im in images:
        source = Path(str(im.metadata.get("source", "")))
        out.append([source] if source.is_file() else sorted(by_uid.get(im.metadata.get("series_uid"), [])))
    return out
