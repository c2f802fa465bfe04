"""The images one batch input holds, in the order of their files, each with a name and a source of its own.

A folder may hold several images whose own names say nothing apart: every single-file DICOM series of an X-ray
folder is "CR series 1".  Each image is named by the file it came from where it came from one file (a volume
file, a one-file DICOM series), else by its own name, and a name two images would still share gets a count;
the batch verbs write one output and one table row per image with it, never overwriting each other's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..naming import distinct, image_stem


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
    firsts = [_first_file(im) for im in images]
    order = sorted(range(len(images)), key=lambda i: (firsts[i] is None, str(firsts[i] or ""), i))
    images, firsts = [images[i] for i in order], [firsts[i] for i in order]
    one = [f if f is not None and int(im.metadata.get("n_files", 1)) == 1 else None  # an image of one file: its name
           for im, f in zip(images, firsts)]
    own = [image_stem(f.name) if f else str(im.name) for im, f in zip(images, one)]
    names = distinct(own, [[]] * len(own))  # a name two images would share gets a count
    return [CaseItem(im, name, str(f) if f else f"{case}/{name}") for im, f, name in zip(images, one, names)]


def _first_file(image) -> "Path | None":
    """The (first) file an image came from, as the reader recorded it; None where unknown (picture frames)."""
    source = Path(str(image.metadata.get("source", "")))
    if source.is_file():
        return source
    first = image.metadata.get("first_file")
    return Path(first) if first else None
