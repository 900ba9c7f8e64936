"""A finished upload becomes a queued job: verify the checksum, store the blob, start the
pipeline. Idempotent: only the first call for a job moves it out of ``awaiting_upload``."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.errors import ErrorCode, StudyError
from services.common.hashing import file_sha256
from services.common.jobs import create_webhook_delivery, transition
from services.common.orm import TERMINAL_STATUSES, Job, JobStatus, utcnow
from services.common.retention import raw_upload_prefix
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


def complete_upload(
    upload_id: str, file_path: Path, metadata: dict[str, str], known_sha256: str | None = None
) -> str | None:
    """Called once the last byte of ``upload_id`` has arrived; returns the job's new status.

    ``known_sha256`` is the digest computed while the bytes streamed in, when there is one.
    """
    settings = get_settings()
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.upload_id == upload_id))
        if job is None or job.status != JobStatus.AWAITING_UPLOAD:
            return None
        job_id, tenant_id = job.id, job.tenant_id
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
    blob: str | None = f"jobs/{job_id}/upload/{safe_filename(metadata.get('filename', 'upload'))}"
    if settings.deidentify_uploads and error is not None:
        file_path.unlink()  # bytes that were not de-identified are never stored
        blob = None
    else:
        assert blob is not None
        make_storage(settings).put_file(blob, file_path)
    Path(f"{file_path}.info").unlink(missing_ok=True)
    fields: dict[str, Any] = {"upload_blob": blob, "upload_size": size, "upload_sha256": actual}
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
                stage="queued", detail=detail, **fields,
            )  # fmt: skip
            status = JobStatus.QUEUED
    if not moved:
        _discard_if_ended(job_id)
        return None
    if status == JobStatus.FAILED:
        send_pending_webhooks(job_id)
    else:
        enqueue(job_id)
    return status.value


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
    import json

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
