"""A finished upload becomes a queued job: verify the checksum, store the blob, start the
pipeline. Idempotent: only the first call for a job moves it out of ``awaiting_upload``."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from tuspyserver.lock import FileLock

from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode, StudyError
from services.common.hashing import file_sha256
from services.common.jobs import create_webhook_delivery, transition
from services.common.orm import TERMINAL_STATUSES, Job, JobStatus, utcnow
from services.common.retention import raw_upload_prefix
from services.common.secretbox import derived_key
from services.common.storage import make_storage
from services.common.tasks import enqueue, send_pending_webhooks
from services.upload.deidentify import deidentify_upload

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def safe_filename(name: str) -> str:
    """Keep the extension (the reader dispatches on it), drop anything path-like."""
    base = Path(name.replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return cleaned[-120:] or "upload"


_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def stored_filename(name: str, tenant_id: str, settings: Settings) -> str:
    """The upload's file name as the service stores it (``jobs.upload_filename``, the blob
    key). Hospitals often name files after the patient: with ``deidentify_uploads`` only the
    extension (up to two, e.g. ``.nii.gz``; the reader dispatches on it) and a keyed hash
    are kept (``upload-<hmac>.<ext>``: the same name gives the same pseudonym within one
    tenant, and without the service's secret key it cannot be found by guessing names)."""
    if not settings.deidentify_uploads:
        return safe_filename(name)
    base = Path(name.replace("\\", "/")).name
    suffixes = [x for x in Path(base).suffixes[-2:] if _EXTENSION.match(x)]
    while suffixes and not all(_EXTENSION.match(x) for x in suffixes):
        suffixes.pop(0)
    key = derived_key(settings, f"upload-filename:{tenant_id}")
    digest = hmac.new(key, base.encode(), hashlib.sha256).hexdigest()[:20]
    return f"upload-{digest}{''.join(suffixes).lower()}"


COMPLETION_SUFFIX = ".completion"  # what a finished upload became, kept until the job moved on
# A job whose claimed upload has no sidecar for this long lost it (a crash between the
# claim and tuspyserver writing the sidecar, or after the sidecar was removed): released.
LOST_CLAIM_GRACE_S = 300.0


def complete_upload(
    upload_id: str, file_path: Path, metadata: dict[str, str], known_sha256: str | None = None
) -> str | None:
    """Called once the last byte of ``upload_id`` has arrived; returns the job's new status.

    ``known_sha256`` is the digest computed while the bytes streamed in, when there is one.

    Idempotent and recoverable (``finish_completed_uploads`` calls it again after a crash):
    one caller at a time per upload (a lock file, not waited for); what the upload became
    (blob key, size, digest, error) is written next to the sidecar before the file is moved
    into blob storage, and the sidecar goes only after the job moved on; so a crash at any
    point leaves either the file or that record, and the sidecar that finds them again.
    """
    lock = FileLock(str(file_path) + ".complete", locks_dir=str(file_path.parent / ".locks"))
    if not lock.acquire(blocking=False):
        return None  # another request or the recovery sweep is completing it now
    try:
        return _complete_locked(upload_id, file_path, metadata, known_sha256)
    finally:
        lock.release()


def _complete_locked(
    upload_id: str, file_path: Path, metadata: dict[str, str], known_sha256: str | None
) -> str | None:
    settings = get_settings()
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.upload_id == upload_id))
        if job is None or job.status != JobStatus.AWAITING_UPLOAD:
            return None
        job_id, tenant_id = job.id, job.tenant_id
    record_path = Path(f"{file_path}{COMPLETION_SUFFIX}")
    record = _read_record(record_path)
    if record is None:
        if not file_path.exists():
            log.error(
                "upload %s: complete, but its file is gone; the job may upload again", upload_id
            )
            release_upload(upload_id)
            _remove_upload_files(file_path)
            return None
        record = _examine(file_path, metadata, known_sha256, job_id, tenant_id, settings)
        _write_record(record_path, record)
    blob = record["blob"]
    if file_path.exists():
        if blob is None:
            file_path.unlink()  # bytes that were not de-identified are never stored
        else:
            make_storage(settings).put_file(blob, file_path)
    fields: dict[str, Any] = {
        "upload_blob": blob, "upload_size": record["size"], "upload_sha256": record["sha256"],
    }  # fmt: skip
    error = tuple(record["error"]) if record["error"] else None
    with session_scope() as session:
        if error is not None:
            moved = transition(
                session, job_id, JobStatus.FAILED, [JobStatus.AWAITING_UPLOAD],
                stage="upload", error=error, **fields,
            )  # fmt: skip
            if moved:
                session.flush()
                create_webhook_delivery(session, job_id)
            status = JobStatus.FAILED
        else:
            moved = transition(
                session, job_id, JobStatus.QUEUED, [JobStatus.AWAITING_UPLOAD],
                stage="queued", detail=record["detail"], **fields,
            )  # fmt: skip
            status = JobStatus.QUEUED
    _remove_upload_files(file_path)  # the job moved on (or ended): the sidecar has done its work
    if not moved:
        _discard_if_ended(job_id)
        return None
    if status == JobStatus.FAILED:
        send_pending_webhooks(job_id)
    else:
        enqueue(job_id)
    return status.value


def _examine(
    file_path: Path,
    metadata: dict[str, str],
    known_sha256: str | None,
    job_id: str,
    tenant_id: str,
    settings: Settings,
) -> dict[str, Any]:
    """Checksum and de-identification of a finished upload: what it becomes."""
    expected = (metadata.get("sha256") or "").lower()
    actual = (known_sha256 or file_sha256(file_path)) if expected else None
    size = file_path.stat().st_size
    error: tuple[str, str] | None = None
    if expected and actual != expected:
        error = (
            ErrorCode.CHECKSUM_MISMATCH.value,
            f"sha256 of the upload is {actual}, metadata says {expected}",
        )
    detail: dict[str, Any] = {"bytes": size}
    if settings.deidentify_uploads and error is None:
        try:
            detail["deidentified_dicom_files"] = deidentify_upload(file_path, tenant_id, settings)
        except StudyError as exc:
            error = (exc.code.value, f"the upload could not be de-identified: {exc.message}")
    name = stored_filename(metadata.get("filename", "upload"), tenant_id, settings)
    blob: str | None = f"jobs/{job_id}/upload/{name}"
    if settings.deidentify_uploads and error is not None:
        blob = None
    return {"blob": blob, "size": size, "sha256": actual, "error": error, "detail": detail}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def _remove_upload_files(file_path: Path) -> None:
    for suffix in ("", ".info", COMPLETION_SUFFIX):
        Path(f"{file_path}{suffix}").unlink(missing_ok=True)


def completed_upload_metadata(upload_dir: Path, upload_id: str) -> dict[str, str] | None:
    """Metadata of an upload whose every byte arrived, else None (tuspyserver's sidecar)."""
    try:
        info = json.loads((upload_dir / f"{upload_id}.info").read_text())
    except (OSError, ValueError):
        return None
    size, offset = info.get("size"), info.get("offset")
    if size is None or offset != size:
        return None
    return dict(info.get("metadata") or {})


@dataclass(frozen=True)
class UploadProgress:
    """What a tus HEAD reports: bytes received of the declared length."""

    offset: int
    length: int
    metadata: dict[str, str]
    expires: str | None

    @property
    def complete(self) -> bool:
        return self.offset == self.length


def upload_progress(upload_dir: Path, upload_id: str) -> UploadProgress | None:
    """The progress of ``upload_id``, None when it is unknown or lost (HEAD 404).

    Every byte arrived is reported as complete at each point between the last byte and the
    queued job (file moved into blob storage, job moved on, sidecar removed): a client that
    lost the answer to its last PATCH must not be told to start over, because its job keeps
    this upload and refuses a new one."""
    try:
        info = json.loads((upload_dir / f"{upload_id}.info").read_text())
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict):
        size, offset = info.get("size"), info.get("offset")
        if not isinstance(size, int) or not isinstance(offset, int):
            return None
        metadata = {str(k): str(v) for k, v in dict(info.get("metadata") or {}).items()}
        progress = UploadProgress(offset, size, metadata, info.get("expires"))
        path = upload_dir / upload_id
        if path.exists() or Path(f"{path}{COMPLETION_SUFFIX}").exists():
            return progress
        if progress.complete and _job_took_upload(upload_id) is not None:
            return progress
        return None  # its bytes are gone: the recovery sweep frees the job
    size = _job_took_upload(upload_id)
    return None if size is None else UploadProgress(size, size, {}, None)


def _job_took_upload(upload_id: str) -> int | None:
    """The stored size of ``upload_id`` once its job moved past ``awaiting_upload``."""
    with session_scope() as session:
        row = session.execute(
            select(Job.status, Job.upload_size).where(Job.upload_id == upload_id)
        ).first()
    if row is None or row.status == JobStatus.AWAITING_UPLOAD or row.upload_size is None:
        return None
    return int(row.upload_size)


def finish_completed_uploads(upload_dir: Path, grace_s: float = LOST_CLAIM_GRACE_S) -> int:
    """Recovery of what a crash left between "every byte arrived" and "job queued": every
    complete upload whose job still waits is completed now (idempotent, safe while the
    gateway serves: ``complete_upload`` takes the upload's completion lock); leftovers of
    uploads whose job moved on or is gone are removed (their raw bytes too, if the job
    ended); a job whose claimed upload vanished longer than ``grace_s`` ago may upload again.
    Called at gateway start and by its periodic sweep. Returns how many it finished or freed.
    """
    done = 0
    for info_path in sorted(upload_dir.glob("*.info")):
        upload_id = info_path.name.removesuffix(".info")
        metadata = completed_upload_metadata(upload_dir, upload_id)
        if metadata is None:
            continue
        with session_scope() as session:
            owner = session.execute(
                select(Job.id, Job.status).where(Job.upload_id == upload_id)
            ).first()
        if owner is None or owner.status != JobStatus.AWAITING_UPLOAD:
            if owner is None or _complete_once_more(upload_dir, upload_id):
                _remove_upload_files(upload_dir / upload_id)
            if owner is not None:
                _discard_if_ended(owner.id)
            continue
        if complete_upload(upload_id, upload_dir / upload_id, metadata) is not None:
            done += 1
    return done + len(release_lost_claims(upload_dir, grace_s))


def _complete_once_more(upload_dir: Path, upload_id: str) -> bool:
    """Whether no completion of this upload is running now (its leftovers may go)."""
    path = upload_dir / upload_id
    lock = FileLock(str(path) + ".complete", locks_dir=str(upload_dir / ".locks"))
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


def release_lost_claims(upload_dir: Path, grace_s: float = LOST_CLAIM_GRACE_S) -> list[str]:
    """Jobs still ``awaiting_upload`` whose claimed upload has no sidecar (nor completion
    record) for ``grace_s``: the upload is lost, so the job takes a new one instead of a
    409 for ever; any raw bytes already stored for it are removed."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    with session_scope() as session:
        claimed = list(
            session.execute(
                select(Job.id, Job.upload_id).where(
                    Job.status == JobStatus.AWAITING_UPLOAD,
                    Job.upload_id.is_not(None),
                    Job.updated_at < cutoff,
                )
            ).all()
        )
    released: list[str] = []
    for job_id, upload_id in claimed:
        path = upload_dir / str(upload_id)
        if Path(f"{path}.info").exists() or Path(f"{path}{COMPLETION_SUFFIX}").exists():
            continue
        release_upload(str(upload_id))
        make_storage(get_settings()).delete_prefix(raw_upload_prefix(job_id))
        path.unlink(missing_ok=True)
        log.warning("job %s: its upload %s was lost; it may upload again", job_id, upload_id)
        released.append(job_id)
    return released


def _discard_if_ended(job_id: str) -> None:
    """The job ended (cancelled or deleted) while its last bytes arrived: keep none of them.
    (Not when another completion call moved it on: that one owns the blob.)"""
    with session_scope() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None or JobStatus(status) in TERMINAL_STATUSES:
        make_storage(get_settings()).delete_prefix(raw_upload_prefix(job_id))


def sweep_expired_uploads(upload_dir: Path) -> int:
    """tus expiration: remove unfinished uploads past their Upload-Expires and free the job;
    then fail the jobs that waited longer than the upload expiry without a live upload.

    Returns the number of uploads removed plus the number of jobs failed.
    """
    removed = _remove_expired_uploads(upload_dir)
    return removed + len(expire_jobs_without_upload(upload_dir))


def _remove_expired_uploads(upload_dir: Path) -> int:
    removed = 0
    now = datetime.now(UTC)
    for info_path in upload_dir.glob("*.info"):
        try:
            info = json.loads(info_path.read_text())
            expires = parsedate_to_datetime(str(info.get("expires")))
        except (OSError, ValueError, TypeError):
            continue
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires > now:
            continue
        upload_id = info_path.name.removesuffix(".info")
        (upload_dir / upload_id).unlink(missing_ok=True)
        info_path.unlink(missing_ok=True)
        release_upload(upload_id)
        removed += 1
    return removed


def release_upload(upload_id: str) -> None:
    """The upload was terminated or expired: the job may take a new one."""
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.upload_id == upload_id, Job.status == JobStatus.AWAITING_UPLOAD)
            .values(upload_id=None, updated_at=utcnow())
        )


def expire_jobs_without_upload(upload_dir: Path) -> list[str]:
    """Jobs ``awaiting_upload`` created longer than ``upload_expiry_days`` ago with no live
    upload (none claimed, or its sidecar gone) become ``failed`` (``upload_expired``); their
    partial upload, if any, is removed. A job whose upload is still live is left alone until
    that upload expires: ``sweep_expired_uploads`` then frees the job and fails it at once.
    Expiry is ``Settings.upload_expiry_days`` of the process (``asgi`` passes only the
    directory)."""
    cutoff = utcnow() - timedelta(days=get_settings().upload_expiry_days)
    with session_scope() as session:
        candidates = list(
            session.execute(
                select(Job.id, Job.upload_id).where(
                    Job.status == JobStatus.AWAITING_UPLOAD, Job.created_at < cutoff
                )
            ).all()
        )
    failed: list[str] = []
    for job_id, upload_id in candidates:
        if upload_id is not None and (upload_dir / f"{upload_id}.info").exists():
            continue
        with session_scope() as session:
            moved = transition(
                session,
                job_id,
                JobStatus.FAILED,
                [JobStatus.AWAITING_UPLOAD],
                stage="upload",
                error=(
                    ErrorCode.UPLOAD_EXPIRED.value,
                    "no complete upload arrived before the upload expiry",
                ),
            )
            if moved:
                session.flush()
                create_webhook_delivery(session, job_id)
        if not moved:
            continue  # its upload finished meanwhile
        if upload_id is not None:
            (upload_dir / upload_id).unlink(missing_ok=True)
        send_pending_webhooks(job_id)
        failed.append(job_id)
    return failed
