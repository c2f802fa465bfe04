"""Panel findings of a code review: each test fails without its fix (stale reference table, overwritten edits,
CSV matching, region picker, file errors, study listing, slice jumps with extra dims, results for removed layers)."""
import time

import numpy as np
import pytest
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_medgen._widgets import _model_files, pacs_widget, sequence_widget
from napari_medgen._widgets._runner import JobRunner
from napari_medgen._widgets.classify_widget import ClassifyWidget
from napari_medgen._widgets.gan_widget import GANWidget
from napari_medgen._widgets.pacs_widget import PacsWidget
from napari_medgen._widgets.segment_widget import SegmentWidget
from napari_medgen._widgets.sequence_widget import SequenceWidget
from napari_medgen._widgets.vae_widget import VAEWidget
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData
from napari_medgen.models.segmentation import load_segmentation_model
from napari_medgen.tasks.anomaly import AnomalyResult, slice_scores
from napari_medgen.tasks.classify import ClassificationResult

SERIES = {"metadata": {"time_step": 1.0}}


def _wait(qtbot, runner, action):
    states = []
    runner.done.connect(states.append)
    action()
    qtbot.waitUntil(lambda: bool(states), timeout=120_000)
    return states[-1]


def _errors(monkeypatch, *modules):
    shown = []
    for m in modules:
        monkeypatch.setattr(m, "show_error", shown.append)
    return shown


# --- Segment ---------------------------------------------------------------------------------------
def test_segment_scores_values_painted_after_the_reference_was_chosen(qtbot, make_napari_viewer, brain, tissue):
    viewer = make_napari_viewer()
    sub, geo = slice(44, 54), brain.geometry.layer_kwargs()
    image = viewer.add_image(brain.data[sub], name="T1", metadata={"modality": "MR"}, **geo)
    truth = tissue.data[sub].astype(np.uint8)
    ref = viewer.add_labels(np.where(truth == 1, 1, 0).astype(np.uint8), name="my reference", **geo)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value, widget.reference.value = image, ref
    widget.set_mapping({1: None})  # the user's own choice: CSF is not scored
    ref.data[...] = truth  # then paints grey and white matter (napari paints in place)
    assert _wait(qtbot, widget.runner, widget.run) == "finished"
    assert widget.mapping() == {1: None, 2: 2, 3: 3}
    m = widget.last_metrics
    assert m["grey matter"]["dice"] > 0.8 and m["white matter"]["dice"] > 0.8
    assert np.array_equal(ref.data, truth)


# --- VAE -------------------------------------------------------------------------------------------
def _anomaly(score):
    return AnomalyResult(score=score, threshold=1.0, mask=score > 1.0, slice_scores=slice_scores(score > 1.0, 0),
                         min_size=1)


def test_vae_threshold_keeps_what_the_user_painted(make_napari_viewer):
    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.rand(8, 32, 32).astype(np.float32), name="T1")
    widget = VAEWidget(viewer)
    score = np.zeros((8, 32, 32), np.float32)
    score[4, 10:20, 10:20] = 5.0
    widget._show_anomaly(_anomaly(score), img)
    mine = viewer.layers["T1 VAE anomalies"]
    mine.paint((2, 2, 2), 1)  # a lesion the model missed
    painted = mine.data.copy()
    widget.slider.setValue(widget.slider.value() - 1)
    assert np.array_equal(mine.data, painted)  # kept as the user left it
    new = viewer.layers[-1]
    assert new is not mine and new.data[4].sum() == 100 and not new.data[2].any()
    widget.slider.setValue(widget.slider.value() + 1)  # further moves update the new layer
    assert viewer.layers[-1] is new and len(viewer.layers) == 4


def test_results_for_a_layer_removed_mid_run_are_not_added(make_napari_viewer):
    viewer = make_napari_viewer()
    vol = viewer.add_image(np.random.rand(20, 32, 32).astype(np.float32), name="CT")
    classify, vae = ClassifyWidget(viewer), VAEWidget(viewer)
    res = ClassificationResult("lesion", {"lesion": 0.9}, heatmap=np.zeros((20, 32, 32), np.float32),
                               target="lesion", slice_scores=np.zeros(20), top_slices=[3])
    classify._source = vol
    viewer.layers.remove(vol)
    classify._show(res)
    vae._show_anomaly(_anomaly(np.full((20, 32, 32), 2.0, np.float32)), vol)
    vae._show_reconstruction(np.zeros((20, 32, 32), np.float32), vol)
    assert len(viewer.layers) == 0 and classify.result is None and vae.result is None


# --- slice jumps next to a layer with more dimensions ----------------------------------------------
def test_jumps_move_the_volume_axis_not_time(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(5, 20, 32, 32).astype(np.float32), name="cine 4D")
    vol = viewer.add_image(np.random.rand(20, 32, 32).astype(np.float32), name="CT", scale=(2.5, 1, 1))
    widget = ClassifyWidget(viewer)
    heat = np.zeros((20, 32, 32), np.float32)
    heat[13] = 1
    widget._source = vol
    widget._show(ClassificationResult("lesion", {"lesion": 0.9, "normal": 0.1}, heatmap=heat, target="lesion",
                                      slice_scores=heat.max((1, 2)), top_slices=[13]))
    time_step = viewer.dims.current_step[0]
    widget._jump(widget.slices.item(0))
    assert viewer.dims.current_step[0] == time_step
    assert round(vol.world_to_data(viewer.dims.point[1:])[0]) == 13
    gan = GANWidget(viewer)
    viewer.dims.set_point(1, 30.0)
    gan._show(ImageData(np.zeros((4, 32, 32), np.float32), Geometry((1.0, 1.0, 1.0), (7.0, 0.0, 0.0))), "samples")
    assert viewer.dims.current_step[0] == time_step and viewer.dims.point[1] == pytest.approx(7.0)


# --- Time series -----------------------------------------------------------------------------------
def _series(viewer, *names):
    return [viewer.add_image(np.random.rand(6, 16, 16).astype(np.float32), name=n, **SERIES) for n in names]


def test_csv_targets_match_whole_names_and_refuse_ambiguous_tables(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _series(viewer, "echo.1", "echo.2", "echo.3", "case7")
    widget = SequenceWidget(viewer)
    path = tmp_path / "t.csv"
    path.write_text("layer,target\necho.1,up\necho.2,down\necho.3,up\ndata/case7.nii.gz,down\necho.1,up\n")
    assert widget.load_targets(str(path)) == 4
    assert widget.targets() == {"echo.1": "up", "echo.2": "down", "echo.3": "up", "case7": "down"}
    for text, words in [("file,target\ncase7.nii,up\ncase7.nii.gz,down\n", "'case7.nii' and 'case7.nii.gz' different"),
                        ("layer,target\necho.1,up\necho.2\n", "Line 3 of bad.csv has no target")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(UserError, match=words):
            widget.load_targets(str(tmp_path / "bad.csv"))
    assert widget.targets()["case7"] == "down"  # a refused table changes nothing


def test_region_follows_its_layer_across_a_rename(make_napari_viewer):
    viewer = make_napari_viewer()
    (img,) = _series(viewer, "cine")
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = 1
    lesion = viewer.add_labels(m, name="Labels")
    widget = SequenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.region.value = lesion
    lesion.name = "lesion"
    widget.reset_choices()
    assert widget.region.value is lesion and int(widget.region_mask(img).sum()) == 16


def test_a_2d_shapes_region_on_a_series(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    img, other = _series(viewer, "cine", "cine b")
    widget = SequenceWidget(viewer)
    widget.set_target("cine", "up")
    widget.set_target("cine b", "down")
    roi = viewer.add_shapes([np.array([[5, 5], [5, 10], [10, 10], [10, 5]])], shape_type="rectangle", name="roi")
    widget.refresh()
    widget.region.value = roi
    mask = widget.region_mask(img)
    assert mask.shape == (16, 16) and mask[7, 7] and not mask[12, 12]
    cube = viewer.add_shapes([np.array([[0, 0, 0, 0], [0, 0, 4, 0], [0, 0, 4, 4], [0, 0, 0, 4]])],
                             shape_type="rectangle", name="4D roi")
    widget.refresh()
    widget.region.value = cube
    shown = _errors(monkeypatch, sequence_widget)
    widget.train()  # one sentence, no exception from the click, no run
    assert "is 4D but the frames of 'cine' are 2D" in shown[-1] and not widget.runner.running


def test_time_series_save_uses_the_model_file_suffix(make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    widget = SequenceWidget(viewer)
    widget.model = load_segmentation_model("brain-tissue-2d")  # any model: saving does not look inside
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(tmp_path / "mine"), "")))
    monkeypatch.setattr(_model_files, "show_info", lambda _m: None)
    save = [b for b in widget.findChildren(type(widget.train_button)) if b.text() == "Save model..."][0]
    save.click()
    assert (tmp_path / "mine.medgen.pt").exists() and not (tmp_path / "mine").exists()


# --- saving models ---------------------------------------------------------------------------------
def test_model_save_errors_are_one_sentence(monkeypatch):
    shown = _errors(monkeypatch, _model_files)
    model = load_segmentation_model("brain-tissue-2d")
    for path in ["/proc/vae", "/dev/null/vae"]:
        assert _model_files.save_model_file(None, model, "VAE", path) is None
        assert shown[-1].startswith(f"Cannot write {path}.medgen.pt: ")

    class Refused:
        def save(self, path):
            raise PermissionError(13, "Permission denied", path + ".partial")

    assert _model_files.save_model_file(None, Refused(), "VAE", "/tmp/x") is None
    assert shown[-1] == "Could not write /tmp/x.medgen.pt: Permission denied."


@pytest.mark.parametrize("replace", [False, True])
def test_save_asks_before_replacing_the_suffixed_file(tmp_path, monkeypatch, replace):
    old = tmp_path / "trial.medgen.pt"
    old.write_bytes(b"the user's earlier model")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(tmp_path / "trial"), "")))
    asked = []
    answer = QMessageBox.StandardButton.Yes if replace else QMessageBox.StandardButton.No
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: asked.append(a[2]) or answer))
    monkeypatch.setattr(_model_files, "show_info", lambda _m: None)
    written = _model_files.save_model_file(None, load_segmentation_model("brain-tissue-2d"), "VAE")
    assert asked == ["trial.medgen.pt already exists. Replace it?"]
    assert (written == str(old)) is replace and (old.read_bytes() == b"the user's earlier model") is not replace


# --- the job runner --------------------------------------------------------------------------------
@pytest.mark.parametrize("err, words", [
    (PermissionError(13, "Permission denied", "/srv/out/.seg.dcm.partial"), "/srv/out/seg.dcm: Permission denied."),
    (IsADirectoryError(21, "Is a directory", "/srv/out"), "/srv/out: Is a directory."),
    (NotADirectoryError(20, "Not a directory", "/srv/f/.cine.partial.nii.gz"), "/srv/f/cine.nii.gz: Not a directory.")])
def test_unwritable_paths_are_the_users_error(qtbot, monkeypatch, err, words):
    from napari_medgen._widgets import _runner

    shown = _errors(monkeypatch, _runner)
    runner = JobRunner("PACS")

    def job(progress=None):
        raise err

    assert _wait(qtbot, runner, lambda: runner.start(job)) == "failed"
    assert shown == [f"PACS failed: {words}"]


# --- PACS ------------------------------------------------------------------------------------------
def test_a_study_chosen_during_a_job_is_listed_when_it_ends(qtbot, make_napari_viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDGEN_CONFIG_DIR", str(tmp_path))
    series = {"S1": [{"SeriesInstanceUID": "1.1", "SeriesDescription": "study ONE series"}],
              "S2": [{"SeriesInstanceUID": "2.1", "SeriesDescription": "study TWO series"}]}
    monkeypatch.setattr(pacs_widget, "list_series", lambda server, uid, progress=None: series[uid])
    monkeypatch.setattr(pacs_widget, "pull_series", lambda server, uid, progress=None: time.sleep(0.5))
    widget = PacsWidget(make_napari_viewer())
    widget.url.setCurrentText("http://pacs.invalid/dicom-web")
    widget._add = lambda item: None
    widget.studies = [{"StudyInstanceUID": "S1"}, {"StudyInstanceUID": "S2"}]
    pacs_widget._fill(widget.study_table, pacs_widget.STUDY_COLUMNS, widget.studies)
    assert _wait(qtbot, widget.runner, lambda: widget.study_table.selectRow(0)) == "finished"
    assert [s["SeriesDescription"] for s in widget.series] == ["study ONE series"]
    widget.open_series()  # a retrieval runs ...
    widget.study_table.selectRow(1)  # ... while the user picks study TWO
    assert widget.series == [] and widget.series_table.rowCount() == 0
    qtbot.waitUntil(lambda: [s["SeriesDescription"] for s in widget.series] == ["study TWO series"], timeout=10_000)
    qtbot.waitUntil(lambda: not widget.runner.running)
