"""The "GAN synthesis" dock widget: trains briefly with a live preview, synthesizes, reports, cancels."""
import numpy as np

from napari_medgen._widgets.gan_widget import GANWidget

WAIT = 60_000


def _run(qtbot, widget, action):
    with qtbot.waitSignal(widget.runner.done, timeout=WAIT) as blocker:
        action()
    return blocker.args[0]


def test_train_synthesize_report_cancel(make_napari_viewer, qtbot, brain, tissue, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(brain.data, **brain.geometry.layer_kwargs(), name="T1")
    labels = viewer.add_labels(tissue.data, **tissue.geometry.layer_kwargs(), name="tissue")
    before = image.data.copy()
    w = GANWidget(viewer)
    qtbot.addWidget(w)
    w.image.value = image
    w.steps.setValue(40)  # advanced option: a step budget besides the seconds
    w.downsample.setValue(4)
    w.device.setCurrentText("cpu")

    assert _run(qtbot, w, w.train) == "finished"
    preview = viewer.layers["GAN preview"]
    assert preview.data.shape == (8, 30, 25) and tuple(preview.scale) == (1.0, 8.0, 8.0)
    assert "d_loss" in w.loss_plot.series and len(w.loss_plot.series["d_loss"][0]) == 40
    assert w.model_line.text().startswith("Trained 40 steps in ")
    assert f"{w.model.params.n_train} training slices of (30, 25) at 8 x 8 mm" in w.model_line.text()

    w.n.setValue(6)
    w.seed.setValue(3)
    assert _run(qtbot, w, w.synthesize) == "finished"
    samples = viewer.layers["GAN samples"]
    assert samples.data.shape == (6, 30, 25) and tuple(samples.scale) == (1.0, 8.0, 8.0)
    first = samples.data.copy()
    _run(qtbot, w, w.synthesize)  # rerun replaces its own layer, same seed, same images
    assert [l.name for l in viewer.layers].count("GAN samples") == 1
    np.testing.assert_allclose(viewer.layers["GAN samples"].data, first, rtol=1e-5)  # up to float rounding

    assert _run(qtbot, w, w.quality_report) == "finished"
    assert "FD-medgen" in w.report_text.text() and "Nearest training SSIM" in w.report_text.text()
    assert "lower is closer to real" in w.report_text.text()  # what patch SWD means, in one line
    w.show_pairs()
    assert viewer.layers["GAN suspicious pairs (sample | nearest real)"].data.shape == (5, 30, 54)

    path = str(tmp_path / "gan")
    model_params = w.model.params
    w.save_model(path)
    w.model = None
    w.load_model(path + ".medgen.pt")
    assert w.model is not None and w.model.task == "gan" and w.model.params == model_params

    # Stop a long training: it stops after the current step and keeps the best EMA weights so far
    w.steps.setValue(100_000)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=WAIT)
    with qtbot.waitSignal(w.runner.done, timeout=WAIT) as blocker:
        w.train()
        qtbot.waitUntil(lambda: "d_loss" in w.runner.status.text(), timeout=WAIT)
        w.runner.request_stop()
    assert blocker.args[0] == "finished" and "stopped early" in w.model_line.text()
    trained = w.model
    # Cancel discards the run: the previous model stays
    with qtbot.waitSignal(w.runner.done, timeout=WAIT) as blocker:
        w.train()
        qtbot.waitUntil(lambda: "d_loss" in w.runner.status.text(), timeout=WAIT)
        w.runner.cancel()
    assert blocker.args[0] == "cancelled" and w.model is trained
    assert "GAN preview" not in [layer.name for layer in viewer.layers]  # no preview of a discarded generator

    # mask-to-image: train on the paired tissue map, then render the label slice under the cursor
    w.labels.value = labels
    w.mode.setCurrentIndex(1)
    w.steps.setValue(10)
    assert _run(qtbot, w, w.train) == "finished"
    viewer.dims.set_point(0, float(brain.geometry.index_to_world([45, 0, 0])[0]))
    assert _run(qtbot, w, w.from_labels) == "finished"
    out = viewer.layers["tissue GAN image"]
    assert out.data.shape == (1, 117, 99)
    assert np.allclose(out.data_to_world([0, 0, 0]), labels.data_to_world([45, 0, 0]))
    assert np.array_equal(image.data, before)  # the user's layers are untouched


def test_docked_panel_follows_the_layer_list_and_keeps_cancel_visible(make_napari_viewer, brain):
    viewer = make_napari_viewer()
    w = GANWidget(viewer)
    viewer.window.add_dock_widget(w)
    viewer.window.resize(1366, 768)
    image = viewer.add_image(brain.data, name="T1")
    labels = viewer.add_labels(np.zeros(brain.data.shape, np.uint8), name="seg")
    assert image in w.image.choices and labels in w.labels.choices
    viewer.layers.remove(labels)
    assert labels not in w.labels.choices
    assert w.minimumSizeHint().height() < 600 and not w.content.isAncestorOf(w.runner)


def test_every_control_says_what_it_does(make_napari_viewer):
    from qtpy.QtWidgets import QPushButton

    w = GANWidget(make_napari_viewer())
    buttons = {b.text(): b for b in w.findChildren(QPushButton)}
    assert "Quality report" not in buttons  # the section is the "Quality report"; its button says what it does
    for control in (w.mode, w.n, w.seed, w.seed_b, buttons["Image from current label slice"],
                    buttons["Compare with real slices"]):
        assert control.toolTip()
