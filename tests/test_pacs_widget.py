"""The PACS dock widget against a real Orthanc: search, browse, open a series, send Labels back as SEG."""
import time

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from qtpy.QtWidgets import QLineEdit

from napari_medgen._widgets.pacs_widget import PacsWidget
from napari_medgen.io import read_path
from napari_medgen.pacs.client import PacsServer, find_series
from orthanc import orthanc, write_ct_series  # noqa: F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")  # the oblique CT, shown in-plane


@pytest.fixture(scope="module")
def stored(orthanc, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    files = write_ct_series(folder)
    write_ct_series(tmp_path_factory.mktemp("ct2"), patient="Roe^Richard", patient_id="MEDGEN-002",
                    description="CT follow-up", study_date="20240610", accession="ACC-0077")
    orthanc.upload(files + sorted(folder.parent.glob("ct2*/*.dcm")))
    return orthanc, folder, str(pydicom.dcmread(files[0]).SeriesInstanceUID)


def _wait(qtbot, widget, action):
    states = []
    widget.runner.done.connect(states.append)
    action()
    qtbot.waitUntil(lambda: bool(states), timeout=30_000)
    widget.runner.done.disconnect()
    widget.runner.done.connect(lambda _s: widget._busy(False))
    return states[-1]


@pytest.fixture
def widget(make_napari_viewer, stored, tmp_path, monkeypatch, qtbot):
    monkeypatch.setenv("MEDGEN_CONFIG_DIR", str(tmp_path))
    server, _folder, _uid = stored
    viewer = make_napari_viewer()
    w = PacsWidget(viewer)
    viewer.window.add_dock_widget(w)  # as users open it: napari keeps its layer drop-downs current
    w.url.setEditText(server.url)
    w.user.setText(server.user)
    w.password.setText(server.password)
    return viewer, w


def test_search_open_and_send_back(qtbot, widget, stored, tmp_path):
    viewer, w = widget
    server, folder, uid = stored
    assert w.password.echoMode() == QLineEdit.EchoMode.Password
    w.patient.setText("doe")
    assert _wait(qtbot, w, w.search) == "finished"
    assert w.study_table.rowCount() == 1 and w.study_table.item(0, 1).text() == "Doe Jane"
    qtbot.waitUntil(lambda: w.series_table.rowCount() == 1 and not w.runner.running, timeout=30_000)
    assert w.series_table.item(0, 2).text() == "CT oblique"
    # the server (not the password) is remembered
    saved = (tmp_path / "pacs_servers.json").read_text()
    assert server.url in saved and server.password not in saved
    assert _wait(qtbot, w, w.open_series) == "finished"
    layer = viewer.layers["CT oblique"]
    local = read_path(folder)[0]
    assert np.array_equal(layer.data, local.data)
    np.testing.assert_allclose(layer.affine.affine_matrix[:3, :3], local.geometry.direction)
    labels = viewer.add_labels((layer.data > 500).astype(np.uint8), name="bone", scale=layer.scale,
                               translate=layer.translate, affine=layer.affine,
                               metadata={"class_names": ["background", "bone"]})
    w.labels.value, w.reference.value = labels, layer
    assert _wait(qtbot, w, w.send) == "finished"
    segs = [s for s in find_series(PacsServer(server.url, server.user, server.password),
                                   layer.metadata["study_uid"]) if s["Modality"] == "SEG"]
    assert len(segs) == 1 and "Stored SEG series" in w.info.text()
    assert w.info.toolTip() == segs[0]["SeriesInstanceUID"] and w.info.minimumSizeHint().width() < 300  # fits the dock
    qtbot.waitUntil(lambda: w.series_table.rowCount() == 2 and not w.runner.running, timeout=30_000)
    assert w.series_table.item(1, 1).text() == "SEG"  # the list shows the new SEG series
    labels.data[0, :2, :2] = 2  # a value painted by hand beyond the model's classes has no name
    path = tmp_path / "bone.dcm"
    assert _wait(qtbot, w, lambda: w.save(str(path))) == "finished"
    assert [s.SegmentLabel for s in pydicom.dcmread(path).SegmentSequence] == ["bone", "Segment 2"]
    assert _wait(qtbot, w, w.open_series) == "finished"  # opening the series again replaces its layer
    assert [ly.name for ly in viewer.layers] == ["CT oblique", "bone"]
    viewer.window.resize(1366, 768)
    viewer.screenshot(str(tmp_path / "pacs.png"), canvas_only=False)


def test_wrong_password_adds_nothing(qtbot, widget):
    viewer, w = widget
    w.password.setText("wrong")
    assert _wait(qtbot, w, w.search) == "failed"
    assert "wrong user name or password" in str(w.runner.last_error)
    assert w.study_table.rowCount() == 0 and len(viewer.layers) == 0


def test_cancel_while_retrieving_adds_no_layer(qtbot, widget, stored, monkeypatch):
    viewer, w = widget
    _server, _folder, uid = stored
    original = DICOMwebClient.retrieve_instance

    def slow(self, *args, **kwargs):
        time.sleep(0.2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DICOMwebClient, "retrieve_instance", slow)
    w.series = [{"SeriesInstanceUID": uid}]
    w.series_table.setRowCount(1)
    w.series_table.selectRow(0)
    states = []
    w.runner.done.connect(states.append)
    w.open_series()
    qtbot.waitUntil(lambda: w.runner.bar.value() >= 2, timeout=30_000)  # progress per instance
    w.runner.cancel()
    qtbot.waitUntil(lambda: bool(states), timeout=30_000)
    assert states == ["cancelled"] and len(viewer.layers) == 0


def test_an_opened_series_is_shown_and_chosen_for_sending(make_napari_viewer, brain, monkeypatch, tmp_path):
    """A series far from the open image comes into view, at its middle slice, as the image labels are sent on."""
    import dataclasses

    monkeypatch.setenv("MEDGEN_CONFIG_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    old = viewer.add_image(brain.data, name="old", **brain.geometry.layer_kwargs())
    w = PacsWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.reference.value = old
    geometry = dataclasses.replace(brain.geometry, origin=tuple(o + 1000.0 for o in brain.geometry.origin))
    item = dataclasses.replace(brain, geometry=geometry, name="far series", metadata={"series_uid": "1.2.3"})
    w._add(item)  # what "Open series" does with the retrieved series
    layer = viewer.layers["far series"]
    assert w.reference.value is layer
    lo, hi = np.asarray(layer.extent.world)
    centre = (lo + hi) / 2
    np.testing.assert_allclose(viewer.camera.center[-2:], centre[-2:], atol=1.0)
    assert abs(viewer.dims.point[0] - centre[0]) <= layer.scale[0]  # a slice of the new series, not of "old"


def test_search_fields_say_what_they_find(make_napari_viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDGEN_CONFIG_DIR", str(tmp_path))
    w = PacsWidget(make_napari_viewer())
    for field in (w.patient, w.patient_id, w.accession, w.modality, w.use_dates, w.search_button):
        assert field.toolTip()
