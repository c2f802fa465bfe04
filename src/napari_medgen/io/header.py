"""How many voxel bytes a file's header announces, and how many the file holds, found before reading it.

ITK zero-fills a truncated uncompressed file and allocates whatever a header claims,
so :func:`voxel_bytes` lets the reader refuse a short file before any allocation.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import SimpleITK as sitk


def voxel_bytes(path: Path, decompressed: "tuple[int, bytes] | None" = None) -> "tuple[int, int] | None":
    """``(announced, present)`` voxel bytes of a NIfTI, MetaImage or raw NRRD file, or None when unknown.

    ``decompressed`` = (length, first bytes) of a ``.nii.gz`` after a full decompression pass.
    """
    name = path.name.lower()
    if name.endswith(".nii"):
        return _nifti_bytes(path.stat().st_size, nifti_header(path))
    if name.endswith(".nii.gz"):
        return _nifti_bytes(*decompressed) if decompressed is not None else None
    if name.endswith((".mha", ".mhd")):
        present = _meta_present(path)
    elif name.endswith((".nrrd", ".nhdr")):
        present = _nrrd_present(path)
    else:
        return None
    if present is None:
        return None
    return announced_bytes(path), present


def nifti_header(path: Path, decompressed: "tuple[int, bytes] | None" = None) -> bytes:
    """The first bytes (the header) of a ``.nii`` file, or of a ``.nii.gz`` from its ``decompressed`` pass;
    b"" for other files."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return decompressed[1] if decompressed is not None else b""
    return _head(path, 552) if name.endswith(".nii") else b""


def announced_bytes(path: Path) -> int:
    """Voxel bytes implied by the header (size x components x bytes per component), read without the voxels."""
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    info.ReadImageInformation()
    pixel = info.GetPixelID()
    size = sitk.Image([1] * info.GetDimension(), pixel).GetSizeOfPixelComponent()  # a complex counts whole
    if "vector" in sitk.GetPixelIDValueAsString(pixel).lower():
        size *= info.GetNumberOfComponents()
    n = 1
    for s in info.GetSize():
        n *= int(s)
    return n * size


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _nifti_bytes(total: int, head: bytes) -> "tuple[int, int] | None":
    """``(announced, present)`` from the NIfTI header itself: ``dim`` x ``bitpix`` as stored on disk (ITK's pixel
    type is the scaled one when ``scl_slope`` is set), and the bytes after ``vox_offset``.  NIfTI-1: dim int16[8]
    at 40, bitpix int16 at 72, vox_offset float32 at 108; NIfTI-2: bitpix at 14, dim int64[8] at 16, vox_offset
    int64 at 168."""
    if len(head) < 348:
        return None
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:
            dim, bitpix = struct.unpack(order + "8h", head[40:56]), struct.unpack(order + "h", head[72:74])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
        elif size == 540 and len(head) >= 176:
            dim, bitpix = struct.unpack(order + "8q", head[16:80]), struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dim[0] <= 7 or bitpix <= 0:
            return None
        n = 1
        for d in dim[1:dim[0] + 1]:
            n *= max(int(d), 1)
        return n * bitpix // 8, total - offset
    return None


def _meta_present(path: Path) -> "int | None":
    """Uncompressed MetaImage: the bytes after the header (``LOCAL``) or of the one data file."""
    raw = _head(path, 1 << 16)
    end = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)\r?\n?", raw)
    if end is None or re.search(rb"CompressedData\s*=\s*True", raw[:end.start()], re.I) \
            or re.search(rb"HeaderSize", raw[:end.start()]):
        return None
    target = end.group(1).strip().decode(errors="replace")
    if target == "LOCAL":
        return path.stat().st_size - end.end()
    data = path.parent / target
    if target.startswith("LIST") or "%" in target or not data.is_file():
        return None
    return data.stat().st_size


def _nrrd_present(path: Path) -> "int | None":
    """Raw NRRD: the bytes after the blank line ending the header, or of its one detached data file."""
    raw = _head(path, 1 << 16)
    end = re.search(rb"\r?\n\r?\n", raw)
    header = (raw[:end.start()] if end else raw).decode(errors="replace")
    fields = dict((k.strip().lower(), v.strip()) for k, v in
                  (ln.split(":", 1) for ln in header.splitlines()[1:] if ":" in ln and ":=" not in ln))
    if fields.get("encoding") != "raw" or "line skip" in fields or "byte skip" in fields \
            or "lineskip" in fields or "byteskip" in fields:
        return None
    detached = fields.get("data file") or fields.get("datafile")
    if detached:
        data = path.parent / detached
        return data.stat().st_size if data.is_file() and " " not in detached else None
    return path.stat().st_size - end.end() if end else None
