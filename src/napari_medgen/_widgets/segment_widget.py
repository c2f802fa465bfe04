"""The "Segment" dock widget: an Image layer and a model in, a Labels layer out (plus Dice/HD95)."""
from __future__ import annotations

from typing import Optional

import napari
import numpy as np
from magicgui.widgets import create_widget
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QPushButton,
                            QSpinBox, QVBoxLayout, QWidget)

from ..engine.jobs import Job
from ..io import ImageData
from ..models.segmentation import builtin_models, class_colors, class_names, load_segmentation_model
from ..tasks.metrics import segmentation_metrics
from ..tasks.segment import segment
from ._layers import layer_array, layer_image
from ._runner import JobRunner, device_chooser


def segment_and_score(image: ImageData, model, reference: Optional[np.ndarray] = None, *, axis: int = 0,
                      device: str = "auto", tta: bool = False, progress=None, stop=None) -> tuple:
    """Load the model, segment, and score against ``reference`` when given: (labels, model, metrics)."""
    job = Job.of(progress, stop)
    m = load_segmentation_model(model)
    labels = segment(image, m, axis=axis, device=device, tta=tta, progress=job)
    metrics = None
    if reference is not None:
        job.report(1, 1, "Dice and HD95")
        metrics = segmentation_metrics(labels, reference, image.geometry.spacing, class_names(m))
    return labels, m, metrics


class SegmentWidget(QWidget):
    """Image layer, model, device, TTA and an optional reference; Run gives "<image> <model>" labels."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.reference = create_widget(annotation=Optional[napari.layers.Labels], label="reference",
                                       options={"nullable": True})
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems(builtin_models())
        self.model.setToolTip("A built-in model, a .medgen.pt file, a MONAI bundle folder or a TorchScript file.")
        browse = QPushButton("File...")
        browse.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(browse)
        self.axis = QSpinBox()
        self.axis.setRange(0, 2)
        self.axis.setToolTip("Slicing axis for 2D models (0 = first napari axis, axial for most volumes).")
        self.device, self.device_line = device_chooser()
        self.tta = QCheckBox("flip test-time augmentation")
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.runner = JobRunner("Segment")
        self.runner.started.connect(lambda: self.run_button.setEnabled(False))
        self.runner.done.connect(lambda _s: self.run_button.setEnabled(True))
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        self.description = QLabel("")
        self.description.setWordWrap(True)
        self.model.currentTextChanged.connect(self._describe)

        form = QFormLayout()
        form.addRow("image", self.image.native)
        form.addRow("model", model_row)
        form.addRow("slice axis", self.axis)
        form.addRow("device", self.device)
        form.addRow("", self.tta)
        form.addRow("reference", self.reference.native)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.description)
        lay.addWidget(self.device_line)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addWidget(self.metrics_label)
        lay.addStretch(1)
        for w in (self.image, self.reference):
            self.viewer.layers.events.inserted.connect(w.reset_choices)
            self.viewer.layers.events.removed.connect(w.reset_choices)
        self.output: Optional[napari.layers.Labels] = None
        self._outputs: dict = {}  # output name -> the Labels layer this widget made
        self.last_metrics: Optional[dict] = None
        self._describe(self.model.currentText())

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Segmentation model", "",
                                              "Models (*.medgen.pt *.pt *.pth *.ts *.zip);;All files (*)")
        if path:
            self.model.addItem(path)
            self.model.setCurrentText(path)

    def _describe(self, name: str) -> None:
        try:
            desc = load_segmentation_model(name).config.description if name else ""
        except ValueError:
            desc = ""
        self.description.setText(desc)

    def run(self) -> None:
        """Start segmentation of the chosen layer in a worker thread."""
        layer = self.image.value
        if layer is None:
            show_error("Choose an image layer to segment.")
            return
        image = layer_image(layer)
        geo = image.geometry
        ref = self.reference.value
        reference = None
        if ref is not None:
            reference = layer_array(ref)
            if reference.shape != image.data.shape[:reference.ndim] or reference.ndim != geo.ndim:
                show_error(f"The reference '{ref.name}' {reference.shape} is not on the image's grid "
                           f"{image.data.shape}; choose another reference.")
                return
        self.metrics_label.setText("")
        self._source = layer
        self.runner.start(segment_and_score, image, self.model.currentText().strip(), reference,
                          axis=self.axis.value(), device=self.device.currentText(), tta=self.tta.isChecked(),
                          on_result=self._show)

    def _show(self, result: tuple) -> None:
        labels, model, metrics = result
        src = self._source
        name = f"{src.name} {model.name}"
        names = class_names(model)
        kwargs = {"features": {"class": names}, "colormap": DirectLabelColormap(color_dict=class_colors(model))}
        layer = self._outputs.get(name)
        layer = layer if layer is not None and layer in self.viewer.layers else None
        if layer is None:
            layer = self.viewer.add_labels(labels, name=name, scale=src.scale, translate=src.translate,
                                           affine=src.affine, opacity=0.5, metadata={"class_names": names},
                                           **kwargs)
        else:
            layer.data = labels
            layer.scale, layer.translate, layer.affine = src.scale, src.translate, src.affine
            layer.features, layer.colormap = kwargs["features"], kwargs["colormap"]
            layer.metadata["class_names"] = names
        self.output = self._outputs[name] = layer
        self.last_metrics = metrics
        if metrics:
            self.metrics_label.setText("\n".join(f"{k}: Dice {v['dice']:.3f}, HD95 {v['hd95']:.1f} mm"
                                                 for k, v in metrics.items()))
