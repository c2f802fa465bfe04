"""The Segment dock widget: run, volumes and metrics, mapping, CSV, warnings, rerun replaces, cancel, errors."""
import csv

import numpy as np
import pytest

from napari_medgen._widgets.segment_widget import SegmentWidget, map_reference

CLASSES = ["CSF", "grey matter", "white matter"]


@pytest.fixture
def setup(make_napari_viewer, brain, tissue):
    viewer = make_napari_viewer()
    sub = slice(44, 54)  # a slab keeps the test quick
    image = viewer.add_image(brain.data[sub], name="T1", metadata={"modality": "MR"},
                             **brain.geometry.layer_kwargs())
    ref = viewer.add_labels(tissue.data[sub], name="tissue", **brain.geometry.layer_kwargs())
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")  # as napari docks it: napari keeps choices current
    widget.image.value = image
    return viewer, widget, image, ref


def _run(qtbot, widget):
    states = []
    widget.runner.done.connect(states.append)
    widget.run()
    qtbot.waitUntil(lambda: bool(states), timeout=120_000)
    return states[-1]


def _table(widget) -> dict:
    t = widget.results
    return {t.item(i, 0).text(): [t.item(i, j).text() for j in range(1, 4)] for i in range(t.rowCount())}


def test_run_gives_labels_volumes_metrics_and_csv(qtbot, setup, tmp_path):
    viewer, widget, image, ref = setup
    before, ref_before = image.data.copy(), ref.data.copy()
    widget.reference.value = ref
    assert widget.mapping() == {1: 1, 2: 2, 3: 3}  # same numbering as the model: identity by default
    assert _run(qtbot, widget) == "finished"
    out = viewer.layers["T1 brain-tissue-2d"]
    assert out.data.shape == image.data.shape
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)
    np.testing.assert_allclose(out.affine.affine_matrix, image.affine.affine_matrix)
    assert list(out.features["class"]) == ["background", *CLASSES]
    assert np.array_equal(image.data, before) and np.array_equal(ref.data, ref_before)
    assert widget.last_metrics["white matter"]["dice"] > 0.8
    rows = _table(widget)
    assert list(rows) == CLASSES and float(rows["grey matter"][1]) > 0.8
    voxel_ml = np.prod(image.scale) / 1000
    assert float(rows["white matter"][0]) == pytest.approx((out.data == 3).sum() * voxel_ml, abs=0.06)
    assert widget.warnings_label.text() == ""  # an MR brain into the MR brain model: no doubts
    # CSV export: one row per class, volumes and metrics; an existing file is not replaced silently
    path = widget.save_csv(str(tmp_path / "seg.csv"))
    table = list(csv.DictReader(open(path, encoding="utf-8")))
    assert [r["class"] for r in table] == CLASSES and float(table[2]["dice"]) > 0.8
    assert float(table[2]["volume_ml"]) == pytest.approx(float(rows["white matter"][0]), abs=0.06)
    assert widget.save_csv(path) is None
    # rerun (with TTA) replaces the output layer instead of adding one, even after a rename
    out.name = "my labels"
    widget.tta.setChecked(True)
    assert _run(qtbot, widget) == "finished"
    assert viewer.layers["my labels"] is out and len(viewer.layers) == 3
    # once the user corrects the result, a rerun keeps the corrected layer (it was overwritten, with no undo)
    out.paint((5, 58, 50), 9)
    corrected = out.data.copy()
    assert _run(qtbot, widget) == "finished"
    assert "my labels" in viewer.layers and np.array_equal(viewer.layers["my labels"].data, corrected)
    new = viewer.layers[-1]
    assert new is not out and len(viewer.layers) == 4 and not (new.data == 9).any()
    assert _run(qtbot, widget) == "finished" and viewer.layers[-1] is new and len(viewer.layers) == 4


def test_reference_values_map_to_model_classes(qtbot, setup):
    viewer, widget, image, ref = setup
    other = viewer.add_labels(ref.data * 10, name="tissue x10", **{k: getattr(ref, k) for k in ("scale", "translate")})
    widget.reference.value = other
    assert widget.mapping() == {10: None, 20: None, 30: None}  # not the model's classes: ignored by default
    assert "[10, 20, 30]" in widget.mapping_note.text()
    assert widget.sections["Reference values -> model classes"].isExpanded()
    widget.set_mapping({10: 1, 20: 2, 30: 3})
    assert _run(qtbot, widget) == "finished"
    assert widget.last_metrics["white matter"]["dice"] > 0.8
    np.testing.assert_array_equal(map_reference(other.data, widget.mapping()), ref.data)


def test_mismatch_warning_is_shown(qtbot, setup):
    viewer, widget, image, _ref = setup
    ct = viewer.add_image(image.data, name="CT", metadata={"modality": "CT"}, scale=image.scale)
    widget.image.value = ct
    assert _run(qtbot, widget) == "finished"
    assert "trained on MR" in widget.warnings_label.text()


def test_code_is_not_allowed_by_default(setup):
    _viewer, widget, image, ref = setup
    assert not widget.allow_code.isChecked() and not widget.code_warning.isVisibleTo(widget)
    widget.allow_code.setChecked(True)
    assert widget.code_warning.isVisibleTo(widget)
    assert image in widget.image.choices and ref not in widget.image.choices  # labels are not offered


def test_layer_choices_follow_the_layer_list(setup):
    viewer, widget, _image, _ref = setup
    new = viewer.add_image(np.zeros((4, 8, 8)), name="another image")
    assert new in widget.image.choices  # napari calls the panel's reset_choices
    viewer.layers.remove(new)
    assert new not in widget.image.choices


def test_a_chosen_layer_stays_chosen_when_renamed(setup):
    """magicgui found a choice again by its name: renaming the reference left the picker empty, and Run then gave
    no Dice at all."""
    viewer, widget, image, ref = setup
    widget.reference.value = ref
    ref.name, image.name = "tissue (edited)", "T1 renamed"
    assert widget.reference.value is ref and widget.image.value is image


def test_cancel_adds_nothing(qtbot, setup):
    viewer, widget, _image, _ref = setup
    states = []
    widget.runner.done.connect(states.append)
    widget.run()
    widget.runner.cancel()
    qtbot.waitUntil(lambda: bool(states), timeout=60_000)
    assert states == ["cancelled"] and len(viewer.layers) == 2
    assert _run(qtbot, widget) == "finished" and len(viewer.layers) == 3


def test_input_removed_or_moved_mid_run(qtbot, setup):
    """Labels of a removed image were still added (an orphan layer); labels of a moved image landed where it had
    moved, not where the segmented voxels were."""
    viewer, widget, image, _ref = setup
    scale = np.array(image.scale)
    states = []
    widget.runner.done.connect(states.append)
    widget.run()
    image.scale = scale * 3
    qtbot.waitUntil(lambda: bool(states), timeout=60_000)
    np.testing.assert_allclose(viewer.layers[-1].scale, scale)
    widget.run()
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: len(states) == 2, timeout=60_000)
    assert states[-1] == "finished" and [ly.name for ly in viewer.layers] == ["tissue", "T1 brain-tissue-2d"]


def test_bad_model_is_a_notification_not_a_crash(qtbot, setup, tmp_path):
    viewer, widget, _image, _ref = setup
    widget.model.setCurrentText(str(tmp_path / "missing.medgen.pt"))
    assert "neither a built-in model" in widget.description.text()
    assert _run(qtbot, widget) == "failed"
    assert "neither a built-in model" in str(widget.runner.last_error)
    assert len(viewer.layers) == 2


def test_sample_tissue_map_has_the_model_class_colours(qtbot, setup):
    """The sample's tissue map and a brain-tissue-2d result compare by eye: one colour per class."""
    from napari_medgen.models.segmentation import class_colors, load_segmentation_model

    viewer, widget, _image, _ref = setup
    assert widget.tta.toolTip()
    layers = viewer.open_sample("napari-medgen", "brain")
    sample = next(ly for ly in layers if ly.name == "MNI152 tissue")
    model_colors = class_colors(load_segmentation_model("brain-tissue-2d"))
    for value, name in enumerate(CLASSES, start=1):
        np.testing.assert_allclose(sample.colormap.map(value), model_colors[value], atol=1e-6, err_msg=name)
    assert _run(qtbot, widget) == "finished"
    result = viewer.layers["T1 brain-tissue-2d"]
    for value in (1, 2, 3):
        np.testing.assert_allclose(result.colormap.map(value), sample.colormap.map(value), atol=1e-6)
