"""DICOM intake shared by both doors (DICOMweb STOW-RS and the C-STORE SCP).

Each received instance is checked on its own (readable, a CT image with its UIDs and whole
pixel data) and answered with a DICOM status; the accepted instances of one series become
one job, packed as a zip and handed to ``complete_upload``: the same de-identification,
blob storage, job states and pipeline as a tus upload of that zip. What preprocessing
checks on the whole series (one patient, axial, slice count, decodable pixels) it still
checks, and a series it refuses ends as a ``failed`` job with a machine code.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from services.common.audit import Action, record
from services.common.config import Settings
from services.common.db import session_scope
from services.common.formats import DICOM_PREAMBLE, looks_like_dicom
from services.common.orm import Job, JobEvent, JobStatus
from services.upload.ingest import complete_upload, stored_filename

log = logging.getLogger(__name__)

# DICOM failure statuses (PS3.4 Annex B C-STORE; PS3.18 STOW-RS FailureReason (0008,1197)).
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900  # the data set does not match its SOP class (a UID is missing)
CANNOT_UNDERSTAND = 0xC000  # unreadable, or its pixel data is cut short
SOP_CLASS_NOT_SUPPORTED = 0x0122  # not a CT image: this service reads chest CT only

# CT image SOP classes; an image of another class passes when its Modality is CT.
CT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
SERIES_ARCHIVE_NAME = "series.zip"


class InstanceRefused(Exception):
    """An instance that is not taken: its DICOM failure status and why."""

    def __init__(self, status: int, reason: str, sop_class: str = "", sop_instance: str = ""):
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.sop_class, self.sop_instance = sop_class, sop_instance


@dataclass(frozen=True)
class Instance:
    """An accepted instance: where it lies and what it belongs to."""

    path: Path
    sop_class: str
    sop_instance: str
    study_uid: str
    series_uid: str


def check_instance(path: Path) -> Instance:
    """Read the Part-10 file at ``path`` and accept it or raise ``InstanceRefused``."""
    with path.open("rb") as handle:
        head = handle.read(DICOM_PREAMBLE + 8)
    # Part 10 with its preamble, or without it (pydicom.dcmwrite of a dataset that has none
    # starts at the file meta group 0002; some writers start at group 0008).
    bare = head[:2] == b"\x02\x00" or looks_like_dicom(head)
    if head[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] != b"DICM" and not bare:
        raise InstanceRefused(CANNOT_UNDERSTAND, "not a DICOM file")
    if head[:2] == b"\x02\x00":
        _add_preamble(path)  # what de-identification and every reader recognise as DICOM
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every oddity; judged below
            ds = pydicom.dcmread(path, force=True)
    except InvalidDicomError as exc:
        raise InstanceRefused(CANNOT_UNDERSTAND, f"not a DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise InstanceRefused(CANNOT_UNDERSTAND, f"unreadable DICOM: {exc}") from exc
    return check_dataset(ds, path)


def _add_preamble(path: Path) -> None:
    partial = path.with_name(path.name + ".part10")
    with path.open("rb") as source, partial.open("wb") as target:
        target.write(b"\x00" * DICOM_PREAMBLE + b"DICM")
        shutil.copyfileobj(source, target)
    os.replace(partial, path)


def check_dataset(ds: Dataset, path: Path) -> Instance:
    sop_class = str(ds.get("SOPClassUID", "") or "")
    sop_instance = str(ds.get("SOPInstanceUID", "") or "")

    def refuse(status: int, reason: str) -> InstanceRefused:
        return InstanceRefused(status, reason, sop_class, sop_instance)

    modality = str(ds.get("Modality", "") or "").upper()
    if sop_class not in CT_SOP_CLASSES and not (
        modality == "CT" and "Image" in UID(sop_class).name
    ):
        kind = UID(sop_class).name if sop_class else "no SOP class"
        raise refuse(
            SOP_CLASS_NOT_SUPPORTED, f"not a CT image ({kind}, modality {modality or '?'})"
        )
    missing = [
        k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)
    ]
    if missing:
        raise refuse(DATASET_MISMATCH, f"missing {', '.join(missing)}")
    if modality and modality != "CT":
        raise refuse(DATASET_MISMATCH, f"a CT image class with modality {modality}")
    short = _pixel_data_problem(ds)
    if short is not None:
        raise refuse(CANNOT_UNDERSTAND, short)
    return Instance(
        path, sop_class, sop_instance, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    )


def _pixel_data_problem(ds: Dataset) -> str | None:
    """Why the pixel data cannot be whole, or None. A file cut short loses its PixelData
    element (pydicom stops at the end of the file) or, uncompressed, holds fewer bytes."""
    if "PixelData" not in ds:
        return "no pixel data (the file may be cut short)"
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if not isinstance(ds.get(keyword), int) or ds.get(keyword) <= 0:
            return f"missing or invalid {keyword}"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and UID(syntax).is_encapsulated:
        return None  # compressed: the decoder judges the fragments in preprocessing
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    expected = ds.Rows * ds.Columns * samples * frames * ds.BitsAllocated // 8
    actual = len(ds.PixelData)
    if actual < expected:
        return f"pixel data holds {actual} bytes, the header needs {expected}"
    return None


def create_series_job(
    tenant_id: str,
    instances: Iterable[Path],
    settings: Settings,
    *,
    created_by: str,
    via: str,
    client_address: str | None = None,
    external_id: str | None = None,
) -> tuple[str, str | None]:
    """One job for the accepted instances of one series: (job id, its status after the
    upload completed: ``queued``, or ``failed`` when de-identification refused it).

    ``created_by`` is who sent the series (``key:<prefix>`` / ``user:<name>`` for STOW-RS,
    ``ae:<calling AE title>`` for C-STORE); the job records it and the audit trail gets a
    ``job_create`` event with ``via`` (``stow-rs`` or ``c-store``), as a job made by
    ``POST /v1/jobs`` does. The instances are packed into a zip in the upload directory,
    and the job goes through ``complete_upload`` exactly as if that zip had arrived by tus."""
    upload_id = uuid.uuid4().hex
    archive = settings.upload_dir / upload_id
    (settings.upload_dir / ".locks").mkdir(mode=0o700, parents=True, exist_ok=True)
    count = 0
    try:
        # Stored, not deflated: CT pixel data is mostly compressed already, and this is fast.
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as target:
            for number, path in enumerate(sorted(instances)):
                target.write(path, f"{number:05d}.dcm")
                count += 1
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    filename = stored_filename(SERIES_ARCHIVE_NAME, tenant_id, settings)
    with session_scope() as session:
        job = Job(
            tenant_id=tenant_id,
            external_id=external_id,
            upload_id=upload_id,
            upload_filename=filename,
            created_by=created_by[:220],
        )
        session.add(job)
        session.flush()
        session.add(JobEvent(job_id=job.id, status=JobStatus.AWAITING_UPLOAD.value))
        record(
            session, tenant_id, created_by, Action.JOB_CREATE, job_id=job.id,
            client_address=client_address, detail={"via": via, "instances": count},
        )  # fmt: skip
        job_id = job.id
    metadata = {"filename": SERIES_ARCHIVE_NAME, "filetype": "application/zip"}
    status = complete_upload(upload_id, archive, metadata)
    log.info(
        "DICOM series of %d instances became job %s (%s)", count, job_id, status,
        extra={"job_id": job_id},
    )  # fmt: skip
    return job_id, status
