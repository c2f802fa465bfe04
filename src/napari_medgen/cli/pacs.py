"""``napari-medgen pacs find|pull|push``: the DICOMweb round trip from a terminal.

The password comes from ``MEDGEN_PACS_PASSWORD`` (or a prompt on a terminal), never the command line.
"""
from __future__ import annotations

import getpass
import os
import re
import sys
from pathlib import Path

from ..errors import UserError
from .options import check_image_output, check_output, existing

PASSWORD_ENV = "MEDGEN_PACS_PASSWORD"
_DATE = r"\d{8}|\d{4}-\d{2}-\d{2}"  # DICOM YYYYMMDD or ISO YYYY-MM-DD
URL = "http://pacs:8042/dicom-web"
# pacs find's columns: (header, width) of a study line, then of its series lines (indented); UIDs last
STUDY_COLUMNS = (("DATE", 10), ("PATIENT", 22), ("PATIENT ID", 12), ("ACCESSION", 12), ("STUDY DESCRIPTION", 28))
SERIES_COLUMNS = (("    MODALITY", 12), ("NUMBER", 6), ("IMAGES", 6), ("SERIES DESCRIPTION", 30))


def add_parser(sub) -> None:
    p = sub.add_parser("pacs", help="find, pull and push series on a PACS (DICOMweb)")
    verbs = p.add_subparsers(dest="pacs_verb", required=True)

    def common(q):
        q.add_argument("--url", required=True, help="DICOMweb root URL, e.g. http://pacs:8042/dicom-web")
        q.add_argument("--user", default="",
                       help=f"user name for HTTP basic auth; the password comes from ${PASSWORD_ENV} or a prompt "
                            "(default: no login)")
        q.add_argument("--timeout", type=float, default=30.0,
                       help="seconds the PACS may stay silent before a request fails; a transfer that keeps "
                            "sending is never cut (default 30; raise it for a slow archive)")

    def transfer(q):  # pull and push show a progress bar
        q.add_argument("--quiet", "-q", action="store_true", help="no progress bar on stderr")

    f = verbs.add_parser("find", help="list studies and their series",
                         description="List the studies that match (one line each, under a header) and, indented "
                                     "under each, its series with the SeriesInstanceUID that pull and push take.",
                         epilog=f"example:\n  export {PASSWORD_ENV}=...\n  napari-medgen pacs find --url {URL} "
                                "--user me --patient Doe --date 2024-01-01-2024-12-31")
    common(f)
    f.add_argument("--patient", default="", help="patient name to match (substring, * wildcards; default: any)")
    f.add_argument("--patient-id", default="", help="PatientID to match exactly (default: any)")
    f.add_argument("--accession", default="", help="AccessionNumber to match exactly (default: any)")
    f.add_argument("--modality", default="",
                   help="modality of a series in the study, e.g. CT, MR, SEG (default: any)")
    f.add_argument("--date", default="",
                   help="study date YYYY-MM-DD or YYYYMMDD, or a range FROM-TO such as 2024-01-01-2024-03-31 "
                        "(an end may be left open: 2024-01-01-) (default: any)")
    f.set_defaults(func=run_find)

    g = verbs.add_parser("pull", help="retrieve a series into an image file (a SEG into a label image)",
                         description="Retrieve one series (WADO) and write it as an image file with its geometry; "
                                     "a DICOM SEG series becomes a label image on its source image's grid.",
                         epilog=f"example:\n  napari-medgen pacs pull --url {URL} --user me --series 1.2.3... "
                                "ct.nii.gz")
    common(g)
    g.add_argument("--series", required=True, help="SeriesInstanceUID of the series to retrieve (from pacs find)")
    g.add_argument("output", help="image file to write: .nii.gz, .nii, .nrrd or .mha (keeps the geometry)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    transfer(g)
    g.set_defaults(func=run_pull)

    s = verbs.add_parser("push", help="send a label image as a DICOM SEG referencing a series",
                         description="Turn a label image into a DICOM SEG that references the series it was made "
                                     "on (names and codes its segments, records the algorithm) and send it (STOW); "
                                     "prints the new SEG's SeriesInstanceUID.",
                         epilog=f"example:\n  napari-medgen pacs push --url {URL} --user me --reference-series "
                                "1.2.3... ct_seg.nii.gz --classes background,liver,tumor --algorithm my-unet")
    common(s)
    s.add_argument("--reference-series", required=True,
                   help="SeriesInstanceUID of the series the labels were made on")
    s.add_argument("labels", type=existing, help="label image on that series' grid (.nii.gz, .nrrd, ...)")
    s.add_argument("--classes", default="",
                   help="class names by label value, comma separated, 0 (background) first; every label value "
                        "present needs a name, extra names (classes absent from this image) are fine "
                        "(default: Segment 1, Segment 2, ...)")
    s.add_argument("--algorithm", default="napari-medgen",
                   help="algorithm name recorded in the SEG (default napari-medgen)")
    s.add_argument("--algorithm-version", default="", help="algorithm version recorded in the SEG (default: empty)")
    s.add_argument("--save", default="", help="also write the SEG to this .dcm file (default: send only)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
    transfer(s)
    s.set_defaults(func=run_push)


def server_from(args):
    """The server of ``--url``/``--user`` with the password from the environment (or a prompt)."""
    from ..pacs.client import PacsServer

    password = os.environ.get(PASSWORD_ENV, "")
    if args.user and not password:
        if not sys.stdin.isatty():
            raise UserError(f"Set {PASSWORD_ENV} to the password of '{args.user}' (it is never taken from the "
                            f"command line).")
        password = getpass.getpass(f"Password for {args.user} at {args.url}: ")
    if args.timeout <= 0:
        raise UserError("--timeout must be a positive number of seconds.")
    return PacsServer(args.url, args.user, password, timeout=args.timeout)


def date_range(text: str) -> tuple[str, str]:
    """``--date`` as DICOM (from, to): one day, or FROM-TO with either end open, each YYYY-MM-DD or YYYYMMDD."""
    from ..pacs.client import dicom_date

    m = re.fullmatch(rf"\s*({_DATE})?\s*(-)?\s*({_DATE})?\s*", text)
    if not m or not (m[1] or m[3]) or (m[1] and m[3] and not m[2]):
        raise UserError(f"--date '{text}' is not a date or a range; use YYYY-MM-DD (or YYYYMMDD), or FROM-TO "
                        f"such as 2024-01-01-2024-03-31.")
    first, last = (m[1] or "", m[3] or "") if m[2] else (m[1], m[1])
    return dicom_date(first), dicom_date(last)


def run_find(args) -> int:
    from ..pacs.client import find_series, find_studies

    date_from, date_to = date_range(args.date) if args.date.strip() else ("", "")
    server = server_from(args)
    studies = find_studies(server, patient_name=args.patient, patient_id=args.patient_id,
                           accession=args.accession, modality=args.modality, date_from=date_from, date_to=date_to)
    if not studies:
        print("No studies match.", file=sys.stderr)
        return 0
    print(_row(STUDY_COLUMNS, [h for h, _ in STUDY_COLUMNS]) + "  study UID")
    print(_row(SERIES_COLUMNS, [h for h, _ in SERIES_COLUMNS]) + "  series UID")
    for st in studies:
        date = st["StudyDate"] or ""
        print(_row(STUDY_COLUMNS, [f"{date[:4]}-{date[4:6]}-{date[6:]}" if re.fullmatch(r"\d{8}", date)
                                   else date or "(no date)", st["PatientName"] or "(no name)",
                                   st["PatientID"] or "(no ID)", st["AccessionNumber"] or "(none)",
                                   st["StudyDescription"] or ""]) + f"  study {st['StudyInstanceUID']}")
        for se in find_series(server, st["StudyInstanceUID"]):
            print(_row(SERIES_COLUMNS, [f"    {se['Modality'] or '(?)'}", se["SeriesNumber"] or "",
                                        se["NumberOfSeriesRelatedInstances"] or "?", se["SeriesDescription"] or ""])
                  + f"  series {se['SeriesInstanceUID']}")
    return 0


def _row(columns, values) -> str:
    """One line of pacs find's table: each value padded to its column (a longer one pushes the rest right)."""
    return "  ".join(f"{str(v):{w}}" for (_, w), v in zip(columns, values))


def run_pull(args) -> int:
    from ..io import write_image
    from ..pacs.client import pull_series
    from .progress import terminal_job

    check_image_output(args.output, args.overwrite)  # before the transfer, not after it
    server = server_from(args)
    with terminal_job("pull", quiet=args.quiet) as job:
        item = pull_series(server, args.series, progress=job)
    print(write_image(args.output, item.data, item.geometry, overwrite=args.overwrite))
    return 0


def run_push(args) -> int:
    from .. import Cancelled
    from ..io import read_image
    from ..pacs.client import push_labels
    from ..pacs.seg import write_seg
    from .progress import terminal_job

    if args.save:
        check_output(args.save, args.overwrite)
    labels = read_image(Path(args.labels))
    names = [c.strip() for c in args.classes.split(",")] if args.classes else None
    server = server_from(args)
    try:
        with terminal_job("push", quiet=args.quiet) as job:
            seg = push_labels(server, labels.data, labels.geometry, args.reference_series, names, args.algorithm,
                              args.algorithm_version, progress=job)
    except Cancelled:
        print("napari-medgen: stopped; nothing was sent.", file=sys.stderr)
        return 130
    if args.save:
        print(write_seg(args.save, seg, overwrite=args.overwrite))
    print(seg.SeriesInstanceUID)
    return 0
