"""Chaos on the embedded stack: 30 small jobs while a pool child, the worker main process,
Redis and the gateway are SIGKILLed at random moments (seeded: the same schedule every run).

Asserts every job ends `succeeded`, with exactly one result and one `job.succeeded` callback
(by webhook-id) each, events that follow the state machine, and no blob left that belongs to
no job (raw uploads are gone: their jobs ended). Prints how long each kill took to recover.
Bounded: 30 one-slice studies, 4 kills, at most JOBS_DEADLINE_S. Loopback only.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from pydicom.data import get_testdata_file
from sqlalchemy import create_engine, text

from services.cli.client import ApiClient, UploadState, submit
from services.cli.runtime import free_port, wait_ready
from tests.support.processes import children_of
from tests.support.service import callback_receiver

JOBS = 30
KILLS = ("pool child", "worker", "redis", "gateway")
SEED = 20261126
JOBS_DEADLINE_S = 420.0
# Tight recovery for the test; the defaults are 10 s / 60 s / 30 s.
ENV = {
    "COVIDCT_JOB_HEARTBEAT_S": "2",
    "COVIDCT_JOB_LEASE_S": "15",
    "COVIDCT_RECOVERY_INTERVAL_S": "5",
    "COVIDCT_LOG_LEVEL": "WARNING",
}
ORDER = ["awaiting_upload", "queued", "preprocessing", "scoring", "ensembling", "succeeded"]


def _target(up: int, kind: str) -> int | None:
    children = children_of(up)
    if kind == "redis":
        found = [p for p, cmd in children.items() if "redis-server" in cmd]
    elif kind == "gateway":
        found = [p for p, cmd in children.items() if "uvicorn" in cmd or " gateway" in cmd]
    else:
        workers = [p for p, cmd in children.items() if "celery" in cmd]
        pool = list(children_of(workers[0])) if workers else []  # prefork's children
        found = workers if kind == "worker" else pool
    return found[0] if found else None


def _recovered(up: int, kind: str, killed: int, server: str) -> bool:
    pid = _target(up, kind)
    if pid is None or pid == killed:
        return False
    if kind == "gateway":
        try:
            return httpx.get(f"{server}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    return True


def _submit_with_retries(client: ApiClient, study: Path, state: UploadState, url: str) -> str:
    deadline = time.monotonic() + 180
    while True:
        try:
            job, done = submit(client, study, state, callback_url=url)
            if done:
                return str(job["id"])
        except Exception:  # the gateway is down for a moment: resume from the saved state
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _study(directory: Path, index: int) -> Path:
    """A one-slice CT study, different bytes per job (each its own upload)."""
    import pydicom

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    dataset.AccessionNumber = f"CHAOS{index:04d}"
    path = directory / f"study-{index}.dcm"
    dataset.save_as(path)
    return path


def test_thirty_jobs_survive_random_kills(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    env.update(ENV, COVIDCT_VAR_DIR=str(tmp_path / "var"))
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rng = random.Random(SEED)
    recoveries: list[tuple[str, float]] = []
    job_ids: list[str] = []
    try:
        wait_ready(server, timeout_s=300)
        created = subprocess.run(
            [sys.executable, "-m", "services.cli", "tenants", "create", "chaos", "--json"],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        tenant = json.loads(created.stdout)
        client = ApiClient(server, tenant["api_key"])
        with callback_receiver() as receiver:

            def submit_all() -> None:
                for i in range(JOBS):
                    state = UploadState(tmp_path / f"state-{i}.json")
                    study = _study(tmp_path, i)
                    job_ids.append(_submit_with_retries(client, study, state, receiver.url))

            submitter = threading.Thread(target=submit_all)
            submitter.start()
            for kind in rng.sample(KILLS, len(KILLS)):
                time.sleep(rng.uniform(3, 8))
                pid = _target(up.pid, kind)
                waited = time.monotonic()
                while pid is None:  # a child still starting after the previous kill
                    assert time.monotonic() - waited < 60, (kind, children_of(up.pid))
                    time.sleep(0.5)
                    pid = _target(up.pid, kind)
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
                while not _recovered(up.pid, kind, pid, server):
                    assert time.monotonic() - killed_at < 120, f"{kind} did not come back"
                    time.sleep(0.2)
                recoveries.append((kind, time.monotonic() - killed_at))
            submitter.join(timeout=300)
            assert not submitter.is_alive() and len(job_ids) == JOBS
            chaos_over = time.monotonic()
            final = {job_id: client.wait(job_id, timeout_s=JOBS_DEADLINE_S) for job_id in job_ids}
            all_done_s = time.monotonic() - chaos_over
            deadline = time.monotonic() + 60  # callbacks follow their job's end
            while len({c.headers["webhook-id"] for c in receiver.received}) < JOBS:
                assert time.monotonic() < deadline
                time.sleep(0.5)
            time.sleep(3)  # a duplicate would arrive now
            callbacks = list(receiver.received)
        print(f"\nrecovery after SIGKILL: {', '.join(f'{k} {s:.1f} s' for k, s in recoveries)}")
        print(f"every job ended {all_done_s:.1f} s after the last kill")
        assert up.poll() is None  # `covidct up` itself never went down
        statuses = Counter(job["status"] for job in final.values())
        assert statuses == {"succeeded": JOBS}, {
            j: (job["status"], job.get("error")) for j, job in final.items()
        }
        _check_callbacks(callbacks, set(job_ids))
        _check_database(tmp_path / "var", set(job_ids))
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()


def _check_callbacks(callbacks: list[Any], job_ids: set[str]) -> None:
    per_job: dict[str, set[str]] = {}
    for callback in callbacks:
        body = json.loads(callback.body)
        assert body["type"] == "job.succeeded"
        per_job.setdefault(body["data"]["id"], set()).add(callback.headers["webhook-id"])
    assert set(per_job) == job_ids
    assert all(len(ids) == 1 for ids in per_job.values()), per_job


def _check_database(var_dir: Path, job_ids: set[str]) -> None:
    engine = create_engine(f"sqlite:///{var_dir / 'covidct.db'}")
    try:
        with engine.connect() as db:
            results = Counter(r[0] for r in db.execute(text("SELECT job_id FROM results")))
            assert results == Counter(dict.fromkeys(job_ids, 1))
            deliveries = db.execute(
                text("SELECT job_id, count(*) FROM webhook_deliveries GROUP BY job_id")
            ).all()
            assert all(count == 1 for _job, count in deliveries)
            events: dict[str, list[str]] = {}
            for job_id, status in db.execute(
                text("SELECT job_id, status FROM job_events ORDER BY id")
            ):
                events.setdefault(job_id, []).append(status)
            for job_id in job_ids:
                seen = events[job_id]
                # Each status at most once, in the state machine's order, ending succeeded.
                assert seen == sorted(set(seen), key=ORDER.index), (job_id, seen)
                assert seen[-1] == "succeeded"
            known = {r[0] for r in db.execute(text("SELECT id FROM jobs"))}
    finally:
        engine.dispose()
    blobs = var_dir / "blobs" / "jobs"
    stored = {p.name for p in blobs.iterdir()} if blobs.exists() else set()
    assert stored <= known, stored - known  # no blob of a job that does not exist
    assert not list(blobs.glob("*/upload/*")), "raw uploads of ended jobs are kept"
