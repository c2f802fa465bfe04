"""Shared fixtures: real sample data and a DICOM writer for geometry tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

torch.set_num_threads(1)  # tiny test models: one thread is faster and steadier on a shared 2-core CI


@pytest.fixture(scope="session")
def brain():
    from napari_medgen.sample_data import brain_t1

    return brain_t1()


@pytest.fixture(scope="session")
def tissue():
    from napari_medgen.sample_data import brain_tissue

    return brain_tissue()


@pytest.fixture(scope="session")
def dicomdir_tests() -> Path:
    pydicom = pytest.importorskip("pydicom")
    return Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"


def write_dicom_series(img: sitk.Image, folder: Path, description: str = "T1 axial",
                       reverse_names: bool = True) -> list[Path]:
    """Write a 3D SimpleITK image as a DICOM series (one file per slice, MR).

    With ``reverse_names`` the file names sort opposite to slice position, so a
    reader that orders by name instead of position gets the volume upside down.
    """
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    series_uid = "1.2.826.0.1.3680043.2.1125.1" + str(abs(hash(description)) % 10**8)
    common = {
        "0008|0060": "MR", "0008|103e": description, "0020|000e": series_uid,
        "0020|000d": series_uid + ".0", "0010|0010": "Sample^Brain",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                       direction[1], direction[4], direction[7])),
    }
    n = img.GetDepth()
    paths = []
    for k in range(n):
        sl = img[:, :, k]
        for key, val in common.items():
            sl.SetMetaData(key, val)
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0028|0030", f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}")
        sl.SetMetaData("0018|0050", f"{img.GetSpacing()[2]:.6f}")
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        name = f"IM{(n - k if reverse_names else k):04d}.dcm"
        writer.SetFileName(str(folder / name))
        writer.Execute(sl)
        paths.append(folder / name)
    return paths


@pytest.fixture
def dicom_writer():
    return write_dicom_series

