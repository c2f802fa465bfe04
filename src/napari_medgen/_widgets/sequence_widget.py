"""The "Time series" dock widget: train a CNN + LSTM on layers with a time axis, predict, plot per-frame curves.

Targets are typed per layer or loaded from a CSV (a ``layer``, ``file`` or ``sequence`` column and a
``target`` column, read as ``sequence-train`` reads it; matched to layer names, else to file names less
their image extension).  A Labels or Shapes layer restricts the model and the signal to a region (e.g.
a lesion).  The per-frame curve is plotted in a panel under the viewer with a cursor on the current
frame; clicking the plot moves the time slider to that frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import napari
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QPushButton

from ..errors import UserError
from ..io.timeseries import is_time_series
from ..models.checkpoint import Model
from ..naming import image_stem
from ..tasks.sequence import load_sequence_model, predict_sequence, train_sequence_model
from ..tasks.sequence_targets import by_image, read_targets, unknown
from ._layer_table import LayerTable
from ._layers import budget_boxes, layer_array, row
from ._model_files import save_model_file
from ._panel import Note, Panel
from ._plot import LivePlot
from ._runner import JobRunner, device_chooser

NO_REGION = "(whole frame)"


class CurvePlot(FigureCanvasQTAgg):
    """The model's per-frame curve and the region's mean signal, a cursor on the current frame; clicks seek."""

    def __init__(self, on_click: Callable[[int], None]):
        fig = Figure(figsize=(6, 1.8), tight_layout=True)
        fig.patch.set_facecolor("#262930")
        super().__init__(fig)
        self.ax = fig.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self.cursor = None
        self.n = 0
        self.setMinimumHeight(140)
        self.mpl_connect("button_press_event", lambda ev: ev.xdata is not None and self.n and
                         on_click(int(np.clip(round(ev.xdata), 0, self.n - 1))))

    def show_curves(self, curve: np.ndarray, curve_name: str, signal: np.ndarray, title: str) -> None:
        for ax in (self.ax, self.ax2):
            ax.clear()
            ax.set_facecolor("#262930")
            ax.tick_params(colors="w", labelsize=7)
        frames = np.arange(len(curve))
        self.ax.plot(frames, curve, color="#ffb000", lw=1.5, label=curve_name)
        self.ax2.plot(frames, signal, color="#4fc3f7", lw=1.0, ls="--", label="signal (region mean)")
        self.ax.set_xlabel("frame", color="w", fontsize=8)
        self.ax.set_ylabel(curve_name, color="#ffb000", fontsize=8)
        self.ax2.set_ylabel("signal", color="#4fc3f7", fontsize=8)
        self.ax2.yaxis.tick_right()  # clear() moved the twin axis to the left
        self.ax2.yaxis.set_label_position("right")
        self.ax.set_title(title, color="w", fontsize=9)
        self.n = len(curve)
        self.cursor = self.ax.axvline(0, color="w", lw=1)
        self.draw_idle()

    def set_frame(self, frame: int) -> None:
        if self.cursor is not None:
            self.cursor.set_xdata([frame, frame])
            self.draw_idle()


class SequenceWidget(Panel):
    """Layers with a time axis and their targets in; a sequence model, predictions and curves out."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.model: Optional[Model] = None
        self.result = None
        self._source = None  # the layer last predicted
        self._curve_dock = None  # the dock of the per-frame curve, added by the first prediction
        self.task = QComboBox()
        self.task.addItems(["classification", "regression"])
        self.task.setToolTip("classification: the targets are class names (e.g. up/down); regression: numbers "
                             "(e.g. an ejection fraction).")
        self.table = LayerTable("target")
        self.table.setMinimumHeight(110)
        self.table.setToolTip("Layers with a time axis; type a class or a value for each layer to train on "
                              "(empty = not used).")
        self.region = self.layer_picker(napari.layers.Layer, choices=self._region_choices,
                                        tooltip="A Labels or Shapes layer that restricts the model and the signal "
                                                "to a region.")
        self.steps, self.seconds = budget_boxes()
        self.bidirectional = QCheckBox("bidirectional LSTM")
        self.bidirectional.setToolTip("Read the frames forwards and backwards: use it when the answer depends on "
                                      "the whole sequence, not only on the frames seen so far.")
        self.fraction = QCheckBox("answer is a fraction (max - min) / max, e.g. EF")
        self.fraction.setToolTip("Regression only: the network tracks a volume per frame and answers "
                                 "(largest - smallest) / largest, as an ejection fraction is measured.")
        self.device, self.device_line = device_chooser()
        csv_button = QPushButton("Targets from CSV...")
        csv_button.clicked.connect(self._load_csv)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.predict_button = QPushButton("Predict current layer")
        self.predict_button.clicked.connect(self.predict)
        save, load = QPushButton("Save model..."), QPushButton("Load model...")
        save.clicked.connect(lambda: save_model_file(self, self.model, "time series model"))
        load.clicked.connect(self._load)
        self.runner = JobRunner("Time series", trains=True)
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.done.connect(lambda _s: self._busy(False))
        self.loss_plot = LivePlot("training", "step", height=1.8)
        self.model_label = Note("no model")
        self.result_label = Note("")
        self.curve_plot = CurvePlot(self.seek)

        self.body.addWidget(self.table)
        self.body.addWidget(csv_button)
        form = self.form()
        form.addRow("task", self.task)
        form.addRow("region", self.region.native)
        form.addRow("budget", row(self.steps, self.seconds))
        adv = self.advanced()
        adv.addRow(self.bidirectional)
        adv.addRow(self.fraction)
        adv.addRow("device", self.device)
        adv.addRow(self.device_line)
        for w in (row(self.train_button, self.predict_button), row(save, load), self.runner, self.loss_plot,
                  self.model_label, self.result_label):
            self.body.addWidget(w)
        self.body.addStretch(1)
        self.viewer.dims.events.current_step.connect(self._follow_frame)
        self.refresh()

    # --- layers and targets ------------------------------------------------------------------------
    def series_layers(self) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, napari.layers.Image) and not ly.rgb
                and ly.ndim in (3, 4) and is_time_series(ly.metadata, ly.axis_labels)]

    def _region_choices(self, _widget=None) -> list:
        return [(NO_REGION, None)] + [(ly.name, ly) for ly in self.viewer.layers
                                      if isinstance(ly, (napari.layers.Labels, napari.layers.Shapes))]

    def reset_choices(self, *args) -> None:
        """napari's layer-list hook: re-list the time-series layers (keeping typed targets) and the region layers
        (keeping the chosen one, renamed or not)."""
        super().reset_choices(*args)
        self.table.show_layers(self.series_layers())

    def refresh(self) -> None:
        """Re-list the layers now (a panel not docked yet gets no hook from napari)."""
        self.reset_choices()

    def targets(self) -> dict:
        """Layer name -> typed target (non-empty only)."""
        return self.table.values(self.series_layers())

    def set_target(self, layer_name: str, target) -> None:
        self.table.set_value(self.viewer.layers[layer_name], target)

    def match_targets(self, path: str) -> tuple[dict, list]:
        """``({layer name: target}, rows naming no open layer)`` from a targets CSV, matched on layer names, else
        on file names less their image extension (of the layer's name or source file); one sentence (UserError)
        when the table cannot be used or no row names an open time-series layer."""
        title = Path(path).name
        rows = read_targets(path, numbers=self.task.currentText() == "regression")
        images = by_image(rows, title)
        found = {}  # layer name -> the image it is
        for ly in self.series_layers():
            source = Path(str(ly.metadata.get("source", ""))).name
            image = next((i for i in (image_stem(ly.name), image_stem(source)) if i and i in images), None)
            if image is not None:
                found[ly.name] = image
        if not found:
            raise unknown(rows[0], title, "an open time-series layer (by its name or file name)")
        return ({name: images[i].target for name, i in found.items()},
                [r for i, r in images.items() if i not in found.values()])

    def load_targets(self, path: str) -> int:
        """Fill targets from a CSV (see :meth:`match_targets`; a refused table changes nothing); returns how many
        layers got one."""
        found, _ = self.match_targets(path)
        for name, target in found.items():
            self.set_target(name, target)
        return len(found)

    def _load_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Targets CSV", "", "CSV (*.csv);;All files (*)")
        if not path:
            return
        try:
            found, unused = self.match_targets(path)
        except UserError as err:
            show_error(str(err))
            return
        for name, target in found.items():
            self.set_target(name, target)
        skipped = (f"; {len(unused)} rows name no open layer ({', '.join(r.series for r in unused[:3])}"
                   f"{', ...' if len(unused) > 3 else ''})") if unused else ""
        show_info(f"Targets for {len(found)} layers loaded{skipped}.")

    def region_mask(self, layer) -> Optional[np.ndarray]:
        """The chosen region on ``layer``'s grid: one frame's or the whole series' (None for the whole frame)."""
        reg = self.region.value
        if reg is None or reg not in self.viewer.layers:
            return None
        if not isinstance(reg, napari.layers.Shapes):
            return layer_array(reg)
        if not len(reg.data):
            return None
        shape = layer_array(layer).shape
        if reg.ndim not in (len(shape), len(shape) - 1):
            raise UserError(f"The region '{reg.name}' is {reg.ndim}D but the frames of '{layer.name}' are "
                            f"{len(shape) - 1}D; draw it on the series or on one frame.")
        return reg.to_labels(labels_shape=shape[-reg.ndim:]) > 0

    # --- actions ---------------------------------------------------------------------------------------
    def train(self) -> None:
        """Train on every layer with a typed target, in a worker thread."""
        targets = self.targets()
        layers = [ly for ly in self.series_layers() if ly.name in targets]
        if len(layers) < 2:
            show_error("Type a target for at least two time-series layers (or load a CSV) before training.")
            return
        seqs = [layer_array(ly) for ly in layers]
        try:
            regions = [self.region_mask(ly) for ly in layers]
        except UserError as err:
            show_error(str(err))
            return
        self.loss_plot.clear()
        self.runner.start(train_sequence_model, seqs, [targets[ly.name] for ly in layers], self.task.currentText(),
                          regions=regions, names=[ly.name for ly in layers], steps=self.steps.value(),
                          seconds=float(self.seconds.value()), bidirectional=self.bidirectional.isChecked(),
                          readout="fraction" if self.fraction.isChecked() else "final",
                          device=self.device.currentText(), on_result=self._trained, on_progress=self._progress,
                          stoppable=True)

    def _progress(self, ev) -> None:
        for k in ("loss", "val_metric"):
            if k in ev.metrics:
                self.loss_plot.add(k, ev.train_step, float(ev.metrics[k]))

    def _trained(self, result) -> None:
        self.model, hist = result
        self._describe(f"best validation {hist['best_metric']:.3g} ({hist['returned']})")

    def _describe(self, extra: str = "") -> None:
        self.model_label.setText(f"{self.model.name}: {self.model.config.description} {extra}".strip())

    def current_layer(self):
        active = self.viewer.layers.selection.active
        layers = self.series_layers()
        return active if active in layers else (layers[0] if layers else None)

    def predict(self) -> None:
        """Predict the selected time-series layer and plot its per-frame curve under the viewer."""
        layer = self.current_layer()
        if self.model is None:
            show_error("Train or load a time series model first.")
            return
        if layer is None:
            show_error("Open or select a layer with a time axis to predict.")
            return
        try:
            region = self.region_mask(layer)
        except UserError as err:
            show_error(str(err))
            return
        self._source = layer
        self.result_label.setText("")  # never the last layer's answer beside this layer's failure
        self.runner.start(predict_sequence, self.model, layer_array(layer), region,
                          device=self.device.currentText(), on_result=self._predicted)

    def _predicted(self, res) -> None:
        self.result = res
        layer = self._source
        if res.label is not None:
            probs = ", ".join(f"{k} {v:.0%}" for k, v in res.probabilities.items())
            text = f"{layer.name}: {res.label} ({probs})"
        else:
            text = f"{layer.name}: {res.value:.4g}"
        self.result_label.setText("\n".join([text, *res.warnings]))
        self.curve_plot.show_curves(res.curve, res.curve_name, res.signal, text)
        if self._curve_dock is None or self.curve_plot.parent() is None:  # none yet, or the user closed it
            self._curve_dock = self.viewer.window.add_dock_widget(self.curve_plot, area="bottom",
                                                                  name="Time series curve")
        self._follow_frame()

    def event(self, ev) -> bool:
        """Closing this panel (napari takes it out of its dock) also removes the curve dock it added."""
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._remove_curve_dock()
        return super().event(ev)

    def _remove_curve_dock(self) -> None:
        dock, self._curve_dock = self._curve_dock, None
        if dock is not None and self.curve_plot.parent() is not None:
            self.viewer.window.remove_dock_widget(dock)

    def time_axis(self) -> int:
        layer = self._source if self._source is not None else self.current_layer()
        return self.viewer.dims.ndim - (layer.ndim if layer is not None else self.viewer.dims.ndim)

    def seek(self, frame: int) -> None:
        """Move the time slider to ``frame``."""
        self.viewer.dims.set_current_step(self.time_axis(), frame)

    def _follow_frame(self, _event=None) -> None:
        self.curve_plot.set_frame(self.viewer.dims.current_step[self.time_axis()])

    def _busy(self, busy: bool) -> None:
        self.train_button.setEnabled(not busy)
        self.predict_button.setEnabled(not busy)

    def _load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Time series model", "", "Models (*.medgen.pt)")
        if path:
            try:
                self.model = load_sequence_model(path)
            except ValueError as err:
                show_error(str(err))
                return
            self._describe()
