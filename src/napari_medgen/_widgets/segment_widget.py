"""The "Segment" dock widget: an Image layer and a model in; a Labels layer, volumes (mL; 2D: areas, cm²) and,
against a reference, Dice/HD95 out, with a CSV export and the model-mismatch warnings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QPushButton,
                            QSpinBox, QTableWidget, QTableWidgetItem)

from ..engine.jobs import Job
from ..io import ImageData
from ..models.segmentation import class_names, class_colors, builtin_models, load_segmentation_model
from ..tasks.metrics import metrics_to_csv, segmentation_metrics
from ..tasks.segment import SegmentResult, segment_result
from ._layers import layer_array, layer_image, show_result
from ._panel import Note, Panel
from ._runner import JobRunner, device_chooser

IGNORE = "(ignore)"


@dataclass
class Scored:
    """What a Segment run gives the widget."""

    result: SegmentResult
    model: object
    size_name: str  # "volume mL", or "area cm²" for a 2D image
    sizes: dict
    metrics: Optional[dict] = None


def map_reference(reference: np.ndarray, mapping: Optional[dict]) -> np.ndarray:
    """``reference`` with each value replaced by its class (``mapping[v]``; values left out or None -> 0)."""
    if mapping is None:
        return reference
    lut = np.zeros(int(reference.max(initial=0)) + 1, np.int32)
    for value, cls in mapping.items():
        if cls is not None and 0 <= value < lut.size:
            lut[value] = cls
    return lut[np.clip(reference, 0, None)]


def label_values(labels: np.ndarray) -> list[int]:
    """The nonzero values of a label array, fast for the usual small non-negative integers."""
    a = np.asarray(labels).ravel()
    if a.size and a.dtype.kind in "ui" and a.min() >= 0 and a.max() < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(a)) if v]
    return [int(v) for v in np.unique(a) if v]


def segment_and_score(image: ImageData, model, reference: Optional[np.ndarray] = None,
                      mapping: Optional[dict] = None, *, axis: Optional[int] = None, device: str = "auto",
                      tta: bool = False,
                      allow_code: bool = False, progress=None, stop=None) -> Scored:
    """Load the model, segment, measure volumes (2D: areas), and score against the (mapped) ``reference``."""
    job = Job.of(progress, stop)
    m = load_segmentation_model(model, allow_code=allow_code)
    res = segment_result(image, m, axis=axis, device=device, tta=tta, progress=job)
    scored = Scored(res, m, *res.sizes())
    if reference is not None:
        job.report(1, 1, "Dice and HD95")
        scored.metrics = segmentation_metrics(res.labels, map_reference(reference, mapping),
                                              image.geometry.spacing, res.class_names)
    return scored


class SegmentWidget(Panel):
    """Image layer, model and optional reference; Run gives "<image> <model>" labels and a table per class."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.image = self.layer_picker(napari.layers.Image, tooltip="The image to segment.")
        self.reference = self.layer_picker(napari.layers.Labels, nullable=True,
                                           tooltip="Optional ground truth: gives Dice and HD95 per class.")
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems(builtin_models())
        self.model.setToolTip("A built-in model, a .medgen.pt file, a MONAI bundle folder or a TorchScript file.")
        browse = QPushButton("File...")
        browse.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(browse)
        self.description = Note("")
        self.mapping_table = QTableWidget(0, 2)
        self.mapping_table.setHorizontalHeaderLabels(["reference value", "model class"])
        self.mapping_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.mapping_table.verticalHeader().hide()
        self.mapping_note = Note("")
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.runner = JobRunner("Segment")
        self.runner.started.connect(lambda: self.run_button.setEnabled(False))
        self.runner.done.connect(lambda _s: self.run_button.setEnabled(True))
        self.warnings_label = Note("")
        self.warnings_label.setStyleSheet("color: #f0b040")
        self.results = QTableWidget(0, 4)
        self.results.setHorizontalHeaderLabels(["class", "volume mL", "Dice", "HD95 mm"])
        self.results.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.results.verticalHeader().hide()
        self.results.hide()
        self.export_button = QPushButton("Export CSV...")
        self.export_button.setToolTip("Volumes (and Dice/HD95 against the reference) per class, as a CSV table.")
        self.export_button.clicked.connect(lambda: self.save_csv())
        self.export_button.setEnabled(False)

        self.axis = QSpinBox()
        self.axis.setRange(-1, 2)
        self.axis.setValue(-1)
        self.axis.setSpecialValueText("auto")
        self.axis.setToolTip("Slicing axis for 2D models (napari order). auto: the model's own plane (a volume "
                             "stored in another orientation, e.g. a sagittal 3D T1, is reoriented to the model's "
                             "without resampling), else the first axis.")
        self.device, self.device_line = device_chooser()
        self.tta = QCheckBox("flip test-time augmentation")
        self.tta.setToolTip("Also segment the left-right mirrored image and average both: a little smoother and "
                            "more robust, at twice the time. Use it for a final result.")
        self.allow_code = QCheckBox("Allow TorchScript (runs code from the file)")
        self.allow_code.setToolTip("A TorchScript model is a program: it can do anything your account can. "
                                   "Only allow it for files from people you trust.")
        self.code_warning = Note("TorchScript files run their own code: use only files you trust.")
        self.code_warning.setStyleSheet("color: #f06040")
        self.code_warning.setVisible(False)
        self.allow_code.toggled.connect(self._allow_code_toggled)

        form = self.form()
        form.addRow("image", self.image.native)
        form.addRow("model", model_row)
        form.addRow("reference", self.reference.native)
        self.body.addWidget(self.description)
        self.mapping_form = self.advanced("Reference values -> model classes")
        self.mapping_form.addRow(self.mapping_note)
        self.mapping_form.addRow(self.mapping_table)
        adv = self.advanced()
        adv.addRow("slice axis", self.axis)
        adv.addRow("device", self.device)
        adv.addRow(self.tta)
        adv.addRow(self.allow_code)
        adv.addRow(self.code_warning)
        for w in (self.device_line, self.run_button, self.runner, self.warnings_label, self.results,
                  self.export_button):
            self.body.addWidget(w)
        self.body.addStretch(1)

        self.model.currentTextChanged.connect(self._describe)
        self.reference.changed.connect(self._fill_mapping)
        self.output: Optional[napari.layers.Labels] = None
        self.last: Optional[Scored] = None
        self._classes: list[str] = []
        self._describe(self.model.currentText())
        self.reset_choices()

    @property
    def last_metrics(self) -> Optional[dict]:
        return self.last.metrics if self.last else None

    # --- inputs ---------------------------------------------------------------------------------
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Segmentation model", "",
                                              "Models (*.medgen.pt *.pt *.pth *.ts *.zip);;All files (*)")
        if path:
            self.model.addItem(path)
            self.model.setCurrentText(path)

    def _allow_code_toggled(self, on: bool) -> None:
        self.code_warning.setVisible(on)
        self._describe(self.model.currentText())

    def _describe(self, name: str) -> None:
        try:
            m = load_segmentation_model(name.strip(), allow_code=self.allow_code.isChecked()) if name else None
        except ValueError as err:  # UserError family: say why in the description line
            self.description.setText(str(err))
            self._classes = []
        else:
            self.description.setText(m.config.description if m else "")
            self._classes = class_names(m) if m else []
        self._fill_mapping()

    def _fill_mapping(self, *_args) -> None:
        """One row per value of the reference, each mapped to a model class (same number by default)."""
        ref = self.reference.value
        self._list_values(label_values(layer_array(ref)) if ref is not None else [])

    def _list_values(self, values: list[int], keep: Optional[dict] = None) -> None:
        """Rows for ``values`` with the default classes, then the choices in ``keep`` where they still apply."""
        classes = self._classes
        self.mapping_table.setRowCount(len(values))
        for i, v in enumerate(values):
            self.mapping_table.setItem(i, 0, QTableWidgetItem(str(v)))
            box = QComboBox()
            box.addItems([IGNORE, *classes[1:]])
            box.setCurrentIndex(v if 0 < v < len(classes) else 0)
            self.mapping_table.setCellWidget(i, 1, box)
        self.mapping_table.setFixedHeight(min(6, len(values) + 1) * 26 + 4)
        unknown = [v for v in values if v >= len(classes)]
        if unknown and classes:
            self.sections["Reference values -> model classes"].expand(animate=False)
        self.mapping_note.setText(
            f"Reference values {unknown} are not classes of this model: map them, or they are ignored."
            if unknown and classes else "Each reference value is scored as the model class chosen here.")
        if keep:
            self.set_mapping(keep)

    def mapping(self) -> Optional[dict]:
        """``{reference value: model class index or None}`` from the table (None without a reference)."""
        if self.reference.value is None:
            return None
        out = {}
        for i in range(self.mapping_table.rowCount()):
            idx = self.mapping_table.cellWidget(i, 1).currentIndex()
            out[int(self.mapping_table.item(i, 0).text())] = idx or None  # combo index == class index
        return out

    def set_mapping(self, mapping: dict) -> None:
        """Choose the class of reference values (``{value: class index or None}``), as the table does."""
        for i in range(self.mapping_table.rowCount()):
            v = int(self.mapping_table.item(i, 0).text())
            if v in mapping:
                self.mapping_table.cellWidget(i, 1).setCurrentIndex(mapping[v] or 0)

    # --- running --------------------------------------------------------------------------------
    def run(self) -> None:
        """Start segmentation of the chosen layer in a worker thread."""
        layer = self.image.value
        if layer is None:
            show_error("Choose an image layer to segment.")
            return
        image = layer_image(layer)
        ref = self.reference.value
        reference = None
        if ref is not None:
            reference = np.array(layer_array(ref), copy=True)  # painting on it mid-run changes nothing
            if reference.shape != image.data.shape[:reference.ndim] or reference.ndim != image.geometry.ndim:
                show_error(f"The reference '{ref.name}' {reference.shape} is not on the image's grid "
                           f"{image.data.shape}; choose another reference.")
                return
            chosen = self.mapping()
            values = label_values(reference)
            if set(values) - set(chosen):  # painted since the table was filled: those get the default class
                self._list_values(values, keep=chosen)
        self.warnings_label.setText("")
        self._source, self._geometry = layer, image.geometry  # the labels land where the image was
        self.runner.start(segment_and_score, image, self.model.currentText().strip(), reference, self.mapping(),
                          axis=None if self.axis.value() < 0 else self.axis.value(), device=self.device.currentText(),
                          tta=self.tta.isChecked(), allow_code=self.allow_code.isChecked(), on_result=self._show)

    def _show(self, scored: Scored) -> None:
        res, model, src = scored.result, scored.model, self._source
        if src not in self.viewer.layers:
            show_info(f"'{src.name}' was removed while it was segmented, so its labels were not added.")
            return
        self.output = show_result(self.viewer, res.labels, self._geometry, name=f"{src.name} {model.name}",
                                  kind="labels", key=f"segment:{src.unique_id}:{model.name}", source=src, opacity=0.5,
                                  class_names=res.class_names, colormap=class_colors(model))
        self.last = scored
        if res.warnings:
            self.warnings_label.setText("\n".join(f"! {w}" for w in res.warnings))
            show_warning(res.warnings[0])
        self._fill_results(scored)

    def _fill_results(self, scored: Scored) -> None:
        metrics = scored.metrics or {}
        names = list(dict.fromkeys([*scored.sizes, *metrics]))
        self.results.setHorizontalHeaderLabels(["class", scored.size_name, "Dice", "HD95 mm"])
        self.results.setRowCount(len(names))
        for i, name in enumerate(names):
            m = metrics.get(name, {})
            cells = [name, _num(scored.sizes.get(name), ".1f"), _num(m.get("dice"), ".3f"),
                     _num(m.get("hd95"), ".1f")]
            for j, text in enumerate(cells):
                self.results.setItem(i, j, QTableWidgetItem(text))
        self.results.setVisible(bool(names))
        self.results.resizeRowsToContents()
        self.results.setFixedHeight(self.results.verticalHeader().length()
                                    + self.results.horizontalHeader().sizeHint().height()
                                    + 2 * self.results.frameWidth())
        self.export_button.setEnabled(bool(names))

    def save_csv(self, path: Optional[str] = None) -> Optional[str]:
        """Write the volumes or areas (and metrics) of the last run as CSV (asking for a file without ``path``)."""
        if self.last is None:
            show_error("Run a segmentation first.")
            return None
        overwrite = path is None  # the file dialog has already asked about replacing a file
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export volumes and metrics",
                                                  f"{self.output.name if self.output else 'segment'}.csv",
                                                  "CSV (*.csv)")
            if not path:
                return None
        try:
            area = self.last.size_name.startswith("area")
            metrics_to_csv(self.last.metrics, None if area else self.last.sizes, path, overwrite=overwrite,
                           areas=self.last.sizes if area else None)
        except (ValueError, FileExistsError) as err:
            show_error(str(err))
            return None
        show_info(f"Saved {path}")
        return path


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)
