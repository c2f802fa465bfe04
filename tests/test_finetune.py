"""Few-shot fine-tuning on painted slices of the real sample brain: behaviour with tiny budgets, no real training."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from napari_medgen import Cancelled, Model, segment, segmentation_config
from napari_medgen.data.annotations import IGNORE, AnnotationError
from napari_medgen.engine.seg_training import segmentation_loss
from napari_medgen.errors import NothingLearnedError
from napari_medgen.io import Geometry, ImageData
from napari_medgen.tasks.finetune import complete_labels, finetune
from napari_medgen.tasks.uncertainty import rank_slices

PAINTED = [25, 40, 55]
BETWEEN = [i for i in range(28, 53) if i not in PAINTED]  # unannotated slices inside the painted range
FAST = {"steps": 40, "seconds": None, "batch_size": 4, "patch_size": (64, 64), "device": "cpu"}


def small_unet(classes: int = 4) -> Model:
    """A small untrained 2D U-Net saved as a starting model, so that test training takes seconds."""
    return Model(segmentation_config("test", classes, channels=(8, 16, 32), strides=(2, 2), num_res_units=1))


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() + str(a.dtype) + str(a.shape)


@pytest.fixture(scope="module")
def painted(tissue):
    ann = np.zeros_like(tissue.data)
    ann[PAINTED] = tissue.data[PAINTED]
    return ann


@pytest.fixture(scope="module")
def brain_mask(tissue):
    return (tissue.data > 0).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(brain, brain_mask):
    """A fresh 2.5D U-Net trained briefly on the whole brain painted on three axial slices."""
    ann = np.zeros_like(brain_mask)
    ann[PAINTED] = brain_mask[PAINTED]
    before = (digest(brain.data), digest(ann))
    model, history = finetune(None, brain, ann, **{**FAST, "steps": 40})
    return model, history, ann, before


def test_every_painted_slice_trains_and_unknown_slices_are_not_background(trained, brain):
    model, history, ann, _ = trained
    assert history["slices"] == PAINTED and history["axis"] == 0  # none sacrificed to validation
    assert history["known_pixels"] == 3 * 117 * 99  # only the painted slices are known ...
    assert history["pseudo_slices"] == 28  # ... plus the slices interpolated between them (down-weighted)
    assert model.params.context == 1 and model.config.networks["net"].args["in_channels"] == 3  # 2.5D
    labels = segment(brain, model, device="cpu")
    assert labels.shape == brain.data.shape  # segment() feeds the neighbours
    # the plane it learned goes with the model: the same brain stored sagittal-first gets the same labels
    assert model.params.orientation == brain.geometry.direction.tolist()
    geo, order = brain.geometry, (2, 0, 1)
    stored = ImageData(np.transpose(brain.data, order), Geometry(tuple(geo.spacing[i] for i in order), geo.origin,
                                                               geo.direction[:, list(order)]), "sagittal")
    assert np.array_equal(segment(stored, model, device="cpu"), np.transpose(labels, order))


def test_selection_never_returns_the_untrained_network(trained):
    _, history, _, _ = trained
    assert history["best_step"] >= 1 and history["returned"].startswith("the best by validation")
    assert history["best_metric"] >= max(history["val_metric"]) - 1e-3  # improvements under 1e-3 do not count


def test_completed_labels_keep_the_paint_and_fill_between(trained, brain, brain_mask):
    model, _, ann, before = trained
    out = complete_labels(model, brain, ann, device="cpu")
    assert out.dtype == ann.dtype and out.shape == ann.shape
    np.testing.assert_array_equal(out[PAINTED], ann[PAINTED])
    found = (out[BETWEEN] > 0) & (brain_mask[BETWEEN] > 0)
    assert found.sum() / (brain_mask[BETWEEN] > 0).sum() > 0.8
    assert (digest(brain.data), digest(ann)) == before  # inputs are only read


def test_slices_painted_along_different_axes_train_one_model(brain, brain_mask):
    ann = np.zeros_like(brain_mask)
    ann[40] = brain_mask[40]
    ann[:, 60] = brain_mask[:, 60]
    ann[:, :, 50] = brain_mask[:, :, 50]
    model, history = finetune(None, brain, ann, **{**FAST, "steps": 8})
    assert history["planes"] == {0: [40], 1: [60], 2: [50]}
    out = complete_labels(model, brain, ann, device="cpu")
    for sel in (np.s_[40], np.s_[:, 60], np.s_[:, :, 50]):
        np.testing.assert_array_equal(out[sel], ann[sel])  # every painted plane is kept as painted


def test_sparse_scribbles_ignore_unknown_pixels(brain, tissue):
    ann = np.zeros_like(tissue.data)
    for z in PAINTED:
        strokes = np.zeros_like(tissue.data[z])
        strokes[::6] = tissue.data[z][::6] + 1  # every 6th row scribbled: 1 = background, 2..4 = tissues
        ann[z] = strokes
    model, history = finetune(small_unet(5), brain, ann, sparse=True, background_label=1, **{**FAST, "steps": 8})
    assert history["known_pixels"] == int((ann > 0).sum()) and history["pseudo_slices"] == 0
    assert history["axis"] == 0 and history["planes"] == {0: PAINTED}  # scribbled rows are not coronal slices


def test_loss_ignores_unknown_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    target = torch.randint(0, 4, (2, 1, 16, 16))
    target[..., :8] = IGNORE
    segmentation_loss(logits, target).backward()
    assert logits.grad[..., :8].abs().max() == 0 and logits.grad[..., 8:].abs().max() > 0


def test_stop_keeps_best_and_cancel_keeps_model_and_inputs_byte_identical(brain, painted):
    seen = []
    model, history = finetune(small_unet(), brain, painted, progress=seen.append,
                              stop=lambda: sum("loss" in e.metrics for e in seen) >= 12, **{**FAST, "steps": 400})
    assert history["stopped"] and len(history["step"]) == 12 and history["returned"]
    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    before = (digest(brain.data), digest(painted))
    seen2 = []
    with pytest.raises(Cancelled, match="unchanged"):
        finetune(model, brain, painted, progress=seen2.append, cancel=lambda: len(seen2) >= 5, **FAST)
    assert all(torch.equal(weights[k], v) for k, v in model.net.state_dict().items())
    assert (digest(brain.data), digest(painted)) == before


def test_training_again_starts_from_and_can_return_the_current_weights(brain, painted):
    model, history = finetune(small_unet(), brain, painted, **{**FAST, "steps": 10})
    again, h2 = finetune(model, brain, painted, lr=1e-9, **{**FAST, "steps": 4})
    assert h2["val_step"][0] == 0  # the starting weights are a candidate when continuing
    assert again.params.finetune["rounds"] == 2 and again is not model


def test_a_network_that_learns_nothing_is_an_error_not_a_model(brain):
    ann = np.zeros(brain.data.shape, np.uint8)
    ann[40, 20:23, 20:23] = ann[40, 90:93, 80:83] = 1  # two tiny spots, a learning rate that moves nothing
    with pytest.raises(NothingLearnedError, match="never learned"):
        finetune(None, brain, ann, lr=1e-12, **{**FAST, "steps": 3})


def test_live_previews_show_the_prediction_in_the_region_of_interest(brain, painted):
    previews = []
    finetune(small_unet(), brain, painted, preview_every=0.01, progress=lambda e: e.preview is not None and
             previews.append(e.preview), **{**FAST, "steps": 6})
    assert previews
    p = previews[0]
    assert p["labels"].shape == tuple(hi - lo for lo, hi in p["box"])


def test_bad_input_is_one_sentence(brain, painted):
    with pytest.raises(AnnotationError, match="different shapes"):
        finetune(None, brain, painted[:, :50], **FAST)
    with pytest.raises(AnnotationError, match="No annotated slice"):
        finetune(None, brain, np.zeros_like(painted), **FAST)
    too_many = np.where(painted == 3, 7, painted).astype(painted.dtype)
    with pytest.raises(AnnotationError, match="fresh network"):
        finetune("brain-tissue-2d", brain, too_many, **FAST)


def test_suggested_slices_are_unannotated_and_ranked(trained, brain):
    model, _, ann, _ = trained
    ranking = rank_slices(model, brain, ann, device="cpu")
    idx = [i for i, _ in ranking]
    scores = [s for _, s in ranking]
    assert idx and not set(idx) & set(PAINTED) and scores == sorted(scores, reverse=True)


def test_cli_train_writes_a_model_and_prediction_on_the_image_grid(tmp_path, brain, painted, capsys):
    from napari_medgen import read_image, write_image
    from napari_medgen.cli import main

    img, lab = tmp_path / "t1.nii.gz", tmp_path / "painted.nii.gz"
    write_image(img, brain.data, brain.geometry)
    write_image(lab, painted, brain.geometry)
    start = small_unet().save(tmp_path / "small.medgen.pt")
    out, pred = tmp_path / "mine.medgen.pt", tmp_path / "pred.nii.gz"
    argv = ["train", str(img), str(lab), "--out", str(out), "--from", start, "--steps", "10", "--seconds", "30",
            "--predict", str(pred), "--device", "cpu", "--quiet", "--classes", "CSF,grey matter,white matter"]
    assert main(argv) == 0
    assert "[25, 40, 55]" in capsys.readouterr().out
    trained = Model.load(out, expect="segmentation")
    assert trained.params.finetune["planes"] == {"0": PAINTED} and trained.params.finetune["steps"] == 10
    assert [c["name"] for c in trained.params.classes] == ["background", "CSF", "grey matter", "white matter"]
    again = tmp_path / "again.medgen.pt"  # continued: the steps add up, the names stay
    assert main(["train", str(img), str(lab), "--out", str(again), "--from", str(out), "--steps", "3", "-q"]) == 0
    continued = Model.load(again).params
    assert continued.finetune["steps"] == 13 and continued.classes[1]["name"] == "CSF"
    capsys.readouterr()
    assert main([*argv[:-2], "--classes", "CSF", "--overwrite"]) == 2  # three painted values, one name
    assert "Give a name for each painted label value 1-3" in capsys.readouterr().err
    written = read_image(pred)
    assert written.data.shape == brain.data.shape and written.geometry.same_grid(brain.geometry)
    np.testing.assert_array_equal(written.data[PAINTED], painted[PAINTED])  # the painting, completed
    assert main(argv) == 2  # refuses to overwrite
    # the same files stored sagittal-first: trained on the same axial slices, the prediction in the file's order
    geo, order = brain.geometry, (2, 0, 1)
    sag_geo = Geometry(tuple(geo.spacing[i] for i in order), geo.origin, geo.direction[:, list(order)])
    write_image(img, np.transpose(brain.data, order), sag_geo, overwrite=True)
    write_image(lab, np.transpose(painted, order), sag_geo, overwrite=True)
    argv[argv.index(str(out))], argv[argv.index(str(pred))] = str(tmp_path / "sag.medgen.pt"), str(tmp_path / "p2.nii.gz")
    assert main(argv) == 0
    assert Model.load(tmp_path / "sag.medgen.pt", expect="segmentation").params.finetune["planes"] == {"0": PAINTED}
    again = read_image(tmp_path / "p2.nii.gz")
    assert again.geometry.same_grid(sag_geo)
    assert (again.data == np.transpose(written.data, order)).mean() > 0.99  # (float sums in another memory order)


def test_2d_image(brain, tissue):
    image2d, labels2d = brain.data[40].astype(np.float32), tissue.data[40].copy()
    model, history = finetune(small_unet(), image2d, labels2d, **{**FAST, "steps": 6})
    assert history["slices"] == [0]
    assert segment(image2d, model, device="cpu").shape == image2d.shape
    assert complete_labels(model, image2d, labels2d, device="cpu").shape == image2d.shape


def test_one_painted_slice_of_a_structure_wider_than_the_grid_trains(brain, brain_mask):
    """One painted slice of a structure wider than the network's grid (a whole head on a 256 x 256 CT slice):
    training goes to a coarser in-plane grid and works (it once failed inside torch on an empty pseudo-label stack)."""
    big = np.repeat(np.repeat(brain.data[30:50], 2, axis=1), 2, axis=2)  # a brain 2x wider than the grid
    ann = np.zeros(big.shape, np.uint8)
    ann[10] = np.repeat(np.repeat(brain_mask[40], 2, axis=0), 2, axis=1)
    model, history = finetune(None, big, ann, **{**FAST, "steps": 4})
    assert history["slices"] == [10]
    assert complete_labels(model, big, ann, device="cpu").shape == big.shape


def test_one_painted_slice_extends_as_a_sphere_and_stops():
    from napari_medgen.data.interpolate import extrapolate_ends
    z, y, x = np.indices((31, 41, 41))
    ball = ((z - 15) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) <= 8 ** 2  # radius 8 voxels
    painted = np.zeros(ball.shape, np.uint8)
    painted[15] = ball[15]
    caps, margin = extrapolate_ends(painted, 0, [15], spacing=(1, 1, 1))
    dice = [2 * ((caps[k] > 0) & ball[k]).sum() / ((caps[k] > 0).sum() + ball[k].sum()) for k in (10, 13, 17, 20)]
    assert min(dice) > 0.85  # a shrinking copy, not a copy of the painted slice
    assert not caps[:7].any() and not caps[24:].any() and np.isfinite(margin[:7]).all()  # background beyond
    two = np.zeros(ball.shape, np.uint8)
    two[[11, 15]] = ball[[11, 15]]  # the end slices of a shape that grows towards 15: the sphere is refitted
    caps2, _ = extrapolate_ends(two, 0, [11, 15], spacing=(1, 1, 1))
    assert caps2[[8, 18]].any() and not caps2[:6].any()


def test_a_volume_stored_sagittal_first_is_fine_tuned_on_the_model_plane(brain, painted):
    """Fine-tuning the axial built-in on a sagittal-first copy used to train on its stored (sagittal) slices."""
    geo, order = brain.geometry, (2, 0, 1)
    stored = ImageData(np.transpose(brain.data, order), Geometry(tuple(geo.spacing[i] for i in order), geo.origin,
                                                               geo.direction[:, list(order)]), "sagittal")
    ann = np.transpose(painted, order)
    args = {**FAST, "steps": 3, "patience": None}
    axial, _ = finetune("brain-tissue-2d", brain, painted, **args)
    model, history = finetune("brain-tissue-2d", stored, ann, **args)
    assert history["axis"] == 1 and history["slices"] == PAINTED  # said in the caller's axes
    assert model.params.orientation == axial.params.orientation
    out = complete_labels(model, stored, ann, device="cpu")
    assert np.array_equal(out, np.transpose(complete_labels(axial, brain, painted, device="cpu"), order))


def test_slices_listed_by_the_user_are_taken_in_their_own_axes(brain, tissue):
    """With slices listed, a sagittal-first volume was turned first and the numbers read along the turned axis
    (train --slices 40,50,60 --from brain-tissue-2d: best Dice 0.09 instead of 0.79)."""
    geo, order = brain.geometry, (2, 0, 1)
    stored = ImageData(np.transpose(brain.data, order), Geometry(tuple(geo.spacing[i] for i in order), geo.origin,
                                                               geo.direction[:, list(order)]), "sagittal")
    ann = np.zeros(stored.data.shape, np.uint8)
    ann[[40, 50, 60]] = np.transpose(tissue.data, order)[[40, 50, 60]]
    _, history = finetune("brain-tissue-2d", stored, ann, slices=[40, 50, 60], **{**FAST, "steps": 2})
    assert history["axis"] == 0 and history["slices"] == [40, 50, 60]


def test_a_seeded_run_in_steps_repeats_exactly(trained, brain):
    """The same call twice (budget in steps, seed 0) gives the same model: a fresh network's first weights
    were drawn before the seed was set, and validation was timed by the clock."""
    model, history, ann, _ = trained
    again, h2 = finetune(None, brain, ann, **{**FAST, "steps": 40})
    assert h2["val_step"] == history["val_step"] and h2["best_step"] == history["best_step"]
    assert all(torch.equal(v, again.net.state_dict()[k]) for k, v in model.net.state_dict().items())


def test_a_project_folder_resumes_and_is_never_overwritten(brain, painted, tmp_path):
    """The panel's project folder promised resuming; a new session wrote round 1 again over the old one."""
    from napari_medgen.errors import UserError
    from napari_medgen.tasks.finetune_round import open_project, train_round

    kw = {**FAST, "steps": 2}
    train_round(brain, painted, small_unet(), project=tmp_path, round_index=1, **kw)
    first = (tmp_path / "model_round01.medgen.pt").read_bytes()
    _, history, _ = train_round(brain, painted, small_unet(), project=tmp_path, round_index=1, **kw)  # next day
    assert history["round"] == 2 and (tmp_path / "model_round01.medgen.pt").read_bytes() == first
    last, model_file, annotations = open_project(tmp_path, brain)
    assert last == 2 and model_file == tmp_path / "model_round02.medgen.pt"
    assert np.array_equal(annotations.data, painted) and annotations.geometry.same_grid(brain.geometry)
    other = ImageData(brain.data[:, :, :50], brain.geometry)
    files = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match="holds the rounds of another image"):
        train_round(other, painted[:, :, :50], small_unet(), project=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_continuing_a_model_of_another_modality_says_so():
    """`train ct.nii.gz --from mri_model` trained silently with the MRI model's normalisation."""
    from napari_medgen.tasks.model_fit import ModelMismatchWarning

    ct = np.full((6, 64, 64), -1000, np.int16)
    ct[:, 12:52, 12:52] = 40
    ct[:, 28:36, 28:36] = 900
    painted = np.zeros(ct.shape, np.uint8)
    painted[[1, 4]] = (ct[[1, 4]] > 500).astype(np.uint8)
    with pytest.warns(ModelMismatchWarning, match="looks like CT in Hounsfield units, but 'brain-tissue-2d' was "
                                                  "trained on MR images; fine-tuning keeps its intensity"):
        try:
            finetune("brain-tissue-2d", ct, painted, steps=2, seconds=None, device="cpu")
        except NothingLearnedError:  # two steps: the warning came before training, which is what counts here
            pass
