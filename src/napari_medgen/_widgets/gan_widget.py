"""The "GAN synthesis" dock widget: train (live preview, loss plot), synthesize from seeds or a label
slice, and a quality report with the most suspicious (memorised?) pairs side by side."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import napari
import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtGui import QFont
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QGroupBox, QPushButton

from ..io import Geometry
from ..io.read import ImageData
from ..models.checkpoint import SUFFIX, Model, ModelFileError
from ..models.config import Task
from ..tasks.conditional_gan import synthesize_from_labels, train_conditional_gan
from ..tasks.gan import ARCHITECTURES, interpolate_seeds, real_slices, synthesize, train_gan
from ..tasks.synthesis_report import format_report, side_by_side, synthesis_report
from ._plot import LivePlot
from ._model_files import save_model_file
from ._navigate import go_to_slice
from ._layers import find_output, layer_image, row, show_result, spin
from ._panel import Note, Panel
from ._runner import JobRunner, device_chooser

MODES = ["unconditional", "mask-to-image (needs labels)"]
COND_TASK = Task.CONDITIONAL_GAN
SWD_NOTE = ("\n  (small patches of the samples vs the real slices, from fine detail to coarse shape, both blurred "
            "and halved per step; lower is closer to real)")


class GANWidget(Panel):
    """Train a GAN on Image layer slices (optionally paired with Labels), synthesize, and report quality."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.model: Optional[Model] = None
        self.report: Optional[dict] = None
        self._reference = None  # real slices and samples of the last quality report
        self._samples = None
        self._preview_geometry = Geometry((1.0, 1.0, 1.0), (0.0,) * 3)  # of the running training's preview
        self._training = False  # the runner's current job is a training (its preview goes if it is discarded)

        self.image = self.layer_picker(napari.layers.Image,
                                       tooltip="The scan whose slices the GAN learns (and the report compares with).")
        self.labels = self.layer_picker(napari.layers.Labels, nullable=True,
                                        tooltip="Mask-to-image mode: the label map paired with the image.")
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.setToolTip("unconditional: learn to draw new slices like the image's. mask-to-image: learn to "
                             "draw a slice that fits a label map (choose the labels above), e.g. to make "
                             "training pairs.")
        self.seconds = spin(5, 86_400, 600)
        self.seconds.setToolTip("Training budget in seconds (the best EMA generator so far is kept)")
        self.steps = spin(0, 1_000_000, 0)
        self.steps.setToolTip("Optional budget in steps (0: seconds only); whichever ends first")
        self.architecture = QComboBox()
        self.architecture.addItems(ARCHITECTURES)
        self.architecture.setToolTip("cascade: a half-resolution GAN, then a refiner adding full-resolution detail "
                                     "(fast on a CPU); single-scale: one GAN at full resolution")
        self.downsample = spin(1, 8, 1)
        self.downsample.setToolTip("Train on slices reduced by this factor (faster; pixel spacing grows with it)")
        self.device, self.device_line = device_chooser()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        load, save = QPushButton("Load model..."), QPushButton("Save model...")
        load.clicked.connect(lambda: self.load_model())
        save.clicked.connect(lambda: self.save_model())
        self.model_line = Note("No model: train one or load a .medgen.pt GAN.")
        self.loss_plot = LivePlot("GAN losses", "step", height=1.6)

        self.n = spin(1, 10_000, 16, "How many new slices Synthesize draws.")
        self.seed = spin(0, 2**31 - 1, 0, "Random seed: the same seed draws the same slices again.")
        self.seed_b = spin(0, 2**31 - 1, 1, "Interpolate morphs the slice of 'seed' into the slice of this seed.")
        synth, interp, cond = QPushButton("Synthesize N"), QPushButton("Interpolate seed→seed B"), \
            QPushButton("Image from current label slice")
        synth.clicked.connect(self.synthesize)
        cond.setToolTip("Mask-to-image models: draw an image for the label slice shown in the viewer (paint or "
                        "edit the labels first to see what the model makes of them).")
        interp.clicked.connect(self.interpolate)
        cond.clicked.connect(self.from_labels)

        report, pairs = QPushButton("Compare with real slices"), QPushButton("Show suspicious pairs")
        report.setToolTip("Measure how close the synthesized samples are to the image's real slices, and whether "
                          "some merely copy a training slice.")
        report.clicked.connect(self.quality_report)
        pairs.clicked.connect(self.show_pairs)
        self.report_text = Note("Synthesize samples, then compare them with the image's real slices.")
        self.report_text.setFont(QFont("monospace", 8))

        self.runner = JobRunner("GAN")
        self.runner.started.connect(lambda: self.train_button.setEnabled(False))
        self.runner.done.connect(lambda _s: self.train_button.setEnabled(True))
        self.runner.done.connect(self._drop_discarded_preview)

        train_box = QGroupBox("Train")
        form = QFormLayout(train_box)
        form.addRow("image", self.image.native)
        form.addRow("labels", self.labels.native)
        form.addRow("mode", self.mode)
        form.addRow("seconds, downsample", row(self.seconds, self.downsample))
        form.addRow(self.train_button)
        form.addRow(self.loss_plot)
        form.addRow(row(load, save))
        form.addRow(self.model_line)
        self.body.addWidget(train_box)
        advanced = self.advanced("Advanced training options")
        advanced.addRow("steps (0: none)", self.steps)
        advanced.addRow("architecture", self.architecture)
        self.train_advanced = self.sections["Advanced training options"]
        gen_box = QGroupBox("Synthesize")
        form = QFormLayout(gen_box)
        form.addRow("N, seed", row(self.n, self.seed))
        form.addRow(synth)
        form.addRow("seed B", self.seed_b)
        form.addRow(interp)
        form.addRow(cond)
        self.body.addWidget(gen_box)
        form = self.advanced("Quality report (vs. the image's real slices)")
        form.addRow(row(report, pairs))
        form.addRow(self.report_text)
        self.form().addRow("device", self.device)
        self.body.addWidget(self.device_line)
        self.body.addStretch(1)
        self.footer(self.runner)  # progress, Stop and Cancel stay visible whatever is scrolled

    # --- training and models ------------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        return self.mode.currentIndex() == 1

    def train(self) -> None:
        """Train the chosen kind of GAN in a worker thread; the preview layer updates as it learns."""
        layer = self.image.value
        if layer is None:
            show_error("Choose an Image layer to train on.")
            return
        kwargs = dict(steps=self.steps.value() or None, seconds=self.seconds.value(),
                      downsample=self.downsample.value(), device=self.device.currentText(), stoppable=True,
                      on_result=self._trained, on_progress=self._on_progress)
        self.loss_plot.clear()
        spacing = [s * self.downsample.value() for s in Geometry.from_layer(layer).spacing[-2:]]
        self._preview_geometry = Geometry((1.0, *spacing), (0.0,) * 3)
        if self.conditional and self.labels.value is None:
            show_error("Mask-to-image training needs a Labels layer paired with the image.")
            return
        self._training = True
        if self.conditional:
            self.runner.start(train_conditional_gan, layer_image(layer), layer_image(self.labels.value), **kwargs)
        else:
            self.runner.start(train_gan, layer_image(layer), architecture=self.architecture.currentText(), **kwargs)

    def _drop_discarded_preview(self, status: str) -> None:
        """A cancelled or failed training leaves no preview of its discarded generator."""
        training, self._training = self._training, False
        preview = find_output(self.viewer, "gan:preview")
        if training and status != "finished" and preview is not None:
            self.viewer.layers.remove(preview)

    def _on_progress(self, ev) -> None:
        if "d_loss" in ev.metrics:
            draw = ev.train_step % 10 == 0 or ev.step == ev.total
            for name in ("d_loss", "g_loss", "l1"):
                if name in ev.metrics:
                    self.loss_plot.add(name, ev.train_step, ev.metrics[name], draw=draw)
        if ev.preview is not None:
            show_result(self.viewer, np.asarray(ev.preview), self._preview_geometry, name="GAN preview",
                        key="gan:preview", colormap="gray")

    def _trained(self, result) -> None:
        self.model, history = result
        note = " (stopped early: best EMA weights so far)" if history["stopped"] else ""
        steps = history["step"][-1] if history["step"] else 0
        self._describe(f"Trained {steps} steps in {history['seconds']:.0f} s{note}, kept {history['returned']}")

    def _describe(self, what: str) -> None:
        p = self.model.params
        kind = "mask-to-image GAN" if self.model.task == COND_TASK else f"{p.architecture} GAN"
        self.model_line.setText(f"{what}: {kind}, {p.n_train} training slices of {tuple(p.native_shape)} "
                                f"at {p.spacing[0]:g} x {p.spacing[1]:g} mm.")

    def load_model(self, path: Optional[str] = None) -> None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "GAN model", "", f"Models (*{SUFFIX});;All files (*)")
            if not path:
                return
        try:
            model = Model.load(path)
            if model.task not in (Task.GAN, COND_TASK):
                raise ModelFileError(f"That file holds a {model.task} model, not a GAN.")
        except ValueError as err:
            show_error(str(err))
            return
        self.model = model
        self.mode.setCurrentIndex(int(model.task == COND_TASK))
        self._describe("Loaded")

    def save_model(self, path: Optional[str] = None) -> None:
        save_model_file(self, self.model, "GAN", path)

    # --- synthesis ----------------------------------------------------------------------------------
    def _need(self, task: str) -> bool:
        if self.model is None or self.model.task != task:
            kind = "a mask-to-image GAN" if task == COND_TASK else "an unconditional GAN"
            show_error(f"This needs {kind}: train or load one first.")
            return False
        return True

    def synthesize(self) -> None:
        if self._need("gan"):
            self.runner.start(synthesize, self.model, self.n.value(), seed=self.seed.value(),
                              device=self.device.currentText(), on_result=lambda r: self._show(r, "samples"))

    def interpolate(self) -> None:
        if self._need("gan"):
            self.runner.start(interpolate_seeds, self.model, self.seed.value(), self.seed_b.value(),
                              steps=self.n.value(), device=self.device.currentText(),
                              on_result=lambda r: self._show(r, "interpolation"))

    def from_labels(self) -> None:
        """Render the Labels layer's slice under the viewer's current position."""
        labels = self.labels.value
        if labels is None:
            show_error("Choose a Labels layer to synthesize from.")
            return
        if not self._need(COND_TASK):
            return
        data = np.asarray(labels.data)
        geo = Geometry.from_layer(labels)
        axis = self.model.params.axis
        index = 0
        if data.ndim == 3:
            index = int(np.clip(round(labels.world_to_data(self.viewer.dims.point)[axis]), 0, data.shape[axis] - 1))
            data = np.take(data, index, axis=axis)
        inplane = [s for k, s in enumerate(geo.spacing) if data.ndim == geo.ndim or k != axis]
        self.runner.start(synthesize_from_labels, self.model, data, spacing=inplane,
                          device=self.device.currentText(),
                          on_result=lambda item: self._show_conditional(item, labels, axis, index))

    def _show_conditional(self, item: ImageData, labels, axis: int, index: int) -> None:
        """Show the rendered slice where it belongs: on slice ``index`` of ``labels`` (at the model's spacing)."""
        geo = Geometry.from_layer(labels)
        data = item.data
        if labels.ndim == 3:
            inplane = iter(item.geometry.spacing)
            spacing = [geo.spacing[k] if k == axis else next(inplane) for k in range(3)]
            origin = geo.index_to_world([index if k == axis else 0 for k in range(3)])
            geo = Geometry(spacing, origin, geo.direction)
            data = np.expand_dims(data, axis)
        else:
            geo = Geometry(item.geometry.spacing, geo.origin, geo.direction)
        show_result(self.viewer, data, geo, name=f"{labels.name} GAN image", key=f"gan:{labels.unique_id}:image",
                    colormap="gray")

    def _show(self, item: ImageData, what: str) -> None:
        """Show a sample stack ("samples", "interpolation") alone in view, at its first image, its slices
        placed where the training image's slices lie in plane (so toggling between them compares like with like)."""
        src = self.image.value
        if src is not None and src.ndim >= 2:
            corner = tuple(float(c) for c in src.extent.world[0][-2:])  # the training image's in-plane corner
            item = replace(item, geometry=Geometry(item.geometry.spacing, (*item.geometry.origin[:-2], *corner)))
        preview = find_output(self.viewer, "gan:preview")
        if preview is not None:  # the training preview is stale once the model samples (and would set the view)
            self.viewer.layers.remove(preview)
        for key in ("gan:samples", "gan:interpolation"):  # one stack at a time, not stacked up
            other = find_output(self.viewer, key)
            if other is not None:
                other.visible = False
        layer = show_result(self.viewer, item, name=f"GAN {what}", key=f"gan:{what}", colormap="gray")
        layer.visible = True
        self.viewer.reset_view()
        go_to_slice(self.viewer, layer, 0, 0)

    # --- report -----------------------------------------------------------------------------------
    def quality_report(self) -> None:
        """Report on the "GAN samples" layer against the training image's real slices."""
        samples = find_output(self.viewer, "gan:samples")
        if samples is None or self.model is None or self.model.task != "gan":
            show_error("Synthesize samples with an unconditional GAN first.")
            return
        if self.image.value is None:
            show_error("Choose the Image layer with the real scan to compare with.")
            return
        reference = real_slices(layer_image(self.image.value), self.model.params)
        data = np.asarray(samples.data)
        self.runner.start(synthesis_report, data, reference, training=reference,
                          on_result=lambda report: self._reported(report, data, reference))

    def _reported(self, report: dict, samples: np.ndarray, reference: np.ndarray) -> None:
        self.report, self._samples, self._reference = report, samples, reference
        lines = format_report(report).splitlines()
        self.report_text.setText("\n".join(line + SWD_NOTE if line.startswith("patch SWD") else line
                                           for line in lines))

    def show_pairs(self) -> None:
        """The most suspicious sample / nearest real slice pairs, side by side, as one stack."""
        if self.report is None or "memorisation" not in self.report:
            show_error("Run the quality report first.")
            return
        pairs = side_by_side(self.report, self._samples, self._reference)
        spacing = self.model.params.spacing
        show_result(self.viewer, pairs, Geometry((1.0, *spacing), (0.0,) * 3),
                    name="GAN suspicious pairs (sample | nearest real)", key="gan:pairs", colormap="gray")
