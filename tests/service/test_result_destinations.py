"""Result destinations in-process (eager Celery, SQLite) on the real P002 series: a job's SR
and SEG reach a DICOM node by C-STORE (a pynetdicom SCP) and a DICOMweb endpoint by STOW-RS
(a recording HTTP server); the job API shows each delivery; a refused or unreachable node is
a failed attempt retried by the sweeper; a redelivery stores the same SOP instances; another
tenant's destination receives nothing; destinations pass the callback policy."""

from __future__ import annotations

import email.parser
import email.policy
import importlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SegmentationStorage,
)
from sqlalchemy import select, update

from services.asgi import create_app
from services.celery import TASK_MODULES
from services.cli.runtime import free_port
from services.common import tasks
from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.destinations import DestinationError, add_destination
from services.common.orm import (
    DestinationAttempt,
    DestinationDelivery,
    ResultDestination,
    utcnow,
)
from services.common.queue import celery_app
from services.common.tenants import tenant_by_name
from services.webhooks.destinations import deliver_results
from tests.service.test_dicom_results import _zip_series
from tests.support.pacs import pacs_series
from tests.support.service import auth, make_tenant, upload_study

for _module in TASK_MODULES:
    importlib.import_module(_module)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


class StoreScp:
    """A DICOM node (pynetdicom) that keeps what it is sent, by calling AE title."""

    def __init__(self, ae_title: str = "PACS1") -> None:
        self.port = free_port()
        self.received: list[tuple[str, pydicom.Dataset]] = []
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        for sop_class in (Comprehensive3DSRStorage, SegmentationStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        data = event.dataset
        data.file_meta = event.file_meta
        self.received.append((event.assoc.requestor.ae_title.strip(), data))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


class StowReceiver:
    """A DICOMweb endpoint that keeps every instance of every STOW-RS request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[pydicom.Dataset]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
                parts = [
                    pydicom.dcmread(io.BytesIO(part.get_payload(decode=True)))
                    for part in message.iter_parts()
                ]
                owner.requests.append((self.path, parts))
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


class FhirReceiver:
    """A FHIR server's base URL that keeps every Bundle POSTed to it."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"] == "application/fhir+json"
                owner.bundles.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.end_headers()
                self.wfile.write(b'{"resourceType": "Bundle", "type": "transaction-response"}')

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def eager_client(isolated_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    isolated_settings(broker_url="memory://", webhook_backoff_s=3600)
    celery_app.conf.task_always_eager = True
    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        celery_app.conf.task_always_eager = False


def _add(tenant: str, name: str, kind: str, **target: Any) -> None:
    with session_scope() as session:
        add_destination(
            session, get_settings(), tenant_by_name(session, tenant), name, kind, **target
        )


def test_p002_sr_and_seg_reach_a_dicom_node_and_a_dicomweb_endpoint(
    eager_client: TestClient, covid_series: Path
) -> None:
    client = eager_client
    alice, mallory = make_tenant("alice"), make_tenant("mallory")
    pacs, stow, mallory_pacs = StoreScp("PACS1"), StowReceiver(), StoreScp("MPACS")
    ehr = FhirReceiver()
    down_port = free_port()  # nothing listens there yet
    try:
        _add("alice", "pacs", "dimse", host="127.0.0.1", port=pacs.port, ae_title="PACS1")
        _add("alice", "web", "dicomweb", url=stow.url)
        _add("alice", "ehr", "fhir", url=ehr.url)
        _add("alice", "late", "dimse", host="127.0.0.1", port=down_port, ae_title="LATE")
        _add("mallory", "pacs", "dimse", host="127.0.0.1", port=mallory_pacs.port,
             ae_title="MPACS")  # fmt: skip
        files = pacs_series(covid_series)
        job_id = upload_study(
            client, alice, _zip_series(files), filename="p002.zip", filetype="application/zip"
        )
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(alice)).json()
        assert job["status"] == "succeeded", job
        by_name = {d["destination"]: d for d in job["deliveries"]}
        assert by_name["pacs"]["status"] == by_name["web"]["status"] == "delivered", by_name
        assert by_name["pacs"]["target"] == f"PACS1@127.0.0.1:{pacs.port}"
        # The node that is down: one failed attempt, due again later (the sweeper's work).
        assert by_name["late"]["status"] == "pending" and by_name["late"]["attempts"] == 1
        assert "association" in by_name["late"]["last_error"]

        sr = pydicom.dcmread(io.BytesIO(client.get(f"/v1/jobs/{job_id}/dicom/sr",
                                                   headers=auth(alice)).content))  # fmt: skip
        seg = pydicom.dcmread(io.BytesIO(client.get(f"/v1/jobs/{job_id}/dicom/seg",
                                                    headers=auth(alice)).content))  # fmt: skip
        expected = {str(sr.SOPInstanceUID), str(seg.SOPInstanceUID)}
        assert by_name["pacs"]["sent"] == {"sr": sr.SOPInstanceUID, "seg": seg.SOPInstanceUID}
        # C-STORE: we call as COVIDCT; the SR and SEG as the API serves them.
        assert {c for c, _ in pacs.received} == {"COVIDCT"}
        assert {str(d.SOPInstanceUID) for _, d in pacs.received} == expected
        stored_sr = next(d for _, d in pacs.received if d.Modality == "SR")
        assert stored_sr.StudyInstanceUID == sr.StudyInstanceUID  # filed in the source study
        assert stored_sr.ContentSequence == sr.ContentSequence
        # STOW-RS: one request to <url>/studies with both instances.
        assert [path for path, _ in stow.requests] == ["/dicom-web/studies"]
        assert {str(d.SOPInstanceUID) for d in stow.requests[0][1]} == expected
        # FHIR: the report as a transaction, each resource PUT at an id fixed by the job.
        assert by_name["ehr"]["status"] == "delivered"
        (bundle,) = ehr.bundles
        Bundle.model_validate(bundle)
        assert bundle["type"] == "transaction"
        report = bundle["entry"][0]["resource"]
        assert report["resourceType"] == "DiagnosticReport"
        assert by_name["ehr"]["sent"] == {"report": report["id"]}
        put = {"method": "PUT", "url": f"DiagnosticReport/{report['id']}"}
        assert bundle["entry"][0]["request"] == put
        fetched = client.get(f"/v1/jobs/{job_id}/fhir", headers=auth(alice)).json()
        assert report["conclusion"] == fetched["entry"][0]["resource"]["conclusion"]
        paths = {e["request"]["url"] for e in bundle["entry"]}
        assert {r["reference"] for r in report["result"]} <= paths  # references resolve
        assert report["subject"]["reference"] in paths
        # Another tenant's destination receives nothing of alice's job.
        assert mallory_pacs.received == []
        assert client.get(f"/v1/jobs/{job_id}", headers=auth(mallory)).status_code == 404

        # A redelivery (an operator resets both) stores the same SOP instances: harmless.
        with session_scope() as session:
            session.execute(
                update(DestinationDelivery)
                .where(DestinationDelivery.status == "delivered")
                .values(status="pending", next_attempt_at=utcnow())
            )
        assert len(tasks.dispatch_due_destinations()) == 3
        assert len(pacs.received) == 4 and len(stow.requests) == 2
        assert ehr.bundles[1] == ehr.bundles[0]  # the same resources, PUT again
        assert {str(d.SOPInstanceUID) for _, d in pacs.received[2:]} == expected
        assert {str(d.SOPInstanceUID) for d in stow.requests[1][1]} == expected

        # The node comes up: the sweeper's next round (once due) delivers.
        late = StoreScp("LATE")
        try:
            with session_scope() as session:
                session.execute(
                    update(DestinationDelivery)
                    .where(DestinationDelivery.status == "pending")
                    .values(next_attempt_at=utcnow())
                )
                destination = session.scalars(
                    select(DestinationDelivery).where(DestinationDelivery.attempts == 1,
                                                      DestinationDelivery.status == "pending")
                ).one()  # fmt: skip
                delivery_id = destination.id
            late_port = late.port
            _retarget(delivery_id, late_port)
            assert tasks.dispatch_due_destinations() == [delivery_id]
        finally:
            late.stop()
        assert {str(d.SOPInstanceUID) for _, d in late.received} == expected
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(alice)).json()
        late_view = {d["destination"]: d for d in job["deliveries"]}["late"]
        assert (late_view["status"], late_view["attempts"]) == ("delivered", 2)
        with session_scope() as session:
            attempts = session.scalars(
                select(DestinationAttempt.error).where(
                    DestinationAttempt.delivery_id == delivery_id
                ).order_by(DestinationAttempt.attempt)
            ).all()  # fmt: skip
        assert attempts[0] is not None and attempts[1] is None
        # A message delivered twice by the broker sends nothing the second time.
        assert deliver_results.apply(args=(delivery_id,)).get() == "skipped"
    finally:
        pacs.stop(), stow.stop(), mallory_pacs.stop(), ehr.stop()


def _retarget(delivery_id: str, port: int) -> None:
    """The test's 'down' node comes up on a new free port (the old one cannot be reserved)."""
    with session_scope() as session:
        delivery = session.get(DestinationDelivery, delivery_id)
        assert delivery is not None
        destination = session.get(ResultDestination, delivery.destination_id)
        assert destination is not None
        destination.port = port


@pytest.mark.parametrize(
    ("kind", "target", "code"),
    [
        ("dimse", {"host": "10.1.2.3", "port": 104, "ae_title": "PACS"}, "destination_refused"),
        ("dimse", {"host": "169.254.169.254", "port": 80, "ae_title": "X"}, "destination_refused"),
        ("dimse", {"host": "localhost", "port": 104, "ae_title": "PACS"}, "destination_refused"),
        ("dimse", {"host": "0x7f.1", "port": 104, "ae_title": "PACS"}, "destination_refused"),
        ("dimse", {"host": "pacs.example", "port": 0, "ae_title": "PACS"}, "destination_refused"),
        ("dimse", {"host": "pacs.example", "port": 104, "ae_title": "A" * 17}, "invalid_ae_title"),
        ("dimse", {"host": "pacs.example", "port": 104, "ae_title": "A\\B"}, "invalid_ae_title"),
        ("dimse", {"host": "pacs.example", "port": 104}, "invalid_destination"),
        ("dicomweb", {"url": "http://192.168.1.5/dicom-web"}, "destination_refused"),
        ("dicomweb", {"url": "http://[::1]:8042/dicom-web"}, "destination_refused"),
        ("dicomweb", {"url": "ftp://pacs.example/"}, "destination_refused"),
        ("dicomweb", {"url": "http://user:pw@pacs.example/"}, "destination_refused"),
        ("fax", {"url": "http://pacs.example/"}, "invalid_kind"),
    ],
)
def test_destinations_pass_the_callback_policy(
    isolated_settings: Callable[..., Settings], kind: str, target: dict[str, Any], code: str
) -> None:
    """Production policy (no allowed networks): private, loopback, link-local refused."""
    isolated_settings(webhook_allowed_networks="[]")
    make_tenant("alice")
    with pytest.raises(DestinationError) as refused:
        _add("alice", "x", kind, **target)
    assert refused.value.code == code


def test_a_destination_that_now_resolves_to_a_private_address_fails_at_once(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name passed when added; at delivery it resolves to 10.0.0.7, the
    attempt is refused and the delivery ends failed (no retry)."""
    from services.common.orm import Job
    from services.webhooks import destinations

    isolated_settings(webhook_allowed_networks="[]")
    tenant = make_tenant("alice")
    _add("alice", "pacs", "dimse", host="pacs.example", port=104, ae_title="PACS")
    monkeypatch.setattr(destinations, "resolve_host", lambda host, port: ["10.0.0.7"])
    monkeypatch.setattr(destinations, "_build", lambda session, job: ([], {}))
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"], status="succeeded", series={"source_format": "dicom"})
        session.add(job)
        session.flush()
        from services.common.destinations import create_destination_deliveries

        (delivery_id,) = create_destination_deliveries(session, job.id)
        assert create_destination_deliveries(session, job.id) == []  # one per destination
    assert deliver_results.apply(args=(delivery_id,)).get() == "failed"
    with session_scope() as session:
        delivery = session.get(DestinationDelivery, delivery_id)
        assert delivery is not None
        assert delivery.status == "failed" and delivery.attempts == 1
        assert delivery.last_error and "10.0.0.7 is not a public address" in delivery.last_error


def test_a_job_that_is_not_dicom_goes_to_fhir_destinations_only(
    isolated_settings: Callable[..., Settings],
) -> None:
    """An image or NIfTI verdict has no SR or SEG: only its FHIR report is sent."""
    from services.common.destinations import create_destination_deliveries
    from services.common.orm import Job

    isolated_settings()
    tenant = make_tenant("alice")
    _add("alice", "pacs", "dimse", host="127.0.0.1", port=104, ae_title="PACS")
    _add("alice", "ehr", "fhir", url="http://127.0.0.1:8080/fhir")
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"], status="succeeded", series={"source_format": "image"})
        failed = Job(tenant_id=tenant["id"], status="failed", series={"source_format": "dicom"})
        session.add_all([job, failed])
        session.flush()
        (delivery_id,) = create_destination_deliveries(session, job.id)
        assert create_destination_deliveries(session, failed.id) == []  # no verdict, nothing
        delivery = session.get(DestinationDelivery, delivery_id)
        assert delivery is not None
        assert delivery.destination_id == session.scalar(
            select(ResultDestination.id).where(ResultDestination.name == "ehr")
        )


def test_the_cli_adds_lists_and_removes_destinations_with_an_audit_trail(
    isolated_settings: Callable[..., Settings],
) -> None:
    from typer.testing import CliRunner

    from services.cli.main import app as cli
    from services.common.orm import AuditEvent

    isolated_settings(webhook_allowed_networks='["10.20.0.0/16"]')
    make_tenant("hospital")
    runner = CliRunner()
    node = ["--host", "10.20.1.5", "--port", "104", "--ae-title", "HOSP_PACS"]
    added = runner.invoke(cli, ["tenants", "add-destination", "hospital", "pacs1", *node])
    assert added.exit_code == 0, added.output
    assert "pacs1: dimse HOSP_PACS@10.20.1.5:104" in added.output
    web = ["tenants", "add-destination", "hospital", "web", "--url", "https://10.20.1.6/dicom-web"]
    assert runner.invoke(cli, web).exit_code == 0
    refused = runner.invoke(cli, ["tenants", "add-destination", "hospital", "lan", "--host",
                                  "192.168.0.9", "--port", "104", "--ae-title", "X"])  # fmt: skip
    assert refused.exit_code == 2
    assert "destination_refused" in refused.output and "private" in refused.output
    twice = runner.invoke(cli, [*web[:3], "web", "--url", "https://10.20.1.7/"])
    assert twice.exit_code == 2 and "destination_exists" in twice.output
    listed = runner.invoke(cli, ["tenants", "list-destinations", "hospital"]).output
    assert "pacs1" in listed and "dicomweb https://10.20.1.6/dicom-web" in listed
    assert runner.invoke(cli, ["tenants", "remove-destination", "hospital", "web"]).exit_code == 0
    gone = runner.invoke(cli, ["tenants", "remove-destination", "hospital", "web"])
    assert gone.exit_code == 1 and "destination_not_found" in gone.output
    assert "web" not in runner.invoke(cli, ["tenants", "list-destinations", "hospital"]).output
    with session_scope() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["destination_add", "destination_add", "destination_remove"]


def test_results_that_cannot_be_built_now_are_one_failed_attempt_retried(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blob storage away while the SEG is built: the attempt is recorded and due again,
    never a task that dies with its delivery claimed."""
    from services.common.destinations import create_destination_deliveries
    from services.common.orm import Job
    from services.webhooks import destinations

    isolated_settings()
    tenant = make_tenant("alice")
    _add("alice", "pacs", "dimse", host="127.0.0.1", port=104, ae_title="PACS")

    def storage_away(_session: Any, _job: Any) -> Any:
        raise ConnectionError("storage unreachable")

    monkeypatch.setattr(destinations, "_build", storage_away)
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"], status="succeeded", series={"source_format": "dicom"})
        session.add(job)
        session.flush()
        (delivery_id,) = create_destination_deliveries(session, job.id)
    assert deliver_results.apply(args=(delivery_id,)).get() == "retry"
    with session_scope() as session:
        delivery = session.get(DestinationDelivery, delivery_id)
        assert delivery is not None and delivery.status == "pending"
        assert delivery.attempts == 1 and delivery.next_attempt_at is not None
        assert delivery.last_error and "ConnectionError: storage unreachable" in delivery.last_error
