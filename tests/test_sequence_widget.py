"""The Time series dock widget: lists time-series layers, trains from typed targets, predicts, plots, seeks."""
import numpy as np
import pytest

from napari_medgen.io.timeseries import write_time_series
from napari_medgen._reader import read_layers
from napari_medgen.tasks import sequence  # noqa: F401 - torch/monai before the first OpenGL draw

from napari_medgen._widgets.sequence_widget import SequenceWidget


@pytest.fixture
def setup(make_napari_viewer, brain, tmp_path):
    viewer = make_napari_viewer()
    sl = brain.data[45, ::4, ::4].astype(np.float32)
    for i in range(4):
        gains = np.linspace(0.5, 1.5, 5 + i)
        write_time_series(tmp_path / f"cine{i}.nii.gz", np.stack([sl * g for g in (gains if i % 2 else gains[::-1])]),
                          step=0.5)
        data, kwargs, _ = read_layers(str(tmp_path / f"cine{i}.nii.gz"))[0]
        viewer.add_image(data, **kwargs)
    viewer.add_image(brain.data, name="T1 volume")  # no time axis: not offered
    widget = SequenceWidget(viewer)
    return viewer, widget, tmp_path


def _wait(qtbot, widget, fn):
    states = []
    widget.runner.done.connect(states.append)
    fn()
    qtbot.waitUntil(lambda: bool(states), timeout=60_000)
    return states[-1]


def test_train_predict_plot_and_seek(qtbot, setup):
    viewer, widget, tmp_path = setup
    assert [widget.table.item(i, 0).text() for i in range(widget.table.rowCount())] == [
        "cine0", "cine1", "cine2", "cine3"]
    (tmp_path / "t.csv").write_text("file,target\ncine0.nii.gz,down\ncine1.nii.gz,up\ncine2.nii.gz,down\n")
    assert widget.load_targets(str(tmp_path / "t.csv")) == 3
    widget.set_target("cine3", "up")
    widget.steps.setValue(3)
    before = viewer.layers["cine1"].data.copy()
    assert _wait(qtbot, widget, widget.train) == "finished"
    assert widget.model is not None and widget.loss_plot.series["loss"][0]
    viewer.layers.selection.active = viewer.layers["cine1"]
    assert _wait(qtbot, widget, widget.predict) == "finished"
    assert widget.result.label in ("up", "down") and "cine1:" in widget.result_label.text()
    assert widget.curve_plot.n == 6
    widget.seek(4)
    assert viewer.dims.current_step[0] == 4
    assert widget.curve_plot.cursor.get_xdata()[0] == 4
    assert np.array_equal(viewer.layers["cine1"].data, before)


def test_training_needs_two_targets(qtbot, setup):
    viewer, widget, _ = setup
    viewer.window.add_dock_widget(widget)
    widget.set_target("cine0", "up")
    del viewer.layers["cine3"]  # napari refreshes the docked panel's lists, typed targets stay
    assert widget.table.rowCount() == 3 and widget.targets() == {"cine0": "up"}
    viewer.layers["cine0"].name = "cine zero"  # a rename keeps the target (it dropped it) and shows the new name
    assert widget.targets() == {"cine zero": "up"} and widget.table.item(0, 0).text() == "cine zero"
    widget.train()
    assert widget.model is None and not widget.runner.running


def test_closing_the_panel_removes_its_curve_dock(qtbot, setup):
    viewer, widget, _ = setup
    viewer.window.add_dock_widget(widget, name="Time series")
    assert widget.task.toolTip() and widget.bidirectional.toolTip()
    widget.set_target("cine0", "up")
    widget.set_target("cine1", "down")
    widget.steps.setValue(2)
    assert _wait(qtbot, widget, widget.train) == "finished"
    viewer.layers.selection.active = viewer.layers["cine1"]
    assert _wait(qtbot, widget, widget.predict) == "finished"
    assert "Time series curve" in viewer.window._wrapped_dock_widgets
    viewer.window.remove_dock_widget(widget)  # what the panel's close button does
    assert "Time series curve" not in viewer.window._wrapped_dock_widgets
    assert widget.curve_plot.parent() is None
