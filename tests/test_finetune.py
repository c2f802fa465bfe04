"""Fine-tuning on a few painted slices of the real sample brain (tiny runs: seconds each)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from napari_medgen import Cancelled, Model, segment, segmentation_config
from napari_medgen.data.annotations import IGNORE, AnnotationError
from napari_medgen.engine.seg_training import segmentation_loss
from napari_medgen.tasks.finetune import finetune
from napari_medgen.tasks.uncertainty import rank_slices

PAINTED = [25, 40, 55]
BETWEEN = [i for i in range(28, 53) if i not in PAINTED]  # unannotated slices inside the painted range
FAST = {"steps": 200, "lr": 5e-3, "batch_size": 4, "patch_size": (64, 64), "device": "cpu"}


def small_unet(classes: int = 4) -> Model:
    """A small untrained 2D U-Net, so that test training takes seconds."""
    return Model(segmentation_config("test", classes, channels=(16, 32, 64), strides=(2, 2), num_res_units=1))


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() + str(a.dtype) + str(a.shape)


def dice(pred, ref, classes=(1, 2, 3)) -> float:
    return float(np.mean([2 * ((pred == c) & (ref == c)).sum() / max(1, (pred == c).sum() + (ref == c).sum())
                          for c in classes]))


@pytest.fixture(scope="module")
def painted(tissue):
    ann = np.zeros_like(tissue.data)
    ann[PAINTED] = tissue.data[PAINTED]
    return ann


@pytest.fixture(scope="module")
def trained(brain, painted):
    """A fresh U-Net trained on three painted slices; the inputs' digests before training."""
    before = (digest(brain.data), digest(painted))
    model, history = finetune(small_unet(), brain, painted, **FAST)
    return model, history, before


def test_three_painted_slices_segment_the_slices_between(trained, brain, tissue):
    model, history, _ = trained
    pred = segment(brain, model, device="cpu")
    score = dice(pred[BETWEEN], tissue.data[BETWEEN])
    print(f"\nmean tissue Dice on {len(BETWEEN)} unannotated slices: {score:.3f} "
          f"(val {history['best_metric']:.3f} on slice {history['val_slice']}, {history['seconds']:.1f} s)")
    assert history["val_slice"] == 40 and history["train_slices"] == [25, 55]
    assert score > 0.7


def test_unannotated_slices_do_not_leak_in_as_background(trained, brain, tissue):
    """If the 92 untouched slices counted as background, brain tissue would mostly be called background."""
    model, history, _ = trained
    assert history["known_pixels"] == 3 * 117 * 99
    pred = segment(brain, model, device="cpu")
    truth_fg = (tissue.data[BETWEEN] > 0).sum()
    found = ((pred[BETWEEN] > 0) & (tissue.data[BETWEEN] > 0)).sum()
    assert found / truth_fg > 0.9  # measured 0.998; with the 92 empty slices as background: 0.745


def test_annotation_and_image_are_byte_identical_after_training(trained, brain, painted):
    _, _, before = trained
    assert (digest(brain.data), digest(painted)) == before


def test_sparse_scribbles_ignore_unknown_pixels(brain, tissue):
    ann = np.zeros_like(tissue.data)
    for z in PAINTED:
        strokes = np.zeros_like(tissue.data[z])
        strokes[::6] = tissue.data[z][::6] + 1  # every 6th row scribbled: 1 = background, 2..4 = tissues
        ann[z] = strokes
    model, history = finetune(small_unet(5), brain, ann, sparse=True, background_label=1, **FAST)
    assert history["known_pixels"] == int((ann > 0).sum())  # about 1/6 of three slices
    pred = segment(brain, model, device="cpu")
    # class c of the model is label value c: tissues were painted as c + 1
    truth = tissue.data[BETWEEN] + (tissue.data[BETWEEN] > 0)
    fg_recall = ((pred[BETWEEN] > 0) & (truth > 0)).sum() / (truth > 0).sum()
    assert fg_recall > 0.85  # unknown (5/6 of each slice) did not become background
    assert dice(pred[BETWEEN], truth, (2, 3, 4)) > 0.5


def test_loss_ignores_unknown_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    target = torch.randint(0, 4, (2, 1, 16, 16))
    target[..., :8] = IGNORE
    segmentation_loss(logits, target).backward()
    assert logits.grad[..., :8].abs().max() == 0 and logits.grad[..., 8:].abs().max() > 0


def test_stop_keeps_best_weights_and_stop_at_first_step_changes_nothing(brain, painted):
    seen = []
    model, history = finetune(small_unet(), brain, painted, progress=seen.append, stop=lambda: len(seen) >= 30,
                              **{**FAST, "steps": 400})
    assert history["stopped"] and len(history["step"]) == 30
    assert history["best_metric"] == max(history["val_metric"]) and history["best_metric"] > 0.3
    pred = segment(brain, model, device="cpu")
    assert pred.shape == brain.data.shape and set(np.unique(pred)) >= {0, 2, 3}

    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(Cancelled, match="unchanged"):
        finetune(model, brain, painted, stop=lambda: True, **FAST)
    assert all(torch.equal(weights[k], v) for k, v in model.net.state_dict().items())


def test_training_again_continues_from_current_weights(trained, brain, painted):
    model, history, _ = trained
    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    again, h2 = finetune(model, brain, painted, **{**FAST, "steps": 20})
    assert h2["val_metric"][0] == pytest.approx(history["best_metric"], abs=1e-6)
    assert h2["best_metric"] >= history["best_metric"] and again.params.finetune["rounds"] == 2
    assert all(torch.equal(weights[k], v) for k, v in model.net.state_dict().items())  # input model untouched


def test_bad_input_is_one_sentence(brain, painted):
    with pytest.raises(AnnotationError, match="different shapes"):
        finetune(None, brain, painted[:, :50], **FAST)
    with pytest.raises(AnnotationError, match="No annotated slice"):
        finetune(None, brain, np.zeros_like(painted), **FAST)
    too_many = np.where(painted == 3, 7, painted).astype(painted.dtype)
    with pytest.raises(AnnotationError, match="fresh network"):
        finetune("brain-tissue-2d", brain, too_many, **FAST)


def test_suggested_slices_are_unannotated_and_ranked(trained, brain, painted):
    model, _, _ = trained
    ranking = rank_slices(model, brain, painted, device="cpu")
    idx = [i for i, _ in ranking]
    scores = [s for _, s in ranking]
    assert idx and not set(idx) & set(PAINTED) and scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)


def test_cli_train_writes_a_model_and_prediction_on_the_image_grid(tmp_path, brain, painted, capsys):
    from napari_medgen import read_image, write_image
    from napari_medgen.cli import main

    img, lab = tmp_path / "t1.nii.gz", tmp_path / "painted.nii.gz"
    write_image(img, brain.data, brain.geometry)
    write_image(lab, painted, brain.geometry)
    start = small_unet().save(tmp_path / "small.medgen.pt")
    out, pred = tmp_path / "mine.medgen.pt", tmp_path / "pred.nii.gz"
    argv = ["train", str(img), str(lab), "--out", str(out), "--from", start, "--steps", "30",
            "--predict", str(pred), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    assert "[25, 40, 55]" in capsys.readouterr().out
    assert Model.load(out, expect="segmentation").params.finetune["slices"] == PAINTED
    written = read_image(pred)
    assert written.data.shape == brain.data.shape and written.geometry.same_grid(brain.geometry)

    assert main(argv) == 2  # refuses to overwrite
    shifted = tmp_path / "shifted.nii.gz"
    write_image(shifted, painted, type(brain.geometry)(brain.geometry.spacing, (0, 0, 0), brain.geometry.direction))
    assert main(["train", str(img), str(shifted), "--out", str(tmp_path / "x.medgen.pt"), "--quiet"]) == 2
    assert "not on the voxel grid" in capsys.readouterr().err


def test_2d_image_and_slices_along_another_axis(brain, tissue):
    image2d, labels2d = brain.data[40].astype(np.float32), tissue.data[40].copy()
    model, history = finetune(small_unet(), image2d, labels2d, **{**FAST, "steps": 10})
    assert history["slices"] == [0] and history["val_slice"] is None
    assert segment(image2d, model, device="cpu").shape == image2d.shape
    sagittal = np.zeros_like(tissue.data)
    sagittal[:, :, [40, 60]] = tissue.data[:, :, [40, 60]]
    model, history = finetune(small_unet(), brain, sagittal, axis=2, **{**FAST, "steps": 10})
    assert history["slices"] == [40, 60] and model.params.axis == 2
