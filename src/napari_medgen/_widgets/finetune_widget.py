"""The "Fine-tune" dock widget: paint a few slices (in any view), train, correct, train again.

"Interpolate between painted slices" fills the unpainted slices between painted ones into a
new layer at once.  Train runs :func:`~napari_medgen.tasks.finetune_round.train_round` in a worker
(autosave, fine-tune within a budget in seconds, complete the painting): the prediction layer shows
the network's current guess from the first validation on and is refined live; the plot shows the
training loss and the validation metric.  Stop keeps the best weights so far, Train again continues
from them.  The user's layers are only changed by "Accept slice", one undo step (Ctrl-Z).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import napari
import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QListWidget,
                            QPushButton, QSpinBox)

from ..data.interpolate import interpolate_labels
from ..engine.jobs import ProgressEvent
from ..errors import UserError
from ..io import Geometry, ImageData
from ..models.segmentation import builtin_models, class_colors, class_names
from ..tasks.finetune import FRESH
from ..tasks.finetune_round import open_project, train_round
from ._layers import OUTPUT_KEY, edited, row, set_output, show_result
from ._model_files import save_model_file
from ._panel import Note, Panel
from ._plot import LivePlot
from ._runner import JobRunner, device_chooser
from .finetune_slices import SliceTools

RGB = "Fine-tuning segments single-channel (grey-value) images, not RGB ones: choose a grey-value image layer."


class FinetuneWidget(SliceTools, Panel):
    """Image + annotation layers, start model, annotation style, budget; Interpolate / Train / Stop / Accept /
    Suggest / Save."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.model = None  # the latest trained Model
        self.prediction: Optional[napari.layers.Labels] = None
        self.ranking: list = []
        self.round = 0
        self._x = 0  # plot x: training steps of all rounds so far
        self._before = None  # (plot x, prediction layer, its data) when the running round started
        self._shape: tuple = ()  # the image grid of the running round
        self.slice_axis = 0  # the (user's) axis the last round trained along: Suggest ranks its slices

        self.image = self.layer_picker(napari.layers.Image, tooltip="The image to segment.")
        self.labels = self.layer_picker(napari.layers.Labels, tooltip="The layer you paint a few slices of.")
        self.start = QComboBox()
        self.start.setEditable(True)
        self.start.addItems([FRESH] + builtin_models())
        self.start.setToolTip("'fresh' builds a new U-Net; or a built-in model or a .medgen.pt file.")
        browse = QPushButton("File...")
        browse.clicked.connect(self._browse_model)
        start_row = QHBoxLayout()
        start_row.addWidget(self.start, 1)
        start_row.addWidget(browse)
        self.resume = QCheckBox("continue from the last round")
        self.resume.setEnabled(False)
        self.resume.setToolTip("Train the last round's model further on the slices painted since (faster than "
                               "starting again); untick to start from the model chosen above.")
        self.axis = QComboBox()
        self.axis.addItems(["auto", "0", "1", "2"])
        self.axis.setToolTip("Training slice axis; auto: the axis with the most painted slices. Slices painted "
                             "along the other axes count too.")
        self.painting = QComboBox()
        self.painting.addItems(["dense (whole slices)", "sparse (scribbles)"])
        self.painting.setToolTip("dense: every voxel of a painted slice is labelled (0 is background). sparse: "
                                 "you scribble on a few voxels, 0 is unknown and background has its own label.")
        self.class_names = QLineEdit()
        self.class_names.setPlaceholderText("e.g. liver, tumour")
        self.class_names.setToolTip("Names of the painted label values 1, 2, ... separated by commas; the model, its "
                                    "volumes and DICOM SEG segments carry them (empty: the start model's, or "
                                    "'class N').")
        self.background = QSpinBox()
        self.background.setRange(1, 255)
        self.background.setEnabled(False)
        self.background.setToolTip("Sparse mode: the label value you paint on background.")
        self.painting.currentIndexChanged.connect(lambda i: self.background.setEnabled(i == 1))
        self.seconds = QSpinBox()
        self.seconds.setRange(1, 36_000)
        self.seconds.setValue(60)
        self.seconds.setSuffix(" s")
        self.seconds.setToolTip("Time budget: preparing the painting and training share it (training gets at least "
                                "half; it stops earlier when nothing improves). Completing the painting follows it "
                                "(seconds more on a large CT).")
        self.device, self.device_line = device_chooser()
        self.project = QLineEdit()
        self.project.setPlaceholderText("optional folder")
        self.project.setToolTip("Optional: a folder where each round's model and annotations are saved "
                                "automatically. Choosing a folder that holds rounds resumes its last one: its "
                                "annotations as a new layer, its model as the start.")
        self.project.editingFinished.connect(self.resume_project)
        folder = QPushButton("Folder...")
        folder.clicked.connect(self._browse_project)
        project_row = QHBoxLayout()
        project_row.addWidget(self.project, 1)
        project_row.addWidget(folder)

        new_layer = QPushButton("New annotation layer")
        new_layer.setToolTip("An empty Labels layer on the image's voxel grid, to paint on.")
        new_layer.clicked.connect(self.new_annotation_layer)
        interpolate = QPushButton("Interpolate between painted slices")
        interpolate.setToolTip("A new layer: the painted slices, and the slices between them filled by "
                               "shape-based interpolation (instant, no training).")
        interpolate.clicked.connect(self.interpolate)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.runner = JobRunner("Fine-tune", trains=True)
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.done.connect(lambda _s: self._busy(False))
        self.runner.done.connect(self._undo_discarded_run)
        self.plot = LivePlot("training loss and validation Dice (painted + interpolated slices)")
        self.summary = Note("Paint a few slices of the annotation layer, then Train.")
        self.accept_button = QPushButton("Accept slice")
        self.accept_button.setToolTip("Copy the prediction of the current slice into its unpainted voxels (Ctrl-Z undoes).")
        self.accept_button.clicked.connect(self.accept_slice)
        self.suggest_button = QPushButton("Suggest next slice")
        self.suggest_button.setToolTip("Rank the unpainted slices by how unsure the model is: correcting the "
                                       "first one teaches it the most.")
        self.suggest_button.clicked.connect(self.suggest)
        self.ranking_list = QListWidget()
        self.ranking_list.setMaximumHeight(110)
        self.ranking_list.itemClicked.connect(lambda item: self.go_to(int(item.data(256))))
        self.save_button = QPushButton("Save model...")
        self.save_button.clicked.connect(lambda: self.save_model())
        for b in (self.accept_button, self.suggest_button, self.save_button):
            b.setEnabled(False)

        form = self.form()
        form.addRow("image", self.image.native)
        form.addRow("annotations", self.labels.native)
        form.addRow("", new_layer)
        form.addRow("", interpolate)
        form.addRow("start from", start_row)
        form.addRow("", self.resume)
        form.addRow("budget", self.seconds)
        adv = self.advanced()
        adv.addRow("class names", self.class_names)
        adv.addRow("slice axis", self.axis)
        adv.addRow("style", self.painting)
        adv.addRow("background label", self.background)
        adv.addRow("device", self.device)
        adv.addRow(self.device_line)
        adv.addRow("project", project_row)
        for w in (self.train_button, self.plot, self.summary, row(self.accept_button, self.suggest_button),
                  self.ranking_list, self.save_button):
            self.body.addWidget(w)
        self.body.addStretch(1)
        self.footer(self.runner)  # progress, Stop and Cancel stay visible whatever is scrolled

    # --- training --------------------------------------------------------------------------
    def _inputs(self):
        """(ImageData, annotation snapshot) of the chosen layers, or None after telling the user why."""
        img, lab = self.image.value, self.labels.value
        if img is None or lab is None:
            show_error("Choose an image layer and the annotation (Labels) layer you painted.")
            return None
        if img.rgb:
            show_error(RGB)
            return None
        if lab is self.prediction:
            show_error("Choose the layer you painted, not the prediction, as annotations.")
            return None
        geo = Geometry.from_layer(img)
        if np.shape(lab.data) != np.shape(img.data) or not Geometry.from_layer(lab).same_grid(geo):
            show_error(f"The annotation layer '{lab.name}' is not on the voxel grid of '{img.name}' "
                       "(shape, scale, translate or affine differ); use 'New annotation layer'.")
            return None
        image = ImageData(np.asarray(img.data), geo, img.name, metadata=dict(img.metadata))
        return image, np.array(lab.data, copy=True)  # a snapshot: painting may go on while training

    def new_annotation_layer(self) -> Optional[napari.layers.Labels]:
        """Add an empty Labels layer with the chosen image's shape and geometry, and select it."""
        img = self.image.value
        if img is None or img.rgb:
            show_error(RGB if img is not None else "Choose an image layer first.")
            return None
        layer = self.viewer.add_labels(np.zeros(np.shape(img.data), np.uint8), name=f"{img.name} annotations",
                                       **_placed_like(img))
        self.labels.value = layer
        return layer

    def _start_model(self):
        if self.model is not None and self.resume.isChecked():
            return self.model
        return self.start.currentText().strip() or FRESH

    def interpolate(self) -> Optional[napari.layers.Labels]:
        """A new layer: the painted slices kept, the slices between them filled by interpolation."""
        lab = self.labels.value
        if lab is None or lab is self.prediction:
            show_error("Choose the annotation (Labels) layer you painted.")
            return None
        data = np.asarray(lab.data)
        if not data.any():
            show_error("Paint at least two slices of the annotation layer first.")
            return None
        filled = interpolate_labels(data, spacing=Geometry.from_layer(lab).spacing)
        return show_result(self.viewer, filled, name=f"{lab.name} interpolated", kind="labels", source=lab,
                           key=f"interpolated:{lab.unique_id}", opacity=0.5)

    def _axis(self) -> Optional[int]:
        return None if self.axis.currentIndex() == 0 else self.axis.currentIndex() - 1

    def train(self) -> None:
        """Train one round (continuing from the last one when asked) and complete the painting."""
        inputs = self._inputs()
        if inputs is None:
            return
        image, annotations = inputs
        sparse = self.painting.currentIndex() == 1
        self._source = self.image.value
        self._shape = tuple(np.shape(self._source.data))  # the grid trained on, whatever the layer holds later
        # what a cancelled or failed round puts back: the plot's points and the prediction layer as they were
        layer = self.prediction if self.prediction is not None and self.prediction in self.viewer.layers else None
        self._before = (self._x, layer, None if layer is None else np.array(layer.data, copy=True))
        self.runner.start(train_round, image, annotations, self._start_model(),
                          project=self.project.text().strip() or None, round_index=self.round + 1,
                          axis=self._axis(), device=self.device.currentText(), sparse=sparse,
                          background_label=self.background.value() if sparse else None,
                          seconds=float(self.seconds.value()), stoppable=True, on_result=self._trained,
                          class_names=self.class_names.text().split(",") if self.class_names.text().strip() else None,
                          on_progress=self._on_progress)

    def _on_progress(self, ev: ProgressEvent) -> None:
        m = ev.metrics
        if "loss" in m:
            self._x += 1
            self.plot.add("loss", self._x, m["loss"], draw="val_metric" in m or self._x % 5 == 0)
        if "val_metric" in m:
            self.plot.add("val Dice", self._x, m["val_metric"])
        if isinstance(ev.preview, dict) and "box" in ev.preview:
            self._show_preview(ev.preview)

    def _undo_discarded_run(self, status: str) -> None:
        """After a cancelled or failed round the viewer is as before it: no preview of a discarded network.
        (Only a training round's: a finished round, or Suggest, leaves the prediction and the plot as they are.)"""
        if self.runner.label != "Fine-tune":  # Suggest's run: no round to undo
            return
        before, self._before = self._before, None  # a round's, used once: no later run's end undoes it
        if status == "finished" or before is None:
            return
        x, layer, data = before
        self._x = x
        self.plot.drop_after(x)
        if self.prediction is not None and self.prediction is not layer and self.prediction in self.viewer.layers:
            self.viewer.layers.remove(self.prediction)
        self.prediction = layer if layer is not None and OUTPUT_KEY in layer.metadata else None
        if self.prediction is not None and layer in self.viewer.layers:
            set_output(layer, data)

    def _show_preview(self, preview: dict) -> None:
        """The network's current labels inside the region of interest, written into the prediction layer."""
        if self._source not in self.viewer.layers:
            return
        layer = self._prediction_layer(np.zeros(self._shape, np.uint8), preview=True)
        box, labels = preview["box"], np.asarray(preview["labels"])
        data = np.array(layer.data, copy=True)
        if data.ndim == len(box) - 1:  # a 2D image trains as a one-slice volume
            box, labels = box[1:], labels[0]
        data[tuple(slice(lo, hi) for lo, hi in box)] = labels
        set_output(layer, data)

    def _trained(self, result: tuple) -> None:
        model, history, prediction = result
        if self._source not in self.viewer.layers:  # removed while the round ran: no result for a layer gone
            show_error(f"'{self._source.name}' was removed during the round; its prediction is not shown.")
            return
        self.model, self.round, self.slice_axis = model, history["round"], int(history["axis"])
        self.resume.setEnabled(True)
        self.resume.setChecked(True)
        self._prediction_layer(prediction)
        best = history.get("best_metric")
        planes = ", ".join(f"axis {a}: {v}" for a, v in history["planes"].items())
        stopped = " (stopped early)" if history["stopped"] else ""
        self.summary.setText(
            f"Round {self.round}: trained on the slices painted along {planes} and {history['pseudo_slices']} "
            f"interpolated slices, {len(history['step'])} steps in {history['seconds']:.0f} s{stopped}; returned "
            f"{history['returned']}" + (f", validation Dice {best:.3f}" if best is not None else "") + ".")
        for b in (self.accept_button, self.suggest_button, self.save_button):
            b.setEnabled(b is not self.suggest_button or len(self._shape) == 3)

    def _prediction_layer(self, data: np.ndarray, preview: bool = False) -> napari.layers.Labels:
        """The prediction layer (created on first use); ``preview`` keeps existing data if the layer exists."""
        src = self._source
        if preview and self.prediction is not None and self.prediction in self.viewer.layers \
                and self.prediction.data.shape == data.shape and not edited(self.prediction):
            return self.prediction  # (a prediction the user corrected is kept as theirs: show_result says so)
        name = f"{self.labels.value.name if self.labels.value else src.name} prediction"
        colors = class_colors(self.model) if self.model is not None else None
        names = class_names(self.model) if self.model is not None else None
        self.prediction = show_result(self.viewer, data, name=name, kind="labels", source=src,
                                      key=f"prediction:{src.unique_id}", colormap=colors, class_names=names, opacity=0.4)
        return self.prediction

    def _busy(self, busy: bool) -> None:
        """While a round trains, the prediction layer shows an unfinished network: nothing may be taken from it."""
        self.train_button.setEnabled(not busy)
        self.project.setEnabled(not busy)
        for b in (self.suggest_button, self.accept_button):
            b.setEnabled(not busy and self.model is not None and (b is self.accept_button or len(self._shape) == 3))
        training = (f"Round {self.round + 1} is training: the prediction layer shows the network as it learns "
                    "(Stop keeps the best so far, Cancel discards the round).")
        if busy and self.runner.state.label == "Fine-tune":
            self._summary_before = self.summary.text()
            self.summary.setText(training)
        elif not busy and self.summary.text() == training:  # cancelled or failed: the last round's summary again
            self.summary.setText(self._summary_before)

    def save_model(self, path: Optional[str] = None) -> Optional[str]:
        """Write the current model (a ``.medgen.pt`` the Segment widget and the CLI load), asking where when
        ``path`` is None; as every panel saves (never silently over another file, one sentence on failure)."""
        return save_model_file(self, self.model, "fine-tuned model", path)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Start model", "", "Models (*.medgen.pt);;All files (*)")
        if path:
            self._start_from(path)

    def _start_from(self, path: str) -> None:
        """Make the model file ``path`` the start of the next round (not the last round's weights)."""
        self.start.addItem(path)
        self.start.setCurrentText(path)
        self.resume.setChecked(False)

    def _browse_project(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Project folder")
        if path:
            self.project.setText(path)
            self.resume_project()

    def resume_project(self) -> None:
        """Resume the project folder's last round: its annotations as a new layer, its model as the start."""
        folder, img = self.project.text().strip(), self.image.value
        if not folder or img is None:
            return
        geo = Geometry.from_layer(img)
        try:
            last, model_file, annotations = open_project(folder, ImageData(np.asarray(img.data), geo, img.name))
        except UserError as err:
            show_error(str(err))
            return
        if not last or last <= self.round:
            return
        if annotations is not None:
            self.labels.value = self.viewer.add_labels(annotations.data, name=f"{img.name} annotations (round {last})",
                                                       **_placed_like(img))
        self._start_from(str(model_file))
        self.round = last
        self.summary.setText(f"Resumed {Path(folder).name}: round {last}'s annotations and model; paint more, then "
                             f"Train (round {last + 1}).")


def _placed_like(image) -> dict:
    """Layer keywords that put a new Labels layer on ``image``'s grid, its place in 3D (a slice's plane) included."""
    return {"scale": image.scale, "translate": image.translate, "affine": image.affine,
            "metadata": {"geometry": Geometry.from_layer(image).to_dict()}}
