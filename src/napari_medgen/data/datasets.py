"""Labelled cohorts on disk: Decathlon / nnU-Net dataset discovery, preprocessing and patch sampling.

A dataset folder holds ``imagesTr/`` and ``labelsTr/`` with matching names (nnU-Net's
``case_0000.nii.gz`` channel suffix is understood), optionally a ``dataset.json``: the
Medical Segmentation Decathlon's ``training`` datalist, ``labels`` and ``modality``, or
nnU-Net v2's ``labels`` and ``channel_names``.  :func:`discover` reads only names and
headers; :func:`load_case` reads one case, normalises it like inference does
(:func:`~napari_medgen.data.normalize.normalize` on the native grid) and resamples it to the
dataset's target spacing; :class:`CasePatchSampler` draws training patches from loaded cases.

A cohort of 2D images (X-ray or ultrasound pictures, 2D NIfTI, one-slice files) is a cohort of one-slice
volumes ``(1, H, W)``, cut along axis 0 and trained in 2D as they are stored (no reorientation: inference
takes a 2D image as it is too).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .annotations import IGNORE
from .normalize import normalize
from .resample import resize, target_shape
from ..errors import UserError
from ..io.geometry import Geometry
from ..io.read import ImageData, read_image
from ..io.read import _stem as case_stem  # a name without its (double) extension
from ..naming import EXTENSIONS, PICTURES
from .orientation import reorientation, turn, turned

CHANNEL = re.compile(r"_(\d{4})$")  # nnU-Net: case_0000 is channel 0 of "case"


class DatasetError(UserError):
    """A dataset folder that is not a usable labelled cohort."""


class LabelWarning(UserWarning):
    """Label values that training takes in a way the user should check (stray values, 0/255 masks)."""


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


def image_files(folder: Path, ending: str = "") -> list[Path]:
    """The image files (volumes, DICOM, 2D pictures) of ``folder``; only those ending in ``ending`` when given
    (nnU-Net v2's ``file_ending``)."""
    endings = (ending.lower(),) if ending else EXTENSIONS + PICTURES
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(endings))


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
        ending = meta.get("file_ending")
        cases = _from_folders(root, ending if isinstance(ending, str) else "")
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


def _from_folders(root: Path, ending: str = "") -> list[Case]:
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise DatasetError(f"{root} is not a dataset folder: it needs imagesTr/ and labelsTr/ "
                           "(or a dataset.json with a 'training' list).")
    images: dict[str, list[Path]] = {}
    for p in image_files(img_dir, ending):
        images.setdefault(CHANNEL.sub("", case_stem(p)), []).append(p)
    labels = {case_stem(p): p for p in image_files(lab_dir, ending)}
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
    """``(shape, spacing, direction)`` in napari order from the file header, without reading the voxels; a 2D
    image or one-slice volume as the one-slice volume ``(1, H, W)`` that :func:`read_case` gives."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DatasetError(f"Cannot read {path.name}: the file is corrupt or not an image.") from None
    n = reader.GetDimension()
    if n not in (2, 3):
        raise DatasetError(f"{path.name} has {n} dimensions (a time series?); cohort training takes one-channel "
                           "2D images or 3D volumes.")
    direction = np.asarray(reader.GetDirection(), float).reshape(n, n)[::-1, ::-1]
    shape, spacing = tuple(reversed(reader.GetSize())), tuple(reversed(reader.GetSpacing()))
    if n == 2:
        return (1, *shape), (1.0, *spacing), _with_slice_axis(direction)
    if 1 not in shape:
        return shape, spacing, direction
    order = _slice_first(shape.index(1))  # the reader's one-slice rule: the first axis of one voxel
    return tuple(shape[a] for a in order), tuple(spacing[a] for a in order), direction[:, order]


def _slice_first(axis: int) -> list:
    return [axis] + [a for a in range(3) if a != axis]


def _with_slice_axis(direction: np.ndarray) -> np.ndarray:
    """The 3D direction of a 2D grid of ``direction`` as a one-slice volume (the slice axis first, along z)."""
    out = np.eye(3)
    out[1:, 1:] = direction
    return out


def is_flat(shape) -> bool:
    """A 2D case (a one-slice volume as :func:`header` gives it)."""
    return shape[0] == 1


def some_names(names: list, most: int = 3) -> str:
    """The first ``most`` names, and how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_dims(cases: list[Case], spatial_dims: int = 2, axis: int = 0) -> bool:
    """True for a cohort of 2D images, False for one of volumes; one sentence for 2D images mixed with volumes,
    or trained in 3D or along another axis.  Reads headers only."""
    flat = [c.name for c in cases if is_flat(header(c.image)[0])]
    if not flat:
        return False
    if len(flat) < len(cases):
        volumes = [c.name for c in cases if c.name not in set(flat)]
        raise DatasetError(f"The cohort mixes 2D images ({some_names(flat)}) with 3D volumes ({some_names(volumes)}); "
                           "train one kind at a time.")
    if spatial_dims == 3:
        raise DatasetError("The cases are 2D images, and a 3D U-Net needs volumes: train them in 2D (--dims 2).")
    if axis != 0:
        raise DatasetError("The cases are 2D images, trained in their own plane: leave the slice axis at 0 (--axis 0).")
    return True


def fingerprint(cases: list[Case], spatial_dims: int = 2, axis: int = 0) -> dict:
    """The target ``spacing`` (the cases' median, nnU-Net's choice) and the median ``shape`` at it;
    in-plane (two values) for 2D training; and the ``orientation`` every case is stored in for training
    (the first case's: see :func:`read_case`; None for 2D images, which are trained as stored).  Reads
    headers only."""
    heads = [header(c.image) for c in cases]
    flat = all(is_flat(shape) for shape, _, _ in heads)
    orientation = None if flat else heads[0][2]
    perms = [(0, 1, 2) if flat else (reorientation(d, orientation) or ((0, 1, 2), None))[0] for _, _, d in heads]
    shapes = np.array([[h[0][p] for p in perm] for h, perm in zip(heads, perms)], float)
    spacings = np.array([[h[1][p] for p in perm] for h, perm in zip(heads, perms)], float)
    if spatial_dims == 2:
        shapes, spacings = np.delete(shapes, axis, 1), np.delete(spacings, axis, 1)
    spacing = np.median(spacings, axis=0)
    shape = np.median(shapes * spacings / spacing, axis=0)
    return {"spacing": [float(s) for s in spacing], "shape": [int(round(s)) for s in shape],
            "orientation": None if orientation is None else orientation.tolist()}


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
    says (axes permuted and flipped, no resampling: every case of a cohort is cut into slices the same way).
    A 2D case comes as the one-slice volume ``(1, H, W)``, its place in 3D kept when its file gave one."""
    image, labels = _grey(read_image(case.image), case.image), _grey(read_image(case.label), case.label, True)
    if image.data.ndim not in (2, 3) or image.data.ndim != image.geometry.ndim:
        raise DatasetError(f"{case.image.name} is not a one-channel 2D image or 3D volume (shape {image.data.shape}).")
    if labels.data.shape != image.data.shape:
        raise DatasetError(f"{case.label.name} {labels.data.shape} does not match its image {image.data.shape}.")
    if case.label.name.lower().endswith(PICTURES) and labels.geometry.same_grid(Geometry.identity(labels.data.ndim)):
        labels.geometry = image.geometry  # a mask picture of no pixel size (PNG beside a DICOM X-ray): the image's grid
    if not labels.geometry.same_grid(image.geometry, atol=1e-2):
        raise DatasetError(f"{case.label.name} is not on the voxel grid of {case.image.name} (same shape, but "
                           "another spacing, origin or direction).")
    if image.data.ndim == 2:
        image, labels = _one_slice_volume(image), _one_slice_volume(labels)
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


def _grey(item: ImageData, path: Path, labels: bool = False) -> ImageData:
    """``item`` with one channel: a colour picture whose red, green and blue agree (a grey X-ray or mask saved as
    RGB) as that grey; one sentence for real colour (a palette PNG mask reads as colour)."""
    if not item.rgb:
        return item
    rgb = item.data[..., :3]
    opaque = item.data.shape[-1] == 3 or (item.data[..., 3] == item.data[..., 3].flat[0]).all()
    if not (opaque and (rgb == rgb[..., :1]).all()):
        if labels:
            raise DatasetError(f"{path.name} is a colour image (a palette PNG?); label files hold class numbers in "
                               "one channel, so save them as a grey image of 0, 1, 2, ...")
        raise DatasetError(f"{path.name} is a colour image; cohort training takes grey-value images, so save it "
                           "in grey values (one channel).")
    return ImageData(np.ascontiguousarray(rgb[..., 0]), item.geometry, item.name, item.kind, item.metadata)


def _one_slice_volume(item: ImageData) -> ImageData:
    """A 2D ImageData as the one-slice volume ``(1, H, W)``: in the volume it was read from (its
    :class:`~napari_medgen.io.geometry.Plane`), with that volume's spacing across the slice, else 1 mm."""
    geo, plane = item.geometry, item.geometry.plane
    if plane is None:
        volume = Geometry((1.0, *geo.spacing), (0.0, *geo.origin), _with_slice_axis(geo.direction))
    else:
        order, v = _slice_first(plane.axis), plane.volume
        volume = Geometry(tuple(v.spacing[a] for a in order), v.origin, v.direction[:, order])
    return ImageData(item.data[None], volume, item.name, item.kind, item.metadata)


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
