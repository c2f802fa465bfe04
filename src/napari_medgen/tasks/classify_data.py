"""Classifier inputs: images from arrays/ImageData/files, one resample-normalise-fit spec, label CSVs.

Every image, at training and at inference, goes through :func:`prepare`: intensity
normalisation by the model's spec (``auto``: a Hounsfield window for CT, per-image
percentiles 0.5-99.95 otherwise), anti-aliased resampling to the model's isotropic spacing, then a centred
crop or zero pad to the model's fixed size, so the matrix size carries no information.
:func:`to_image_grid` maps a map on the network grid back onto the image's own grid.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..data.normalize import normalize, resolve
from ..data.resample import resize, target_shape
from ..errors import UserError
from ..io import Geometry, ImageData, read_path


def as_image(item, name: str = "image") -> ImageData:
    """An ImageData from an ImageData, an array (unit spacing), a file or a DICOM folder (its first series)."""
    if isinstance(item, ImageData):
        img = item
    elif isinstance(item, (str, os.PathLike)):
        img = read_path(item)[0]
    else:
        data = np.asarray(item)
        if data.ndim not in (2, 3):
            raise UserError(f"Image {name} has {data.ndim} dimensions; give 2D slices or 3D volumes.")
        img = ImageData(data, Geometry.identity(data.ndim), name)
    if img.rgb or img.data.ndim != img.geometry.ndim:
        raise UserError(f"Image {img.name} is not a single-channel 2D or 3D image.")
    return img


def as_images(images) -> list[ImageData]:
    """A list of ImageData of one dimensionality (2D or 3D)."""
    if isinstance(images, (np.ndarray, ImageData, str, os.PathLike)):
        images = [images]
    out = [as_image(x, f"#{i + 1}") for i, x in enumerate(images)]
    if not out:
        raise UserError("No images were given.")
    dims = {im.data.ndim for im in out}
    if len(dims) > 1:
        raise UserError("The images mix 2D slices and 3D volumes; a classifier takes one kind.")
    return out


def default_spacing(images: list[ImageData], size) -> list[float]:
    """The isotropic spacing that fits the median image's field of view into ``size``."""
    need = [max(n * s / k for n, s, k in zip(im.data.shape, im.geometry.spacing, size)) for im in images]
    return [round(float(np.median(need)), 3)] * len(size)


@dataclass
class Placement:
    """Where an image sits on the network grid: its resampled shape and per-axis offset (pad > 0, crop < 0)."""

    shape: tuple
    offset: tuple


DEFAULT_SPEC = {"kind": "auto", "mri_upper": 99.95}


def image_spec(spec: dict | None, image: ImageData) -> dict:
    """The concrete normalisation of one image; ``auto``'s MRI percentiles may keep the top ``mri_upper``.

    The classifier's default keeps 99.95 % (not 99.5 %) below the top so that a small bright
    finding is not clipped to the level of normal bright tissue.
    """
    spec = dict(spec or DEFAULT_SPEC)
    out = resolve(spec, image.data, str(image.metadata.get("modality", "")))
    if spec["kind"] == "auto" and out["kind"] == "percentile" and "mri_upper" in spec:
        out["upper"] = float(spec["mri_upper"])
    return out


def prepare(image: ImageData, spec: dict | None, spacing, size) -> tuple[np.ndarray, Placement]:
    """Normalise, resample to ``spacing`` and centre in ``size``: a float32 array of shape ``size``.

    An image finer than ``spacing`` is low-passed first (Gaussian, sigma ``(factor - 1) / 2`` pixels,
    as scikit-image anti-aliases), so a 1 mm scan on a 1.8 mm grid looks like a 1.8 mm acquisition,
    not like the aliased texture that plain linear resampling leaves.
    """
    arr = normalize(image.data, image_spec(spec, image))
    sigma = [max(0.0, (t / s - 1) / 2) for s, t in zip(image.geometry.spacing, spacing)]
    if max(sigma) > 0:
        arr = ndimage.gaussian_filter(arr, sigma, mode="nearest")
    shape = target_shape(arr.shape, image.geometry.spacing, spacing)
    arr = resize(arr, shape)
    out = np.zeros(tuple(size), np.float32)
    offset = tuple((k - n) // 2 for n, k in zip(shape, size))
    out[_window(offset, shape, size, "net")] = arr[_window(offset, shape, size, "image")]
    return out, Placement(tuple(shape), offset)


def to_image_grid(values: np.ndarray, placement: Placement, shape) -> np.ndarray:
    """A map on the network grid (``size``) back on the image's own grid (``shape``), linear; 0 outside."""
    size = values.shape
    out = np.zeros(placement.shape, np.float32)
    out[_window(placement.offset, placement.shape, size, "image")] = \
        values[_window(placement.offset, placement.shape, size, "net")]
    return resize(out, tuple(shape))


def _window(offset, shape, size, side: str) -> tuple:
    """The overlapping region of the resampled image and the network grid, on one side."""
    idx = []
    for o, n, k in zip(offset, shape, size):
        start_net, start_img = max(o, 0), max(-o, 0)
        length = min(n - start_img, k - start_net)
        s = start_net if side == "net" else start_img
        idx.append(slice(s, s + length))
    return tuple(idx)


# --- labels --------------------------------------------------------------------------------------
def encode_labels(labels, classes=None) -> tuple[list, np.ndarray]:
    """``(classes, indices)``: classes sorted (or as given), each label's index; unknown labels refused."""
    labels = [x.item() if isinstance(x, np.generic) else x for x in labels]
    if any(x is None or (isinstance(x, str) and not x.strip()) for x in labels):
        raise UserError("Every image needs a label; some labels are empty.")
    if len({type(x) is str for x in labels}) > 1:
        raise UserError("Labels mix class names and numbers; use one kind.")
    if classes is None:
        classes = sorted(set(labels))
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [x for x in labels if x not in index]
    if unknown:
        raise UserError(f"Label '{unknown[0]}' is not one of the classes {', '.join(map(str, classes))}.")
    if len(classes) < 2:
        raise UserError(f"A classifier needs at least two classes; the labels name only '{classes[0]}'.")
    return classes, np.asarray([index[x] for x in labels], np.int64)


def read_label_csv(csv_path, folder=None) -> tuple[list[Path], list[str]]:
    """``(files, labels)`` from a CSV with columns ``file,label`` (files relative to ``folder`` or the CSV's)."""
    p = Path(csv_path)
    if not p.is_file():
        raise UserError(f"The label file {p} does not exist.")
    base = Path(folder) if folder is not None else p.parent
    try:  # (spreadsheet row number, cells): the header, if any, is row 1
        rows = [(n, r) for n, r in enumerate(csv.reader(p.read_text(encoding="utf-8-sig").splitlines()), 1)
                if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{p.name} is not a readable CSV file ({err}).") from None
    def names_file(row) -> bool:
        first = row[0].strip() if row else ""
        return bool(first) and (Path(first) if Path(first).is_absolute() else base / first).exists()

    # a header row: 'file,label', or any first row (e.g. 'name,class') that names no file when the next one does
    if rows and ([c.strip().lower() for c in rows[0][1][:2]] == ["file", "label"]
                 or (len(rows) > 1 and not names_file(rows[0][1]) and names_file(rows[1][1]))):
        rows = rows[1:]
    if not rows:
        raise UserError(f"{p.name} lists no images; it needs rows 'file,label'.")
    files, labels = [], []
    for n, row in rows:
        cells = [c.strip() for c in row]
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise UserError(f"Row {n} of {p.name} is not 'file,label': {','.join(row)!r}.")
        f = Path(cells[0]) if Path(cells[0]).is_absolute() else base / cells[0]
        if not f.exists():
            raise UserError(f"Row {n} of {p.name} names {cells[0]}, which is not in {base}.")
        files.append(f)
        labels.append(cells[1])
    return files, labels
