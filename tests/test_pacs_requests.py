"""How PACS requests fail or retry (a silent server, a busy one) and how dates are given, without Orthanc."""
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_medgen.cli import main
from napari_medgen.cli.pacs import date_range
from napari_medgen.errors import UserError
from napari_medgen.pacs.client import PacsError, PacsServer, dicom_date, find_studies


@pytest.fixture
def silent_server():
    """Accepts connections and never answers (a hung PACS); yields its DICOMweb URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []

    def accept_forever():
        try:
            while True:
                held.append(sock.accept())
        except OSError:  # closed at teardown
            pass

    threading.Thread(target=accept_forever, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web"
    sock.close()
    for conn, _addr in held:
        conn.close()


@pytest.fixture
def busy_server():
    """Answers every request 503 (busy); yields (URL, list of request paths)."""
    hits = []

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", hits
    server.shutdown()
    server.server_close()


def test_a_silent_pacs_fails_after_one_timeout_not_two(silent_server):
    t0 = time.monotonic()
    with pytest.raises(PacsError, match="stopped answering"):
        find_studies(PacsServer(silent_server, timeout=1.0))
    assert time.monotonic() - t0 < 1.8  # dicomweb-client repeated the timed-out request: 2 x timeout + wait


def test_a_busy_pacs_gets_one_second_chance(busy_server):
    url, hits = busy_server
    with pytest.raises(PacsError, match=r"failed to search studies \(HTTP 503\)"):
        find_studies(PacsServer(url, timeout=5.0))
    assert len(hits) == 2


def test_cli_timeout_option_reaches_the_request(silent_server, capsys):
    t0 = time.monotonic()
    assert main(["pacs", "find", "--url", silent_server, "--timeout", "0.5"]) == 2
    assert time.monotonic() - t0 < 1.5 and "stopped answering" in capsys.readouterr().err
    assert main(["pacs", "find", "--url", silent_server, "--timeout", "0"]) == 2
    assert "--timeout must be a positive" in capsys.readouterr().err


def test_iso_dates_and_ranges_become_dicom_dates():
    assert date_range("2024-01-01") == ("20240101", "20240101")
    assert date_range("20240301-20240331") == ("20240301", "20240331")
    assert date_range("2024-03-01-2024-03-31") == ("20240301", "20240331")
    assert date_range("2024-03-01 - 20240331") == ("20240301", "20240331")
    assert date_range("2024-03-01-") == ("20240301", "")
    assert date_range("-2024-03-31") == ("", "20240331")
    assert dicom_date("2024-03-31") == "20240331" and dicom_date("") == ""
    for bad in ("01/03/2024", "2024", "2024-13-01", "2024010120240331", "-", "last week"):
        with pytest.raises(UserError, match="YYYY-MM-DD"):
            date_range(bad)


def test_cli_refuses_a_bad_date_in_one_sentence_before_connecting(capsys):
    assert main(["pacs", "find", "--url", "http://127.0.0.1:9/dicom-web", "--date", "31.03.2024"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "YYYY-MM-DD" in err and "Cannot reach" not in err
