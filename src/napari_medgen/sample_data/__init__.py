"""The packaged sample: MNI152 2009 T1 (2 mm) and its 4-class tissue map (see LICENSE.txt)."""
from __future__ import annotations

from pathlib import Path

from ..io.read import ImageData, read_image

HERE = Path(__file__).parent
T1_PATH = HERE / "mni152_t1_2mm.nii.gz"
TISSUE_PATH = HERE / "mni152_tissue_2mm.nii.gz"
TISSUE_CLASSES = ["background", "CSF", "grey matter", "white matter"]


def brain_t1() -> ImageData:
    """The T1 volume (int16, z, y, x) with its geometry."""
    item = read_image(T1_PATH)
    item.name = "MNI152 T1"
    item.metadata["modality"] = "MR"
    return item


def brain_tissue() -> ImageData:
    """The tissue labels: 0 background, 1 CSF, 2 grey matter, 3 white matter."""
    item = read_image(TISSUE_PATH)
    item.name, item.kind = "MNI152 tissue", "labels"
    item.metadata["class_names"] = TISSUE_CLASSES
    return item
