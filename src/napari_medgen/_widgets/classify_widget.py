"""The "Classify" dock widget: train from labelled layers (or a folder + CSV), then classify a layer.

The result shows as a probability bar chart, a Grad-CAM heatmap layer blended additively over
the image (same geometry), and for volumes the slices ranked by the heatmap (click to jump).
"""
from __future__ import annotations

import math
from typing import Optional

import napari
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QLineEdit, QListWidget,
                            QListWidgetItem, QPushButton, QWidget)

from ..data.normalize import window_spec
from ..models.checkpoint import Model
from ..models.encoders import POOLINGS
from ..models.segmentation import builtin_models
from ..tasks.classify import classify, load_classifier, train_classifier
from ..tasks.classify_data import read_label_csv
from ._layer_table import LayerTable
from ._layers import budget_boxes, layer_image, row, show_result
from ._model_files import save_model_file
from ._navigate import go_to_slice
from ._panel import Note, Panel
from ._plot import LivePlot
from ._runner import JobRunner, device_chooser

SOURCES = ["open layers (label each)", "folder + CSV (file,label)"]


def parse_window(text: str) -> Optional[dict]:
    """The intensity window typed as "LOW HIGH" (None for blank or "auto"); ValueError with a sentence."""
    words = text.replace(",", " ").split()
    if not words or words == ["auto"]:
        return None
    try:
        low, high = (float(w) for w in words)
    except ValueError:
        raise ValueError(f"Type the window as two numbers, LOW HIGH (e.g. -20 120 for brain on CT), "
                         f"not '{text}'.") from None
    return window_spec(low, high)


def auroc_text(value: float) -> str:
    """AUROC for the metrics line; undefined when the validation images hold one class only."""
    return f"{value:.2f}" if math.isfinite(value) else "n/a (one class in validation)"


def training_summary(classes: list, n_train: int, metrics: Optional[dict]) -> str:
    """What a training run gave, in words (no Python lists), for the panel's metrics line."""
    names = [str(c) for c in classes]
    text = f"Trained on {len(names)} classes ({', '.join(names)}) with {n_train} images"
    if metrics:
        cm = metrics["confusion_matrix"]  # rows: the true class, columns: the predicted one
        pairs = ", ".join(f"{names[t]}->{names[p]} {cm[t][p]}" for t in range(len(names)) for p in range(len(names))
                          if cm[t][p])
        text += (f": validation accuracy {metrics['accuracy']:.2f} ({metrics['n']} images; balanced "
                 f"{metrics['balanced_accuracy']:.2f}, AUROC {auroc_text(metrics['auroc_macro'])}); "
                 f"true->predicted: {pairs}")
    return text + "."


class ProbabilityBars(FigureCanvasQTAgg):
    """Horizontal bars of class probabilities (hidden until there are some)."""

    def __init__(self):
        fig = Figure(figsize=(4, 1.6), tight_layout=True)
        fig.patch.set_facecolor("#262930")
        super().__init__(fig)
        self.ax = fig.add_subplot(111)
        self.setMinimumHeight(110)
        self.show_probabilities({}, draw=False)

    def show_probabilities(self, probs: dict, draw: bool = True) -> None:
        ax = self.ax
        ax.clear()
        ax.set_facecolor("#262930")
        names, values = [str(k) for k in probs], list(probs.values())
        ax.barh(names, values, color="#5fa8ff")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.tick_params(colors="w", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#888")
        for i, v in enumerate(values):
            ax.text(min(v + 0.02, 0.85), i, f"{v:.2f}", color="w", va="center", fontsize=7)
        self.setVisible(bool(probs))
        if draw:
            self.draw_idle()


class ClassifyWidget(Panel):
    """Train a classifier from labelled layers or a folder + CSV; classify the chosen layer."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.model: Optional[Model] = None
        self.result = None
        self.heatmap_layer: Optional[napari.layers.Image] = None
        self._source = None

        # --- training ---
        self.source = QComboBox()
        self.source.addItems(SOURCES)
        self.source.setToolTip("Where the training images come from: the open layers (type a label for each in "
                               "the table), or a folder of image files with a CSV of file,label rows.")
        self.table = LayerTable("label (empty: skip)")
        self.table.setMaximumHeight(120)
        self.folder, self.csv = QLineEdit(), QLineEdit()
        self.folder.setPlaceholderText("folder of images")
        self.csv.setPlaceholderText("labels.csv (file,label)")
        browse_folder, browse_csv = QPushButton("..."), QPushButton("...")
        browse_folder.clicked.connect(lambda: self._pick(self.folder, folder=True))
        browse_csv.clicked.connect(lambda: self._pick(self.csv))
        self.pretrained = QComboBox()
        self.pretrained.setEditable(True)
        self.pretrained.addItems(["none (from scratch)", *builtin_models()])
        self.pretrained.setToolTip("Start from a network that knows medical images: a built-in or .medgen.pt "
                                   "segmentation U-Net, a VAE .medgen.pt, a MONAI bundle folder, a MONAI UNet state dict "
                                   "or a torchvision ResNet state dict (2D).")
        self.pooling = QComboBox()
        self.pooling.addItems(list(POOLINGS))
        self.pooling.setToolTip("How per-pixel class evidence becomes the image's class. "
                                + "; ".join(f"{k}: {v}" for k, v in POOLINGS.items()) + ".")
        self.window = QLineEdit()
        self.window.setPlaceholderText("auto")
        self.window.setToolTip("Intensity window LOW HIGH in the images' units, e.g. -20 120 (HU) for brain findings "
                               "on CT, where the automatic -1000..1000 HU leaves a lesion a few hundredths of the "
                               "range. Blank: by modality (CT -1000..1000 HU, MRI each image's percentiles).")
        self.steps, self.seconds = budget_boxes()
        self.device, self.device_line = device_chooser()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        load, save = QPushButton("Load model..."), QPushButton("Save model...")
        load.clicked.connect(lambda: self.load_model())
        save.clicked.connect(lambda: save_model_file(self, self.model, "classifier"))
        self.plot = LivePlot("loss / validation score", "step", height=1.8)
        self.metrics_line = Note("No model: train one or load a classifier .medgen.pt.")

        # --- classifying ---
        self.image = self.layer_picker(napari.layers.Image, tooltip="The image to classify.")
        self.classify_button = QPushButton("Classify")
        self.classify_button.clicked.connect(self.classify)
        self.bars = ProbabilityBars()
        self.warnings_label = Note("")  # how the image differs from the training images
        self.warnings_label.setStyleSheet("color: #f0b040")
        self.warnings_label.setVisible(False)
        self.slices = QListWidget()
        self.slices.setMaximumHeight(90)
        self.slices.itemClicked.connect(self._jump)
        self.runner = JobRunner("Classify", trains=True)
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.done.connect(lambda _s: self._busy(False))

        train_box = QGroupBox("Train")
        form = QFormLayout(train_box)
        form.addRow("images from", self.source)
        form.addRow(self.table)
        self.csv_box = QWidget()
        csv_form = QFormLayout(self.csv_box)
        csv_form.setContentsMargins(0, 0, 0, 0)
        csv_form.addRow("folder", row(self.folder, browse_folder))
        csv_form.addRow("labels", row(self.csv, browse_csv))
        form.addRow(self.csv_box)
        form.addRow("pretrained", self.pretrained)
        form.addRow("budget", row(self.steps, self.seconds))
        form.addRow(row(self.train_button, load, save))
        form.addRow(self.plot)
        form.addRow(self.metrics_line)
        use_box = QGroupBox("Classify")
        form2 = QFormLayout(use_box)
        form2.addRow("image", self.image.native)
        form2.addRow(self.classify_button)
        form2.addRow(self.warnings_label)  # above the bars: seen without scrolling
        form2.addRow(self.bars)
        form2.addRow("top slices", self.slices)
        self.body.addWidget(train_box)
        self.body.addWidget(use_box)
        advanced = self.advanced()
        advanced.addRow("pooling", self.pooling)
        advanced.addRow("window", self.window)
        advanced.addRow("device", self.device)
        self.body.addWidget(self.device_line)
        self.body.addWidget(self.runner)
        self.body.addStretch(1)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.refresh_layers()
        self._source_changed(0)

    # --- training inputs ---
    def reset_choices(self, *args) -> None:
        """napari's layer-list hook: refresh the drop-down and the table of layers."""
        super().reset_choices(*args)
        self.refresh_layers()

    def _images(self) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, napari.layers.Image)]

    def refresh_layers(self) -> None:
        """One table row per Image layer, keeping labels already typed."""
        self.table.show_layers(self._images())

    def set_label(self, layer_name: str, label: str) -> None:
        self.table.set_value(self.viewer.layers[layer_name], label)

    def layer_labels(self, all_rows: bool = False) -> dict:
        """``{layer name: typed label}``."""
        return self.table.values(self._images(), all_rows)

    def _source_changed(self, index: int) -> None:
        self.table.setVisible(index == 0)
        self.csv_box.setVisible(index == 1)

    def _pick(self, line: QLineEdit, folder: bool = False) -> None:
        path = (QFileDialog.getExistingDirectory(self, "Image folder") if folder else
                QFileDialog.getOpenFileName(self, "Labels CSV", "", "CSV (*.csv);;All files (*)")[0])
        if path:
            line.setText(path)

    def _busy(self, busy: bool) -> None:
        self.train_button.setEnabled(not busy)
        self.classify_button.setEnabled(not busy)

    # --- actions ---
    def train(self) -> None:
        """Train on the labelled layers (or the folder + CSV) in a worker thread."""
        try:
            if self.source.currentIndex() == 1:
                files, labels = read_label_csv(self.csv.text().strip(), self.folder.text().strip() or None)
                images = [str(f) for f in files]
            else:
                chosen = self.layer_labels()
                if len(chosen) < 2:
                    raise ValueError("Type a label next to at least two image layers (two classes or more).")
                images = [layer_image(self.viewer.layers[n]) for n in chosen]
                labels = list(chosen.values())
            window = parse_window(self.window.text())
        except ValueError as err:
            show_error(str(err))
            return
        pre = self.pretrained.currentText().strip()
        self.plot.clear()
        self.runner.start(train_classifier, images, labels, steps=self.steps.value(), seconds=float(self.seconds.value()),
                          pretrained=None if pre.startswith("none") or not pre else pre,
                          pooling=self.pooling.currentText(), normalization=window,
                          device=self.device.currentText(), on_result=self._trained, on_progress=self._progress,
                          stoppable=True)

    def _progress(self, ev) -> None:
        if "loss" in ev.metrics:
            self.plot.add("loss", ev.train_step, ev.metrics["loss"], draw=ev.train_step % 10 == 0)
        if "val_metric" in ev.metrics:
            self.plot.add("validation", ev.train_step, ev.metrics["val_metric"])

    def _trained(self, result) -> None:
        self.model, history = result
        m = history.get("metrics")
        self.metrics_line.setText(training_summary(self.model.params.classes, history["n_train"], m))

    def load_model(self, path: Optional[str] = None) -> None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Classifier", "", "Models (*.medgen.pt)")
            if not path:
                return
        try:
            self.model = load_classifier(path)
        except ValueError as err:
            show_error(str(err))
            return
        self.metrics_line.setText(f"Loaded {self.model.name}: classes {self.model.params.classes}.")

    def classify(self) -> None:
        """Classify the chosen layer: probabilities, heatmap overlay and ranked slices."""
        layer = self.image.value
        if self.model is None:
            show_error("No classifier yet: train one or load a .medgen.pt classifier.")
            return
        if layer is None:
            show_error("Choose an image layer to classify.")
            return
        self._source = layer
        self.runner.start(classify, self.model, layer_image(layer), device=self.device.currentText(),
                          on_result=self._show)

    def _show(self, result) -> None:
        src = self._source
        if src not in self.viewer.layers:
            show_info(f"'{src.name}' was removed while it was classified, so its result was not shown.")
            return
        self.result = result
        self.bars.show_probabilities(result.probabilities)
        self.warnings_label.setText("\n".join(f"! {w}" for w in result.warnings))
        self.warnings_label.setVisible(bool(result.warnings))
        self.heatmap_layer = show_result(self.viewer, result.heatmap, name=f"{src.name} heatmap ({result.target})",
                                         key=f"classify:{src.unique_id}:heatmap", source=src, colormap="inferno",
                                         blending="additive", opacity=0.6, contrast_limits=(0, 1))
        self.slices.clear()
        if result.slice_scores is not None:
            for z in result.top_slices[:10]:
                item = QListWidgetItem(f"slice {z}: {result.slice_scores[z]:.2f}")
                item.setData(256, z)
                self.slices.addItem(item)

    def _jump(self, item: QListWidgetItem) -> None:
        """Show the clicked slice of the classified layer."""
        src = self._source
        if src is not None and src in self.viewer.layers:
            go_to_slice(self.viewer, src, 0, int(item.data(256)))
