"""The Classify dock widget: train from labelled layers, classify a layer, heatmap overlay, ranked slices."""
from __future__ import annotations

import numpy as np
import pytest

import napari_medgen.tasks.classify  # noqa: F401  (torch/MONAI before the first OpenGL draw)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout)


def test_train_from_layers_then_classify(viewer, qtbot, brain, tissue, tmp_path):
    from napari_medgen._widgets.classify_widget import ClassifyWidget

    vol, head = brain.data.astype(np.float32), tissue.data > 0
    kw = brain.geometry.layer_kwargs()
    for i, z in enumerate(range(30, 66, 6)):
        t2 = i % 2 == 1
        data = np.where(head[z], vol[z].max() - vol[z], 0).astype(np.float32) if t2 else vol[z]
        viewer.add_image(data, name=f"slice {z}", scale=kw["scale"][1:], metadata={"modality": "MR"})
    w = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.bars.isHidden()  # no empty chart before the first result
    for i, z in enumerate(range(30, 66, 6)):
        w.set_label(f"slice {z}", "T2" if i % 2 else "T1")
    viewer.layers["slice 36"].name = "slice 36 (T2)"  # a rename keeps the typed label (it cleared it)
    assert w.layer_labels()["slice 36 (T2)"] == "T2" and len(w.layer_labels()) == 6
    w.steps.setValue(4)
    w.pooling.setCurrentText("mean")
    w.train()
    _wait(qtbot, w)
    assert w.runner.last_error is None and w.model is not None and w.model.params.pooling == "mean"
    assert w.model.params.classes == ["T1", "T2"] and "validation" in w.metrics_line.text()
    assert "Trained on 2 classes (T1, T2)" in w.metrics_line.text() and "[" not in w.metrics_line.text()
    assert w.plot.series["loss"][0]
    vlayer = viewer.add_image(vol, name="volume", **kw, metadata={"modality": "MR"})
    with pytest.raises(ValueError, match="takes 2D images"):  # one sentence
        napari_medgen.tasks.classify.classify(w.model, vol)
    w.image.value = viewer.layers["slice 30"]
    w.classify()
    _wait(qtbot, w)
    r = w.result
    assert r is not None and w.heatmap_layer.blending == "additive"
    assert w.heatmap_layer.data.shape == viewer.layers["slice 30"].data.shape
    assert np.allclose(w.heatmap_layer.scale, viewer.layers["slice 30"].scale)
    assert len(w.bars.ax.patches) == 2 and not w.bars.isHidden() and w.slices.count() == 0
    assert vlayer.data is vol  # inputs untouched
    n_layers = len(viewer.layers)
    w.classify()  # again: the heatmap layer is replaced, not added twice
    _wait(qtbot, w)
    assert len(viewer.layers) == n_layers and w.heatmap_layer in viewer.layers
    viewer.window.resize(1366, 768)
    viewer.screenshot(str(tmp_path / "classify.png"), canvas_only=False)


def test_train_without_labels_says_so(viewer, qtbot, brain, monkeypatch):
    from napari_medgen._widgets import classify_widget as cw

    errors = []
    monkeypatch.setattr(cw, "show_error", errors.append)
    viewer.add_image(brain.data[40], name="one")
    w = cw.ClassifyWidget(viewer)
    w.train()
    w.classify()
    w.source.setCurrentIndex(1)
    w.csv.setText("missing.csv")
    w.train()
    assert errors == ["Type a label next to at least two image layers (two classes or more).",
                      "No classifier yet: train one or load a .medgen.pt classifier.",
                      "The label file missing.csv does not exist."]
    assert not w.table.isVisibleTo(w) and w.csv_box.isVisibleTo(w)


def test_auroc_line_says_when_undefined():
    from napari_medgen._widgets.classify_widget import auroc_text

    assert auroc_text(0.876) == "0.88" and "one class" in auroc_text(float("nan"))


def test_seconds_cap_ends_training(viewer, qtbot, brain):
    """A step budget no laptop finishes soon still ends at the 'at most' seconds."""
    from napari_medgen._widgets.classify_widget import ClassifyWidget

    for i, z in enumerate(range(30, 62, 4)):
        viewer.add_image(brain.data[z], name=f"slice {z}", metadata={"modality": "MR"})
    w = ClassifyWidget(viewer)
    for i, z in enumerate(range(30, 62, 4)):
        w.set_label(f"slice {z}", "low" if z < 46 else "high")
    w.steps.setValue(100_000)
    w.seconds.setValue(3)
    w.train()
    _wait(qtbot, w, timeout=60_000)
    assert w.runner.last_error is None and w.model is not None
    assert w.model.config.training["seconds"] < 20 and not w.model.config.training["stopped"]


def test_training_summary_in_words(viewer):
    from napari_medgen._widgets.classify_widget import ClassifyWidget, training_summary

    metrics = {"accuracy": 0.75, "balanced_accuracy": 0.75, "auroc_macro": 1.0, "n": 4,
               "confusion_matrix": [[2, 0], [1, 1]]}
    text = training_summary(["high", "low"], 12, metrics)
    assert text == ("Trained on 2 classes (high, low) with 12 images: validation accuracy 0.75 (4 images; balanced "
                    "0.75, AUROC 1.00); true->predicted: high->high 2, low->high 1, low->low 1.")
    assert ClassifyWidget(viewer).source.toolTip()


def test_an_intensity_window_typed_under_advanced_reaches_training(viewer, monkeypatch):
    """CT lesions of tens of HU vanish in the automatic -1000..1000 HU; the panel had no way to say otherwise."""
    from napari_medgen._widgets import classify_widget as cw

    errors, started = [], []
    monkeypatch.setattr(cw, "show_error", errors.append)
    rng = np.random.default_rng(0)
    for i in range(4):
        viewer.add_image(rng.normal(size=(32, 32)).astype(np.float32), name=f"slice {i}")
    w = cw.ClassifyWidget(viewer)
    monkeypatch.setattr(w.runner, "start", lambda *a, **k: started.append(k))
    for i, name in enumerate(["a", "b", "a", "b"]):
        w.table.set_value(viewer.layers[f"slice {i}"], name)
    w.window.setText("-20 120")
    w.train()
    assert started and started[-1]["normalization"] == {"kind": "window", "low": -20.0, "high": 120.0}
    w.window.setText("120 -20")
    w.train()
    assert len(started) == 1 and errors == ["The window needs LOW below HIGH (got 120 -20)."]


def test_a_summary_that_grows_a_line_is_shown_whole(make_napari_viewer, qtbot):
    """At laptop size a training summary longer than the first text was cut off at its top line."""
    from napari_medgen._widgets.classify_widget import ClassifyWidget, training_summary

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((32, 32), np.float32), name="slice")
    w = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(w)
    viewer.window.resize(1366, 768)
    qtbot.wait(200)
    metrics = {"accuracy": 1.0, "balanced_accuracy": 1.0, "auroc_macro": 1.0, "n": 4,
               "confusion_matrix": [[2, 0], [0, 2]]}
    w.metrics_line.setText(training_summary(["healthy", "lesion"], 18, metrics))
    qtbot.wait(200)
    line = w.metrics_line
    assert line.height() >= line.heightForWidth(line.width()) > line.fontMetrics().height() * 2
    line.setText("Loaded a model.")  # and a shorter text after it leaves no empty lines behind
    qtbot.wait(200)
    assert line.height() < 2 * line.fontMetrics().height()
    long = "training classifier " * 200  # a status of many lines is cut to three, all of it in the tooltip
    w.runner.status.setText(long)
    qtbot.wait(200)
    status = w.runner.status
    assert status.height() < 4 * status.fontMetrics().height() + 8 and status.toolTip() == long
