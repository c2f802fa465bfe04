"""DICOMweb round trip with a PACS (dicomweb-client): find studies and series, pull a series, push a SEG.

Pulling writes the instances to a temporary folder and reads it with the same
reader as local files (``io.read``), so geometry is identical; on cancel or a
failure the folder is deleted and nothing is returned.  Every network or server
failure becomes one :class:`PacsError` sentence.
"""
from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..engine.jobs import Job
from ..errors import UserError
from ..io.read import ImageData, read_path
from .seg import labels_to_seg, read_seg, referenced_series, series_grid

STUDY_FIELDS = ("PatientName", "PatientID", "StudyDate", "StudyDescription", "AccessionNumber",
                "ModalitiesInStudy", "StudyInstanceUID", "NumberOfStudyRelatedSeries")
SERIES_FIELDS = ("SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                 "NumberOfSeriesRelatedInstances")


class PacsError(UserError):
    """The PACS could not be reached, refused the request, or does not hold what was asked for."""


CONNECT_TIMEOUT = 10.0  # seconds to open a connection: generous for a VPN, short for a firewalled host
BUSY = Retry(total=1, connect=0, read=0, other=0, status=1, status_forcelist=(429, 503, 504), backoff_factor=0.25,
             raise_on_status=False, respect_retry_after_header=False)  # one second chance for a busy server only


class _Wildcards(HTTPAdapter):
    """QIDO wildcards go out as a literal ``*`` (legal in a query): dicomweb-client sends ``%2A``,
    which some servers (Orthanc 1.10's DICOMweb plugin) then match literally.  A busy answer
    (429, 503, 504) is retried once; a refused connection or a silent server is not."""

    def __init__(self):
        super().__init__(max_retries=BUSY)

    def send(self, request, **kwargs):
        if "?" in request.url:
            request.url = request.url.replace("%2A", "*")
        return super().send(request, **kwargs)


@dataclass(frozen=True)
class PacsServer:
    """A DICOMweb endpoint (e.g. ``http://pacs:8042/dicom-web``) and its credentials (never printed).

    ``timeout``: seconds the server may stay silent (before its answer or between two parts of it)
    before the request fails; a long transfer that keeps sending is never cut."""

    url: str
    user: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 30.0

    def client(self) -> DICOMwebClient:
        url = self.url.strip().rstrip("/")
        if not url.lower().startswith(("http://", "https://")):
            raise PacsError(f"'{self.url}' is not a DICOMweb address; use http(s)://host:port/dicom-web.")
        session = requests.Session()
        if self.user:
            session.auth = (self.user, self.password)
        session.mount("http://", _Wildcards())
        session.mount("https://", _Wildcards())
        try:
            client = DICOMwebClient(url, session=session, timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout))
        except ValueError as err:  # e.g. "Invalid IPv6 URL"
            raise PacsError(f"'{self.url}' is not a valid address ({err}).") from None
        # dicomweb-client would repeat a timed-out request (a hung server then costs twice the timeout):
        # retries are the session's (BUSY) instead
        client.set_http_retry_params(retry=False)
        return client


@contextmanager
def _talking_to(server: PacsServer, what: str):
    """Turn transport and HTTP failures into one sentence."""
    try:
        yield
    except requests.HTTPError as err:
        code = err.response.status_code if err.response is not None else 0
        if code == 401:
            raise PacsError(f"The PACS at {server.url} refused user '{server.user}': wrong user name or "
                            f"password.") from None
        if code == 403:
            raise PacsError(f"User '{server.user}' may not {what} on the PACS at {server.url}.") from None
        if code == 404:
            raise PacsError(f"The PACS at {server.url} has no DICOMweb service there, or not what was asked "
                            f"for ({what}).") from None
        raise PacsError(f"The PACS at {server.url} failed to {what} (HTTP {code}).") from None
    except (requests.ConnectionError, requests.Timeout):
        raise PacsError(f"Cannot reach the PACS at {server.url}: the server is down, unreachable or stopped "
                        f"answering.") from None
    except requests.RequestException as err:
        raise PacsError(f"Cannot talk to the PACS at {server.url}: {type(err).__name__}.") from None


def _value(item: dict, keyword: str, default=""):
    """A QIDO JSON attribute by keyword (first value; person names as text)."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    values = item.get(f"{tag:08X}", {}).get("Value") or []
    if not values:
        return default
    v = values[0]
    if isinstance(v, dict):  # PN: {"Alphabetic": "Doe^Jane"}
        v = v.get("Alphabetic", "")
    if len(values) > 1 and keyword == "ModalitiesInStudy":
        return "\\".join(str(x) for x in values)
    return v


def _rows(items: list, fields: Sequence[str]) -> list[dict]:
    return [{k: _value(it, k) for k in fields} for it in items]


def dicom_date(text: str) -> str:
    """A date as DICOM ``YYYYMMDD``, given as ``YYYYMMDD`` or ISO ``YYYY-MM-DD`` (empty stays empty)."""
    text = text.strip()
    if not text:
        return ""
    digits = text.replace("-", "") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else text
    try:
        if re.fullmatch(r"\d{8}", digits):
            return datetime.strptime(digits, "%Y%m%d").strftime("%Y%m%d")
    except ValueError:
        pass
    raise UserError(f"'{text}' is not a date; use YYYY-MM-DD or YYYYMMDD.")


def find_studies(server: PacsServer, *, patient_name: str = "", patient_id: str = "", accession: str = "",
                 modality: str = "", date_from: str = "", date_to: str = "", limit: int = 200) -> list[dict]:
    """Studies matching the filters (names with ``*`` wildcards; dates as YYYYMMDD or YYYY-MM-DD, either end
    of the range may be empty), newest first."""
    filters = {}
    if patient_name:
        filters["PatientName"] = patient_name if "*" in patient_name else f"*{patient_name}*"
    if patient_id:
        filters["PatientID"] = patient_id
    if accession:
        filters["AccessionNumber"] = accession
    if modality:
        filters["ModalitiesInStudy"] = modality
    if date_from or date_to:
        filters["StudyDate"] = f"{dicom_date(date_from)}-{dicom_date(date_to)}"
    with _talking_to(server, "search studies"):
        items = server.client().search_for_studies(search_filters=filters, fields=list(STUDY_FIELDS),
                                                   limit=limit)
    rows = _rows(items, STUDY_FIELDS)
    return sorted(rows, key=lambda r: str(r["StudyDate"]), reverse=True)


def find_series(server: PacsServer, study_uid: str = "", series_uid: str = "") -> list[dict]:
    """The series of a study (or the one series with ``series_uid``), by series number."""
    filters = {"SeriesInstanceUID": series_uid} if series_uid else {}
    with _talking_to(server, "search series"):
        items = server.client().search_for_series(study_instance_uid=study_uid or None,
                                                  search_filters=filters, fields=list(SERIES_FIELDS))
    rows = _rows(items, SERIES_FIELDS)
    return sorted(rows, key=lambda r: int(r["SeriesNumber"] or 0))


def _locate(server: PacsServer, series_uid: str) -> dict:
    rows = find_series(server, series_uid=series_uid)
    if not rows:
        raise PacsError(f"The PACS at {server.url} has no series {series_uid}.")
    return rows[0]


def series_headers(server: PacsServer, series_uid: str) -> list[pydicom.Dataset]:
    """The instances' headers (no pixel data) of a series, from its DICOMweb metadata."""
    row = _locate(server, series_uid)
    with _talking_to(server, "send series metadata"):
        meta = server.client().retrieve_series_metadata(row["StudyInstanceUID"], series_uid)
    return [pydicom.Dataset.from_json({k: v for k, v in m.items() if k != "7FE00010"}) for m in meta]


def pull_series(server: PacsServer, series_uid: str, *, progress=None, stop=None,
                cancel=None) -> ImageData:
    """Retrieve a series as an image (or, for a SEG, as labels on its source series' grid)."""
    job = Job.of(progress, stop, cancel)
    job.report(0, 1, "searching")
    row = _locate(server, series_uid)
    study = row["StudyInstanceUID"]
    client = server.client()
    with _talking_to(server, "list the instances"):
        instances = client.search_for_instances(study, series_uid, fields=["SOPInstanceUID"])
    uids = [_value(i, "SOPInstanceUID") for i in instances]
    if not uids:
        raise PacsError(f"Series {series_uid} on {server.url} has no instances.")
    with tempfile.TemporaryDirectory(prefix="medgen-pacs-") as tmp:
        for k, uid in enumerate(uids):
            job.check()
            with _talking_to(server, "send an instance"):
                ds = client.retrieve_instance(study, series_uid, uid)
            ds.save_as(Path(tmp) / f"{k:05d}.dcm", enforce_file_format=True)
            job.report(k + 1, len(uids), f"retrieved {k + 1}/{len(uids)} instances")
        job.check()
        if row["Modality"] == "SEG":
            item = _pull_seg(server, Path(tmp) / "00000.dcm")
        else:
            items = [im for im in read_path(tmp) if im.metadata.get("series_uid") == series_uid]
            if not items:
                raise PacsError(f"Series {series_uid} holds no readable image.")
            item = items[0]
    item.metadata.update(source=f"{server.url} series {series_uid}", pacs_url=server.url, study_uid=study,
                         series_uid=series_uid)
    item.name = str(row["SeriesDescription"] or item.name)
    return item


def _pull_seg(server: PacsServer, path: Path) -> ImageData:
    """A SEG onto the grid of its source series (from the PACS metadata), or onto its own grid."""
    ds = pydicom.dcmread(path)
    ref = referenced_series(ds)
    grid = None
    if ref:
        try:
            _, shape, geometry = series_grid(series_headers(server, ref))
            grid = (shape, geometry)
        except PacsError:  # the source series is not on this PACS: keep the SEG's own grid
            grid = None
    return read_seg(ds, grid, source=f"{server.url} series {ds.SeriesInstanceUID}")


def push_labels(server: PacsServer, labels: np.ndarray, geometry, reference_series: str,
                class_names: Optional[Sequence[str]] = None, algorithm: str = "napari-medgen",
                algorithm_version: str = "", *, progress=None, stop=None, cancel=None) -> pydicom.Dataset:
    """Store ``labels`` (on the reference series' grid) as a DICOM SEG; returns the SEG that was stored."""
    job = Job.of(progress, stop, cancel)
    job.report(0, 3, "reading the reference series")
    headers = series_headers(server, reference_series)
    job.check()
    job.report(1, 3, "encoding the DICOM SEG")
    seg = labels_to_seg(labels, geometry, headers, class_names, algorithm, algorithm_version)
    job.check()
    job.report(2, 3, "storing")
    with _talking_to(server, "store the SEG"):
        response = server.client().store_instances([seg], study_instance_uid=seg.StudyInstanceUID)
    if getattr(response, "FailedSOPSequence", None):
        raise PacsError(f"The PACS at {server.url} rejected the SEG.")
    job.report(3, 3, "stored")
    return seg


def source_headers(metadata: dict, server: Optional[PacsServer] = None) -> list[pydicom.Dataset]:
    """Headers of the series an image layer was read from: its DICOM folder on disk, else the PACS."""
    from .files import headers_in

    uid = metadata.get("series_uid")
    if not uid:
        raise UserError("The reference image was not read from a DICOM series (a PACS or a DICOM folder), "
                        "so a SEG cannot reference it.")
    folder = Path(str(metadata.get("source", "")))
    if folder.is_dir():
        headers = headers_in(folder, uid)
        if headers:
            return headers
    if server is None:
        raise UserError(f"Series {uid} is not on disk; connect to the PACS that holds it.")
    return series_headers(server, uid)
