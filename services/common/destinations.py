"""A tenant's result destinations: where a finished job's DICOM SR and SEG are sent.

Three kinds: ``dicomweb`` (a DICOMweb root URL; the objects go by STOW-RS to
``<url>/studies``), ``dimse`` (a DICOM node: host, port and its AE title, the called AE
title; we call as ``dicom_ae_title``) and ``fhir`` (a FHIR R4 server's base URL: the
DiagnosticReport Bundle is POSTed there as a transaction). All pass the callback policy
(``common.urls``) when they are added and again at every delivery: loopback, private and
link-local addresses are refused unless ``webhook_allowed_networks`` lists them, plain
http only with ``webhook_allow_http``.

When a job of a DICOM series succeeds, one delivery per active destination of its tenant is
recorded in the same transaction (the outbox); ``services.webhooks.destinations`` sends it,
retrying with the callbacks' backoff, and the job API shows each delivery's state.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.config import Settings
from services.common.orm import (
    DestinationDelivery,
    Job,
    JobStatus,
    ResultDestination,
    Tenant,
    utcnow,
)
from services.common.urls import CallbackRefused, check_callback_url, check_dicom_node

KINDS = ("dicomweb", "dimse", "fhir")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DestinationError(ValueError):
    """A destination an admin asked for cannot be (``code`` is machine-readable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def valid_ae_title(title: str) -> str:
    """PS3.5 AE title: 1-16 characters of the default repertoire, no backslash or control
    characters, not only spaces (leading and trailing spaces are not significant)."""
    stripped = title.strip()
    if not 0 < len(stripped) <= 16 or not all(" " <= c <= "~" and c != "\\" for c in stripped):
        raise DestinationError(
            "invalid_ae_title", f"AE title {title!r} must be 1-16 printable ASCII characters"
        )
    return stripped


def add_destination(
    session: Session,
    settings: Settings,
    tenant: Tenant,
    name: str,
    kind: str,
    *,
    url: str | None = None,
    host: str | None = None,
    port: int | None = None,
    ae_title: str | None = None,
) -> ResultDestination:
    if not _NAME.match(name):
        raise DestinationError(
            "invalid_name", "a destination name is 1-64 letters, digits, '.', '_' or '-'"
        )
    if kind not in KINDS:
        raise DestinationError("invalid_kind", f"kind is one of {', '.join(KINDS)}, not {kind!r}")
    if active_destination(session, tenant.id, name) is not None:
        raise DestinationError("destination_exists", f"{tenant.name} has a destination {name!r}")
    destination = ResultDestination(tenant_id=tenant.id, name=name, kind=kind)
    try:
        if kind in ("dicomweb", "fhir"):
            if not url or host or port or ae_title:
                raise DestinationError(
                    "invalid_destination", f"a {kind} destination takes a URL (only)"
                )
            check_callback_url(url, settings)
            destination.url = url.rstrip("/")
        else:
            if url or not host or port is None or not ae_title:
                raise DestinationError(
                    "invalid_destination",
                    "a dimse destination takes a host, a port and an AE title",
                )
            check_dicom_node(host, port, settings)
            destination.host, destination.port = host.strip().lower(), port
            destination.ae_title = valid_ae_title(ae_title)
    except CallbackRefused as refused:
        raise DestinationError("destination_refused", refused.reason) from None
    session.add(destination)
    session.flush()
    return destination


def active_destination(session: Session, tenant_id: str, name: str) -> ResultDestination | None:
    return session.scalar(
        select(ResultDestination).where(
            ResultDestination.tenant_id == tenant_id,
            ResultDestination.name == name,
            ResultDestination.removed_at.is_(None),
        )
    )


def active_destinations(session: Session, tenant_id: str) -> list[ResultDestination]:
    return list(
        session.scalars(
            select(ResultDestination)
            .where(ResultDestination.tenant_id == tenant_id, ResultDestination.removed_at.is_(None))
            .order_by(ResultDestination.created_at)
        )
    )


def remove_destination(session: Session, tenant: Tenant, name: str) -> bool:
    """No new deliveries go there; pending ones end failed at their next attempt; the
    records stay."""
    destination = active_destination(session, tenant.id, name)
    if destination is None:
        return False
    destination.removed_at = utcnow()
    return True


def describe(destination: ResultDestination) -> str:
    if destination.kind in ("dicomweb", "fhir"):
        return f"{destination.kind} {destination.url}"
    return f"dimse {destination.ae_title}@{destination.host}:{destination.port}"


def create_destination_deliveries(session: Session, job_id: str) -> list[str]:
    """Record a succeeded job's deliveries, one per active destination of its tenant (at
    most one per job and destination); their ids. Only a DICOM series has an SR and SEG to
    send: other inputs go to ``fhir`` destinations only."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.SUCCEEDED:
        return []
    dicom = (job.series or {}).get("source_format") == "dicom"
    existing = set(
        session.scalars(
            select(DestinationDelivery.destination_id).where(DestinationDelivery.job_id == job_id)
        )
    )
    created = []
    for destination in active_destinations(session, job.tenant_id):
        if destination.id in existing or (destination.kind != "fhir" and not dicom):
            continue
        delivery = DestinationDelivery(
            job_id=job_id, destination_id=destination.id, next_attempt_at=utcnow()
        )
        session.add(delivery)
        session.flush()
        created.append(delivery.id)
    return created


def deliveries_view(session: Session, job_id: str) -> list[dict[str, Any]]:
    """Each destination's delivery of a job's results, as the job API shows it."""
    rows = session.execute(
        select(DestinationDelivery, ResultDestination)
        .join(ResultDestination, ResultDestination.id == DestinationDelivery.destination_id)
        .where(DestinationDelivery.job_id == job_id)
        .order_by(DestinationDelivery.created_at, ResultDestination.name)
    ).all()
    return [
        {
            "destination": destination.name,
            "kind": destination.kind,
            "target": describe(destination).split(" ", 1)[1],
            "status": delivery.status,
            "attempts": delivery.attempts,
            "sent": delivery.sent,
            "last_error": delivery.last_error,
            "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
        }
        for delivery, destination in rows
    ]
