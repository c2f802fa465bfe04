"""The Fine-tune dock widget drives the loop: interpolate, train with live preview, stop, train again, accept slice,
suggest slice, save."""
from __future__ import annotations

import numpy as np

from napari_medgen import Model, load_segmentation_model, segmentation_config
from napari_medgen._widgets.finetune_widget import FinetuneWidget

PAINTED = [25, 40, 55]


def test_widget_train_stop_again_accept_suggest_save(make_napari_viewer, qtbot, brain, tissue, tmp_path):
    viewer = make_napari_viewer()
    img = viewer.add_image(brain.data, name="T1", **brain.geometry.layer_kwargs())
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    ann = widget.new_annotation_layer()
    ann.data[PAINTED] = tissue.data[PAINTED]
    painted = ann.data.copy()
    start = tmp_path / "small.medgen.pt"
    Model(segmentation_config("small", 4, channels=(16, 32, 64), strides=(2, 2), num_res_units=1)).save(start)
    widget.start.setCurrentText(str(start))
    widget.project.setText(str(tmp_path / "project"))
    widget.class_names.setText("CSF, grey matter,white matter")
    widget.seconds.setValue(600)

    # Interpolate: a new layer fills the slices between the painted ones at once; the painting is untouched
    filled = widget.interpolate()
    assert filled is not ann and filled.data[30].any() and not filled.data[60].any()
    np.testing.assert_array_equal(ann.data, painted)

    # Train: the prediction layer appears with the first validation (live preview), then Stop keeps the best
    widget.train_button.click()
    qtbot.waitUntil(lambda: len(widget.plot.series.get("val Dice", ([], []))[0]) >= 2, timeout=60_000)
    # the live preview (every few seconds) appears while training still runs (its budget is 600 s)
    qtbot.waitUntil(lambda: widget.prediction is not None and widget.prediction.data.any(), timeout=60_000)
    assert widget.runner.running
    with qtbot.waitSignal(widget.runner.done, timeout=60_000) as sig:
        widget.runner.stop_button.click()
    assert sig.args == ["finished"] and "stopped early" in widget.summary.text()
    assert "returned the best by validation" in widget.summary.text()
    pred = widget.prediction
    assert pred is not None and pred.data.shape == img.data.shape
    np.testing.assert_allclose(pred.scale, img.scale)
    np.testing.assert_allclose(pred.translate, img.translate)
    np.testing.assert_allclose(pred.affine.affine_matrix, img.affine.affine_matrix)
    np.testing.assert_array_equal(ann.data, painted)  # training never touches the annotations
    first_x = widget.plot.series["loss"][0][-1]

    # Train again: continues from the model of round 1, the plot continues, the layer is reused
    widget.seconds.setValue(10)
    assert widget.resume.isChecked()
    with qtbot.waitSignal(widget.runner.done, timeout=60_000) as sig:
        widget.train_button.click()
    assert sig.args == ["finished"] and widget.round == 2 and widget.prediction is pred
    assert widget.plot.series["loss"][0][-1] > first_x
    assert widget.model.params.finetune["rounds"] == 2
    assert [c["name"] for c in widget.model.params.classes] == ["background", "CSF", "grey matter", "white matter"]
    saved = sorted(p.name for p in (tmp_path / "project").iterdir())
    assert "model_round02.medgen.pt" in saved and "annotations_round02.nii.gz" in saved

    # Accept slice on an unpainted slice: fills it from the prediction, keeps painted voxels, undoable
    widget.go_to(47)
    assert widget.current_slice() == 47
    ann.data[47, 50:55, 40:45] = 1  # the user already painted a patch here
    before = ann.data.copy()
    written = widget.accept_slice()
    assert written > 1000
    np.testing.assert_array_equal(ann.data[47, 50:55, 40:45], 1)
    fill = (before[47] == 0) & (pred.data[47] > 0)
    np.testing.assert_array_equal(ann.data[47][fill], pred.data[47][fill])
    np.testing.assert_array_equal(np.delete(ann.data, 47, 0), np.delete(before, 47, 0))
    ann.undo()
    np.testing.assert_array_equal(ann.data, before)

    # Suggest next slice: a visible ranking of unannotated slices, and the viewer jumps to the top one
    with qtbot.waitSignal(widget.runner.done, timeout=60_000):
        widget.suggest_button.click()
    assert widget.ranking_list.count() > 0 and "uncertainty" in widget.ranking_list.item(0).text()
    top = widget.ranking[0][0]
    assert top not in PAINTED + [47] and widget.current_slice() == top

    # Save: a model the Segment widget and the CLI can load
    path = widget.save_model(str(tmp_path / "mine"))
    assert load_segmentation_model(path).params.finetune["rounds"] == 2

    # Cancel a round once it has drawn: the prediction layer and the plot are as before it, the model is round 2's
    kept, last_x, model = pred.data.copy(), widget.plot.series["loss"][0][-1], widget.model
    summary = widget.summary.text()
    widget.seconds.setValue(600)
    widget.train_button.click()
    assert "Round 3 is training" in widget.summary.text()
    qtbot.waitUntil(lambda: widget.plot.series["loss"][0][-1] > last_x + 10, timeout=60_000)
    # meanwhile the prediction layer shows the unfinished network: Accept is off and takes nothing from it
    annotated = ann.data.copy()
    assert not widget.accept_button.isEnabled() and widget.accept_slice() == 0
    np.testing.assert_array_equal(ann.data, annotated)
    # the user renames the image and replaces its data: the previews still fit the run's grid, in the same layer
    shown, show = [], widget._show_preview
    widget._show_preview = lambda p: (show(p), shown.append(1))
    img.name, img.data = "T1 renamed", brain.data[::2, ::2, ::2]
    qtbot.waitUntil(lambda: len(shown) >= 1, timeout=60_000)
    with qtbot.waitSignal(widget.runner.done, timeout=60_000) as sig:
        widget.runner.cancel()
    assert sig.args == ["cancelled"] and widget.model is model and widget.prediction is pred
    assert widget.summary.text() == summary  # round 2's summary again
    np.testing.assert_array_equal(pred.data, kept)
    assert widget.plot.series["loss"][0][-1] == last_x
    assert [ly.name for ly in viewer.layers].count(pred.name) == 1 and sum("prediction" in ly.name for ly in viewer.layers) == 1

    # a prediction the user corrected stays theirs: the next round's previews and result go to a new layer
    img.data = brain.data  # back on the annotations' grid
    pred.paint((47, 58, 50), 3)
    corrected = pred.data.copy()
    widget.seconds.setValue(10)
    with qtbot.waitSignal(widget.runner.done, timeout=60_000) as sig:
        widget.train_button.click()
    assert sig.args == ["finished"] and pred in viewer.layers and np.array_equal(pred.data, corrected)
    assert widget.prediction is not pred and widget.prediction in viewer.layers


def test_live_preview_on_a_2d_image(make_napari_viewer, brain):
    """A 2D image (an X-ray, one CT slice) trains as a one-slice volume; its live previews land on the 2D layer
    (they raised inside the progress handler)."""
    viewer = make_napari_viewer()
    img = viewer.add_image(brain.data[40], name="slice")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget._source, widget._shape = img, img.data.shape
    widget._show_preview({"box": ((0, 1), (10, 20), (30, 50)), "labels": np.full((1, 10, 20), 2, np.uint8)})
    pred = widget.prediction
    assert pred.data.shape == img.data.shape and (pred.data == 2).sum() == 200 and pred.data[10:20, 30:50].all()


def test_advanced_controls_say_what_they_do_and_fit(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    for control in (widget.painting, widget.project, widget.resume, widget.suggest_button):
        assert control.toolTip()
    # in a 440 px panel the style box gets ~250 px and the project line ~190 px: their texts must not be cut
    assert widget.painting.sizeHint().width() <= 200
    assert widget.project.fontMetrics().horizontalAdvance(widget.project.placeholderText()) <= 150


def test_choosing_a_project_folder_resumes_its_last_round(make_napari_viewer, brain, tissue, tmp_path):
    from napari_medgen.tasks.finetune_round import train_round

    painted = np.zeros_like(tissue.data)
    painted[PAINTED] = tissue.data[PAINTED]
    small = Model(segmentation_config("small", 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1))
    train_round(brain, painted, small, project=tmp_path, steps=2, seconds=None, patch_size=(64, 64), device="cpu")
    viewer = make_napari_viewer()
    viewer.add_image(brain.data, name="T1", **brain.geometry.layer_kwargs())
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.project.setText(str(tmp_path))
    widget.resume_project()
    layer = widget.labels.value
    assert layer.name == "T1 annotations (round 1)" and np.array_equal(layer.data, painted)
    assert widget.start.currentText() == str(tmp_path / "model_round01.medgen.pt") and widget.round == 1
    assert "Train (round 2)" in widget.summary.text()


def test_annotations_on_a_single_ct_slice_keep_its_place_and_a_removed_image_gets_no_prediction(
        make_napari_viewer, qtbot, tmp_path):
    """New annotation layer on pydicom's CT_small (one slice at z = -75.7 mm, 5 mm thick): saved through the
    plugin's writer it lay at z = 0, 1 mm thick (no metadata); a round whose image was removed still added its
    prediction."""
    import pydicom.data
    from napari_medgen._writer import write_single
    from napari_medgen.io.read import read_image

    ct = read_image(pydicom.data.get_testdata_file("CT_small.dcm"))
    viewer = make_napari_viewer()
    data, kwargs, _ = ct.layer_data()
    img = viewer.add_image(data, **kwargs)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    ann = widget.new_annotation_layer()
    ann.data[40:80, 40:80] = 1
    out = tmp_path / "ann.nii.gz"
    write_single(str(out), ann.data, {"scale": ann.scale, "translate": ann.translate,
                                      "affine": ann.affine.affine_matrix, "metadata": ann.metadata})
    import SimpleITK as sitk
    back = sitk.ReadImage(str(out))
    assert back.GetSize()[2] == 1 and abs(back.GetOrigin()[2] - ct.geometry.plane.volume.origin[0]) < 1e-3
    assert abs(back.GetSpacing()[2] - ct.geometry.plane.volume.spacing[0]) < 1e-3
    widget._source, widget._shape = img, ann.data.shape
    viewer.layers.remove(img)
    widget._trained((None, {"round": 1, "axis": 0}, np.ones(ann.data.shape, np.uint8)))
    assert widget.prediction is None and [ly.name for ly in viewer.layers] == [ann.name]
