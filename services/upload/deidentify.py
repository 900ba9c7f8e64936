"""De-identification at ingest (optional, ``Settings.deidentify_uploads``).

Runs on a finished upload before it is stored anywhere else: every DICOM file, alone or as a
member of a zip or tar, goes through ``dicognito`` (DICOM PS3.15 Annex E basic profile: names,
IDs, dates, times, UIDs, addresses and free-text identifying elements replaced), and gets
``PatientIdentityRemoved = YES``. Pseudonyms are keyed per tenant (a seed derived from the
service's secret key and the tenant id): one patient's series stay linked within a tenant,
never across tenants. Pixel data, geometry (spacing, position, orientation), modality, body
part and rescale are kept: the pipeline needs them. NIfTI and plain images carry no DICOM
header and are stored as sent.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pydicom
from dicognito.anonymizer import Anonymizer

from services.common.config import Settings
from services.common.errors import ErrorCode, StudyError
from services.common.formats import DICOM_PREAMBLE, looks_like_dicom
from services.common.secretbox import derived_key


def is_dicom(head: bytes) -> bool:
    return looks_like_dicom(head[: DICOM_PREAMBLE + 4])


def tenant_anonymizer(settings: Settings, tenant_id: str) -> Anonymizer:
    seed = base64.urlsafe_b64encode(derived_key(settings, f"deidentify:{tenant_id}")).decode()
    return Anonymizer(seed=seed)


def deidentify_dicom(data: bytes, anonymizer: Anonymizer) -> bytes:
    force = data[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] != b"DICM"  # bare datasets too
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=force)
        anonymizer.anonymize(dataset)
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = "dicognito (PS3.15 basic profile), keyed per tenant"
        out = io.BytesIO()
        dataset.save_as(out)
    # pydicom raises many kinds (struct.error, KeyError...) on damaged files: all mean the
    # same to the user, and nothing half-cleaned may be stored.
    except Exception as exc:
        raise StudyError(ErrorCode.CORRUPT_FILE, f"a DICOM file cannot be read: {exc}") from exc
    return out.getvalue()


class _Budget:
    """The archive limits of ``Settings`` (members, total bytes), as preprocessing applies."""

    def __init__(self, settings: Settings) -> None:
        self.members_left = settings.max_archive_members
        self.bytes_left = settings.max_uncompressed_bytes

    def read(self, stream: IO[bytes], name: str) -> bytes:
        self.members_left -= 1
        if self.members_left < 0:
            raise StudyError(ErrorCode.UNSAFE_ARCHIVE, "the archive has too many members")
        data = stream.read(self.bytes_left + 1)
        self.bytes_left -= len(data)
        if self.bytes_left < 0:
            raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"{name}: the archive unpacks too large")
        return bytes(data)


def _zip_members(path: Path, budget: _Budget) -> Iterator[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise StudyError(ErrorCode.UNSUPPORTED_FORMAT, "encrypted zip archives are refused")
            with archive.open(info) as member:
                yield info, budget.read(member, info.filename)


def _rewrite_zip(path: Path, out: Path, anonymizer: Anonymizer, budget: _Budget) -> int:
    count = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as target:
        for info, data in _zip_members(path, budget):
            if is_dicom(data):
                data, count = deidentify_dicom(data, anonymizer), count + 1
            target.writestr(zipfile.ZipInfo(info.filename, info.date_time), data)
    return count


def _rewrite_tar(path: Path, out: Path, anonymizer: Anonymizer, budget: _Budget) -> int:
    count = 0
    with tarfile.open(path, "r:*") as archive, tarfile.open(out, "w") as target:
        for member in archive:
            if member.isdir():
                continue
            if not member.isfile():  # links and devices: preprocessing refuses them too
                raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"member {member.name} is not a file")
            stream = archive.extractfile(member)
            assert stream is not None  # a regular file
            data = budget.read(stream, member.name)
            if is_dicom(data):
                data, count = deidentify_dicom(data, anonymizer), count + 1
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime, info.mode = len(data), member.mtime, 0o600
            target.addfile(info, io.BytesIO(data))
    return count


def deidentify_upload(path: Path, tenant_id: str, settings: Settings) -> int:
    """Rewrite the finished upload at ``path`` in place with its DICOM files de-identified;
    returns how many DICOM files were. Raises ``StudyError`` for what cannot be read."""
    anonymizer = tenant_anonymizer(settings, tenant_id)
    with path.open("rb") as handle:
        head = handle.read(DICOM_PREAMBLE + 4)
    out = path.with_name(path.name + ".deid")
    try:
        if is_dicom(head):
            out.write_bytes(deidentify_dicom(path.read_bytes(), anonymizer))
            count = 1
        elif head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            count = _rewrite_zip(path, out, anonymizer, _Budget(settings))
        elif tarfile.is_tarfile(path):
            count = _rewrite_tar(path, out, anonymizer, _Budget(settings))
        else:
            return 0  # NIfTI or an image: no DICOM header to remove
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        out.unlink(missing_ok=True)
        raise StudyError(ErrorCode.CORRUPT_FILE, f"cannot read the archive: {exc}") from exc
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    os.replace(out, path)
    return count
