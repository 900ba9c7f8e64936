"""P002 as a hospital PACS holds it, shared by the PACS tests (service, e2e, compose)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def _uid(value: str) -> str:
    """A DICOM UID for an anonymiser's UUID (2.25.<its integer>, PS3.5 B.2)."""
    return f"2.25.{uuid.UUID(value).int}"


def pacs_series(series: Path) -> list[tuple[str, bytes]]:
    """P002 as a PACS sends it: the published set's anonymiser removed SOPInstanceUID and
    wrote UUIDs as Study/Series UIDs (not DICOM UIDs); a PACS's copy has valid ones. Pixel data
    is copied as it is (JPEG Lossless). In memory: the shared files stay as published."""
    out = []
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = _uid(ds.StudyInstanceUID)
        ds.SeriesInstanceUID = _uid(ds.SeriesInstanceUID)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["P002", f.name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append((f.name, buffer.getvalue()))
    return out
