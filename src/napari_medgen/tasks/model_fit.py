"""Does an image look like what a segmentation model (or a classifier) was trained on? One sentence per doubt.

The model's card (:func:`~napari_medgen.models.segmentation.model_card`) names its modality,
anatomy and field of view; its config names its training spacing.  A CT in Hounsfield units
into an MRI model, voxels more than twice as large or small, or a field of view far wider
than the trained anatomy each give a sentence; :func:`~napari_medgen.tasks.segment.segment`
still returns labels and emits them as :class:`ModelMismatchWarning`.  A fine-tune records its image's spacing,
so an image as fine as that one is no doubt when the grid is that image shrunk to fit the network.  A classifier
(:func:`~napari_medgen.tasks.classify.classify`) gets the same sentences, against the fields of view of its
training images.
"""
from __future__ import annotations

import numpy as np

from ..data.normalize import apparent_modality
from ..models.segmentation import model_card

SPACING_RATIO = 2.0  # voxels more than this many times larger or smaller than the training voxels
FOV_RATIO = 1.5  # a field of view this many times wider than the trained anatomy


class ModelMismatchWarning(UserWarning):
    """The image differs from the model's training data (modality, anatomy, spacing): labels may be wrong."""


def expected_modality(model) -> str:
    """The modality a segmentation model was trained on: its card's (or a fine-tune's record), else CT for a
    Hounsfield window, else ""."""
    named = model_card(model).get("modality") or model.config.training.get("modality") or ""
    return str(named).upper() or _norm_modality(model.config.normalization)


def mismatch_warnings(image: np.ndarray, model, *, spacing=None, modality: str = "", axis: int = 0) -> list[str]:
    """Sentences saying how ``image`` ((channels, *spatial)) differs from ``model``'s training data."""
    card, cfg, name = model_card(model), model.params, model.name
    doubt = modality_doubt(image[0], expected_modality(model), name, modality)
    out = [doubt] if doubt else []
    spatial = image.shape[1:]
    if spacing is None:
        return out
    spacing = tuple(float(s) for s in spacing)[-len(spatial):]
    inplane = cfg.spatial_dims == 2 and len(spatial) == 3
    have = tuple(s for i, s in enumerate(spacing) if i != axis) if inplane else spacing
    if cfg.spacing is not None and len(cfg.spacing) == len(have):
        doubt = spacing_doubt(have, cfg.spacing, name, model.config.training.get("image_spacing"))
        out += [doubt] if doubt else []
    fov = card.get("field_of_view_mm")
    if fov:
        extent = np.asarray(spatial, dtype=float) * np.asarray(spacing)
        if extent.max() > FOV_RATIO * max(fov):
            anatomy = card.get("anatomy", "anatomy")
            out.append(f"The image spans {extent.max():.0f} mm, far more than the {anatomy} '{name}' was trained on "
                       f"({max(fov):.0f} mm across); other anatomy in view may get wrong labels.")
    return out


def spacing_doubt(have, grid, name: str, trained=None, finer: bool = True) -> str:
    """One sentence when voxels of ``have`` mm are more than :data:`SPACING_RATIO` times larger than the model's
    ``grid`` (the image is enlarged: blurrier than anything it learned from) or, with ``finer``, smaller than the
    voxels of the images it was ``trained`` on (default: its grid); else "".

    A model whose grid is its training image shrunk to fit the network (a fine-tune of a 2000-pixel X-ray on a
    12 mm grid) records that image's spacing as ``trained``: an image as fine as that one is shrunk the same way,
    which is no doubt, while comparing it with the grid would be."""
    have, grid = np.asarray(have, dtype=float), np.asarray(grid, dtype=float)
    trained = grid if trained is None or len(trained) != len(have) else np.asarray(trained, dtype=float)
    if (have / grid).max() > SPACING_RATIO:
        return (f"The image's voxels ({_mm(have)} mm) are more than {SPACING_RATIO:g} times larger than those "
                f"'{name}' was trained on ({_mm(grid)} mm); structures may be out of scale for it.")
    if finer and (have / trained).min() < 1 / SPACING_RATIO:
        return (f"The image's voxels ({_mm(have)} mm) are more than {SPACING_RATIO:g} times smaller than those "
                f"'{name}' was trained on ({_mm(trained)} mm); structures may be out of scale for it.")
    return ""


def extent_doubt(extent_mm: float, trained_mm, name: str, view_mm: float) -> str:
    """One sentence when an image ``extent_mm`` across is far wider (:data:`FOV_RATIO`) than the widest or far
    narrower than the narrowest of the images a classifier was trained on (``trained_mm``: (narrowest, widest));
    ``view_mm``: how much of an image the classifier sees (its grid), else ""."""
    low, high = (float(v) for v in trained_mm)
    if extent_mm > FOV_RATIO * high:
        return (f"The image spans {extent_mm:.0f} mm, far more than the images '{name}' was trained on (at most "
                f"{high:.0f} mm across); "
                + (f"it sees only the middle {view_mm:.0f} mm, so its class may be wrong." if view_mm < extent_mm
                   else "other anatomy in view may decide its class."))
    if extent_mm < low / FOV_RATIO:
        return (f"The image spans {extent_mm:.0f} mm, far less than the images '{name}' was trained on (at least "
                f"{low:.0f} mm across); it fills a small part of the {view_mm:.0f} mm the classifier sees, so its "
                "class may be wrong.")
    return ""


def modality_doubt(image: np.ndarray, expected: str, name: str, modality: str = "",
                   then: str = "its labels are likely wrong") -> str:
    """One sentence when ``image`` (a modality named by its metadata, else CT if it is in Hounsfield units)
    is not of the ``expected`` modality ``name`` was trained on (``then``: what follows for the user); else ""."""
    apparent = apparent_modality(image, modality)
    if not expected or apparent == expected or (expected != "CT" and not apparent):
        return ""
    if expected == "CT" and not modality:
        return f"The image does not look like CT in Hounsfield units, but '{name}' was trained on CT; {then}."
    looks = "CT in Hounsfield units" if apparent == "CT" else apparent
    return f"The image looks like {looks}, but '{name}' was trained on {expected} images; {then}."


def _norm_modality(spec: "dict | None") -> str:
    """CT for a model whose intensity window is in Hounsfield units (air at -1000), else unknown."""
    spec = spec or {}
    return "CT" if spec.get("kind") == "window" and float(spec.get("low", 0)) <= -500 else ""


def _mm(values) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values)
