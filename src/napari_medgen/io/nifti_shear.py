"""NIfTI files whose affine is sheared, which ITK refuses to read ("ITK only supports orthonormal direction
cosines"): typically a gantry-tilted CT converted without correcting the tilt, whose slices are offset in-plane
from one another.  Read as dcm2niix reads such a DICOM series: the slices keep their in-plane axes and are
shifted onto a rectangular grid whose slice axis is their normal (spacing along the normal), with a note.  The
user's file is only read (a corrected copy of its header is read by ITK from a temporary folder)."""
from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.linalg import polar

NIFTI1 = 348


def is_shear_error(err: Exception) -> bool:
    return "orthonormal" in str(err)


def _header(raw: bytes):
    """(byte order, sform rows 3x4, dims) of a NIfTI-1 header with an sform, else None."""
    end = next((e for e in "<>" if struct.unpack(e + "i", raw[:4])[0] == NIFTI1), None)
    if end is None or struct.unpack(end + "h", raw[254:256])[0] <= 0:
        return None
    rows = np.array(struct.unpack(end + "12f", raw[280:328]), float).reshape(3, 4)
    return end, rows, struct.unpack(end + "8h", raw[40:56])


def _plan(rows: np.ndarray, dims) -> dict:
    """How a sform (rows 3x4, RAS) maps onto a rectangular grid: in-plane axes, normal, slice step along it, the
    in-plane shift (rows, columns) per slice, the tilt and the in-plane axes' departure from a right angle."""
    affine = rows[:, :3]  # columns: the steps (mm, RAS) of the i, j, k voxel indices
    sizes = np.linalg.norm(affine[:, :2], axis=0)
    units = affine[:, :2] / sizes
    inplane = polar(units)[0]
    normal = np.cross(inplane[:, 0], inplane[:, 1])
    qfac = 1.0 if normal @ affine[:, 2] > 0 else -1.0
    step = abs(normal @ affine[:, 2])
    drift = affine[:, 2] - qfac * step * normal  # each slice's in-plane offset from the one before (mm)
    return {"sizes": sizes, "inplane": inplane, "normal": normal, "qfac": qfac, "step": step,
            "shift": np.array([drift @ inplane[:, 1] / sizes[1], drift @ inplane[:, 0] / sizes[0]]),
            "tilt": float(np.degrees(np.arctan2(np.linalg.norm(drift), step))),
            "skew": float(abs(90.0 - np.degrees(np.arccos(np.clip(units[:, 0] @ units[:, 1], -1, 1))))),
            "slices": int(dims[3]) if dims[0] >= 3 else 1}


def _moves(plan: dict) -> bool:
    """Whether unshearing moves a slice by more than a tenth of a voxel."""
    return float(np.abs(plan["shift"]).max()) * max(plan["slices"] - 1, 0) > 0.1


def is_nifti2(raw: bytes) -> bool:
    """Whether a file's first bytes are a NIfTI-2 header (540 bytes), which this ITK cannot read."""
    return len(raw) >= 4 and 540 in (struct.unpack("<i", raw[:4])[0], struct.unpack(">i", raw[:4])[0])


def sform_sheared(raw: bytes) -> bool:
    """Whether a NIfTI file's first bytes give a qform and an sform sheared enough to move voxels: ITK then reads
    the qform without a word, and the voxels are not where the sform puts them."""
    head = _header(raw) if len(raw) >= NIFTI1 else None
    return head is not None and struct.unpack(head[0] + "h", raw[252:254])[0] > 0 and _moves(_plan(*head[1:]))


def read_sheared(path: Path) -> tuple[sitk.Image, str]:
    """The image on a rectangular grid and a sentence saying what was done (RuntimeError when the file is
    not a NIfTI-1 file with an sform; ValueError, one sentence, when its in-plane axes are skewed)."""
    raw = _bytes(path)
    head = _header(raw)
    if head is None:
        raise RuntimeError("not a NIfTI-1 file with an sform")
    end, rows, dims = head
    plan = _plan(rows, dims)
    if plan["skew"] > 0.5:
        raise ValueError(f"{path.name}: its header's in-plane axes are {plan['skew']:.1f} degrees off a right angle, "
                         "which this reader cannot place; resample it onto a rectangular grid first.")
    header = bytearray(raw[:NIFTI1])
    header[76:92] = struct.pack(end + "4f", plan["qfac"], *plan["sizes"], plan["step"])
    header[252:256] = struct.pack(end + "2h", max(1, struct.unpack(end + "h", raw[254:256])[0]), 0)
    rotation = np.column_stack([plan["inplane"], plan["normal"]])
    header[256:280] = struct.pack(end + "6f", *_quaternion(rotation), *rows[:, 3])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "image.nii"
        copy.write_bytes(bytes(header) + raw[NIFTI1:])
        image = sitk.ReadImage(str(copy))
    if not _moves(plan) or image.GetDimension() < 3:
        return image, (f"{path.name}: its header's voxel axes are a little off right angles ({plan['tilt']:.2g} "
                       "degrees); it is read on the nearest rectangular grid, no voxel moving by a tenth of one.")
    if image.GetNumberOfComponentsPerPixel() > 1:
        return image, (f"{path.name}: its slices are sheared by {plan['tilt']:.1f} degrees but hold several values per "
                       "voxel, so they were left unshifted: positions far from the first slice are off.")
    return _unshear(image, plan["shift"]), (
        f"{path.name}: its header's voxel axes are not at right angles (slices sheared by {plan['tilt']:.1f} degrees, "
        "as by a gantry tilt), so the slices were shifted onto a rectangular grid (as dcm2niix does); what is "
        "shifted past the edge of the field of view is lost.")


def _unshear(image: sitk.Image, shift: np.ndarray) -> sitk.Image:
    """Slice k moved by k x ``shift`` pixels (rows, columns): linear for intensities (integers rounded back),
    nearest for label maps (no value that is not in the file); the minimum outside."""
    arr = sitk.GetArrayFromImage(image)
    frames = arr.reshape((-1,) + arr.shape[-3:])  # a 4D file's time points, each a volume
    sample = arr.ravel()[:: max(1, arr.size // 100_000)]
    order = 0 if arr.dtype.kind in "iub" and np.unique(sample).size <= 256 else 1
    fill = float(arr.min())
    out = np.empty_like(frames)
    for t, volume in enumerate(frames):
        for k, plane in enumerate(volume):
            moved = ndimage.shift(plane.astype(np.float64), k * shift, order=order, mode="grid-constant", cval=fill)
            out[t, k] = np.rint(moved) if arr.dtype.kind in "iub" else moved
    if arr.ndim == 4:  # each time point a volume, joined as ITK keeps a 4D image
        volumes = [sitk.GetImageFromArray(v) for v in out]
        ref = image[:, :, :, 0]
        for v in volumes:
            v.CopyInformation(ref)
        result = sitk.JoinSeries(volumes)
    else:
        result = sitk.GetImageFromArray(out.reshape(arr.shape))
    result.CopyInformation(image)
    return result


def _bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _quaternion(r: np.ndarray) -> tuple[float, float, float]:
    """NIfTI's (b, c, d) of a proper rotation (a = sqrt(1 - b^2 - c^2 - d^2) >= 0)."""
    a = 0.5 * np.sqrt(max(0.0, 1.0 + np.trace(r)))
    if a > 1e-3:
        return tuple(float(v) / (4 * a) for v in (r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]))
    i = int(np.argmax(np.diag(r)))  # a half turn: from the largest diagonal element
    j, k = (i + 1) % 3, (i + 2) % 3
    q = np.zeros(3)
    q[i] = 0.5 * np.sqrt(max(0.0, 1.0 + r[i, i] - r[j, j] - r[k, k]))
    q[j], q[k] = (r[j, i] + r[i, j]) / (4 * q[i]), (r[k, i] + r[i, k]) / (4 * q[i])
    sign = 1.0 if (r[k, j] - r[j, k]) >= 0 else -1.0
    return tuple(float(v) * sign for v in q)
