"""Helpers for service tests: an isolated settings environment, tenants, tus requests,
and a callback receiver that records every signed POST it gets."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import func, select

from services.common.config import get_settings
from services.common.db import session_scope
from services.common.jobs import create_webhook_delivery, transition
from services.common.orm import Job, JobStatus
from services.common.tenants import create_tenant

_ONE_MINUTE = timedelta(minutes=1)


def make_tenant(name: str) -> dict[str, str]:
    with session_scope() as session:
        return create_tenant(session, get_settings(), name)


def finished_job_with_callback(callback_url: str) -> tuple[str, str, str]:
    """A job that just ended (failed) with its pending callback, written straight to the
    database (as if ``callback_url`` had never passed the API): (job id, delivery id,
    the tenant's webhook secret)."""
    tenant = make_tenant(f"t-{uuid.uuid4().hex}")
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"], callback_url=callback_url, status="ensembling")
        session.add(job)
        session.flush()
        transition(session, job.id, JobStatus.FAILED, [JobStatus.ENSEMBLING], error=("x", "y"))
        session.flush()
        delivery_id = create_webhook_delivery(session, job.id)
        assert create_webhook_delivery(session, job.id) is None  # one per job and event type
    assert delivery_id is not None
    return job.id, delivery_id, tenant["webhook_secret"]


def deliver_until_settled(delivery_id: str, rounds: int = 10) -> str:
    """Run a callback's delivery task, then each retry it leaves in the database as soon as
    it is recorded (what the sweeper does once the retry is due); the last outcome."""
    from sqlalchemy import update

    from services.common.orm import WebhookDelivery, utcnow
    from services.webhooks.delivery import deliver_webhook

    outcome = ""
    for _ in range(rounds):
        outcome = str(deliver_webhook.apply(args=(delivery_id,)).get())
        if outcome != "retry":
            return outcome
        with session_scope() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            assert delivery is not None and delivery.next_attempt_at is not None
            assert delivery.next_attempt_at > utcnow() - _ONE_MINUTE  # a due time was recorded
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(next_attempt_at=utcnow())
            )
    return outcome


def auth(tenant: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def new_job(client: Any, tenant: dict[str, str], **body: Any) -> dict[str, Any]:
    """``POST /v1/jobs`` through a TestClient; asserts 201."""
    response = client.post("/v1/jobs", json=body, headers=auth(tenant))
    assert response.status_code == 201, response.text
    return dict(response.json())


def tus_metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def tus_headers(tenant: dict[str, str], **extra: str) -> dict[str, str]:
    return {"Tus-Resumable": "1.0.0", **auth(tenant), **extra}


def upload_study(
    client: Any,
    tenant: dict[str, str],
    data: bytes,
    filename: str = "CT_small.dcm",
    filetype: str = "application/dicom",
    **job: Any,
) -> str:
    """Create a job (``job``: its body) and upload ``data`` with its sha256 in one tus
    creation-with-upload; asserts 201 and returns the job id. With eager Celery the whole
    pipeline has run when this returns."""
    job_id = new_job(client, tenant, **job)["id"]
    headers = tus_headers(
        tenant,
        **{"Upload-Length": str(len(data)), "Content-Type": "application/offset+octet-stream"},
    )
    headers["Upload-Metadata"] = tus_metadata(
        job_id=job_id, filename=filename, filetype=filetype,
        sha256=hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
    created = client.post("/v1/uploads", headers=headers, content=data)
    assert created.status_code == 201, created.text
    return str(job_id)


def row_counts(job_id: str, *models: Any) -> dict[str, int]:
    """Rows of each ORM model (a table with ``job_id``) that belong to ``job_id``."""
    with session_scope() as session:
        return {
            model.__tablename__: session.scalar(
                select(func.count()).select_from(model).where(model.job_id == job_id)
            )
            or 0
            for model in models
        }


@dataclass
class Callback:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CallbackReceiver:
    url: str
    received: list[Callback] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to this many requests first (to exercise retries)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def callback_receiver(
    fail_first: int = 0, bind: str = "127.0.0.1", url_host: str | None = None
) -> Iterator[CallbackReceiver]:
    """A receiver listening on ``bind``; its ``url`` names ``url_host`` (default: ``bind``),
    e.g. ``host.docker.internal`` for callbacks sent from containers to this host."""
    receiver = CallbackReceiver(url="", fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append(Callback(dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((bind, 0), Handler)
    receiver.url = f"http://{url_host or bind}:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def creation_record(job_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Who created a job (``jobs.created_by``) and its ``job_create`` audit events."""
    from sqlalchemy import select

    from services.common.audit import as_dict
    from services.common.orm import AuditEvent, Job

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.job_id == job_id, AuditEvent.action == "job_create")
        ).all()
        return job.created_by, [as_dict(e) for e in events]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 in a thread, for a client library that speaks
    HTTP itself (dicomweb-client); yields its base URL."""
    import time

    import uvicorn

    from services.cli.runtime import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
