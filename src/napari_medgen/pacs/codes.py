"""Coded segment descriptions: SNOMED CT codes for class names we know, a clear generic code otherwise."""
from __future__ import annotations

import re

from pydicom.sr.codedict import codes

# normalised class name -> (category, type) keywords of pydicom's SCT code dictionary
KNOWN = {
    "csf": ("AnatomicalStructure", "CerebrospinalFluid"),
    "cerebrospinal fluid": ("AnatomicalStructure", "CerebrospinalFluid"),
    "gm": ("AnatomicalStructure", "GrayMatter"),
    "gray matter": ("AnatomicalStructure", "GrayMatter"),
    "grey matter": ("AnatomicalStructure", "GrayMatter"),
    "wm": ("AnatomicalStructure", "WhiteMatter"),
    "white matter": ("AnatomicalStructure", "WhiteMatter"),
    "brain": ("AnatomicalStructure", "Brain"),
    "ventricle": ("AnatomicalStructure", "BrainVentricle"),
    "ventricles": ("AnatomicalStructure", "BrainVentricle"),
    "liver": ("AnatomicalStructure", "Liver"),
    "spleen": ("AnatomicalStructure", "Spleen"),
    "kidney": ("AnatomicalStructure", "Kidney"),
    "lung": ("AnatomicalStructure", "Lung"),
    "heart": ("AnatomicalStructure", "Heart"),
    "aorta": ("AnatomicalStructure", "Aorta"),
    "bladder": ("AnatomicalStructure", "Bladder"),
    "prostate": ("AnatomicalStructure", "Prostate"),
    "pancreas": ("AnatomicalStructure", "Pancreas"),
    "bone": ("Tissue", "Bone"),
    "tumor": ("MorphologicallyAbnormalStructure", "Tumor"),
    "tumour": ("MorphologicallyAbnormalStructure", "Tumor"),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "edema": ("MorphologicallyAbnormalStructure", "Edema"),
    "oedema": ("MorphologicallyAbnormalStructure", "Edema"),
    "hemorrhage": ("MorphologicallyAbnormalStructure", "Hemorrhage"),
    "necrosis": ("MorphologicallyAbnormalStructure", "Necrosis"),
}
GENERIC = ("Tissue", "Tissue")  # SCT 85756007: a region the model delineates, nothing more specific claimed


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def segment_codes(name: str) -> tuple:
    """``(category, type)`` codes of a class name, SNOMED CT where known, else generic "Tissue"."""
    category, kind = KNOWN.get(_norm(name), GENERIC)
    return getattr(codes.SCT, category), getattr(codes.SCT, kind)
