"""Completing a painting after fine-tuning: the same labels with less work (the interpolation finetune built
is taken, not built again; only the region of interest is normalised), and the training record a
fine-tuned model carries (``napari-medgen info`` says how it was trained)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from napari_medgen import Model, segmentation_config
from napari_medgen.cli import main
from napari_medgen.data import interpolate
from napari_medgen.data.normalize import normalize
from napari_medgen.models.describe import describe
from napari_medgen.tasks.completion import _first_max
from napari_medgen.tasks.finetune import complete_labels, finetune

FAST = {"steps": 6, "seconds": None, "batch_size": 2, "patch_size": (48, 48), "device": "cpu"}
PAINTED = [40, 47, 54]


def small_unet(classes: int = 4) -> Model:
    torch.manual_seed(0)  # the same first weights in every process: 6 steps from an unlucky start learned nothing
    return Model(segmentation_config("test", classes, channels=(8, 16, 32), strides=(2, 2), num_res_units=1))


@pytest.fixture(scope="module")
def blob(tissue):
    """A small structure (grey matter in a 24x24 square) painted on three axial slices of the brain."""
    ann = np.zeros_like(tissue.data)
    for k in PAINTED:
        ann[k, 40:64, 30:54] = (tissue.data[k, 40:64, 30:54] == 2).astype(np.uint8)
    return ann


@pytest.fixture()
def sphere_slices(monkeypatch):
    """Counts the sphere-cap slices built (what building the interpolation prior spends most on)."""
    calls = []
    real = interpolate._scaled
    monkeypatch.setattr(interpolate, "_scaled", lambda *a: calls.append(1) or real(*a))
    return calls


def test_completion_after_finetune_takes_its_interpolation_and_gives_the_same_labels(brain, blob, sphere_slices):
    model, _ = finetune(small_unet(), brain, blob, keep_prior=True, **FAST)
    built = len(sphere_slices)
    assert built > 0  # finetune built the prior, caps included
    first = complete_labels(model, brain, blob, device="cpu")
    assert len(sphere_slices) == built  # taken from finetune, not built again
    again = complete_labels(model, brain, blob, device="cpu")  # taken once: built now, the same labels
    assert len(sphere_slices) > built and np.array_equal(first, again)
    other = blob.copy()
    other[PAINTED[-1]] = 0  # another painting: finetune's prior is of no use for it
    kept, _ = finetune(model, brain, blob, keep_prior=True, **FAST)
    before = len(sphere_slices)
    complete_labels(kept, brain, other, device="cpu")
    assert len(sphere_slices) > before
    plain, _ = finetune(model, brain, blob, **FAST)  # not asked to keep it: nothing held for an API caller
    before = len(sphere_slices)
    complete_labels(plain, brain, blob, device="cpu")
    assert len(sphere_slices) > before


def test_completing_a_small_structure_takes_memory_for_its_region_not_the_volume(brain, blob):
    model, _ = finetune(small_unet(), brain, blob, keep_prior=True, **FAST)  # as a panel round and train --predict
    model.config.normalization = {"kind": "window", "low": 0.0, "high": 4000.0}  # a fixed window (as for CT)
    tracemalloc.start()
    try:
        complete_labels(model, brain, blob, device="cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * brain.data.size  # less than two float32 copies of the volume


@pytest.mark.parametrize("case", ["ct window", "percentile", "float32", "nan", "zscore", "flat"])
def test_normalising_the_region_alone_equals_normalising_the_volume(case):
    rng = np.random.default_rng(0)
    img = rng.integers(-1024, 1500, (40, 230, 240)).astype(np.int16)  # 2.2 M voxels: a strided percentile sample
    img[:, :, :20] = -2048  # outside the scan circle
    spec = {"ct window": {"kind": "window", "low": -1000.0, "high": 1000.0}, "zscore": {"kind": "zscore"},
            "flat": {"kind": "window", "low": 5.0, "high": 5.0}}.get(case, {"kind": "percentile", "lower": 1,
                                                                          "upper": 99})
    if case in ("float32", "nan"):
        img = img.astype(np.float32) * 0.37
        img[3, 4, 5] = np.nan if case == "nan" else img[3, 4, 5]
    box = (slice(5, 30), slice(0, 100), slice(10, 200))
    assert np.array_equal(normalize(img, spec, box=box), normalize(img, spec)[box])


def test_the_first_of_equal_maxima_like_argmax():
    probs = np.array([[0.2, 0.5, 0.3, np.nan], [0.5, 0.5, 0.3, 0.1], [0.3, 0.0, 0.4, 0.9]], np.float32)
    out = np.full(4, 7, np.uint8)
    assert np.array_equal(_first_max(probs, out), probs.argmax(0)) and np.array_equal(out, probs.argmax(0))
    assert np.array_equal(_first_max(probs[:, :3], out[:3]), [1, 0, 2])


def test_a_fine_tuned_model_records_how_it_was_trained(brain, blob, tmp_path, capsys):
    start = small_unet()
    start.config.training = {"card": {"modality": "MR", "anatomy": "brain"}, "seconds": 5000.0, "steps": 9999}  # another trainer's
    model, history = finetune(start, brain, blob, **FAST)
    record = model.config.training
    assert record["steps"] == len(history["step"]) and record["seconds"] == pytest.approx(history["seconds"])
    assert record["device"] == "cpu" and record["returned"] == history["returned"] and "card" not in record
    assert record["painted_slices"] == 3 and record["modality"] == "MR"
    again, h2 = finetune(model, brain, blob, **FAST)  # a continued model's record goes on
    assert again.config.training["steps"] == len(history["step"]) + len(h2["step"]) == again.params.finetune["steps"]
    assert again.config.training["seconds"] == pytest.approx(history["seconds"] + h2["seconds"])
    assert any(line.startswith("  training: ") and "on cpu" in line for line in describe(again))
    path = again.save(tmp_path / "mine.medgen.pt")
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  training: " in out and "fine-tuned in 2 round(s)" in out and "trained on: MR" in out
    from napari_medgen.tasks.model_fit import expected_modality
    assert expected_modality(again) == "MR"  # so a CT given to it is warned about, as for the built-in model
