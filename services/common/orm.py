"""ORM models: the state of record (jobs, their events, slices, scores, results, webhooks).

Celery's result backend is never read: everything a client can see lives here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobStatus(StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    QUEUED = "queued"
    PREPROCESSING = "preprocessing"
    SCORING = "scoring"
    ENSEMBLING = "ensembling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A tenant's API key, as a SHA-256 hash. Up to two are active at once, so a key can be
    rotated without downtime: add the new one, move clients over, revoke the old one."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # The first characters of the key, so an admin can tell which one to revoke.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookSecret(Base):
    """A tenant's callback signing secret, encrypted at rest (``common.secretbox``). While two
    are active every callback carries both signatures (Standard Webhooks allows a list)."""

    __tablename__ = "webhook_secrets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_study_date", "tenant_id", "study_date"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.AWAITING_UPLOAD, index=True)
    stage: Mapped[str | None] = mapped_column(String(40), default=None)
    external_id: Mapped[str | None] = mapped_column(String(200), default=None)
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    upload_id: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    upload_filename: Mapped[str | None] = mapped_column(String(300), default=None)
    upload_size: Mapped[int | None] = mapped_column(Integer, default=None)
    upload_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    upload_blob: Mapped[str | None] = mapped_column(String(300), default=None)
    slices_blob: Mapped[str | None] = mapped_column(String(300), default=None)
    slices_total: Mapped[int | None] = mapped_column(Integer, default=None)
    slices_used: Mapped[int | None] = mapped_column(Integer, default=None)
    series: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Quantitative HU lung features (preprocess stage; DICOM/NIfTI only), input of the verdict.
    lung_features: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Lesion measurements (preprocess, HU volumes; input of verdict v3) and the blob of the
    # kept slices' lesion label maps (the console's overlay), migration 0008.
    lesion_findings: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    lesions_blob: Mapped[str | None] = mapped_column(String(300), default=None)
    error_code: Mapped[str | None] = mapped_column(String(40), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the retention sweep removed the job's derived data (services/common/retention.py).
    purged_at: Mapped[datetime | None] = mapped_column(default=None)
    # The lease of the task running one of its stages: renewed while it runs, cleared when it
    # returns; a stale one means its worker died (services/common/tasks.py).
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # The transactional outbox (services/common/tasks.py): the stage the job's next step runs
    # (written by the transaction that moves the job into it), how many times a worker
    # claimed it (a message carries the count it expects: a duplicate is a no-op), how many
    # of those runs lost their worker (capped: stage_max_attempts), and when the sweeper may
    # send it (again); None while a worker holds it or once the job ended.
    step: Mapped[str | None] = mapped_column(String(20), default=None)
    step_attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    step_crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    step_due_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # The worklist's columns (migration 0006): identifiers of the series read (preprocess;
    # the pseudonyms when de-identification is on) and the verdict's category (on success).
    patient_id: Mapped[str | None] = mapped_column(String(200), default=None)
    accession_number: Mapped[str | None] = mapped_column(String(64), default=None)
    study_date: Mapped[str | None] = mapped_column(String(8), default=None)  # DICOM YYYYMMDD
    series_description: Mapped[str | None] = mapped_column(String(200), default=None)
    study_instance_uid: Mapped[str | None] = mapped_column(String(128), default=None)
    series_instance_uid: Mapped[str | None] = mapped_column(String(128), default=None)
    category: Mapped[str | None] = mapped_column(String(40), default=None)
    # Who created the job: "user:<username>" or "key:<prefix>" (migration 0009).
    created_by: Mapped[str | None] = mapped_column(String(220), default=None)

    result: Mapped[Result | None] = relationship(
        back_populates="job", cascade="all, delete-orphan", uselist=False
    )


class JobEvent(Base):
    """One row per status change, with when and where it happened."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    stage: Mapped[str | None] = mapped_column(String(40), default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SliceRecord(Base):
    """Every slice of the study as read, kept or dropped (with the reason)."""

    __tablename__ = "slices"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    kept: Mapped[bool] = mapped_column(Boolean)
    stack_position: Mapped[int | None] = mapped_column(Integer, default=None)
    drop_reason: Mapped[str | None] = mapped_column(String(40), default=None)
    drop_detail: Mapped[str | None] = mapped_column(Text, default=None)
    high_contrast: Mapped[bool] = mapped_column(Boolean, default=False)
    lung_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    # Source mapping (file, instance_number, slice_location, sop_instance_uid...) and the
    # byte ranges of its native image and lung mask in jobs/<id>/native.bin (migration 0006).
    info: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class SliceScore(Base):
    __tablename__ = "slice_scores"
    __table_args__ = (UniqueConstraint("job_id", "slice_index", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    slice_index: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(40))
    p_noncovid: Mapped[float] = mapped_column(Float)
    p_covid: Mapped[float] = mapped_column(Float)
    heatmap_blob: Mapped[str | None] = mapped_column(String(300), default=None)


class Result(Base):
    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(20))
    probabilities: Mapped[dict[str, Any]] = mapped_column()
    slices_total: Mapped[int] = mapped_column(Integer)
    slices_used: Mapped[int] = mapped_column(Integer)
    model_versions: Mapped[dict[str, Any]] = mapped_column()
    # Per-zone findings reported with the verdict (None without HU input).
    findings: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result")


class WebhookDelivery(Base):
    """One callback message (one per job and event type); its attempts are rows below."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("job_id", "event_type"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), default="pending")  # delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    # When the sweeper sends the next attempt (kept here, not in a broker countdown, so a
    # retry is not held until the visibility timeout when its worker dies); None once ended.
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)


class ResultDestination(Base):
    """Where a tenant's results go when a job succeeds (migration 0010): a DICOMweb
    STOW-RS endpoint (``url``) or a DICOM node reached by C-STORE (``host``, ``port``,
    ``ae_title``: the called AE title). Removing one keeps its delivery records
    (``removed_at``); names are unique among a tenant's active destinations."""

    __tablename__ = "result_destinations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))  # dicomweb | dimse
    url: Mapped[str | None] = mapped_column(Text, default=None)
    host: Mapped[str | None] = mapped_column(String(255), default=None)
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    ae_title: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(default=None)


class DestinationDelivery(Base):
    """A job's results on their way to one destination: the webhook outbox's shape
    (``next_attempt_at`` is the due time the sweeper honours), attempts are rows below."""

    __tablename__ = "destination_deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    destination_id: Mapped[str] = mapped_column(ForeignKey("result_destinations.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # What was sent ({"sr": uid, "seg": uid} or the reason an object was not made).
    sent: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class DestinationAttempt(Base):
    __tablename__ = "destination_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("destination_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)


class User(Base):
    """A person inside a tenant (migration 0009): role viewer, uploader or admin; only an
    argon2 hash of the password is stored (None for a single-sign-on-only account)."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "username"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    username: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserSession(Base):
    """A console sign-in: the cookie token's SHA-256, never the token (its CSRF token is
    derived from it, services.common.accounts.csrf_token)."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class AuditEvent(Base):
    """Who did what, when, from where (services.common.audit). Append-only: the database
    refuses UPDATE and DELETE (triggers of migration 0009); no foreign keys, so a record
    outlives the job or user it names."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(220))
    action: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    client_address: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)
