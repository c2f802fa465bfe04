"""The "PACS" dock widget: search a DICOMweb server, open a series as a layer, send Labels back as DICOM SEG."""
from __future__ import annotations

from typing import Optional

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QDate, QTimer
from qtpy.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QDateEdit, QFileDialog, QFormLayout,
                            QGroupBox, QHeaderView, QLabel, QLineEdit, QPushButton, QTableWidget, QTableWidgetItem)

from ..data.orientation import in_world_order
from ..io import Geometry
from ..pacs.client import PacsServer, find_series, find_studies, pull_series, push_labels, source_headers
from ..pacs.servers import load_servers, remember_server
from ..pacs.seg import labels_to_seg, write_seg
from ._layers import layer_array, row, show_result
from ._panel import Note, Panel
from ._runner import JobRunner

STUDY_COLUMNS = [("Date", "StudyDate"), ("Patient", "PatientName"), ("ID", "PatientID"),
                 ("Description", "StudyDescription"), ("Modalities", "ModalitiesInStudy"),
                 ("Accession", "AccessionNumber")]
SERIES_COLUMNS = [("#", "SeriesNumber"), ("Modality", "Modality"), ("Description", "SeriesDescription"),
                  ("Images", "NumberOfSeriesRelatedInstances")]
MODALITIES = ["", "CT", "MR", "PT", "SEG", "CR", "DX", "US", "NM"]


# the jobs below are one request each: they take the runner's ``progress`` and have nothing to report on it
def search(server: PacsServer, filters: dict, progress=None) -> list[dict]:
    return find_studies(server, **filters)


def list_series(server: PacsServer, study_uid: str, progress=None) -> list[dict]:
    return find_series(server, study_uid)


def save_seg(path: str, labels, geometry: Geometry, metadata: dict, server: Optional[PacsServer], names,
             algorithm: str, version: str, progress=None) -> str:
    seg = labels_to_seg(labels, geometry, source_headers(metadata, server), names, algorithm, version)
    return write_seg(path, seg, overwrite=True)


def _table(columns, height: int) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setHorizontalHeaderLabels([c for c, _ in columns])
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.verticalHeader().setVisible(False)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    t.setFixedHeight(height)  # a few rows (they scroll): the panel fits a laptop screen
    return t


def _fill(table: QTableWidget, columns, rows: list[dict]) -> None:
    table.setRowCount(0)
    for r, item in enumerate(rows):
        table.insertRow(r)
        for c, (_, key) in enumerate(columns):
            table.setItem(r, c, QTableWidgetItem(str(item.get(key, "") or "").replace("^", " ")))


def _class_names(layer, data: np.ndarray) -> Optional[list]:
    """The layer's class names by value; values painted beyond them are left unnamed ("Segment k")."""
    names = layer.metadata.get("class_names")
    feats = getattr(layer, "features", None)
    if not names and feats is not None and "class" in getattr(feats, "columns", []):
        names = [str(v) for v in feats["class"]]
    if not names:
        return None
    return list(names) + [""] * (int(data.max(initial=0)) + 1 - len(names))


class PacsWidget(Panel):
    """Server and credentials, a study/series browser, Open, and Send/Save of a Labels layer as DICOM SEG."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(napari_viewer)
        self.studies: list[dict] = []
        self.series: list[dict] = []
        self.url = QComboBox()
        self.url.setEditable(True)
        self.url.lineEdit().setPlaceholderText("http://pacs:8042/dicom-web")
        self._servers = load_servers()
        self.url.addItems([s["url"] for s in self._servers])
        self.url.currentIndexChanged.connect(self._server_chosen)
        self.user = QLineEdit(self._servers[0]["user"] if self._servers else "")
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setToolTip("Kept in memory only; never saved.")
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("name (part of it)")
        self.patient.setToolTip("Find studies whose patient name contains this text (empty: any patient).")
        self.patient_id = QLineEdit()
        self.patient_id.setPlaceholderText("ID")
        self.patient_id.setToolTip("Find the studies of this exact patient ID (empty: any).")
        self.accession = QLineEdit()
        self.accession.setToolTip("Find the study with this accession number (from the order or the report).")
        self.modality = QComboBox()
        self.modality.addItems(MODALITIES)
        self.modality.setToolTip("Only studies that contain this kind of series (CT, MR, ...; empty: any).")
        self.use_dates = QCheckBox("dates")
        self.use_dates.setToolTip("Only studies acquired between these two dates (inclusive).")
        self.date_from = QDateEdit(QDate.currentDate().addYears(-1))
        self.date_to = QDateEdit(QDate.currentDate())
        for d in (self.date_from, self.date_to):
            d.setCalendarPopup(True)
            d.setDisplayFormat("yyyy-MM-dd")
        self.search_button = QPushButton("Search")
        self.search_button.setToolTip("List the server's studies that match every filter filled in.")
        self.search_button.clicked.connect(self.search)
        self.study_table = _table(STUDY_COLUMNS, 150)
        self.study_table.itemSelectionChanged.connect(self._study_chosen)
        self.series_table = _table(SERIES_COLUMNS, 120)
        self.series_table.cellDoubleClicked.connect(lambda *_: self.open_series())
        self.open_button = QPushButton("Open series")
        self.open_button.clicked.connect(self.open_series)
        self.runner = JobRunner("PACS")
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.done.connect(lambda _s: self._busy(False))
        self.runner.done.connect(self._list_chosen_study)
        self._study_waits = False  # a study was chosen while a job ran: its series are listed when it ends

        self.labels = self.layer_picker(napari.layers.Labels, tooltip="The labels to send as DICOM SEG.")
        self.reference = self.layer_picker(napari.layers.Image, tooltip="The image (opened from the PACS or a "
                                           "DICOM folder) the labels were made on.")
        self.algorithm = QLineEdit("napari-medgen")
        self.version = QLineEdit()
        self.version.setPlaceholderText("version")
        self.send_button = QPushButton("Send to PACS as DICOM SEG")
        self.send_button.clicked.connect(self.send)
        self.save_button = QPushButton("Save DICOM SEG file...")
        self.save_button.clicked.connect(self.save)
        self.info = Note("")

        form = self.form()
        form.addRow("server", self.url)
        form.addRow("user", row(self.user, QLabel("password"), self.password))
        form.addRow("patient", row(self.patient, self.patient_id))
        more = self.advanced("More filters")
        more.addRow("accession", row(self.accession, QLabel("modality"), self.modality))
        more.addRow(self.use_dates, row(self.date_from, QLabel("to"), self.date_to))
        box = QGroupBox("Send labels back")
        send = QFormLayout(box)
        send.addRow("labels", self.labels.native)
        send.addRow("on image", self.reference.native)
        send.addRow("algorithm", row(self.algorithm, self.version))
        send.addRow(row(self.send_button, self.save_button))
        for w in (self.search_button, self.study_table, self.series_table, self.open_button, self.runner, box,
                  self.info):
            self.body.addWidget(w)
        self.body.addStretch(1)
        self.reset_choices()

    # --- helpers -------------------------------------------------------------------
    def server(self) -> PacsServer:
        return PacsServer(self.url.currentText().strip(), self.user.text().strip(), self.password.text())

    def _server_chosen(self, index: int) -> None:
        if 0 <= index < len(self._servers):
            self.user.setText(self._servers[index]["user"])

    def _busy(self, busy: bool) -> None:
        for b in (self.search_button, self.open_button, self.send_button, self.save_button):
            b.setEnabled(not busy)

    def filters(self) -> dict:
        f = {"patient_name": self.patient.text().strip(), "patient_id": self.patient_id.text().strip(),
             "accession": self.accession.text().strip(), "modality": self.modality.currentText()}
        if self.use_dates.isChecked():
            f.update(date_from=self.date_from.date().toString("yyyyMMdd"),
                     date_to=self.date_to.date().toString("yyyyMMdd"))
        return f

    # --- browse ----------------------------------------------------------------------
    def search(self) -> None:
        """Find studies with the filters; the server (without password) is remembered once it answers."""
        server = self.server()
        self.runner.start(search, server, self.filters(), on_result=lambda rows: self._show_studies(server, rows))

    def _show_studies(self, server: PacsServer, rows: list[dict]) -> None:
        remember_server(server.url, server.user)
        self.studies, self.series = rows, []
        _fill(self.study_table, STUDY_COLUMNS, rows)
        _fill(self.series_table, SERIES_COLUMNS, [])
        self.info.setText(f"{len(rows)} studies" if rows else "No studies match.")
        if rows:  # list the first study's series once this run has finished
            QTimer.singleShot(0, lambda: self.study_table.selectRow(0))

    def _study_chosen(self) -> None:
        r = self.study_table.currentRow()
        if not 0 <= r < len(self.studies):
            return
        if self.runner.running:  # never the previous study's series under this one
            self._study_waits = True
            self._show_series([])
            return
        self.runner.start(list_series, self.server(), self.studies[r]["StudyInstanceUID"],
                          on_result=self._show_series)

    def _list_chosen_study(self, _outcome: str) -> None:
        if self._study_waits:
            self._study_waits = False
            QTimer.singleShot(0, self._study_chosen)

    def _show_series(self, rows: list[dict]) -> None:
        self.series = rows
        _fill(self.series_table, SERIES_COLUMNS, rows)
        if rows:
            self.series_table.selectRow(0)

    def open_series(self) -> None:
        """Retrieve the selected series into a new layer (with progress and Cancel)."""
        r = self.series_table.currentRow()
        if not 0 <= r < len(self.series):
            show_error("Choose a series to open.")
            return
        self.runner.start(pull_series, self.server(), self.series[r]["SeriesInstanceUID"], on_result=self._add)

    def _add(self, item) -> None:
        """Show the retrieved series; opening it again replaces its layer."""
        data, kwargs, kind = in_world_order(item).layer_data()  # a sagittal-first series shown axial-first
        name, metadata = kwargs.pop("name"), kwargs.pop("metadata")
        if kind == "labels":
            kwargs["opacity"] = 0.5
        layer = show_result(self.viewer, data, name=name, kind=kind, key=f"pacs:{metadata['series_uid']}",
                            metadata=metadata, **kwargs)
        self.go_to(layer)
        if kind == "image":  # what labels drawn next will be made on
            self.reset_choices()
            self.reference.value = layer

    def go_to(self, layer) -> None:
        """Show ``layer`` whole, at its middle slice: a series may lie far from the layers opened before."""
        self.viewer.reset_view(layers=[layer])
        lo, hi = np.asarray(layer.extent.world)
        offset = self.viewer.dims.ndim - layer.ndim
        for axis in range(layer.ndim):
            if offset + axis not in self.viewer.dims.displayed:
                self.viewer.dims.set_point(offset + axis, (lo[axis] + hi[axis]) / 2)

    # --- send back -------------------------------------------------------------------
    def _labels_args(self) -> Optional[tuple]:
        labels, ref = self.labels.value, self.reference.value
        if labels is None or ref is None:
            show_error("Choose a Labels layer and the image it was made on.")
            return None
        if not ref.metadata.get("series_uid"):
            show_error(f"'{ref.name}' was not opened from a PACS or a DICOM folder; a SEG must reference a series.")
            return None
        data = layer_array(labels)
        return (data, Geometry.from_layer(labels), ref.metadata, _class_names(labels, data),
                self.algorithm.text().strip() or "napari-medgen", self.version.text().strip())

    def send(self) -> None:
        """Store the Labels layer on the PACS as a DICOM SEG referencing the image's series."""
        args = self._labels_args()
        if args is None:
            return
        labels, geometry, meta, names, algorithm, version = args
        self.runner.start(push_labels, self.server(), labels, geometry, meta["series_uid"], names, algorithm,
                          version, on_result=self._sent)

    def _sent(self, seg) -> None:
        uid, n = str(seg.SeriesInstanceUID), len(seg.SegmentSequence)
        # a UID cannot wrap: in full it would widen the panel past a laptop's dock (its end and the tooltip suffice)
        self.info.setText(f"Stored SEG series ...{uid[-16:]} ({n} segment{'s' * (n != 1)}); hover for its full UID.")
        self.info.setToolTip(uid)
        QTimer.singleShot(0, self._study_chosen)  # the new SEG series shows up in the list

    def save(self, path: Optional[str] = None) -> None:
        """Write the Labels layer as a DICOM SEG file (the image's series from disk or the PACS)."""
        args = self._labels_args()
        if args is None:
            return
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save DICOM SEG", "segmentation.dcm", "DICOM (*.dcm)")
        if not path:
            return
        labels, geometry, meta, names, algorithm, version = args
        server = self.server() if self.url.currentText().strip() else None
        self.runner.start(save_seg, path, labels, geometry, meta, server, names, algorithm, version,
                          on_result=lambda p: show_info(f"Wrote {p}"))

