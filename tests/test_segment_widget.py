"""The Segment dock widget: run, metrics, rerun replaces, cancel, errors, input untouched."""
import numpy as np
import pytest

from napari_medgen._widgets.segment_widget import SegmentWidget


@pytest.fixture
def setup(make_napari_viewer, brain, tissue):
    viewer = make_napari_viewer()
    sub = slice(40, 56)  # a slab keeps the test quick
    image = viewer.add_image(brain.data[sub], name="T1", **brain.geometry.layer_kwargs())
    ref = viewer.add_labels(tissue.data[sub], name="tissue", **brain.geometry.layer_kwargs())
    widget = SegmentWidget(viewer)
    widget.image.value = image
    return viewer, widget, image, ref


def _run(qtbot, widget):
    states = []
    widget.runner.done.connect(states.append)
    widget.run()
    qtbot.waitUntil(lambda: bool(states), timeout=120_000)
    return states[-1]


def test_run_gives_labels_on_the_image_geometry(qtbot, setup):
    viewer, widget, image, ref = setup
    before = image.data.copy()
    widget.reference.value = ref
    assert _run(qtbot, widget) == "finished"
    out = viewer.layers["T1 brain-tissue-2d"]
    assert out.data.shape == image.data.shape
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)
    np.testing.assert_allclose(out.affine.affine_matrix, image.affine.affine_matrix)
    assert list(out.features["class"]) == ["background", "CSF", "grey matter", "white matter"]
    assert np.array_equal(image.data, before) and np.array_equal(ref.data, viewer.layers["tissue"].data)
    assert widget.last_metrics["white matter"]["dice"] > 0.8
    assert "grey matter: Dice" in widget.metrics_label.text()
    # rerun (with TTA) replaces the output layer instead of adding one
    widget.tta.setChecked(True)
    assert _run(qtbot, widget) == "finished"
    assert [layer.name for layer in viewer.layers].count("T1 brain-tissue-2d") == 1
    assert len(viewer.layers) == 3


def test_labels_are_not_offered_as_input(setup):
    _viewer, widget, image, ref = setup
    assert image in widget.image.choices and ref not in widget.image.choices


def test_cancel_adds_nothing(qtbot, setup):
    viewer, widget, _image, _ref = setup
    states = []
    widget.runner.done.connect(states.append)
    widget.run()
    widget.runner.cancel()
    qtbot.waitUntil(lambda: bool(states), timeout=60_000)
    assert states == ["cancelled"] and len(viewer.layers) == 2
    assert _run(qtbot, widget) == "finished" and len(viewer.layers) == 3


def test_bad_model_is_a_notification_not_a_crash(qtbot, setup, tmp_path):
    viewer, widget, _image, _ref = setup
    widget.model.setCurrentText(str(tmp_path / "missing.medgen.pt"))
    assert _run(qtbot, widget) == "failed"
    assert "neither a built-in model" in str(widget.runner.last_error)
    assert len(viewer.layers) == 2
