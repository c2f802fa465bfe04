"""What a cohort's cases say together, read case by case: foreground intensity samples for one CT window, the
label values present and the checks across cases (one modality, stray label values, binary 0/255 masks, pictures
without a pixel size said once)."""
from __future__ import annotations

import warnings
import zlib

import numpy as np

from .datasets import DatasetError, LabelWarning, some_names
from .normalize import MRI_DEFAULT
from ..io.calibration import unscaled_said_once


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


def check_one_modality(facts: list) -> None:
    """One sentence when a cohort mixes scans in Hounsfield units with others: one CT window would flatten
    the others (a cohort's CT window is shared by all its cases)."""
    ct = [name for name, is_ct, _ in facts if is_ct]
    other = [name for name, is_ct, _ in facts if not is_ct]
    if ct and other:
        raise DatasetError(f"The cohort mixes CT scans in Hounsfield units ({some_names(ct)}) with other scans "
                           f"({some_names(other)}); one normalisation cannot serve both, so train one modality at a time.")


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
        warnings.warn(LabelWarning(f"Check the labels: {'; '.join(parts)}; each value up to {top} becomes a class (a "
                                   "dataset.json naming the classes makes a stray value an error)."), stacklevel=2)


def spacing_said_once(cases: list, share=list):
    """Reading ``cases`` inside: the reader's "gives no pixel spacing" of each picture (image and label) said
    once for the cohort's images (``share``: the names of every rank's to rank 0, none to the others); other
    warnings pass."""
    images = {c.image.name for c in cases}
    then = ("the model's sizes in mm are sizes in pixels.",) * 2
    return unscaled_said_once("images", then, keep=images.__contains__, share=lambda names: sorted(share(names)),
                              stacklevel=3)


def binary_value(facts: list, classes: list) -> "int | None":
    """The one foreground value of a cohort of binary masks saved as 0 and 255 (or 0 and any value above 1),
    the cases' ``facts`` say, when ``classes`` (from dataset.json) name no more than two; else None."""
    values = set().union(*(set(v) for _, _, v in facts)) - {0}
    if len(values) != 1 or len(classes) > 2 or min(values) <= 1:
        return None
    return int(values.pop())


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
