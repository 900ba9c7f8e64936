"""Gateway hardening: bounded inputs, the documented contract, and behaviour under load
(no 500, a fast 503 with Retry-After when saturated, /healthz always answering)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.asgi import create_app
from services.cli.runtime import free_port, gateway_command
from services.common import tasks as common_tasks
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job
from services.gateway import auth as gateway_auth
from services.gateway import limits
from services.gateway.limits import InFlightLimit, RouteClass
from tests.support.service import auth, make_tenant, new_job, tus_metadata

OCTETS = "application/offset+octet-stream"


@pytest.fixture
def client(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setattr(common_tasks, "dispatch", lambda *_args: None)
    isolated_settings(broker_url="redis://127.0.0.1:1/0")  # no broker
    with TestClient(create_app()) as test_client:
        yield test_client


# --- every integer and string in the API is bounded: 422, never 500 ------------------------


@pytest.mark.parametrize(
    "query",
    ["offset=9223372036854775808", "offset=2147483648", "offset=-1", "limit=0", "limit=201"],
)
def test_out_of_range_list_parameters_are_422(
    client: TestClient, alice: dict[str, str], query: str
) -> None:
    response = client.get(f"/v1/jobs?{query}", headers=auth(alice))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"


def test_largest_offset_is_an_empty_page(client: TestClient, alice: dict[str, str]) -> None:
    page = client.get("/v1/jobs?offset=2147483647", headers=auth(alice))
    assert page.status_code == 200 and page.json()["items"] == []


@pytest.mark.parametrize("index", ["99999999999999999999", "2147483648", "-1"])
def test_out_of_range_slice_index_is_422(
    client: TestClient, alice: dict[str, str], index: str
) -> None:
    job = new_job(client, alice)
    response = client.get(f"/v1/jobs/{job['id']}/heatmaps/{index}", headers=auth(alice))
    assert response.status_code == 422, response.text
    ok = client.get(f"/v1/jobs/{job['id']}/heatmaps/2147483647", headers=auth(alice))
    assert ok.status_code == 404


def test_overlong_job_id_is_422(client: TestClient, alice: dict[str, str]) -> None:
    for method in ("GET", "DELETE"):
        response = client.request(method, "/v1/jobs/" + "a" * 5000, headers=auth(alice))
        assert response.status_code == 422, method


@pytest.mark.parametrize("bad", ["acc\x00-1", "acc\n1", "a\tb", "esc\x1b[31m", "c1\x85", "\x7f"])
def test_control_characters_in_external_id_are_422(
    client: TestClient, alice: dict[str, str], bad: str
) -> None:
    response = client.post("/v1/jobs", json={"external_id": bad}, headers=auth(alice))
    assert response.status_code == 422, repr(bad)
    assert response.json()["details"][0]["loc"] == ["body", "external_id"]


def test_printable_external_ids_are_kept(client: TestClient, alice: dict[str, str]) -> None:
    for good in ("acc-1", "Ünïcödé 患者 #7", "a" * 200):
        assert new_job(client, alice, external_id=good)["external_id"] == good
    too_long = client.post("/v1/jobs", json={"external_id": "a" * 201}, headers=auth(alice))
    assert too_long.status_code == 422


def test_idempotency_key_with_control_characters_is_422(
    client: TestClient, alice: dict[str, str]
) -> None:
    headers = {**auth(alice), "Idempotency-Key": "k\x011"}
    assert client.post("/v1/jobs", json={}, headers=headers).status_code == 422


# --- the OpenAPI document states the security scheme and the error responses ---------------


def test_openapi_documents_bearer_auth_and_errors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes == {
        "ApiKey": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "cct_...",
            "description": "The tenant's API key: `Authorization: Bearer <api_key>`.",
        }
    }
    paths = document["paths"]
    expected = {
        ("/v1/jobs", "post"): {"401", "409", "422", "503"},
        ("/v1/jobs", "get"): {"401", "422", "503"},
        ("/v1/jobs/{job_id}", "get"): {"401", "404", "422", "503"},
        ("/v1/jobs/{job_id}", "delete"): {"202", "401", "404", "503"},
        ("/v1/jobs/{job_id}/slices", "get"): {"401", "404"},
        ("/v1/jobs/{job_id}/heatmaps/{slice_index}", "get"): {"401", "404"},
        ("/v1/uploads", "post"): {"401", "404", "409", "412", "413", "415"},
        ("/v1/uploads/{uuid}", "patch"): {"401", "404", "409", "412", "413", "415"},
    }
    for (path, method), codes in expected.items():
        operation = paths[path][method]
        assert codes <= set(operation["responses"]), (path, method)
        assert operation["security"] == [{"ApiKey": []}], (path, method)
        problem = operation["responses"]["401"]["content"]["application/json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}
    assert "security" not in paths["/healthz"]["get"]
    offset = next(p for p in paths["/v1/jobs"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 2**31 - 1


def test_documenting_the_scheme_changed_no_behaviour(
    client: TestClient, alice: dict[str, str]
) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        response = client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers=auth(alice)).status_code == 200


# --- saturation: 503 + Retry-After, never a hang or a 500 ----------------------------------


def test_pool_timeout_is_503_with_retry_after(
    client: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*_args: Any) -> None:
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")

    monkeypatch.setattr(gateway_auth, "tenant_by_api_key", exhausted)
    response = client.get("/v1/jobs", headers=auth(alice))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "database_unavailable"


def test_a_pool_smaller_than_the_threadpool_is_refused(
    isolated_settings: Callable[..., Settings],
) -> None:
    isolated_settings(gateway_threads=16, db_pool_size=5, db_max_overflow=10)
    with pytest.raises(ValueError, match="gateway_threads"):
        create_app()


def test_limiter_answers_503_fast_when_saturated() -> None:
    release = asyncio.Event()
    inner = FastAPI()

    @inner.get("/v1/jobs")
    async def slow() -> dict[str, str]:
        await release.wait()
        return {"status": "done"}

    @inner.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app = InFlightLimit(
        inner, [RouteClass("jobs", "/v1/jobs", 2)], queue_timeout_s=0.2, retry_after_s=3
    )

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            holders = [asyncio.create_task(http.get("/v1/jobs")) for _ in range(2)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            refused = await http.get("/v1/jobs")
            assert time.monotonic() - started < 1.0
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "3"
            assert refused.json()["code"] == "busy"
            assert (await http.get("/healthz")).status_code == 200  # never limited
            release.set()
            assert [r.status_code for r in await asyncio.gather(*holders)] == [200, 200]
            assert (await http.get("/v1/jobs")).status_code == 200  # slots came back

    asyncio.run(scenario())


# --- a real uvicorn with a small pool under 150 concurrent GETs -----------------------------

LOAD_ENV = {
    "COVIDCT_GATEWAY_THREADS": "4",
    "COVIDCT_DB_POOL_SIZE": "2",
    "COVIDCT_DB_MAX_OVERFLOW": "3",
    "COVIDCT_GATEWAY_MAX_IN_FLIGHT": "4",
    "COVIDCT_GATEWAY_QUEUE_TIMEOUT_S": "0.5",
    "COVIDCT_LOG_LEVEL": "WARNING",
    "COVIDCT_BROKER_URL": "redis://127.0.0.1:1/0",
}


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("gateway did not start")


@pytest.fixture
def small_gateway(
    isolated_settings: Callable[..., Settings],
) -> Iterator[tuple[str, dict[str, str], str]]:
    """A uvicorn gateway (its own process) with 4 threads and a pool of 5; a tenant and job."""
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    tenant = make_tenant("loaded")
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"])
        session.add(job)
        session.flush()
        job_id = job.id
    port = free_port()
    env = {**os.environ, **LOAD_ENV}
    process = subprocess.Popen(gateway_command(port), env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url, tenant, job_id
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def _load(url: str, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    statuses: Counter[int | str] = Counter()
    missing_retry_after = 0
    health: list[float] = []
    done = threading.Event()
    # No keep-alive: a connection idle past uvicorn's keep-alive timeout (5 s; a slow machine
    # takes that long over a wave) is closed by the server as the next wave reuses it, a
    # ReadError of the client's pool, not of the gateway under load (seen once in CI).
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)

    async def one(http: httpx.AsyncClient, path: str) -> None:
        nonlocal missing_retry_after
        try:
            response = await http.get(path, headers=headers)
        except httpx.HTTPError as exc:  # a hang past the timeout counts as a failure
            statuses[type(exc).__name__] += 1
            return
        statuses[response.status_code] += 1
        if response.status_code == 503 and "retry-after" not in response.headers:
            missing_retry_after += 1

    def probe() -> None:  # its own thread: the load's client work does not delay it
        with httpx.Client(base_url=url, timeout=5) as http:
            while not done.is_set():
                started = time.monotonic()
                try:
                    ok = http.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                health.append(time.monotonic() - started if ok else float("inf"))
                time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    async with httpx.AsyncClient(base_url=url, timeout=15, limits=limits) as http:
        await asyncio.sleep(0.2)
        for _ in range(2):  # two waves of 150 concurrent requests
            paths = [f"/v1/jobs/{job_id}" if i % 3 else "/v1/jobs?limit=5" for i in range(150)]
            await asyncio.gather(*(one(http, p) for p in paths))
    done.set()
    prober.join()
    return {"statuses": statuses, "missing_retry_after": missing_retry_after, "health": health}


def test_concurrent_load_never_500s_and_healthz_answers(
    small_gateway: tuple[str, dict[str, str], str],
) -> None:
    url, tenant, job_id = small_gateway
    result = asyncio.run(_load(url, auth(tenant), job_id))
    statuses = result["statuses"]
    assert sum(statuses.values()) == 300
    assert set(statuses) <= {200, 503}, statuses  # no 500, no timeout, no reset
    assert statuses[200] > 0
    assert result["missing_retry_after"] == 0
    assert result["health"] and max(result["health"]) < 1.0, result["health"]
    # Right after the load, normal answers.
    started = time.monotonic()
    after = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(tenant), timeout=5)
    assert after.status_code == 200 and after.json()["id"] == job_id
    assert time.monotonic() - started < 1.0
    assert httpx.get(f"{url}/healthz", timeout=1).status_code == 200


# --- slow clients cannot hold every upload slot (issue 18.8) --------------------------------


@contextmanager
def in_process_gateway() -> Iterator[int]:
    """The app under a real uvicorn on a free loopback port, in a thread of this process
    (so the test's settings and database are the server's); yields the port."""
    port = free_port()
    config = uvicorn.Config(
        create_app, factory=True, host="127.0.0.1", port=port, log_level="warning",
        proxy_headers=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


def trickling_patch(port: int, location: str, headers: dict[str, str]) -> socket.socket:
    """A PATCH that declares 100 bytes, sends one and then nothing (a slow client)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    lines = [f"PATCH {location} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Length: 100"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b"x")
    return sock


def response_status(sock: socket.socket) -> int:
    """The status of the response on ``sock`` (waits for it up to the socket's timeout)."""
    head = sock.recv(65536)
    return int(head.split(b" ", 2)[1])


def uploads_in_flight() -> float:
    return float(limits.IN_FLIGHT.labels("uploads")._value.get())


# Defect: 32 connections sending 1 byte/s made every other tenant's upload 503 for as long
# as they lasted (no per-client share of the slots, no body timeout).
def test_slow_upload_clients_cannot_take_every_slot(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    isolated_settings(
        broker_url="redis://127.0.0.1:1/0",
        gateway_max_uploads_in_flight=6,
        gateway_max_uploads_per_key=2,
        gateway_max_uploads_per_address=4,
        gateway_body_timeout_s=3,
        gateway_queue_timeout_s=0.2,
    )
    slow, slower, other = make_tenant("slow"), make_tenant("slower"), make_tenant("other")
    tus = {"Tus-Resumable": "1.0.0"}
    with in_process_gateway() as port:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=10) as http:

            def new_upload(tenant: dict[str, str]) -> str:
                job = http.post("/v1/jobs", json={}, headers=auth(tenant)).json()["id"]
                metadata = tus_metadata(job_id=job, filename="s.zip", filetype="application/zip")
                headers = {
                    **tus,
                    **auth(tenant),
                    "Upload-Length": "100",
                    "Upload-Metadata": metadata,
                }
                created = http.post("/v1/uploads", headers=headers)
                assert created.status_code == 201, created.text
                return urlsplit(created.headers["location"]).path

            slow_uploads = [new_upload(slow) for _ in range(4)]
            slower_uploads = [new_upload(slower) for _ in range(2)]
            other_uploads = [new_upload(other) for _ in range(3)]

        def upload_from(address: str, location: str) -> int:
            transport = httpx.HTTPTransport(local_address=address)
            with httpx.Client(base_url=url, timeout=10, transport=transport) as http:
                headers = {**tus, **auth(other), "Upload-Offset": "0", "Content-Type": OCTETS}
                return http.patch(location, headers=headers, content=os.urandom(100)).status_code

        patch = {**tus, **auth(slow), "Upload-Offset": "0", "Content-Type": OCTETS}
        held = [trickling_patch(port, slow_uploads[i], patch) for i in range(2)]
        deadline = time.monotonic() + 10
        while uploads_in_flight() < 2:
            assert time.monotonic() < deadline, "the slow PATCHes never started"
            time.sleep(0.02)
        # The same key's next slow PATCHes are refused at once: it holds its share.
        refused = [trickling_patch(port, slow_uploads[i], patch) for i in (2, 3)]
        assert [response_status(s) for s in refused] == [429, 429]
        # Another tenant uploads meanwhile, even from the same address.
        assert upload_from("127.0.0.1", other_uploads[0]) == 204
        # A second slow key from that address fills the address's share ...
        patch = {**tus, **auth(slower), "Upload-Offset": "0", "Content-Type": OCTETS}
        held += [trickling_patch(port, location, patch) for location in slower_uploads]
        while uploads_in_flight() < 4:
            assert time.monotonic() < deadline, "the slow PATCHes never started"
            time.sleep(0.02)
        # ... so that address waits, and every other address uploads.
        assert upload_from("127.0.0.1", other_uploads[1]) == 429
        assert upload_from("127.0.0.2", other_uploads[2]) == 204
        # The stalled bodies are ended by the body timeout (the byte that came is kept).
        assert [response_status(s) for s in held] == [204] * 4
        for sock in held + refused:
            sock.close()
        with httpx.Client(base_url=url, timeout=10) as http:
            head = http.head(slow_uploads[0], headers={**tus, **auth(slow)})
            assert head.headers["upload-offset"] == "1"
