"""Scan-type data for bench_classify.py: several subjects per class, split by subject (nothing committed).

Sources, all obtainable offline at benchmark time:

- pydicom-data (PyPI: ``pip install --target /tmp/pydicom-data pydicom-data``; its larger test files) and
  pydicom's own test files: single CT, MR and ultrasound images from different patients and vendors;
- Debian ``invesalius-examples`` (head CT volume) and ``insighttoolkit5-examples`` (brain MR images);
- nibabel's test data (``anatomical.nii`` T1, ``example4d.nii.gz`` and ``functional.nii`` EPI), nilearn's
  ICBM152 template (T1), dipy's shipped files (PyPI wheel: ``S0_10slices.nii.gz``, a b0 EPI volume).

Each *subject* is one patient or scan of one class. 2D: up to ``PER_SUBJECT`` images per subject
(axial slices of volumes, frames of multi-frame files). Colour ultrasound is turned to grey. Images
whose files give no pixel spacing get the spacing that makes their longer side ``NOMINAL_FOV`` mm
(the same rule for every class), so the matrix size tells the network nothing.
"""
from __future__ import annotations

import plistlib
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from skimage.filters import threshold_otsu

from napari_medgen.data.orientation import in_world_order
from napari_medgen.io import Geometry, ImageData, read_image

PER_SUBJECT = 6
NOMINAL_FOV = 240.0  # mm, for images without a pixel spacing
ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


@dataclass
class Subject:
    name: str
    label: str
    load: Callable[[], list]  # -> 2D ImageData list


def _nominal(shape) -> tuple:
    s = NOMINAL_FOV / max(shape)
    return (s, s)


def _grey(d, arr: np.ndarray) -> np.ndarray:
    pi = str(d.get("PhotometricInterpretation", ""))
    if pi == "PALETTE COLOR":
        arr = pydicom.pixels.apply_color_lut(arr, d)
    if arr.ndim >= 3 and arr.shape[-1] == 3:
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if pi == "MONOCHROME1":
        arr = arr.max() - arr
    return np.asarray(arr, np.float32)


def dicom_images(path, name: str, frames: int = PER_SUBJECT) -> list[ImageData]:
    """Grey 2D images of one DICOM file (frames evenly picked from a multi-frame file)."""
    d = pydicom.dcmread(path)
    arr = _grey(d, d.pixel_array)
    multi = int(d.get("NumberOfFrames", 1) or 1) > 1
    stack = arr if multi else arr[None]
    stack = stack[np.unique(np.linspace(0, len(stack) - 1, min(frames, len(stack))).round().astype(int))]
    ps = d.get("PixelSpacing")
    spacing = tuple(float(v) for v in ps) if ps and float(ps[0]) > 0 else _nominal(stack.shape[1:])
    return [ImageData(im, Geometry(spacing, (0, 0), np.eye(2)), f"{name} {i}") for i, im in enumerate(stack)]


def volume_slices(img: ImageData, n: int = PER_SUBJECT, min_fraction: float = 0.15) -> list[ImageData]:
    """``n`` axial slices, evenly spread over those at least ``min_fraction`` foreground (axial whatever the
    storage: the volume's axes are first put in world order)."""
    img = in_world_order(img)
    vol = np.asarray(img.data, np.float32)
    fg = vol > threshold_otsu(vol)
    keep = [z for z in range(len(vol)) if fg[z].mean() >= min_fraction]
    pick = [keep[i] for i in np.unique(np.linspace(0, len(keep) - 1, min(n, len(keep))).round().astype(int))]
    geo = Geometry(img.geometry.spacing[1:], (0, 0), np.eye(2))
    return [ImageData(vol[z], geo, f"{img.name} {z}") for z in pick]


def nifti_volume(path, name: str, t: int | None = None) -> ImageData:
    """A NIfTI volume (frame ``t`` of a 4D one) in (z, y, x) order with its geometry (the storage orientation
    too: the 3D classifier stores every volume as its first training volume is)."""
    img = read_image(path)
    arr = np.asarray(img.data if t is None else img.data[t], np.float32)
    return ImageData(arr.reshape(arr.shape[-3:]), img.geometry, name)


def stored_volume(path, name: str) -> ImageData:
    """A NIfTI volume as stored, with its voxel sizes only: dipy's b0 file, whose sform is sheared by 53 degrees
    (the reader would shift its slices onto a rectangular grid, mostly out of the field of view)."""
    nii = nibabel.load(path)
    arr = np.asarray(nii.dataobj, np.float32).reshape(nii.shape[:3])
    zooms = nii.header.get_zooms()[:3]
    return ImageData(np.ascontiguousarray(arr.transpose(2, 1, 0)), Geometry(zooms[::-1], (0, 0, 0), np.eye(3)), name)


def png_image(path, name: str) -> list[ImageData]:
    arr = np.asarray(read_image(path).data, np.float32)
    arr = arr.mean(-1) if arr.ndim == 3 else arr  # grey PNG saved as RGB
    return [ImageData(arr, Geometry(_nominal(arr.shape), (0, 0), np.eye(2)), name)]


def subjects_2d(pydicom_data: Path, ct_volume: Callable[[], ImageData], t1_template: Callable[[], ImageData],
                dipy_files: Path | None) -> list[Subject]:
    """The 2D scan-type subjects (CT / MR / US) whose files are present."""
    nib = Path(nibabel.__file__).parent / "tests" / "data"

    def dcm(name: str, file: str, label: str, frames: int = PER_SUBJECT) -> Subject | None:
        p = pydicom_data / file
        if not p.is_file():
            try:
                p = Path(get_testdata_file(file, download=False) or "")
            except TypeError:  # older pydicom
                p = Path(get_testdata_file(file) or "")
        return Subject(name, label, lambda: dicom_images(p, name, frames)) if p.is_file() else None

    subs = [
        # CT: six patients, four vendors/sites
        Subject("Cranium head CT (InVesalius)", "CT", lambda: volume_slices(ct_volume())),
        dcm("CQ500 head CT", "693_UNCR.dcm", "CT"),
        dcm("GE CT_small", "CT_small.dcm", "CT"),
        dcm("pancreas CT", "explicit_VR-UN.dcm", "CT"),
        dcm("head CT (J2K)", "J2K_pixelrep_mismatch.dcm", "CT"),
        dcm("perfusion CT (enhanced)", "eCT_Supplemental.dcm", "CT"),
        # MR: T1, EPI, knee/abdomen, several vendors
        Subject("nibabel anatomical T1", "MR", lambda: volume_slices(read_image(nib / "anatomical.nii"))),
        Subject("nibabel example4d EPI", "MR", lambda: volume_slices(nifti_volume(nib / "example4d.nii.gz", "ex4d", 0))),
        Subject("nibabel functional EPI", "MR", lambda: volume_slices(nifti_volume(nib / "functional.nii", "func", 0),
                                                                      min_fraction=0.05)),
        Subject("ICBM152 T1 template", "MR", lambda: volume_slices(t1_template())),
        Subject("ITK KmeansTest T1", "MR", lambda: volume_slices(nifti_volume(ITK / "KmeansTest_T1UCharRaw.nii.gz",
                                                                              "itk T1"))),
        Subject("ITK BrainWeb T1 + PD slices", "MR", lambda: png_image(ITK / "BrainT1Slice.png", "bw T1")
                + png_image(ITK / "BrainProtonDensitySlice.png", "bw PD")),
        dcm("Toshiba MR_small", "MR_small.dcm", "MR"),
        dcm("Philips MR2", "MR2_UNCR.dcm", "MR"),
        dcm("emri_small head MR", "emri_small.dcm", "MR"),
        dcm("Siemens abdominal MR", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR"),
        # US: five patients, five vendors
        dcm("GE US1", "US1_UNCR.dcm", "US"),
        dcm("Philips obstetric US", "OBXXXX1A.dcm", "US"),
        dcm("Aloka US", "gdcm-US-ALOKA-16.dcm", "US"),
        dcm("echocardiogram (TEE)", "color-pl.dcm", "US"),
        dcm("SonoSite US clip", "examples_ybr_color.dcm", "US"),
    ]
    if dipy_files is not None and (dipy_files / "S0_10slices.nii.gz").is_file():
        subs.append(Subject("dipy b0 EPI", "MR", lambda: volume_slices(
            stored_volume(dipy_files / "S0_10slices.nii.gz", "dipy b0"), min_fraction=0.05)))
    return [s for s in subs if s is not None]


def subjects_3d(t1_template: Callable[[], ImageData], dipy_files: Path | None) -> list[tuple[str, str, Callable]]:
    """3D scan-type subjects (T1 / EPI volumes): (name, label, load -> ImageData)."""
    nib = Path(nibabel.__file__).parent / "tests" / "data"
    out = [("nibabel anatomical", "T1", lambda: read_image(nib / "anatomical.nii")),
           ("ICBM152 template", "T1", t1_template),
           ("ITK KmeansTest T1", "T1", lambda: nifti_volume(ITK / "KmeansTest_T1UCharRaw.nii.gz", "itk T1")),
           ("nibabel example4d", "EPI", lambda: nifti_volume(nib / "example4d.nii.gz", "ex4d", 0)),
           ("nibabel functional", "EPI", lambda: nifti_volume(nib / "functional.nii", "func", 0))]
    if dipy_files is not None and (dipy_files / "S0_10slices.nii.gz").is_file():
        out.append(("dipy b0", "EPI", lambda: stored_volume(dipy_files / "S0_10slices.nii.gz", "dipy b0")))
    return out


def cranium() -> ImageData:
    """The InVesalius example head CT (a tar.gz of a raw int16 volume and a plist)."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(CRANIUM) as tar:
            tar.extractall(tmp, filter="data")
        main = next(Path(tmp).glob("*/main.plist"))
        meta = plistlib.loads(main.read_bytes())
        vol = np.fromfile(main.parent / meta["matrix"]["filename"], np.int16).reshape(meta["matrix"]["shape"])
    sx, sy, sz = meta["spacing"]
    return ImageData(vol, Geometry((sz, sy, sx), (0, 0, 0), np.eye(3)), "Cranium CT", metadata={"modality": "CT"})


def crops(img: ImageData, n: int, rng) -> list[ImageData]:
    """``n`` random sub-volumes (60-100 % of each extent): more 3D training images from one scan."""
    out = []
    for i in range(n):
        ext = [min(s, max(4, int(s * rng.uniform(0.6, 1.0)))) for s in img.data.shape]
        start = [int(rng.integers(0, s - e + 1)) for s, e in zip(img.data.shape, ext)]
        sl = tuple(slice(a, a + e) for a, e in zip(start, ext))
        out.append(ImageData(img.data[sl], img.geometry, f"{img.name} crop {i}", metadata=dict(img.metadata)))
    return out


def folds(labels: list[str], k: int) -> list[int]:
    """Fold of each subject: round robin within each class, so every fold holds out subjects of every class."""
    out, seen = [], {}
    for lab in labels:
        out.append(seen.get(lab, 0) % k)
        seen[lab] = seen.get(lab, 0) + 1
    return out
