"""A real Orthanc PACS (with its DICOMweb plugin) as a subprocess, and a small oblique CT series.

Import the fixtures in a test module: ``from orthanc import orthanc, ct_series, ORTHANC  # noqa: F401``.
Orthanc listens on 127.0.0.1 only, on free ports, with basic auth and a temporary store.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
USER, PASSWORD = "radiologist", "c0rrect-h0rse"


def _dicomweb_plugin() -> str | None:
    for d in PLUGIN_DIRS:
        hits = sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []
        if hits:
            return str(hits[0])
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    """A running Orthanc: ``url`` is its DICOMweb root."""

    process: subprocess.Popen
    port: int
    user: str = USER
    password: str = PASSWORD

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def upload(self, files) -> None:
        """Store DICOM files through Orthanc's REST API."""
        for f in files:
            r = requests.post(f"http://127.0.0.1:{self.port}/instances", data=Path(f).read_bytes(),
                              auth=(self.user, self.password), timeout=10)
            r.raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_orthanc(folder: Path) -> OrthancServer:
    plugin = _dicomweb_plugin()
    if ORTHANC is None or plugin is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb; "
                    ".ci/run does it)")
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {
        "Name": "medgen-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "DicomPort": _free_port(),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpTimeout": 10, "StableAge": 1,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config))
    with open(folder / "orthanc.log", "wb") as log:
        proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = OrthancServer(proc, port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{server.url}/studies", auth=(USER, PASSWORD), timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("Orthanc did not start within 20 s")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc for the module (stopped afterwards)."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


# --- a small CT series with oblique orientation and non-unit spacing -------------------------------------
CT_SHAPE = (12, 28, 24)  # slices, rows, columns
CT_SPACING = (2.5, 0.8, 0.7)  # slice, row, column (mm)


def ct_volume() -> np.ndarray:
    """Hounsfield units: air around a soft-tissue ellipsoid with a bone core."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in CT_SHAPE), indexing="ij")
    r = (z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2
    hu = np.full(CT_SHAPE, -1000, np.int16)
    hu[r < 1] = 40
    hu[r < 0.25] = 700
    return hu + (np.arange(CT_SHAPE[2], dtype=np.int16) % 7)[None, None, :]  # texture: voxel order matters


def write_ct_series(folder: Path, patient: str = "Doe^Jane", patient_id: str = "MEDGEN-001",
                    description: str = "CT oblique", study_date: str = "20240315",
                    accession: str = "ACC-0042") -> list[Path]:
    """Write :func:`ct_volume` as a CT series (one file per slice, stored values = HU + 1024)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    a = np.deg2rad(20)
    row_cos = np.array([1.0, 0.0, 0.0])
    col_cos = np.array([0.0, np.cos(a), np.sin(a)])
    normal = np.cross(row_cos, col_cos)
    origin = np.array([-10.0, -12.0, 30.0])
    hu = ct_volume()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(CT_SHAPE[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, patient_id, "19700101", "F"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.ContentDate = study_date, "101500", study_date, study_date
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = accession, "1", ""
        ds.StudyDescription, ds.SeriesDescription = "Synthetic abdomen", description
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "napari-medgen tests", 3, k + 1
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * CT_SPACING[0] * normal]
        ds.PixelSpacing = [CT_SPACING[1], CT_SPACING[2]]  # row spacing, column spacing
        ds.SliceThickness = CT_SPACING[0]
        ds.Rows, ds.Columns = CT_SHAPE[1], CT_SHAPE[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        path = folder / f"CT{CT_SHAPE[0] - k:03d}.dcm"  # names sort opposite to position
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> Path:
    """A folder with the CT series."""
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(folder)
    return folder
