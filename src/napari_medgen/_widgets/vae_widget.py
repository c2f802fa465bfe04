"""The "VAE anomaly" dock widget: train on normal scans, then heatmaps, masks, slice scores, samples."""
from __future__ import annotations

from typing import Optional

import napari
import numpy as np
from magicgui.widgets import create_widget
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QListWidget,
                            QListWidgetItem, QPushButton, QSlider)

from ..models.checkpoint import SUFFIX, Model
from ..models.config import Task
from ..tasks.anomaly import DEFAULTS, EXPLAIN, METHODS, SIGNS, anomaly_map, normal_threshold
from ..tasks.diffusion_restore import has_diffusion
from ..tasks.diffusion_training import add_diffusion
from ..tasks.vae import interpolate_slices, reconstruct, synthesize_vae
from ..tasks.vae_training import train_vae
from ..tasks.volume_input import stack_geometry
from ._layers import edited, layer_array, layer_image, row, set_output, show_result, spin
from ._model_files import save_model_file
from ._navigate import go_to_slice
from ._panel import Note, Panel
from ._plot import LivePlot
from ._runner import JobRunner, device_chooser

SLIDER_STEPS = 1000


def fit_line(what: str, history: dict) -> str:
    """E.g. "Trained in 95 s, kept the best by validation, step 480"."""
    note = " (stopped early: best weights so far)" if history["stopped"] else ""
    return f"{what}{note} in {history['seconds']:.0f} s, kept {history['returned']}"


class VAEWidget(Panel):
    """Train a VAE on normal Image layers; score a scan into heatmap, anomaly mask and slice list."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.model: Optional[Model] = None
        self.result = None
        self._source = None  # the layer the shown result belongs to (set when a result arrives)
        self._mask_layer, self._score_top = None, 1.0  # the shown anomaly mask, the threshold slider's top score

        # --- training ---
        self.normals = create_widget(annotation=list[napari.layers.Image], label="normal images",
                                     widget_type="Select", options={"choices": self._image_choices})
        self.normals.native.setMaximumHeight(70)
        self.normals.native.setToolTip("The scans of normal subjects to learn from. Ctrl-click (Cmd-click on macOS) "
                                       "or Shift-click to select several.")
        self._user_chose = False  # once the user chooses (or clears) normal images, nothing is preselected
        self.normals.changed.connect(lambda _value: setattr(self, "_user_chose", True))
        self.train_mask = self.layer_picker(napari.layers.Labels, nullable=True,
                                            tooltip="Optional: learn only inside this mask (e.g. the brain).")
        self.seconds = spin(5, 86_400, 120, "Budget of the whole run in seconds (the best weights so far are "
                            "kept). Calibrating the thresholds on the normal validation slices comes out of it; "
                            "training keeps at least half of it.")
        self.steps = spin(0, 1_000_000, 0, "Optional budget in steps (0: seconds only); whichever ends first")
        self.latent = spin(2, 1024, 64, "Size of the VAE's latent code")
        self.diffusion_seconds = spin(10, 86_400, 300, "Training budget of the diffusion model in seconds")
        self.diffusion_button = QPushButton("Add diffusion")
        self.diffusion_button.setToolTip("Train a diffusion model of the normal images (and mask) for the current "
                                         "VAE: a second anomaly method, 'diffusion', saved in the same model file")
        self.diffusion_button.clicked.connect(self.add_diffusion)
        self.device, self.device_line = device_chooser()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        load, save = QPushButton("Load model..."), QPushButton("Save model...")
        load.clicked.connect(lambda: self.load_model())
        save.clicked.connect(lambda: self.save_model())
        self.model_line = Note("No model: train one or load a .medgen.pt VAE.")
        self.loss_plot = LivePlot("training loss", "step", height=1.6)

        # --- scoring ---
        self.image = self.layer_picker(napari.layers.Image, tooltip="The scan to score.")
        self.mask = self.layer_picker(napari.layers.Labels, nullable=True,
                                      tooltip="Optional: score only inside this mask.")
        self.method = QComboBox()
        self._list_methods()
        self.sign = QComboBox()
        self.sign.addItems(SIGNS)
        self.sign.setToolTip("positive: brighter than normal (e.g. FLAIR lesions); negative: darker; both")
        self.percentile = QDoubleSpinBox()
        self.percentile.setRange(50, 99.99)
        self.percentile.setValue(99.0)
        self.percentile.setToolTip("Initial threshold: this percentile of scores on normal validation slices")
        recon_button, anomaly_button = QPushButton("Reconstruct"), QPushButton("Anomaly")
        recon_button.clicked.connect(self.reconstruct), anomaly_button.clicked.connect(self.score)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(lambda pos: self.set_threshold(pos / SLIDER_STEPS * self._score_top))
        self.threshold_line = Note("threshold: -")
        self.explanation = Note("")
        self.slices, self.slices_label = QListWidget(), QLabel("slices by anomalous area (click to go):")
        self.slices.setMaximumHeight(90)
        self.slices.itemClicked.connect(lambda item: self.go_to_slice(int(item.data(Qt.UserRole))))

        # --- generation ---
        self.n_samples = spin(1, 256, 8, "How many new slices to draw from the VAE, to see what it has learnt.")
        self.seed = spin(0, 2**31 - 1, 0, "Random seed of the samples: the same seed draws the same slices.")
        self.slice_a = spin(0, 10_000, 0, "First slice (of the image to score) to morph from with Interpolate.")
        self.slice_b = spin(0, 10_000, 10, "Last slice to morph to: smooth steps in between show a sound latent space.")
        sample_button, interp_button = QPushButton("Sample N"), QPushButton("Interpolate A→B")
        sample_button.clicked.connect(self.sample)
        interp_button.clicked.connect(self.interpolate)

        self.runner = JobRunner("VAE")
        for button in (self.train_button, self.diffusion_button):
            self.runner.started.connect(lambda b=button: b.setEnabled(False))
            self.runner.done.connect(lambda _s, b=button: b.setEnabled(True))

        train_box = QGroupBox("Train on normal scans")
        form = QFormLayout(train_box)
        form.addRow("normal images", self.normals.native)
        hint = QLabel("Ctrl-click or Shift-click to select several.")
        hint.setEnabled(False)  # greyed: a hint, not a value
        form.addRow("", hint)
        form.addRow("mask", self.train_mask.native)
        form.addRow("budget (s)", self.seconds)
        form.addRow(self.train_button)
        form.addRow(self.loss_plot)
        form.addRow(row(load, save))
        form.addRow(self.model_line)
        self.body.addWidget(train_box)
        adv = self.advanced("Advanced training options")
        adv.addRow("steps (0: none)", self.steps)
        adv.addRow("latent size", self.latent)
        adv.addRow("diffusion (s)", row(self.diffusion_seconds, self.diffusion_button))
        self.train_advanced = self.sections["Advanced training options"]
        score_box = QGroupBox("Score a scan")
        form = QFormLayout(score_box)
        form.addRow("image", self.image.native)
        form.addRow("mask", self.mask.native)
        form.addRow("method", self.method)
        form.addRow("sign", self.sign)
        form.addRow(row(recon_button, anomaly_button))
        form.addRow(self.threshold_line)  # its own row: a long label column would widen the panel
        form.addRow(self.slider)
        form.addRow(self.explanation)
        form.addRow(self.slices_label)
        form.addRow(self.slices)
        self.body.addWidget(score_box)
        self.advanced("Advanced scoring options").addRow("percentile", self.percentile)
        form = self.advanced("Generate (samples, interpolation)")
        form.addRow("N, seed", row(self.n_samples, self.seed))
        form.addRow(sample_button)
        form.addRow("slices A, B", row(self.slice_a, self.slice_b))
        form.addRow(interp_button)
        self.generate_section = self.sections["Generate (samples, interpolation)"]
        self.form().addRow("device", self.device)
        self.body.addWidget(self.device_line)
        self.body.addStretch(1)
        self.footer(self.runner)  # progress and Cancel stay visible whatever is scrolled
        self._refresh_normals()

    def _image_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    # --- model ---
    def _normal_inputs(self):
        """(layers, images, masks) of the normal images to train on, or None after saying why."""
        layers = list(self.normals.value)
        if not layers:
            show_error("Select one or more normal Image layers to train on.")
            return None
        if any(layer.rgb for layer in layers):
            show_error("The VAE works on single-channel images; choose grey-value layers, not RGB.")
            return None
        mask = self.train_mask.value
        images = [layer_image(layer) for layer in layers]
        masks = [np.array(layer_array(mask), copy=True)] * len(images) if mask is not None else None  # a snapshot
        if masks is not None and any(m.shape != im.data.shape for m, im in zip(masks, images)):
            show_error(f"The mask '{mask.name}' {masks[0].shape} does not match every training image; "
                       "choose a mask of the same shape.")
            return None
        return layers, images, masks

    def train(self) -> None:
        """Train a VAE on the selected normal layers (and mask) in a worker thread."""
        if (got := self._normal_inputs()) is None:
            return
        layers, images, masks = got
        self.loss_plot.clear()
        self.runner.start(train_vae, images, masks, steps=self.steps.value() or None, seconds=self.seconds.value(),
                          latent_size=self.latent.value(), device=self.device.currentText(),
                          name=f"vae {layers[0].name}", stoppable=True, on_result=self._trained,
                          on_progress=self._on_progress)

    def add_diffusion(self) -> None:
        """Train a diffusion model of the selected normal layers for the current VAE, in a worker thread."""
        if self.model is None:
            show_error("Train or load a VAE first; the diffusion model is added to it.")
            return
        if (got := self._normal_inputs()) is None:
            return
        _layers, images, masks = got
        self.loss_plot.clear()
        self.runner.start(add_diffusion, self.model, images, masks, seconds=self.diffusion_seconds.value(),
                          device=self.device.currentText(), stoppable=True, on_result=self._diffusion_added,
                          on_progress=self._on_diffusion_progress)

    def _on_diffusion_progress(self, ev) -> None:
        if "loss" in ev.metrics:
            draw = ev.train_step % 10 == 0 or ev.step == ev.total
            self.loss_plot.add("diffusion noise error", ev.train_step, ev.metrics["loss"], draw=draw)

    def _diffusion_added(self, result) -> None:
        self.model, history = result
        self._describe(fit_line("Diffusion added", history))
        self.method.setCurrentText("diffusion")

    def _list_methods(self) -> None:
        """The scoring methods this model has ("diffusion" only with a diffusion network), keeping the choice."""
        methods = [m for m in METHODS if m != "diffusion" or has_diffusion(self.model)]
        current = self.method.currentText() or DEFAULTS["method"]
        self.method.clear()
        self.method.addItems(methods)
        self.method.setCurrentText(current if current in methods else DEFAULTS["method"])
        self.method.setToolTip("\n".join(EXPLAIN[m] if EXPLAIN[m].startswith(f"{m}:") else f"{m}: {EXPLAIN[m]}"
                                         for m in methods))

    def _on_progress(self, ev) -> None:
        if "reconstruction" in ev.metrics:
            draw = ev.train_step % 10 == 0 or ev.step == ev.total
            self.loss_plot.add("reconstruction", ev.train_step, ev.metrics["reconstruction"], draw=False)
            self.loss_plot.add("KL", ev.train_step, ev.metrics["kl"], draw=draw)

    def _trained(self, result) -> None:
        self.model, history = result
        self._describe(fit_line("Trained", history))
        for msg in history.get("warnings", []):  # e.g. too few steps for the budget
            show_warning(msg)

    def _describe(self, what: str) -> None:
        p = self.model.params
        latent = self.model.config.networks["net"].args["latent_size"]
        extra = ", + diffusion restoration" if has_diffusion(self.model) else ""
        size = "x".join(str(n) for n in p.size)
        self.model_line.setText(f"{what}: {self.model.name}, trained on {size}-pixel slices"
                                f"{' inside a mask' if p.masked else ''}, latent code of {latent} numbers{extra}.")
        self._list_methods()

    def load_model(self, path: Optional[str] = None) -> None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "VAE model", "", f"Models (*{SUFFIX});;All files (*)")
            if not path:
                return
        try:
            self.model = Model.load(path, expect=Task.VAE)
        except ValueError as err:
            show_error(str(err))
            return
        self._describe("Loaded")

    def save_model(self, path: Optional[str] = None) -> None:
        save_model_file(self, self.model, "VAE", path)

    # --- scoring ---
    def _inputs(self):
        """(layer, mask array) to score, or None after saying why; nothing is changed here."""
        layer = self.image.value
        if layer is None:
            show_error("Choose an image layer to score.")
            return None
        if layer.rgb:
            show_error(f"'{layer.name}' is RGB; the VAE works on single-channel images.")
            return None
        mask_layer = self.mask.value
        mask = np.array(layer_array(mask_layer), copy=True) if mask_layer is not None else None  # a snapshot
        if mask is not None and mask.shape != layer_array(layer).shape:
            show_error(f"The mask '{mask_layer.name}' {mask.shape} is not on the grid of '{layer.name}' "
                       f"{layer_array(layer).shape}; choose another mask.")
            return None
        return layer, mask

    def reconstruct(self) -> None:
        if (got := self._inputs()) is not None:
            layer, mask = got
            self.runner.start(reconstruct, self.model, layer_image(layer), mask, device=self.device.currentText(),
                              on_result=lambda rec: self._show_reconstruction(rec, layer))

    def score(self) -> None:
        if (got := self._inputs()) is not None:
            layer, mask = got
            self.runner.start(anomaly_map, self.model, layer_image(layer), mask, method=self.method.currentText(),
                              sign=self.sign.currentText(), percentile=self.percentile.value(),
                              device=self.device.currentText(), on_result=lambda res: self._show_anomaly(res, layer))

    def _show(self, what: str, data, src, kind: str = "image", **kwargs):
        """Add or replace the output ``what`` ("heatmap", ...) of layer ``src``, on its grid."""
        return show_result(self.viewer, data, name=f"{src.name} VAE {what}", kind=kind,
                           key=f"vae:{src.unique_id}:{what}", source=src, **kwargs)

    def _removed(self, src) -> bool:
        """Whether ``src`` left the viewer while it was being scored (then its result is dropped, with a word)."""
        if src in self.viewer.layers:
            return False
        show_info(f"'{src.name}' was removed while the VAE worked on it, so its result was not added.")
        return True

    def _show_reconstruction(self, rec, src) -> None:
        if self._removed(src):
            return
        self._source = src
        layer = self._show("reconstruction", rec, src, colormap="gray")
        layer.contrast_limits = tuple(src.contrast_limits)

    def _show_anomaly(self, result, src) -> None:
        if self._removed(src):
            return
        self.result, self._source = result, src
        for msg in result.warnings:
            show_warning(msg)
        top = float(max(result.score.max(), result.threshold * 2, 1e-6))
        heat = self._show("heatmap", result.score, src, colormap="inferno", blending="additive")
        heat.contrast_limits = (0.5 * result.threshold, top)
        self._show_mask(result, src)
        self._score_top = top
        self.slider.blockSignals(True)
        self.slider.setValue(int(round(result.threshold / top * SLIDER_STEPS)))
        self.slider.blockSignals(False)
        self.slider.setEnabled(True)
        self.explanation.setText(f"Method: {result.explanation}")
        self._update_threshold_line()
        self._fill_slices()
        self.scroll.ensureWidgetVisible(self.explanation if self.slices.isHidden() else self.slices)  # result in view

    def _show_mask(self, result, src) -> None:
        """The anomaly mask as outlines (the heatmap stays visible underneath); a mask the user painted on is
        kept as it is and the new one goes to a new layer."""
        self._mask_layer = self._show("anomalies", result.mask.astype(np.uint8), src, kind="labels", opacity=0.9)
        self._mask_layer.contour = 1

    def set_threshold(self, value: float) -> None:
        """Re-threshold the last heatmap (no model run): updates the mask layer and slice list."""
        res = self.result
        if res is None:
            return
        res.rethreshold(value)
        if self._mask_layer is not None and self._mask_layer in self.viewer.layers:
            if edited(self._mask_layer):
                self._show_mask(res, self._source)
            else:
                set_output(self._mask_layer, res.mask.astype(np.uint8))
        self._update_threshold_line()
        self._fill_slices()

    def _update_threshold_line(self) -> None:
        res, pct = self.result, ""
        if self.model is not None:
            try:
                pcts = self.model.params.thresholds["percentiles"]
                table = [normal_threshold(self.model, res.method, res.sign, p) for p in pcts]
                pct = f" (~{np.interp(res.threshold, table, pcts):.1f}th normal pct)"
            except (KeyError, TypeError, ValueError):
                pct = ""
        self.threshold_line.setText(f"threshold {res.threshold:.3g}{pct}")

    def _fill_slices(self) -> None:
        res = self.result
        self.slices.clear()
        for w in (self.slices, self.slices_label):  # a 2D image is one slice: nothing to rank
            w.setVisible(res.mask.ndim == 3)
        order = [int(i) for i in np.argsort(res.slice_scores)[::-1] if res.slice_scores[i] > 0][:50]
        for i in order:
            item = QListWidgetItem(f"slice {i}: {int(res.slice_scores[i])} voxels")
            item.setData(Qt.UserRole, i)
            self.slices.addItem(item)

    def go_to_slice(self, index: int) -> None:
        """Move the viewer to slice ``index`` (along the model's slicing axis) of the scored image."""
        src, res = self._source, self.result
        if src is not None and res is not None and src in self.viewer.layers:
            go_to_slice(self.viewer, src, res.axis, index)

    # --- generation ---
    def sample(self) -> None:
        self.runner.start(synthesize_vae, self.model, self.n_samples.value(), seed=self.seed.value(),
                          on_result=lambda item: show_result(self.viewer, item, name="VAE samples",
                                                             key="vae:samples", colormap="gray"))

    def interpolate(self) -> None:
        if (got := self._inputs()) is not None:
            layer, mask = got
            geometry = stack_geometry(self.model.params.spacing) if self.model is not None else None
            self.runner.start(interpolate_slices, self.model, layer_image(layer), self.slice_a.value(),
                              self.slice_b.value(), mask=mask,
                              on_result=lambda s: show_result(self.viewer, s, geometry, name="VAE interpolation",
                                                              key="vae:interpolation", colormap="gray"))

    def reset_choices(self, *_args) -> None:
        """Refresh the layer drop-downs and the list of normal images (napari calls this)."""
        super().reset_choices()
        self._refresh_normals()

    def _refresh_normals(self) -> None:
        """Keep the chosen normal images that are still open (by layer: a rename keeps them).  Until the user
        chooses (or clears) them, none chosen becomes the active Image layer or the only one (the first Train
        then just works)."""
        chosen = [layer for layer in self.normals.value if layer in self.viewer.layers]
        if not chosen and not self._user_chose:
            images = [layer for _name, layer in self._image_choices() if not layer.rgb]
            active = self.viewer.layers.selection.active
            chosen = [active] if active in images else images if len(images) == 1 else []
        with self.normals.changed.blocked():  # the panel's own change, not the user's choice
            self.normals.reset_choices()
            self.normals.value = chosen
