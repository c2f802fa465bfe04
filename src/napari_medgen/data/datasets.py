"""Labelled cohorts on disk: Decathlon / nnU-Net dataset discovery, preprocessing and patch sampling.

A dataset folder holds ``imagesTr/`` and ``labelsTr/`` with matching names (nnU-Net's
``case_0000.nii.gz`` channel suffix is understood), optionally a ``dataset.json``: the
Medical Segmentation Decathlon's ``training`` datalist, ``labels`` and ``modality``, or
nnU-Net v2's ``labels`` and ``channel_names``.  :func:`discover` reads only names and
headers; :func:`load_case` reads one case, normalises it like inference does
(:func:`~napari_medgen.data.normalize.normalize` on the native grid) and resamples it to the
dataset's target spacing; :class:`CasePatchSampler` draws training patches from loaded cases.
"""
from __future__ import annotations

import json
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .annotations import IGNORE
from .normalize import MRI_DEFAULT, normalize
from .resample import resize, target_shape
from ..errors import UserError
from ..io.read import EXTENSIONS, _stem as case_stem, read_image  # case_stem: a name without its (double) extension
from .orientation import reorientation, turn, turned

CHANNEL = re.compile(r"_(\d{4})$")  # nnU-Net: case_0000 is channel 0 of "case"


class DatasetError(UserError):
    """A dataset folder that is not a usable labelled cohort."""


@dataclass
class Case:
    name: str
    image: Path
    label: Path


@dataclass
class CohortDataset:
    """The cases of a dataset folder and what its ``dataset.json`` says about them."""

    root: Path
    name: str
    cases: list
    classes: list = field(default_factory=list)  # class names by label value; empty: found from the labels
    modality: str = ""  # "CT" or "" (MRI and other arbitrary units)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(EXTENSIONS))


def _classes_from_json(labels) -> list:
    """Class names by value from MSD ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}``."""
    if not isinstance(labels, dict) or not labels:
        return []
    try:
        if all(str(k).isdigit() for k in labels):
            by_value = {int(k): str(v) for k, v in labels.items()}
        else:
            by_value = {int(v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise DatasetError("dataset.json 'labels' must map label values to names (region lists are "
                           "not supported).") from None
    n = max(by_value) + 1
    return [by_value.get(i, "background" if i == 0 else f"class {i}") for i in range(n)]


def dataset_modality(meta: dict) -> str:
    names = meta.get("modality") or meta.get("channel_names") or {}
    if isinstance(names, dict) and len(names) > 1:
        raise DatasetError(f"The dataset has {len(names)} image channels; only one-channel datasets can be trained.")
    first = str(next(iter(names.values()), "")) if isinstance(names, dict) else ""
    return "CT" if first.upper() == "CT" else ""


def discover(root: "str | Path") -> CohortDataset:
    """The labelled cases of a Decathlon / nnU-Net dataset folder (names and paths only)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder.")
    meta = {}
    if (root / "dataset.json").is_file():
        try:
            meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DatasetError(f"{root / 'dataset.json'} is not valid JSON ({err}).") from None
    if isinstance(meta.get("training"), list) and meta["training"]:
        cases = _from_datalist(root, meta["training"])
    else:
        cases = _from_folders(root)
    if not cases:
        raise DatasetError(f"{root} holds no labelled cases.")
    return CohortDataset(root, str(meta.get("name") or root.name), cases,
                         _classes_from_json(meta.get("labels")), dataset_modality(meta))


def _from_datalist(root: Path, items: list) -> list[Case]:
    cases = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) \
                or not isinstance(item.get("label"), str):
            raise DatasetError("Each 'training' entry of dataset.json needs an 'image' and a 'label' path.")
        image, label = (root / item[k] for k in ("image", "label"))
        for key in ("image", "label"):
            if not (root / item[key]).is_file():
                raise DatasetError(f"dataset.json lists {item[key]}, which does not exist.")
        cases.append(Case(CHANNEL.sub("", case_stem(image)), image, label))
    return sorted(cases, key=lambda c: c.name)


def _from_folders(root: Path) -> list[Case]:
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise DatasetError(f"{root} is not a dataset folder: it needs imagesTr/ and labelsTr/ "
                           "(or a dataset.json with a 'training' list).")
    images: dict[str, list[Path]] = {}
    for p in image_files(img_dir):
        images.setdefault(CHANNEL.sub("", case_stem(p)), []).append(p)
    labels = {case_stem(p): p for p in image_files(lab_dir)}
    multi = [n for n, ps in images.items() if len(ps) > 1]
    if multi:
        raise DatasetError(f"Case {multi[0]} has {len(images[multi[0]])} channel files; only one-channel "
                           "datasets can be trained.")
    missing = sorted(set(images) - set(labels))
    if missing:
        first = images[missing[0]][0].name
        some = f"1 image in imagesTr ({first}) has" if len(missing) == 1 else \
            f"{len(missing)} images in imagesTr (first: {first}) have"
        raise DatasetError(f"{some} no label file of the same name in labelsTr.")
    return [Case(n, images[n][0], labels[n]) for n in sorted(images)]


def header(path: Path) -> tuple[tuple, tuple, np.ndarray]:
    """``(shape, spacing, direction)`` in napari order from the file header, without reading the voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DatasetError(f"Cannot read {path.name}: the file is corrupt or not an image.") from None
    n = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), float).reshape(n, n)[::-1, ::-1]
    return tuple(reversed(reader.GetSize())), tuple(reversed(reader.GetSpacing())), direction


def fingerprint(cases: list[Case], spatial_dims: int = 2, axis: int = 0) -> dict:
    """The target ``spacing`` (the cases' median, nnU-Net's choice) and the median ``shape`` at it;
    in-plane (two values) for 2D training; and the ``orientation`` every case is stored in for training
    (the first case's: see :func:`read_case`).  Reads headers only."""
    heads = [header(c.image) for c in cases]
    if any(len(shape) != 3 for shape, _, _ in heads):
        raise DatasetError("Cohort training needs one-channel 3D volumes.")
    orientation = heads[0][2]
    perms = [(reorientation(d, orientation) or ((0, 1, 2), None))[0] for _, _, d in heads]
    shapes = np.array([[h[0][p] for p in perm] for h, perm in zip(heads, perms)], float)
    spacings = np.array([[h[1][p] for p in perm] for h, perm in zip(heads, perms)], float)
    if spatial_dims == 2:
        shapes, spacings = np.delete(shapes, axis, 1), np.delete(spacings, axis, 1)
    spacing = np.median(spacings, axis=0)
    shape = np.median(shapes * spacings / spacing, axis=0)
    return {"spacing": [float(s) for s in spacing], "shape": [int(round(s)) for s in shape],
            "orientation": orientation.tolist()}


def split(cases: list, val_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Training and validation cases: a seeded shuffle, at least one of each when there are two or more."""
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"The validation fraction must be in [0, 1) (got {val_fraction}).")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = 0 if len(cases) < 2 or val_fraction == 0 else min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
    val = sorted((cases[i] for i in order[:n_val]), key=lambda c: c.name)
    train = sorted((cases[i] for i in order[n_val:]), key=lambda c: c.name)
    return train, val


def read_case(case: Case, orientation=None) -> tuple:
    """``(image ImageData, labels int array)`` of a case, checked to be on one grid; stored as ``orientation``
    says (axes permuted and flipped, no resampling: every case of a cohort is cut into slices the same way)."""
    image, labels = read_image(case.image), read_image(case.label)
    if image.data.ndim != 3 or image.rgb:
        raise DatasetError(f"{case.image.name} is not a one-channel 3D volume (shape {image.data.shape}).")
    if labels.data.shape != image.data.shape:
        raise DatasetError(f"{case.label.name} {labels.data.shape} does not match its image {image.data.shape}.")
    if not labels.geometry.same_grid(image.geometry, atol=1e-2):
        raise DatasetError(f"{case.label.name} is not on the voxel grid of {case.image.name} (same shape, but "
                           "another spacing, origin or direction).")
    lab = labels.data
    if lab.dtype.kind == "f":
        if not np.array_equal(lab, np.round(lab)):
            raise DatasetError(f"{case.label.name} holds non-integer values; label files hold class numbers.")
    if lab.size and lab.min() < 0:
        raise DatasetError(f"{case.label.name} holds negative label values.")
    how = None if orientation is None else reorientation(image.geometry.direction, orientation)
    if how is not None:
        image, lab = turned(image, how), np.ascontiguousarray(turn(lab, how))
    return image, lab.astype(np.int16)


def foreground_sample(image: np.ndarray, labels: np.ndarray, name: str, n: int = 20000) -> np.ndarray:
    """Up to ``n`` intensities under the labels' foreground, the same draw whichever process reads the case."""
    values = np.asarray(image)[labels > 0]
    if values.size > n:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        values = rng.choice(values, n, replace=False)
    return values.astype(np.float32)


def label_values(labels: np.ndarray) -> set:
    """The label values present (slice by slice: no sorted copy of a large volume)."""
    return set().union(*(np.unique(part).tolist() for part in np.asarray(labels).reshape(len(labels), -1)))


def _names(names: list, most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_one_modality(facts: list) -> None:
    """One sentence when a cohort mixes scans in Hounsfield units with others: one CT window would flatten
    the others (a cohort's CT window is shared by all its cases)."""
    ct = [name for name, is_ct, _ in facts if is_ct]
    other = [name for name, is_ct, _ in facts if not is_ct]
    if ct and other:
        raise DatasetError(f"The cohort mixes CT scans in Hounsfield units ({_names(ct)}) with other scans "
                           f"({_names(other)}); one normalisation cannot serve both, so train one modality at a time.")


def warn_unusual_labels(facts: list) -> None:
    """Warn (without a dataset.json naming the classes) about label values no case holds below the largest, or
    held by one case only among several: a stray value becomes a class of its own."""
    present = {}
    for name, _, values in facts:
        for v in values:
            present.setdefault(int(v), []).append(name)
    top = max(present, default=0)
    missing = [v for v in range(1, top) if v not in present]
    lone = {v: names[0] for v, names in present.items() if v > 0 and len(names) == 1} if len(facts) >= 3 else {}
    parts = []
    if lone:
        parts.append("label value" + "s" * (len(lone) > 1) + " " + ", ".join(f"{v} only in {n}" for v, n in lone.items()))
    if missing:
        parts.append(f"no case holds label value{'s' * (len(missing) > 1)} {', '.join(map(str, missing))}")
    if parts:
        warnings.warn(f"Check the labels: {'; '.join(parts)}; each value up to {top} becomes a class (a dataset.json "
                      "naming the classes makes a stray value an error).", stacklevel=2)


def dataset_normalization(modality: str, samples: list) -> dict:
    """nnU-Net's scheme: CT gets one window from the cohort's foreground percentiles (0.5, 99.5);
    other modalities are scaled per image by their own percentiles."""
    if modality != "CT":
        return dict(MRI_DEFAULT)
    values = np.concatenate([s for s in samples if s.size] or [np.zeros(1, np.float32)])
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        raise DatasetError("The CT labels' foreground has one intensity only; cannot set a window.")
    return {"kind": "window", "low": float(lo), "high": float(hi)}


def load_case(image, labels: np.ndarray, spec: dict, spacing, spatial_dims: int = 2, axis: int = 0,
              modality: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Normalised image (float16) and labels (uint8/int16) resampled to ``spacing``.

    2D training resamples the slices along ``axis`` in-plane only and returns them stacked
    along the first axis; 3D training resamples the whole volume.
    """
    img = normalize(image.data, spec, modality)
    lab = labels
    have = tuple(image.geometry.spacing)
    if spatial_dims == 2:
        img, lab = np.moveaxis(img, axis, 0), np.moveaxis(lab, axis, 0)
        have = tuple(s for i, s in enumerate(have) if i != axis)
    shape = target_shape(img.shape[-len(spacing):], have, spacing)
    if not np.allclose(have, spacing, rtol=0.02):
        img = resize(np.ascontiguousarray(img) if spatial_dims == 2 else img[None], shape)
        lab = resize(np.ascontiguousarray(lab) if spatial_dims == 2 else lab[None], shape, mode="nearest")
        if spatial_dims == 3:
            img, lab = img[0], lab[0]
    dtype = np.uint8 if lab.max() < 256 else np.int16
    return np.ascontiguousarray(img, np.float16), np.ascontiguousarray(lab, dtype)


class CasePatchSampler:
    """Random training patches from loaded cases (nnU-Net style: a third centred on foreground).

    ``images``/``labels``: lists of (n, H, W) slice stacks (2D) or (D, H, W) volumes (3D). Patches
    that reach past a case's border are padded: image with its minimum, labels with ``IGNORE``.
    """

    def __init__(self, images: list, labels: list, patch_size, *, spatial_dims: int = 2,
                 foreground: float = 0.33, seed: int = 0, per_class: int = 20000):
        if not images:
            raise DatasetError("There are no training cases to sample patches from.")
        self.images, self.labels, self.dims = images, labels, spatial_dims
        self.patch = tuple(int(p) for p in patch_size)
        self.foreground = foreground
        self.rng = np.random.default_rng(seed)
        self.fill = [float(img.min()) for img in images]
        self.fg = []  # per case: {class: flat indices (a random subset)}
        for lab in labels:
            flat = lab.ravel()
            by_class = {}
            for c in np.unique(flat):
                if c == 0:
                    continue
                idx = np.flatnonzero(flat == c)
                by_class[int(c)] = idx if idx.size <= per_class else self.rng.choice(idx, per_class, replace=False)
            self.fg.append(by_class)

    def _centre(self, k: int) -> tuple:
        shape = self.labels[k].shape
        if self.fg[k] and self.rng.random() < self.foreground:
            pool = self.fg[k][self.rng.choice(list(self.fg[k]))]
            return np.unravel_index(pool[self.rng.integers(pool.size)], shape)
        return tuple(int(self.rng.integers(n)) for n in shape)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, 1, *patch) float32 and targets (B, 1, *patch) int64."""
        xs, ys = [], []
        for _ in range(batch_size):
            k = int(self.rng.integers(len(self.images)))
            centre = self._centre(k)
            lead = centre[:1] if self.dims == 2 else ()
            window = centre[len(lead):]
            img, lab = self.images[k], self.labels[k]
            if lead:
                img, lab = img[lead[0]], lab[lead[0]]
            x = np.full(self.patch, self.fill[k], np.float32)
            y = np.full(self.patch, IGNORE, np.int64)
            src, dst = [], []
            for c, p, n in zip(window, self.patch, img.shape):
                start = int(c) - int(self.rng.integers(p)) if n > p else (n - p) // 2
                start = min(max(start, 0), n - p) if n > p else start
                lo, hi = max(start, 0), min(start + p, n)
                src.append(slice(lo, hi))
                dst.append(slice(lo - start, hi - start))
            x[tuple(dst)] = img[tuple(src)]
            y[tuple(dst)] = lab[tuple(src)]
            xs.append(x)
            ys.append(y)
        return np.stack(xs)[:, None], np.stack(ys)[:, None]
