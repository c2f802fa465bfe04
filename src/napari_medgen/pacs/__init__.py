"""The hospital connection: DICOMweb find/pull/push with a PACS (``client``), DICOM SEG objects (``seg``).

Submodules are imported on use (highdicom is slow to import); the names are also
available from the top-level ``napari_medgen`` package.
"""
