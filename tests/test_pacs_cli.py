"""``napari-medgen pacs find``'s table, and the end of a listing read by ``head`` (no PACS needed)."""
from __future__ import annotations

import subprocess
import sys

from napari_medgen.cli import main

FAKE = '''
import napari_medgen.pacs.client as client

def find_studies(server, **query):
    return [{"StudyDate": "20240301" if i else "", "PatientName": "Doe^Jane" if i else "", "PatientID": "",
             "StudyDescription": "", "AccessionNumber": "", "StudyInstanceUID": f"1.2.{i}"} for i in range(COUNT)]

def find_series(server, study):
    return [{"Modality": "CT", "SeriesNumber": 3, "NumberOfSeriesRelatedInstances": 12,
             "SeriesDescription": "CT oblique", "SeriesInstanceUID": study + ".1"}]
'''
PATCH = "client.find_studies, client.find_series = find_studies, find_series\n"


def test_find_prints_a_header_and_readable_blanks(capsys, monkeypatch):
    import napari_medgen.pacs.client as client

    fake: dict = {}
    exec(FAKE.replace("COUNT", "2"), fake)  # noqa: S102 - our own stand-ins for the PACS queries
    monkeypatch.setattr(client, "find_studies", fake["find_studies"])
    monkeypatch.setattr(client, "find_series", fake["find_series"])
    assert main(["pacs", "find", "--url", "http://pacs:8042/dicom-web"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["DATE", "PATIENT", "PATIENT", "ID"] and lines[0].endswith("study UID")
    assert lines[1].split()[:3] == ["MODALITY", "NUMBER", "IMAGES"] and lines[1].endswith("series UID")
    blank, dated = lines[2], lines[4]
    assert "(no date)" in blank and "(no name)" in blank and "(no ID)" in blank and "(-)" not in blank
    assert dated.startswith("2024-03-01  Doe^Jane ") and dated.endswith("study 1.2.1")
    assert lines[5].split()[:3] == ["CT", "3", "12"] and lines[5].endswith("series 1.2.1.1")
    assert lines[0].index("PATIENT ID") == dated.index("(no ID)")  # the columns line up under the header


def test_find_into_a_closed_pipe_ends_quietly():
    """`napari-medgen pacs find ... | head -2` printed a BrokenPipeError traceback."""
    code = FAKE.replace("COUNT", "3000") + PATCH + ("import sys; from napari_medgen.cli import main; "
                                        "sys.exit(main(['pacs', 'find', '--url', 'http://pacs:8042/dicom-web']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader has left, as head does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err
