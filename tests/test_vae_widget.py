"""The "VAE anomaly" widget: train briefly with a live loss plot, score, move the threshold, jump, cancel."""
import numpy as np
import pytest

from napari_medgen._widgets.vae_widget import VAEWidget
from napari_medgen.models.config import Task
from napari_medgen.tasks.vae import NoModelError

WAIT = 120_000


@pytest.fixture
def setup(make_napari_viewer, brain, tissue):
    viewer = make_napari_viewer()
    geo = brain.geometry.layer_kwargs()
    img = viewer.add_image(brain.data, name="T1", **geo)
    mask = viewer.add_labels((tissue.data > 0).astype(np.uint8), name="brain", **geo)
    widget = VAEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, img, mask


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT)


def test_train_score_threshold_jump(setup, qtbot):
    viewer, w, img, mask = setup
    original = img.data.copy()
    w.image.value = img
    w.score()  # no model yet: a clear error, nothing added
    _wait(qtbot, w)
    assert isinstance(w.runner.last_error, NoModelError)
    n_layers = len(viewer.layers)

    w.normals.value = [img]
    name = img.name
    img.name = "T1 renamed"  # the selection follows the layer (a rename dropped it)
    w.reset_choices()
    assert list(w.normals.value) == [img]
    img.name = name
    w.train_mask.value = mask
    w.steps.setValue(25)
    w.train()
    _wait(qtbot, w)
    assert w.model is not None and w.model.task == Task.VAE
    assert len(w.loss_plot.series["reconstruction"][0]) == 25 and "KL" in w.loss_plot.series
    assert w.model.params.spacing == list(img.scale[1:])  # the layer's geometry travelled with it
    size = "x".join(map(str, w.model.params.size))
    assert f"trained on {size}-pixel slices" in w.model_line.text()  # words, not a Python tuple

    w.mask.value = mask
    w.method.setCurrentText("residual")
    viewer.window.resize(1366, 768)
    qtbot.wait(50)
    width = w.width()
    w.score()
    _wait(qtbot, w)
    qtbot.wait(50)
    assert w.width() <= width  # the threshold line and explanation wrap instead of widening the panel
    heat, labels = viewer.layers["T1 VAE heatmap"], viewer.layers["T1 VAE anomalies"]
    assert w.explanation.text().startswith("Method: plain VAE reconstruction residual")
    assert heat.data.shape == img.data.shape and labels.data.shape == img.data.shape
    assert heat.colormap.name == "inferno" and heat.blending == "additive"
    np.testing.assert_allclose(heat.scale, img.scale)
    np.testing.assert_allclose(labels.translate, img.translate)
    assert len(viewer.layers) == n_layers + 2

    # lowering the threshold flags more voxels without re-running the model
    before = int(labels.data.sum())
    w.slider.setValue(w.slider.value() // 3)
    assert not w.runner.running
    assert int(labels.data.sum()) > before
    assert w.slices.count() > 0
    item = w.slices.item(0)
    index = item.data(0x0100)
    w.slices.itemClicked.emit(item)
    assert viewer.dims.current_step[0] == index

    heat.colormap = "viridis"  # the user's choice survives a re-run (it was reset to inferno)
    w.score()  # re-run replaces its own layers
    _wait(qtbot, w)
    assert len(viewer.layers) == n_layers + 2 and heat.colormap.name == "viridis"
    w.sample()
    _wait(qtbot, w)
    samples = viewer.layers["VAE samples"]
    assert samples.data.shape == (8, *w.model.params.slice_shape) and tuple(samples.scale) == (1.0, *img.scale[1:])
    assert samples.data.shape[1] < img.data.shape[1]  # a masked model draws the brain's box, not the whole head
    np.testing.assert_array_equal(img.data, original)  # the user's layer is untouched

    # a run refused because another is busy leaves the shown result tied to its own layer
    other = viewer.add_image(img.data[::-1].copy(), name="other", **{k: getattr(img, k) for k in ("scale",)})
    w.steps.setValue(100_000)
    w.train()
    w.image.value = other
    w.score()  # refused: the VAE is busy
    w.runner.cancel()  # discards the training: the shown model and result stay
    _wait(qtbot, w)
    w.go_to_slice(index)
    assert np.isclose(viewer.dims.point[0], img.data_to_world([index, 0, 0])[0])  # T1's slice, not other's
    assert "other VAE heatmap" not in viewer.layers
    w.set_threshold(w.result.threshold)  # still updates T1's mask layer
    assert labels in viewer.layers and labels.data.shape == img.data.shape


def test_fits_a_laptop_screen(setup):
    viewer, w, _img, _mask = setup
    viewer.window.resize(1366, 768)
    assert w.minimumSizeHint().height() < 600  # scrolls instead of growing past the screen
    assert not w.train_advanced.isExpanded() and not w.generate_section.isExpanded()
    assert not w.content.isAncestorOf(w.runner)  # progress and Cancel never scroll out of sight


def test_layers_opened_later_can_be_chosen(setup):
    viewer, w, img, _mask = setup
    later = viewer.add_image(img.data[:20].copy(), name="later")
    assert later in w.normals.choices and later in w.image.choices
    viewer.layers.remove(later)
    assert later not in w.normals.choices and later not in w.image.choices


def test_stop_training_keeps_best_and_cancel_scoring_adds_nothing(setup, qtbot):
    viewer, w, img, mask = setup
    w.normals.value = [img]
    w.train_mask.value = mask
    w.steps.setValue(5000)
    w.train()
    qtbot.waitUntil(lambda: len(w.loss_plot.series.get("KL", ([], []))[0]) >= 3, timeout=WAIT)
    w.runner.request_stop()  # Stop: keep the best weights so far
    _wait(qtbot, w)
    assert w.model is not None and "stopped early" in w.model_line.text()
    n_layers = len(viewer.layers)
    w.image.value = img
    w.mask.value = mask
    w.method.setCurrentText("restoration")
    w.score()
    w.runner.cancel()
    _wait(qtbot, w)
    assert len(viewer.layers) == n_layers


def test_the_only_or_active_image_is_preselected_for_training(setup):
    viewer, w, img, _mask = setup
    assert list(w.normals.value) == [img]  # the first Train just works with one scan open
    assert "Ctrl-click" in w.normals.native.toolTip()  # how to choose several
    second = viewer.add_image(img.data[:, ::-1].copy(), name="second")
    assert list(w.normals.value) == [img]  # a layer opened later keeps the choice
    viewer.layers.remove(img)
    assert list(w.normals.value) == [second]  # still preselected: the user has not chosen yet


def test_a_selection_the_user_cleared_stays_clear(setup):
    viewer, w, img, _mask = setup
    assert list(w.normals.value) == [img]
    w.normals.native.clearSelection()  # the user deselects the preselected scan
    assert list(w.normals.value) == []
    third = viewer.add_image(img.data[:, ::-1].copy(), name="third")  # napari refreshes the widget's choices
    viewer.layers.selection.active = third
    img.name = "T1 renamed"
    w.reset_choices()
    assert list(w.normals.value) == []  # nothing chosen against the user's choice
    assert third in w.normals.choices


def test_tooltips_say_each_method_once(setup):
    _viewer, w, _img, _mask = setup
    tip = w.method.toolTip()
    assert "combined: combined" not in tip and tip.count("combined:") == 1
    for box in (w.n_samples, w.seed, w.slice_a, w.slice_b):
        assert box.toolTip()
