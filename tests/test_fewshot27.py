"""Few-shot path: Cancel is answered during the preparation before training (and before completing), with nothing
written; in the 3D view (or a view of another plane) the Fine-tune panel's Accept and Suggest use the axis the round
trained along."""
from __future__ import annotations

import numpy as np
import pytest

import napari_medgen.tasks.completion as completion
import napari_medgen.tasks.finetune as finetune_module
from napari_medgen._widgets.finetune_widget import FinetuneWidget
from napari_medgen.data import interpolate
from napari_medgen.engine.jobs import Cancelled
from napari_medgen.tasks.finetune import complete_labels, finetune
from napari_medgen.tasks.finetune_round import train_round

PAINTED = [20, 30, 40]
PREPARATION = ["finding the painted slices", "interpolating between painted slices", "normalising the image",
               "preparing the training slices"]


@pytest.fixture()
def painting(brain, tissue):
    labels = np.zeros_like(tissue.data)
    labels[PAINTED] = tissue.data[PAINTED]
    return brain, labels


@pytest.fixture()
def no_training(monkeypatch):
    """Records whether training (or prediction) started: a cancelled preparation must not get there."""
    started = []

    def never(*args, **kwargs):
        started.append(True)
        raise AssertionError("training started after Cancel")

    monkeypatch.setattr(finetune_module, "train_segmenter", never)
    monkeypatch.setattr(completion, "predict", never)
    return started


def cancel_on(message):
    """(progress, cancel): cancel turns true once the job reports ``message``."""
    seen = []
    return (lambda ev: seen.append(ev.message)), (lambda: message in seen)


@pytest.mark.parametrize("message", PREPARATION)
def test_cancel_during_preparation_returns_before_training(painting, no_training, message):
    image, labels = painting
    before = labels.copy()
    progress, cancel = cancel_on(message)
    with pytest.raises(Cancelled):
        finetune("fresh", image, labels, seconds=5, device="cpu", progress=progress, cancel=cancel)
    assert not no_training
    np.testing.assert_array_equal(labels, before)


def test_cancelled_round_in_preparation_writes_nothing(painting, no_training, tmp_path):
    image, labels = painting
    progress, cancel = cancel_on("interpolating between painted slices")
    with pytest.raises(Cancelled):
        train_round(image, labels, "fresh", project=str(tmp_path / "project"), seconds=5, device="cpu",
                    progress=progress, cancel=cancel)
    assert not no_training and not (tmp_path / "project").exists()


def test_completion_cancelled_before_predicting(painting, no_training):
    image, labels = painting
    model, _ = finetune_module.start_model(None, 4, image.data)  # completion needs only a model to load
    with pytest.raises(Cancelled):
        complete_labels(model, image, labels, device="cpu", stop=lambda: True)
    assert not no_training


def test_training_starts_without_building_the_sphere_caps_it_does_not_use(painting, monkeypatch):
    """The caps beyond the end slices are for completion only (seconds of the preparation on a large CT)."""
    image, labels = painting
    built = []
    real = interpolate._scaled
    monkeypatch.setattr(interpolate, "_scaled", lambda *a: built.append(1) or real(*a))

    class Training(Exception):
        pass

    def at_training(*args, **kwargs):
        raise Training(len(built))

    monkeypatch.setattr(finetune_module, "train_segmenter", at_training)
    with pytest.raises(Training) as started:
        finetune("fresh", image, labels, seconds=5, device="cpu")
    assert started.value.args[0] == 0


def test_accept_and_suggest_in_3d_use_the_axis_the_round_trained_along(make_napari_viewer, qtbot, brain, tissue):
    viewer = make_napari_viewer()
    viewer.add_image(brain.data[20:60, 20:90, 10:90], name="T1")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    ann = widget.new_annotation_layer()
    sagittal = [25, 40, 55]  # painted along axis 2 (rolled dims), so the round trains along axis 2
    ann.data[:, :, sagittal] = tissue.data[20:60, 20:90, 10:90][:, :, sagittal]
    widget.seconds.setValue(1)
    with qtbot.waitSignal(widget.runner.done, timeout=120_000):
        widget.train_button.click()
    assert widget.slice_axis == 2 and widget.prediction.data[:, :, 32].any()

    viewer.dims.ndisplay = 3
    viewer.dims.set_point(2, 32)
    before = ann.data.copy()
    assert widget.accept_slice() == 0  # the 3D view shows no slice: Accept shows the round's slice first
    np.testing.assert_array_equal(ann.data, before)
    assert viewer.dims.ndisplay == 2 and widget.view_axis() == 2 and widget.current_slice() == 32
    assert widget.accept_slice() > 0
    changed = np.argwhere(ann.data != before)
    assert set(changed[:, 2]) == {32}

    viewer.dims.ndisplay = 3  # Suggest's slice is shown along the round's axis, in 2D
    with qtbot.waitSignal(widget.runner.done, timeout=60_000):
        widget.suggest_button.click()
    k = widget.ranking[0][0]
    assert viewer.dims.ndisplay == 2 and widget.view_axis() == 2 and widget.current_slice() == k
    viewer.dims.order = (0, 1, 2)  # an axial view: going to a listed slice turns to the round's plane
    widget.go_to(widget.ranking[1][0])
    assert widget.view_axis() == 2 and widget.current_slice() == widget.ranking[1][0]
