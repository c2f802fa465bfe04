"""Modality recognition and warnings: padded CT is CT, X-rays and CT into MR models, classifiers' training modality."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_medgen import ImageData, ModelMismatchWarning
from napari_medgen.data.normalize import intensity_window, looks_like_hounsfield, normalize, resolve
from napari_medgen.io import Geometry
from napari_medgen.models.segmentation import load_segmentation_model
from napari_medgen.tasks.classify import classify, train_classifier, training_modality
from napari_medgen.tasks.model_fit import mismatch_warnings, modality_doubt

TINY = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
PERCENTILE = {"kind": "percentile", "lower": 0.5, "upper": 99.5}


def head_ct(shape=(6, 96, 96), seed=0) -> np.ndarray:
    """An InVesalius-like head CT in HU (int16): air (clipped at -1024) around skin, a skull ring and brain."""
    rng = np.random.default_rng(seed)
    _, y, x = np.indices(shape)
    r = np.hypot((y - shape[1] / 2) / 0.85, x - shape[2] / 2) * 96 / shape[2]  # radii below for 96 pixels
    hu = -1000 + rng.normal(0, 15, shape)
    hu[r < 34] = 40 + rng.normal(0, 10, shape)[r < 34]  # scalp
    hu[r < 31] = 1100 + rng.normal(0, 150, shape)[r < 31]  # skull
    hu[r < 27] = 32 + rng.normal(0, 8, shape)[r < 27]  # brain
    return np.clip(hu, -1024, 3000).astype(np.int16)


def padded(hu: np.ndarray, value: int, radius: float) -> np.ndarray:
    """``hu`` with ``value`` outside the scanner's circle of ``radius`` pixels (as scanners write)."""
    y, x = np.indices(hu.shape[-2:])
    out = hu.copy()
    out[..., np.hypot(y - hu.shape[-2] / 2, x - hu.shape[-1] / 2) > radius] = value
    return out


def ct_small() -> np.ndarray:
    """pydicom's CT_small.dcm in HU (a real body CT slice)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.int16)


@pytest.mark.parametrize("value", [-3024, -2000, -32768])
@pytest.mark.parametrize("make", [head_ct, ct_small], ids=["head", "CT_small"])
def test_ct_padded_outside_the_scan_circle_is_ct(make, value):
    """Scanners pad outside their circle with -2000/-3024/-32768: still CT, normalised in the HU window, padding as air."""
    hu = make()
    pad = padded(hu, value, radius=0.45 * hu.shape[-1])
    assert (pad == value).mean() > 0.2
    assert looks_like_hounsfield(hu) and looks_like_hounsfield(pad)
    assert resolve(None, pad)["kind"] == "window"
    inside = pad != value
    for clip in (True, False):  # padding is air (0), never below it, clipped or not
        n = normalize(pad, clip=clip)
        assert n[~inside].min() == pytest.approx(0.0) and n[~inside].max() == pytest.approx(0.0)
        np.testing.assert_allclose(n[inside], normalize(hu, clip=clip)[inside], atol=1e-6)
    # percentile statistics of the padded scan are those of the scan (the padding is no intensity of its own)
    lo, hi = intensity_window(pad, PERCENTILE)
    assert lo > -1100 and lo == pytest.approx(np.percentile(pad[inside], 0.5), abs=20)
    assert hi == pytest.approx(np.percentile(pad[inside], 99.5), abs=20)


def test_mri_in_any_units_is_not_taken_for_ct(brain):
    x = brain.data.astype(np.float32)
    for units in (x, x - 0.5 * x.max(), x / x.max() * 65535, x * 1e6, x - 2000.0):
        assert not looks_like_hounsfield(units)
    assert intensity_window(x - 0.5 * x.max(), PERCENTILE)[0] < 0  # MRI percentiles keep every value


def test_padded_ct_into_the_mri_model_warns_and_into_a_ct_model_does_not():
    pad = padded(head_ct(), -3024, radius=43)
    model = load_segmentation_model("brain-tissue-2d")
    (doubt,) = [w for w in mismatch_warnings(pad[None], model) if "CT" in w]
    assert "looks like CT in Hounsfield units" in doubt and "trained on MR" in doubt
    assert modality_doubt(pad, "CT", "skull-ct") == ""  # a CT fine-tuned model takes it without a word
    assert "does not look like CT" in modality_doubt(np.random.default_rng(0).random((32, 32)), "CT", "skull-ct")


@pytest.mark.parametrize("modality", ["CR", "DX", "MG", "US", "XA", "PT", "NM"])
def test_known_non_mr_modality_into_the_mri_model_warns(modality):
    """An X-ray (DICOM Modality CR, DX...) into the brain MRI model: one sentence naming both modalities."""
    xray = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
    doubts = mismatch_warnings(xray[None], load_segmentation_model("brain-tissue-2d"), modality=modality)
    assert doubts == [f"The image looks like {modality}, but 'brain-tissue-2d' was trained on MR images; "
                      "its labels are likely wrong."]
    assert mismatch_warnings(xray[None], load_segmentation_model("brain-tissue-2d"), modality="MR") == []


@pytest.fixture(scope="module")
def ct_classifier():
    """A tiny 2D classifier trained on head-CT slices (HU, no modality tag: recognised as CT)."""
    rng = np.random.default_rng(1)
    geo = Geometry((2.0, 2.0), (0.0, 0.0), np.eye(2))
    imgs, labels = [], []
    for i in range(6):
        hu = head_ct((1, 64, 64), seed=i)[0]
        if i % 2:
            hu[20:30, 25:35] = 90 + rng.normal(0, 5, (10, 10))  # a bleed
        imgs.append(ImageData(hu, geo, f"ct{i}"))
        labels.append("bleed" if i % 2 else "normal")
    model, _ = train_classifier(imgs, labels, size=(32, 32), body=TINY, steps=2, val_fraction=0.34, seed=0)
    return model, geo


def test_classifier_records_and_checks_its_training_modality(ct_classifier):
    model, geo = ct_classifier
    assert model.config.training["modality"] == "CT"
    xray = ImageData(np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16), geo, "chest",
                     metadata={"modality": "CR"})
    with pytest.warns(ModelMismatchWarning, match=r"looks like CR, but 'classifier' was trained on CT images; "
                                                  r"its class is likely wrong\.$"):
        classify(model, xray, heatmap=False, device="cpu")
    png = ImageData(np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8), geo, "xray.png")
    with pytest.warns(ModelMismatchWarning, match="does not look like CT"):
        classify(model, png, heatmap=False, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelMismatchWarning)
        classify(model, ImageData(padded(head_ct((1, 64, 64), seed=9), -3024, 29)[0], geo), heatmap=False,
                 device="cpu")


def test_training_modality_is_one_or_unknown(brain):
    geo = Geometry((1.0, 1.0), (0.0, 0.0), np.eye(2))
    mr = ImageData(brain.data[45], geo, metadata={"modality": "MR"})
    ct = ImageData(head_ct((1, 64, 64))[0], geo)
    assert training_modality([mr, mr]) == "MR" and training_modality([ct]) == "CT"
    assert training_modality([mr, ct]) == "" and training_modality([ImageData(brain.data[45], geo)]) == ""
