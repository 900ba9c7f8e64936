"""A finished job's DICOM SR and SEG (or its FHIR report) sent to one of its tenant's
destinations, with the callbacks' machinery: a delivery row is the outbox entry, each
attempt is claimed by a compare-and-set on its count and recorded (``destination_attempts``),
a failed attempt waits in ``next_attempt_at`` (exponential backoff, ``webhook_backoff_s``)
for the sweeper, and after ``webhook_max_attempts`` the delivery ends failed.

- ``dicomweb``: one STOW-RS request (``POST <url>/studies``, multipart/related of
  application/dicom) over ``PinnedTransport``: the URL passes the callback policy again, the
  host is resolved once and only vetted addresses are reached; redirects are not followed.
- ``fhir``: the job's FHIR R4 Bundle (``GET /v1/jobs/{id}/fhir``) as a transaction POSTed
  to the server's base URL, each resource PUT at an id fixed by the job (same transport).
- ``dimse``: one association (we call as ``dicom_ae_title``, to the destination's AE title)
  to a vetted address of the host, one C-STORE per object.

Idempotent: the SR and SEG UIDs are fixed by the job id (``dicom_source.derived_uid``), so a
second delivery of the same job stores the same SOP instances again, which a PACS keeps once.
A job whose SEG cannot be made (no masks on the source geometry) sends its SR alone.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import httpx
from celery import Task
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SegmentationStorage,
)
from sqlalchemy import update
from sqlalchemy.orm import Session

from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.jobs import job_view
from services.common.orm import (
    DestinationAttempt,
    DestinationDelivery,
    Job,
    ResultDestination,
    utcnow,
)
from services.common.queue import DESTINATION_TASK, celery_app
from services.common.results.fhir import build_bundle, transaction_bundle
from services.common.results.objects import (
    ResultUnavailable,
    ensure_finished,
    load_material,
    part10,
    seg_dataset,
    seg_masks,
    sr_dataset,
)
from services.common.urls import (
    CallbackRefused,
    Resolver,
    system_resolver,
    vet_callback_url,
    vet_dicom_node,
)
from services.webhooks.transport import PinnedTransport

log = logging.getLogger(__name__)

# How delivery resolves destination hosts (tests put a resolver they control here).
resolve_host: Resolver = system_resolver
ATTEMPT_HOLD_MARGIN_S = 60.0
# C-STORE statuses that mean stored: success and the warnings (coercion, elements discarded).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Target:
    kind: str
    url: str | None
    host: str | None
    port: int | None
    ae_title: str | None


@dataclass(frozen=True)
class Outcome:
    error: str | None  # None: delivered
    final: bool = False  # no retry (refused by the policy, or nothing can be sent)


def stow_body(objects: list[bytes]) -> tuple[bytes, str]:
    """A STOW-RS request body (PS3.18 10.5): multipart/related of application/dicom."""
    boundary = f"covidct-{uuid.uuid4().hex}"
    parts = [
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
        for data in objects
    ]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(url: str, objects: list[bytes], settings: Settings) -> Outcome:
    body, content_type = stow_body(objects)
    headers = {"content-type": content_type, "accept": "application/dicom+json"}
    # 202: some instances failed; 409: all did.
    return _post(f"{url.rstrip('/')}/studies", body, headers, settings, "STOW-RS", (200,))


def post_fhir(url: str, bundle: dict[str, Any], settings: Settings) -> Outcome:
    """The transaction Bundle POSTed to the FHIR server's base (resources PUT at fixed ids:
    a second delivery updates them)."""
    headers = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
    return _post(url, json.dumps(bundle).encode(), headers, settings, "FHIR", (200, 201))


def _post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    settings: Settings,
    what: str,
    accepted: tuple[int, ...],
) -> Outcome:
    """One POST to the vetted addresses of ``url`` (as callbacks: no redirects, no proxy);
    a refused URL is final, anything else is retried."""
    deadline = time.monotonic() + settings.destination_timeout_s
    try:
        target, addresses = vet_callback_url(url, settings, resolve_host)
    except CallbackRefused as exc:
        return Outcome(f"refused: {exc.reason}", final=True)
    except OSError as exc:
        return Outcome(f"DNS: {exc}")
    try:
        with httpx.Client(
            transport=PinnedTransport(target, addresses, deadline),
            follow_redirects=False,
            trust_env=False,
            timeout=settings.destination_timeout_s,
        ) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(f"{type(exc).__name__}: {exc}")
    if response.status_code not in accepted:
        return Outcome(f"{what} HTTP {response.status_code}: {response.text[:300]}")
    return Outcome(None)


def c_store(target: Target, datasets: list[Dataset], settings: Settings) -> Outcome:
    assert target.host and target.port and target.ae_title
    try:
        addresses = vet_dicom_node(target.host, target.port, settings, resolve_host)
    except CallbackRefused as exc:
        return Outcome(f"refused: {exc.reason}", final=True)
    except OSError as exc:
        return Outcome(f"DNS: {exc}")
    ae = AE(ae_title=settings.dicom_ae_title)
    timeout = settings.destination_timeout_s
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for sop_class in (Comprehensive3DSRStorage, SegmentationStorage):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(str(addresses[0]), target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        return Outcome(f"association with {target.ae_title}@{target.host}:{target.port} failed")
    try:
        for data in datasets:
            status = assoc.send_c_store(data)
            code = getattr(status, "Status", None)
            if code not in STORED:
                shown = "no answer" if code is None else f"0x{code:04X}"
                return Outcome(f"C-STORE of {data.SOPClassUID.name}: status {shown}")
    finally:
        assoc.release()
    return Outcome(None)


def send(target: Target, datasets: list[Dataset], bundle: Any, settings: Settings) -> Outcome:
    if target.kind == "fhir":
        assert target.url
        return post_fhir(target.url, bundle, settings)
    if target.kind == "dicomweb":
        assert target.url
        return stow(target.url, [part10(ds) for ds in datasets], settings)
    return c_store(target, datasets, settings)


def _build(session: Session, job: Job) -> tuple[list[Dataset], dict[str, str]]:
    """The SR (always) and the SEG (when the job has masks on the source geometry)."""
    material = load_material(session, job)
    masks, _why = seg_masks(job.id, material)
    datasets = [sr_dataset(job.id, material, masks)]
    sent = {"sr": str(datasets[0].SOPInstanceUID)}
    if masks is None:
        sent["seg_not_sent"] = "masks_unavailable"
    else:
        seg = seg_dataset(job.id, material, masks)
        datasets.append(seg)
        sent["seg"] = str(seg.SOPInstanceUID)
    return datasets, sent


def _fhir(job: Job) -> dict[str, Any]:
    ensure_finished(job)
    issued = job.updated_at if job.updated_at.tzinfo else job.updated_at.replace(tzinfo=UTC)
    return transaction_bundle(build_bundle(job_view(job), issued.isoformat()))


@celery_app.task(name=DESTINATION_TASK, bind=True, acks_late=True)
def deliver_results(self: Task, delivery_id: str) -> str:
    """One attempt at sending a job's SR and SEG to one destination (see the module)."""
    settings = get_settings()
    with session_scope() as session:
        delivery = session.get(DestinationDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return "skipped"  # a redelivered message sends nothing twice
        destination = session.get(ResultDestination, delivery.destination_id)
        job_id = delivery.job_id
        attempt_no = delivery.attempts + 1
        hold = utcnow() + timedelta(
            seconds=2 * settings.destination_timeout_s + ATTEMPT_HOLD_MARGIN_S
        )
        claimed = session.execute(
            update(DestinationDelivery)
            .where(
                DestinationDelivery.id == delivery_id,
                DestinationDelivery.status == "pending",
                DestinationDelivery.attempts == attempt_no - 1,
            )
            .values(attempts=attempt_no, next_attempt_at=hold)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return "skipped"
        removed = destination is None or destination.removed_at is not None
        target = None if destination is None else Target(
            destination.kind, destination.url, destination.host, destination.port,
            destination.ae_title,
        )  # fmt: skip
    # The claim is committed: building the SEG takes a while, and holds no write lock.
    started = time.perf_counter()
    outcome: Outcome | None = None
    datasets: list[Dataset] = []
    bundle: dict[str, Any] = {}
    if removed or target is None:
        outcome = Outcome("the destination was removed", final=True)
    else:
        with session_scope() as session:
            job = session.get(Job, job_id)
            try:
                if job is None:
                    outcome = Outcome("the job was deleted", final=True)
                elif target.kind == "fhir":
                    bundle = _fhir(job)
                    sent = {"report": bundle["entry"][0]["resource"]["id"]}
                else:
                    datasets, sent = _build(session, job)
            except ResultUnavailable as missing:
                outcome = Outcome(f"{missing.code}: {missing}", final=True)
            except Exception as exc:  # blob storage away, say: one failed attempt, retried
                log.warning("results %s could not be built", delivery_id, exc_info=True)
                outcome = Outcome(f"building the results failed: {type(exc).__name__}: {exc}")
            if outcome is None:
                session.execute(
                    update(DestinationDelivery)
                    .where(DestinationDelivery.id == delivery_id)
                    .values(sent=sent)
                )
    if outcome is None and target is not None:
        try:
            outcome = send(target, datasets, bundle, settings)
        except Exception as exc:  # a network library's surprise is one failed attempt
            outcome = Outcome(f"{type(exc).__name__}: {exc}")
    assert outcome is not None
    return _record(delivery_id, attempt_no, outcome, started, settings)


def _record(
    delivery_id: str, attempt_no: int, outcome: Outcome, started: float, settings: Settings
) -> str:
    error = outcome.error
    with session_scope() as session:
        delivery = session.get(DestinationDelivery, delivery_id)
        if delivery is None:
            return "deleted"
        session.add(
            DestinationAttempt(
                delivery_id=delivery_id,
                attempt=attempt_no,
                error=error,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        )
        delivery.last_error = error
        if error is None:
            delivery.status, delivery.next_attempt_at = "delivered", None
            delivery.delivered_at = utcnow()
            return "delivered"
        if outcome.final or attempt_no >= settings.webhook_max_attempts:
            delivery.status, delivery.next_attempt_at = "failed", None
            log.warning("results %s not delivered: %s", delivery_id, error)
            return "failed"
        countdown = settings.webhook_backoff_s * 2 ** (attempt_no - 1)
        delivery.next_attempt_at = utcnow() + timedelta(seconds=countdown)
    log.info(
        "results %s attempt %d failed (%s); the sweeper retries in %.0fs",
        delivery_id, attempt_no, error, countdown,
    )  # fmt: skip
    return "retry"
