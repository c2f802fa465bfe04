"""Re-make README screenshots of dock widgets at laptop size (1366x768), driving them as a user would.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/readme_screenshots.py finetune --out docs/images
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_medgen.sample_data import brain_t1, brain_tissue


def wait_for(condition, timeout: float) -> None:
    """Run the Qt event loop until ``condition()`` holds (or ``timeout`` seconds pass)."""
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def run_in_turn(widget, actions, timeout: float) -> None:
    """Click each of ``actions`` (widget methods that start a job) once the previous job has ended."""
    for action in actions:
        done: list = []

        def finished(status, done=done):
            done.append(status)

        widget.runner.done.connect(finished)
        action()
        wait_for(lambda: done, timeout)
        widget.runner.done.disconnect(finished)


def segment(viewer: napari.Viewer) -> None:
    """The built-in model on the sample brain, scored against its tissue map (Dice, HD95, volumes)."""
    from napari_medgen._widgets.segment_widget import SegmentWidget

    brain, tissue = brain_t1(), brain_tissue()
    viewer.add_image(brain.data, name="MNI152 T1", **brain.geometry.layer_kwargs())
    viewer.add_labels(tissue.data, name="MNI152 tissue", **tissue.geometry.layer_kwargs())
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (napari-medgen)")
    widget.image.value = viewer.layers["MNI152 T1"]
    widget.reference.value = viewer.layers["MNI152 tissue"]
    run_in_turn(widget, (widget.run,), 300)
    viewer.dims.set_current_step(0, 47)


def finetune(viewer: napari.Viewer) -> None:
    """Three painted slices of the tissue map, Interpolate, one 45-second training round."""
    from napari_medgen._widgets.finetune_widget import FinetuneWidget

    brain, tissue = brain_t1(), brain_tissue()
    viewer.add_image(brain.data, name="MNI152 T1", **brain.geometry.layer_kwargs())
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    ann = widget.new_annotation_layer()
    painted = [25, 40, 55]
    ann.data[painted] = tissue.data[painted]
    ann.refresh()
    widget.interpolate().visible = False  # shown in the layer list; the prediction is what this shot is about
    widget.seconds.setValue(45)
    done = []
    widget.runner.done.connect(done.append)
    widget.train_button.click()
    wait_for(lambda: done, 300)
    widget.suggest_button.click()
    wait_for(lambda: widget.ranking_list.count() > 0, 60)
    viewer.dims.set_current_step(0, 47)


def gan(viewer: napari.Viewer) -> None:
    """The default training (architecture and budget) on the sample brain, then 16 samples."""
    from napari_medgen._widgets.gan_widget import GANWidget

    brain = brain_t1()
    viewer.add_image(brain.data, name="MNI152 T1", **brain.geometry.layer_kwargs())
    widget = GANWidget(viewer)
    viewer.window.add_dock_widget(widget, name="GAN")
    run_in_turn(widget, (widget.train, widget.synthesize), 1200)
    viewer.layers["MNI152 T1"].visible = False
    viewer.grid.enabled = False


def vae(viewer: napari.Viewer) -> None:
    """The default VAE training on the sample brain, then the combined score of bright and dark lesions
    inserted into a copy of it."""
    from napari_medgen._widgets.vae_widget import VAEWidget
    from napari_medgen.data.lesions import inject_lesions

    brain, tissue = brain_t1(), brain_tissue()
    mask = tissue.data > 0
    lesioned, _ = inject_lesions(brain.data, mask, n=8, radii=(2.0, 3.0, 4.5), polarity="both", contrast=0.35,
                                 slices=range(38, 54), seed=0)
    kw = brain.geometry.layer_kwargs()
    viewer.add_image(brain.data, name="MNI152 T1 (normal)", **kw)
    viewer.add_labels(mask.astype(np.uint8), name="brain", **kw)
    viewer.add_image(lesioned, name="T1 with lesions", **kw)
    widget = VAEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="VAE anomaly")
    widget.normals.value = [viewer.layers["MNI152 T1 (normal)"]]
    widget.train_mask.value = viewer.layers["brain"]
    widget.image.value = viewer.layers["T1 with lesions"]
    widget.mask.value = viewer.layers["brain"]
    run_in_turn(widget, (widget.train, widget.score), 600)
    viewer.layers["MNI152 T1 (normal)"].visible = False
    viewer.layers["brain"].visible = False
    widget.go_to_slice(int(np.argmax(widget.result.slice_scores)))


def classify(viewer: napari.Viewer) -> None:
    """Lesion present? 22 labelled axial slices (half with inserted lesions), the default training from the
    built-in encoder, then a held-out slice with a lesion: probabilities and the Grad-CAM overlay."""
    from napari_medgen._widgets.classify_widget import ClassifyWidget
    from napari_medgen.data.lesions import inject_lesions

    brain, tissue = brain_t1(), brain_tissue()
    mask = tissue.data > 0
    lesioned, truth = inject_lesions(brain.data, mask, n=40, radii=(2.0, 3.0), polarity="both", contrast=0.5,
                                     slices=range(20, 75), seed=1)
    scale = brain.geometry.layer_kwargs()["scale"][1:]
    labels = {}
    for i, z in enumerate(range(24, 68, 2)):  # every other one of these slices with its lesions
        has = i % 2 == 1 and bool(truth[z].any())
        name = f"slice {z}" + (" (lesion)" if has else "")
        viewer.add_image(lesioned[z] if has else brain.data[z], name=name, scale=scale, metadata={"modality": "MR"})
        labels[name] = "lesion" if has else "healthy"
    test = max(range(35, 56, 2), key=lambda z: truth[z].sum())  # never trained on
    viewer.add_image(lesioned[test], name=f"held-out slice {test}", scale=scale, metadata={"modality": "MR"})
    outline = viewer.add_labels(truth[test].astype(np.uint8), name="true lesion (outline)", scale=scale)
    outline.contour = 1
    widget = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Classify")
    for name, label in labels.items():
        widget.set_label(name, label)
    widget.pretrained.setCurrentText("brain-tissue-2d")
    widget.image.value = viewer.layers[f"held-out slice {test}"]
    run_in_turn(widget, (widget.train, widget.classify), 900)
    for layer in viewer.layers:
        layer.visible = layer.name.startswith(("held-out", "true lesion")) or layer is widget.heatmap_layer


def sequence(viewer: napari.Viewer) -> None:
    """DCE kinetics (persistent / plateau / washout): 90 synthetic series on slices of the sample brain, each typed
    with its class, the lesion region, a 120-second training, then a series from other slices and its curve.

    A dozen series teach the network nothing in minutes and 90 only a little (benchmarks/bench_sequence.py
    trains on 600); the held-out layer's name gives its true class, so the picture shows whether it is right."""
    import sys

    from napari_medgen._widgets.sequence_widget import SequenceWidget

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from sequence_synth import kinetics_set

    # 48-pixel crops keep every lesion at the centre, so the one region below fits them all closely
    train, classes, masks = kinetics_set(90, "train", seed=1, crop=48)
    test, test_classes, test_masks = kinetics_set(3, "test", seed=2, crop=48)
    held_out = 2  # a washout lesion from slices never trained on
    series = {f"DCE {i + 1}": (seq, cls) for i, (seq, cls) in enumerate(zip(train, classes))}
    test_name = f"held-out ({test_classes[held_out]})"
    series[test_name] = (test[held_out], None)
    for name, (seq, _) in series.items():
        viewer.add_image(seq, name=name, scale=(1, 2, 2), axis_labels=("t", "y", "x"),
                         metadata={"modality": "MR", "time_step": 360 / (len(seq) - 1), "time_unit": "s"})
    # one region for every series (the widget takes one): all the lesions
    viewer.add_labels(np.any(masks + [test_masks[held_out]], axis=0).astype(np.uint8), name="lesion",
                      scale=(2, 2), opacity=0.35)
    widget = SequenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Time series")
    for name, (_, cls) in series.items():
        if cls is not None:
            widget.set_target(name, cls)
    widget.region.setCurrentText("lesion")
    widget.steps.setValue(2000)  # the time box ends it
    widget.seconds.setValue(120)
    viewer.layers.selection.active = viewer.layers[test_name]
    run_in_turn(widget, (widget.train, widget.predict), 600)
    print(widget.model_label.text(), "|", widget.model.config.training, "|", widget.result_label.text())
    for layer in viewer.layers:
        layer.visible = layer.name in (test_name, "lesion")
    viewer.dims.set_current_step(0, 3)


def pacs(viewer: napari.Viewer) -> None:
    """A real Orthanc (the test suite's, needs apt-get install orthanc orthanc-dicomweb) holding a synthetic oblique
    CT series: search, open it, threshold its bone and send that back as a DICOM SEG."""
    import os
    import sys
    import tempfile

    from napari_medgen._widgets.pacs_widget import PacsWidget

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from orthanc import start_orthanc, write_ct_series

    tmp = Path(tempfile.mkdtemp(prefix="medgen-pacs-shot-"))
    os.environ["MEDGEN_CONFIG_DIR"] = str(tmp)  # the remembered servers list stays out of the user's own
    server = start_orthanc(tmp / "orthanc")
    try:
        server.upload(write_ct_series(tmp / "ct"))
        widget = PacsWidget(viewer)
        viewer.window.add_dock_widget(widget, name="PACS")
        widget.url.setEditText(server.url)
        widget.user.setText(server.user)
        widget.password.setText(server.password)
        widget.patient.setText("doe")
        run_in_turn(widget, (widget.search,), 60)
        wait_for(lambda: widget.series_table.rowCount() == 1 and not widget.runner.running, 60)
        run_in_turn(widget, (widget.open_series,), 60)
        ct = viewer.layers["CT oblique"]
        bone = viewer.add_labels((ct.data > 500).astype(np.uint8), name="bone", scale=ct.scale,
                                 translate=ct.translate, affine=ct.affine, metadata={"class_names": ["background", "bone"]})
        widget.labels.value, widget.reference.value = bone, ct
        run_in_turn(widget, (widget.send,), 60)
        wait_for(lambda: widget.series_table.rowCount() == 2 and not widget.runner.running, 60)
    finally:
        server.stop()


# each shot and the file README.md shows it as
SHOTS = {"segment": (segment, "segment_widget.png"), "finetune": (finetune, "finetune.png"), "gan": (gan, "gan_widget.png"), "vae": (vae, "vae_anomaly.png"),
         "classify": (classify, "classify_widget.png"), "sequence": (sequence, "sequence_widget.png"),
         "pacs": (pacs, "pacs_widget.png")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shots", nargs="*", default=list(SHOTS), choices=list(SHOTS))
    ap.add_argument("--out", default="docs/images")
    args = ap.parse_args()
    for name in args.shots:
        viewer = napari.Viewer()
        shot, file = SHOTS[name]
        shot(viewer)
        viewer.window.resize(1366, 768)
        wait_for(lambda: False, 1.0)
        path = Path(args.out) / file
        viewer.screenshot(str(path), canvas_only=False)
        print("wrote", path, np.asarray(viewer.screenshot(canvas_only=False)).shape)
        viewer.close()


if __name__ == "__main__":
    main()
