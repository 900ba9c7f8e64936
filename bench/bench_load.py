"""The gateway under concurrent load, against real stacks started in this run (loopback only).

- ``embedded``: :func:`services.cli.runtime.start_stack` on a temp ``var_dir`` (SQLite, the
  embedded Redis, one Celery worker);
- ``production``: the same over PostgreSQL (a fresh database, dropped afterwards) and the
  shared Redis on db 13 (flushed before and after).

Phase 1: ``--clients`` concurrent clients each create a job and a tus upload of a small
body (creation-with-upload), honouring ``503 Retry-After`` as a client should (bounded).
Then every created job is read back: a job created (201) but not found is *lost*.
Phase 2: ``--duration`` seconds of ``GET /v1/jobs/{id}`` with ``--in-flight`` requests in
flight, while a separate thread probes ``/healthz``. One second after the load stops the
gateway must answer ``/healthz`` and a job read normally (200 within 1 s).

Printed per stack: requests/s, p50/p99 latency, counts by status, lost jobs, the slowest
``/healthz`` during the load and ``answers_after_load`` (1 = yes).
Usage: ``python -m bench.bench_load [--clients 100] [--duration 20] [--in-flight 200]
[--stacks embedded production]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session

from bench.common import children_output, flush_redis, report
from harness.stacks import fresh_postgres_database
from services.cli.runtime import Stack, free_port, start_stack
from services.common.config import Settings
from services.common.db import make_engine
from services.common.tenants import create_tenant

PG_DB = "covidct_bench_load"
PROD_BROKER = "redis://127.0.0.1:6379/13"
QUIET_ENV = {"COVIDCT_LOG_LEVEL": "WARNING"}
REQUEST_TIMEOUT_S = 10.0
PHASE1_DEADLINE_S = 120.0  # bound on phase 1, retries included
MAX_ATTEMPTS = 30  # per request, on 503
MAX_DURATION_S = 300.0
CLIENT_CONNECTIONS = 10  # connections per httpx client in phase 2
BODY = b"not a real study, " * 56  # ~1 KiB


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _stack(settings: Settings, log: Path, extra_env: dict[str, str]) -> Iterator[Stack]:
    with children_output(log):
        stack = start_stack(settings, free_port(), concurrency=1, extra_env=extra_env)
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{stack.url}/healthz", timeout=2).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not answer /healthz")
            time.sleep(0.2)
        yield stack
    finally:
        with children_output(log):
            stack.stop()


def _api_key(settings: Settings) -> str:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with Session(engine) as session:
            key = create_tenant(session, settings, f"bench-load-{time.time_ns()}")["api_key"]
            session.commit()
        return key
    finally:
        engine.dispose()


def _ok(status: str) -> bool:
    return status.isdigit() and 200 <= int(status) < 300


class Recorder:
    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.latencies: list[float] = []

    async def send(
        self, http: httpx.AsyncClient, method: str, path: str, retry: bool, **kwargs: Any
    ) -> httpx.Response | None:
        """One request (with retries on 503 after Retry-After when ``retry``); None if it
        never got an answer."""
        for _ in range(MAX_ATTEMPTS if retry else 1):
            started = time.perf_counter()
            try:
                response = await http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                self.statuses[type(exc).__name__] += 1
                return None
            self.latencies.append(time.perf_counter() - started)
            self.statuses[str(response.status_code)] += 1
            if response.status_code != 503 or not retry:
                return response
            await asyncio.sleep(float(response.headers.get("retry-after", "1")) * random.random())
        return response

    def summary(self, prefix: str, elapsed_s: float) -> dict[str, float]:
        ordered = sorted(self.latencies) or [float("nan")]
        result = {
            f"{prefix}_requests": float(sum(self.statuses.values())),
            f"{prefix}_requests_per_s": sum(self.statuses.values()) / elapsed_s,
            f"{prefix}_ok_per_s": sum(v for k, v in self.statuses.items() if _ok(k)) / elapsed_s,
            f"{prefix}_p50_ms": 1000 * ordered[len(ordered) // 2],
            f"{prefix}_p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            f"{prefix}_elapsed_s": elapsed_s,
        }
        for status, count in sorted(self.statuses.items()):
            result[f"{prefix}_status_{status}"] = float(count)
        return result


def _tus_metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


class HealthProbe:
    """``/healthz`` latency from its own thread (the load's client work cannot delay it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    if http.get("/healthz").status_code != 200:
                        self.failures += 1
                except httpx.HTTPError:
                    self.failures += 1
                self.worst = max(self.worst, time.perf_counter() - started)
                time.sleep(0.2)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _phase1(url: str, headers: dict[str, str], clients: int) -> tuple[Recorder, list[str]]:
    recorder = Recorder()
    created: list[str] = []
    digest = hashlib.sha256(BODY).hexdigest()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient, index: int) -> None:
        job = await recorder.send(
            http, "POST", "/v1/jobs", True, json={"external_id": f"load-{index}"}
        )
        if job is None or job.status_code != 201:
            return
        job_id = job.json()["id"]
        created.append(job_id)
        tus = {
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(BODY)),
            "Upload-Metadata": _tus_metadata(
                job_id=job_id, filename="study.zip", filetype="application/zip", sha256=digest
            ),
            "Content-Type": "application/offset+octet-stream",
        }
        await recorder.send(http, "POST", "/v1/uploads", True, headers=tus, content=BODY)

    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as http:
        await asyncio.wait_for(
            asyncio.gather(*(client(http, i) for i in range(clients))), PHASE1_DEADLINE_S
        )
    return recorder, created


async def _lost(url: str, headers: dict[str, str], job_ids: list[str]) -> int:
    recorder = Recorder()
    limits = httpx.Limits(max_connections=10)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as http:
        semaphore = asyncio.Semaphore(10)

        async def found(job_id: str) -> bool:
            async with semaphore:
                response = await recorder.send(http, "GET", f"/v1/jobs/{job_id}", True)
            return response is not None and response.status_code == 200

        answers = await asyncio.gather(*(found(j) for j in job_ids))
    return sum(not ok for ok in answers)


async def _phase2(
    url: str, headers: dict[str, str], job_ids: list[str], in_flight: int, duration_s: float
) -> tuple[Recorder, float]:
    recorder = Recorder()
    deadline = time.monotonic() + duration_s

    async def loop(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            await recorder.send(http, "GET", f"/v1/jobs/{random.choice(job_ids)}", False)

    # httpx's pool gets slow with hundreds of connections in one client: one client per
    # CLIENT_CONNECTIONS requests in flight, so the load generator is not the bottleneck.
    sizes = [CLIENT_CONNECTIONS] * (in_flight // CLIENT_CONNECTIONS)
    sizes += [in_flight % CLIENT_CONNECTIONS] if in_flight % CLIENT_CONNECTIONS else []
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for size in sizes:
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=url,
                    headers=headers,
                    timeout=REQUEST_TIMEOUT_S,
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                )
            )
            tasks += [loop(http) for _ in range(size)]
        await asyncio.gather(*tasks)
    return recorder, time.monotonic() - started


def _answers_after_load(url: str, headers: dict[str, str], job_id: str) -> float:
    time.sleep(1.0)
    try:
        started = time.perf_counter()
        health = httpx.get(f"{url}/healthz", timeout=1)
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=1)
        quick = time.perf_counter() - started < 1.0
    except httpx.HTTPError:
        return 0.0
    return float(quick and health.status_code == 200 and job.status_code == 200)


def _measure_stack(
    prefix: str,
    settings: Settings,
    tmp: Path,
    args: argparse.Namespace,
    extra_env: dict[str, str] | None = None,
) -> dict[str, float]:
    with _stack(settings, tmp / f"{prefix}.log", {**QUIET_ENV, **(extra_env or {})}) as stack:
        headers = {"Authorization": f"Bearer {_api_key(settings)}"}
        _progress(f"{prefix}: phase 1, {args.clients} clients creating a job and an upload")
        with HealthProbe(stack.url) as probe1:
            started = time.monotonic()
            phase1, created = asyncio.run(_phase1(stack.url, headers, args.clients))
            phase1_s = time.monotonic() - started
        lost = asyncio.run(_lost(stack.url, headers, created))
        if not created:
            raise RuntimeError(f"{prefix}: no job was created")
        _progress(f"{prefix}: phase 2, {args.duration:.0f}s of GETs, {args.in_flight} in flight")
        with HealthProbe(stack.url) as probe2:
            phase2, phase2_s = asyncio.run(
                _phase2(stack.url, headers, created, args.in_flight, args.duration)
            )
        after = _answers_after_load(stack.url, headers, created[0])
        alive = float(stack.alive())
    return {
        **phase1.summary(f"{prefix}_p1", phase1_s),
        f"{prefix}_p1_jobs_created": float(len(created)),
        f"{prefix}_p1_lost_jobs": float(lost),
        f"{prefix}_p1_healthz_worst_ms": 1000 * probe1.worst,
        f"{prefix}_p1_healthz_failures": float(probe1.failures),
        **phase2.summary(f"{prefix}_p2", phase2_s),
        f"{prefix}_p2_healthz_worst_ms": 1000 * probe2.worst,
        f"{prefix}_p2_healthz_failures": float(probe2.failures),
        f"{prefix}_answers_after_load": after,
        f"{prefix}_stack_alive": alive,
    }


def main(args: argparse.Namespace) -> dict[str, float]:
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="covidct-bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        if "embedded" in args.stacks:
            result |= _measure_stack("embedded", Settings(var_dir=tmp / "embedded"), tmp, args)
        if "production" in args.stacks:
            with ExitStack() as stack:
                database_url = stack.enter_context(fresh_postgres_database(PG_DB))
                flush_redis(PROD_BROKER)
                stack.callback(flush_redis, PROD_BROKER)
                production = Settings(
                    var_dir=tmp / "production", database_url=database_url, broker_url=PROD_BROKER
                )
                result |= _measure_stack("production", production, tmp, args)
    return report(result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=20.0, help="phase 2 seconds")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument(
        "--stacks", nargs="+", default=["embedded"], choices=["embedded", "production"]
    )
    args = parser.parse_args(argv)
    args.duration = min(args.duration, MAX_DURATION_S)
    return args


if __name__ == "__main__":
    main(parse_args())
