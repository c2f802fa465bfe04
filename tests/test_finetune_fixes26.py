"""Fine-tune path fixes: a volume stored in another axis order, listed slices, Suggest's axis, cancelled rounds in a
project folder, a 2D image's training grid, label values; and the panel after a finished round."""
from __future__ import annotations

import numpy as np
import pytest

import napari_medgen.tasks.finetune as ft
from napari_medgen import Model, segmentation_config
from napari_medgen.data.annotations import AnnotationError, make_targets
from napari_medgen.data.orientation import turned
from napari_medgen.engine.jobs import Cancelled, Job
from napari_medgen.io import Geometry, ImageData
from napari_medgen.tasks.completion import complete_labels
from napari_medgen.tasks.finetune_round import open_project, train_round
from napari_medgen.tasks.segment import segment
from napari_medgen.tasks import uncertainty
from napari_medgen.tasks.uncertainty import rank_slices
from napari_medgen._widgets import finetune_slices
from napari_medgen._widgets.finetune_widget import FinetuneWidget
from napari_medgen.errors import UserError

PAINTED = [30, 45, 60]
SAGITTAL_FIRST = ((2, 1, 0), (False, False, False))  # a volume stored x-first, as some files are


def _small(axis: int = 0) -> Model:
    return Model(segmentation_config("small", 4, channels=(8, 16), strides=(2,), num_res_units=0, axis=axis))


@pytest.fixture(scope="module")
def turned_round(brain, tissue):
    """A model on a 2 mm grid fine-tuned on a 1.2 mm volume stored sagittal-first (painted along its axis 2)."""
    img = turned(ImageData(brain.data, Geometry((1.2,) * 3, brain.geometry.origin, brain.geometry.direction), "t1"),
                 SAGITTAL_FIRST)
    lab = np.zeros_like(tissue.data)
    lab[PAINTED] = tissue.data[PAINTED]
    lab = np.ascontiguousarray(np.transpose(lab, (2, 1, 0)))
    start = _small()
    start.params.spacing, start.params.orientation = [2.0, 2.0], np.eye(3).tolist()
    previews = []
    model, history = ft.finetune(start, img, ImageData(lab, img.geometry, "lab", "labels"), steps=2, seconds=30,
                                 preview_every=0.001, device="cpu",
                                 progress=lambda ev: ev.preview is not None and previews.append(ev.preview))
    return img, lab, model, history, previews


def test_a_turned_volume_on_another_grid_trains_and_previews_in_the_users_axes(turned_round):
    img, lab, model, history, previews = turned_round
    assert history["axis"] == 2 and history["planes"] == {2: PAINTED}
    assert previews and all(np.shape(p["labels"]) == tuple(hi - lo for lo, hi in p["box"]) for p in previews)
    assert all(hi <= n for p in previews for (lo, hi), n in zip(p["box"], img.data.shape))
    assert all(hi <= n for (lo, hi), n in zip(history["roi"], img.data.shape))


def test_suggest_ranks_the_users_axis_as_the_model_sees_it(turned_round, brain, tissue, monkeypatch):
    img, lab, model, history, _ = turned_round
    shown = []  # the slices the network scores: the model's planes, in-plane as it learned them
    monkeypatch.setattr(uncertainty, "segment", lambda sub, *a, **kw: shown.append(sub.shape) or segment(sub, *a, **kw))
    ranking = rank_slices(model, img, lab, axis=history["axis"], max_candidates=6, device="cpu")
    assert ranking and not {k for k, _ in ranking} & set(PAINTED)
    assert shown[0][1:] == brain.data.shape[1:]  # not transposed
    # the same slices of the volume stored as the model's were: the same ranking, in the user's numbering
    stored = ImageData(brain.data, Geometry((1.2,) * 3, brain.geometry.origin, brain.geometry.direction), "t1")
    painted = np.zeros_like(tissue.data)
    painted[PAINTED] = tissue.data[PAINTED]
    same = rank_slices(model, stored, painted, axis=0, max_candidates=6, device="cpu")
    assert [k for k, _ in ranking] == [k for k, _ in same]


def test_the_panel_suggests_and_goes_to_slices_along_the_users_axis(make_napari_viewer, turned_round, monkeypatch):
    img, lab, model, history, _ = turned_round
    viewer = make_napari_viewer()
    image, painted = viewer.add_image(img.data, name="sagittal-first"), viewer.add_labels(lab, name="painted")
    widget = FinetuneWidget(viewer)
    widget._source = widget.image.value = image
    widget.labels.value = painted
    widget._shape = img.data.shape
    widget._trained((model, {**history, "round": 1}, np.zeros_like(lab)))
    asked = {}
    monkeypatch.setattr(widget.runner, "start", lambda fn, *args, **kw: asked.update(kw))
    widget.suggest()
    assert model.params.axis == 0 and asked["axis"] == 2  # the user's axis, not the start model's
    widget.go_to(20)
    assert widget.current_slice(2) == 20


def test_paint_along_another_axis_does_not_mark_slices_annotated(brain, tissue):
    lab = np.zeros_like(tissue.data)
    lab[PAINTED] = tissue.data[PAINTED]
    lab[:, 60] = tissue.data[:, 60]  # one coronal slice crosses nearly every axial one
    ranking = rank_slices(_small(), brain, lab, axis=0, max_candidates=8, device="cpu")
    assert len(ranking) == 8 and not {k for k, _ in ranking} & set(PAINTED)


class _Seen(Exception):
    pass


@pytest.fixture
def spy(monkeypatch):
    """What finetune would train on: (slice indices, targets) along the training axis; training never runs."""
    def train(net, volume, painted, **kw):
        raise _Seen(painted)
    monkeypatch.setattr(ft, "train_segmenter", train)


def _known(lab, slices, axis) -> dict:
    with pytest.raises(_Seen) as seen:
        ft.finetune(_small(axis), lab.astype(np.float32) * 100, lab, slices=slices, steps=1, device="cpu")
    targets = seen.value.args[0][1]
    return {int(v): int((targets == v).sum()) for v in np.unique(targets) if v >= 0}


def test_listed_slices_are_the_users_axis_whatever_the_start_models(spy, tissue):
    lab = np.zeros_like(tissue.data)
    lab[PAINTED] = tissue.data[PAINTED]
    painted = {int(v): int((lab[PAINTED] == v).sum()) for v in np.unique(lab[PAINTED])}
    assert _known(lab, PAINTED, axis=1) == painted  # a start model trained along axis 1


def test_a_cancelled_round_leaves_the_project_folder_as_it_was(brain, tissue, tmp_path):
    img = ImageData(brain.data[20:70], brain.geometry, "t1")
    lab = np.zeros_like(tissue.data[20:70])
    lab[[10, 25, 40]] = tissue.data[20:70][[10, 25, 40]]
    folder = tmp_path / "project"
    model, history, _ = train_round(img, lab, _small(), project=folder, steps=2, device="cpu")
    first = sorted(p.name for p in folder.iterdir())
    assert first == ["annotations_round01.nii.gz", "history_round01.json", "model_round01.medgen.pt"]
    for phase in ("completing the painting", "training"):
        flag = {"cancel": False}

        def progress(ev, phase=phase):
            flag["cancel"] |= ev.message.startswith(phase) or (phase == "training" and "loss" in ev.metrics)
        with pytest.raises(Cancelled):
            train_round(img, lab, model, project=folder, steps=3, device="cpu",
                        progress=Job(progress, cancel=lambda: flag["cancel"]))
        assert sorted(p.name for p in folder.iterdir()) == first, phase
    assert open_project(folder, img)[0] == 1
    trained = []  # Stop after the first step
    train_round(img, lab, model, project=folder, steps=5, device="cpu",
                progress=Job(lambda ev: trained.append("loss" in ev.metrics), stop=lambda: any(trained)))
    assert open_project(folder, img)[0] == 2  # Stop keeps the round, completion included


def test_a_2d_image_is_completed_and_segmented_on_its_training_grid():
    yy, xx = np.mgrid[:640, :640]
    disk = ((yy - 320) ** 2 + (xx - 300) ** 2) < 150 ** 2
    pixels = (1000 + 2000 * disk + np.random.default_rng(0).normal(0, 300, disk.shape)).astype(np.int16)
    image = ImageData(pixels, Geometry((0.5, 0.5), (0.0, 0.0), np.eye(2)), "xray")
    model, history = ft.finetune("fresh", image, disk.astype(np.uint8), steps=1, device="cpu")
    grid = model.params.spacing[0] / 0.5
    assert grid > 3 and model.params.spacing[0] == model.params.spacing[1]
    seen = []
    model.net.register_forward_pre_hook(lambda net, x: seen.append(x[0].shape[-2:]))
    sparse = np.zeros(disk.shape, np.uint8)
    sparse[300:340, 280:320], sparse[:20, :20] = 1, 2
    complete_labels(model, image, sparse, sparse=True, background_label=2, restrict=False, device="cpu")
    segment(image, model, device="cpu")
    assert seen and all(max(s) <= 640 / grid + 16 for s in seen)  # (a network's divisor pads a little)


def test_label_values_float_files_and_binary_masks(tissue):
    lab = np.zeros(tissue.data.shape, np.float32)
    lab[PAINTED] = tissue.data[PAINTED]
    assert make_targets(lab).classes == [0, 1, 2, 3]  # a label file saved as floats
    with pytest.raises(AnnotationError, match="whole label values"):
        make_targets(lab + 0.5)
    with pytest.raises(AnnotationError, match="1..N"):
        make_targets((lab > 0) * 255)


def _refuse(*args, **kwargs):
    raise UserError("No slice to suggest.")


def test_suggest_after_a_finished_round_keeps_it_and_2d_has_none(make_napari_viewer, qtbot, brain, tissue,
                                                                monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(brain.data[20:70], name="T1")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    ann = widget.new_annotation_layer()
    ann.data[[10, 25, 40]] = tissue.data[20:70][[10, 25, 40]]
    widget.start.setCurrentText("fresh")
    widget.seconds.setValue(2)
    with qtbot.waitSignal(widget.runner.done, timeout=120_000) as sig:
        widget.train_button.click()
    assert sig.args == ["finished"] and widget.suggest_button.isEnabled()
    prediction, points = widget.prediction, dict(widget.plot.series)
    for outcome in ("cancelled", "failed"):
        if outcome == "failed":
            monkeypatch.setattr(finetune_slices, "rank_slices", _refuse)
        with qtbot.waitSignal(widget.runner.done, timeout=60_000) as sig:
            widget.suggest()
            if outcome == "cancelled":
                widget.runner.cancel()
        assert sig.args == [outcome]
        assert widget.prediction is prediction and prediction in viewer.layers
        assert dict(widget.plot.series) == points

    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True, name="photo")
    widget.image.value = rgb
    n = len(viewer.layers)
    assert widget.new_annotation_layer() is None and len(viewer.layers) == n  # one sentence, no layer
    flat = viewer.add_image(brain.data[45], name="slice")
    widget.image.value = flat
    ann2 = widget.new_annotation_layer()
    ann2.data[:] = tissue.data[65]
    with qtbot.waitSignal(widget.runner.done, timeout=120_000) as sig:
        widget.train_button.click()
    assert sig.args == ["finished"] and not widget.suggest_button.isEnabled()
