"""The audit trail: who did what to which job, when and from where (append-only table).

``actor`` is ``user:<username>`` for a person, ``key:<prefix>`` for an API key (a machine),
``cli`` for the command line, ``ae:<calling AE title>`` for a DICOM node that sent a series
(C-STORE); the tenant, time, client address and job id go with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.orm import AuditEvent, utcnow


class Action(StrEnum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    JOB_CREATE = "job_create"
    JOB_VIEW = "job_view"
    JOB_DELETE = "job_delete"
    REPORT_VIEW = "report_view"
    SLICE_VIEW = "slice_view"
    USER_CREATE = "user_create"
    USER_DELETE = "user_delete"
    USER_ROLE_CHANGE = "user_role_change"
    USER_PASSWORD_CHANGE = "user_password_change"
    AUDIT_EXPORT = "audit_export"
    # Where results (PHI: patient name and ids in the SR, SEG and FHIR report) are sent.
    DESTINATION_ADD = "destination_add"
    DESTINATION_REMOVE = "destination_remove"


def record(
    session: Session,
    tenant_id: str | None,
    actor: str,
    action: Action,
    *,
    job_id: str | None = None,
    client_address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one event to ``session``: it commits (or rolls back) with what it records."""
    session.add(
        AuditEvent(
            tenant_id=tenant_id, actor=actor[:220], action=action.value, job_id=job_id,
            client_address=(client_address or None) and client_address[:64], detail=detail,
        )
    )  # fmt: skip


def recently_recorded(
    session: Session,
    tenant_id: str,
    actor: str,
    action: Action,
    job_id: str | None,
    within_s: float,
) -> bool:
    """Whether the same actor did the same to the same job within the last ``within_s``."""
    found = session.scalar(
        select(AuditEvent.id)
        .where(
            AuditEvent.tenant_id == tenant_id,
            AuditEvent.at >= utcnow() - timedelta(seconds=within_s),
            AuditEvent.actor == actor,
            AuditEvent.action == action.value,
            AuditEvent.job_id == job_id,
        )
        .limit(1)
    )
    return found is not None


def as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "job_id": event.job_id,
        "client_address": event.client_address,
        "detail": event.detail,
    }


def events(
    session: Session,
    tenant_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int = 0,
    limit: int = 10_000,
) -> list[AuditEvent]:
    """The tenant's events in order (oldest first), ``limit`` at most after ``after_id``."""
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.id > after_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    return list(session.scalars(query.order_by(AuditEvent.id).limit(limit)))


def ndjson(rows: list[AuditEvent]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(as_dict(row), separators=(",", ":")) + "\n"
