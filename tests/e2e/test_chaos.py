"""Chaos on both stacks, supervised by `covidct up`: small jobs while processes are killed at
random moments (seeded: the same schedule every run).

- embedded (SQLite, embedded Redis, in-process scorer), 30 jobs: SIGKILL of a pool child, the
  worker main process, Redis and the gateway;
- redis-boundaries (the embedded stack), 12 jobs: Redis SIGKILLed 5 times in a row, each
  time right after a job crossed a stage boundary (its next step being published); besides
  the checks below, no stage of any job ran twice (every event's ``attempt`` is 1);
- production (PostgreSQL, Redis, TorchServe), 15 jobs: SIGKILL of a pool child, the worker
  and the gateway, TorchServe killed and started again, and every PostgreSQL connection of
  the service terminated (`pg_terminate_backend`). The machine's shared Redis is not killed
  here; the embedded run covers a Redis kill.

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import create_engine, text

from harness.stacks import POSTGRES_ADMIN_URL, fresh_postgres_database, fresh_redis_db, wait_up
from harness.torchserve import require_java, running_torchserve
from services.cli.client import ApiClient, UploadState, submit
from services.cli.runtime import free_port
from services.common.config import get_settings
from services.inference.mar import build_mar
from tests.support.processes import children_of
from tests.support.service import callback_receiver

SEED = 20261126
JOBS_DEADLINE_S = 420.0
# Tight recovery for the test; the defaults are 10 s / 60 s / 30 s.
ENV = {
    "COVIDCT_JOB_HEARTBEAT_S": "2",
    "COVIDCT_JOB_LEASE_S": "15",
    "COVIDCT_RECOVERY_INTERVAL_S": "5",
    "COVIDCT_STEP_REDISPATCH_S": "20",  # a message lost with a killed Redis: sent again
    "COVIDCT_LOG_LEVEL": "WARNING",
}
ORDER = ["awaiting_upload", "queued", "preprocessing", "scoring", "ensembling", "succeeded"]


@dataclass
class Chaos:
    """One stack under test: how to reach its parts and what to kill."""

    jobs: int
    kills: tuple[str, ...]
    env: dict[str, str]
    database_url: str
    torchserve: Callable[[], None] | None = None  # kill TorchServe and start it again
    extras: list[Any] = field(default_factory=list)
    boundary_kills: int = 0  # Redis killed this many times, each at a stage boundary
    one_run_per_stage: bool = False  # nothing killed a stage: none may have run twice


@pytest.fixture(params=["embedded", "redis-boundaries", "production"])
def chaos(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Chaos]:
    var_dir = tmp_path / "var"
    if request.param == "embedded":
        yield Chaos(
            jobs=30,
            kills=("pool child", "worker", "redis", "gateway"),
            env={"COVIDCT_VAR_DIR": str(var_dir)},
            database_url=f"sqlite:///{var_dir / 'covidct.db'}",
        )
        return
    if request.param == "redis-boundaries":
        yield Chaos(
            jobs=12,
            kills=(),
            env={"COVIDCT_VAR_DIR": str(var_dir)},
            database_url=f"sqlite:///{var_dir / 'covidct.db'}",
            boundary_kills=5,
            one_run_per_stage=True,
        )
        return
    require_java()
    settings = get_settings()
    mar = build_mar(settings.slice_model_dir, tmp_path / "model-store", settings.scorer_model_name)
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    with fresh_postgres_database("covidct_chaos") as database_url, ExitStack() as torchserve:
        generation = [0]

        def start_torchserve() -> str:
            generation[0] += 1
            server_dir = tmp_path / f"torchserve-{generation[0]}"
            return torchserve.enter_context(running_torchserve(mar, server_dir, ports))

        def restart_torchserve() -> None:
            _kill_process_group_in(tmp_path / f"torchserve-{generation[0]}")
            start_torchserve()

        url = start_torchserve()
        yield Chaos(
            jobs=15,
            kills=("pool child", "worker", "gateway", "torchserve", "postgres"),
            env={
                "COVIDCT_VAR_DIR": str(var_dir),
                "COVIDCT_DATABASE_URL": database_url,
                "COVIDCT_BROKER_URL": fresh_redis_db(14),
                "COVIDCT_SCORER_URL": url,
            },
            database_url=database_url,
            torchserve=restart_torchserve,
        )


def _kill_process_group_in(directory: Path) -> None:
    """SIGKILL the process group of whatever runs with ``directory`` as its working dir."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory.resolve():
                    groups.add(os.getpgid(int(entry.name)))
            except OSError:
                continue
    assert groups, f"nothing runs in {directory}"
    for group in groups:
        os.killpg(group, signal.SIGKILL)


def _drop_database_connections(database_url: str) -> int:
    """Terminate every PostgreSQL backend of the service's database (a failover, say)."""
    name = database_url.rsplit("/", 1)[1]
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as db:
            return len(
                db.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                ).all()
            )
    finally:
        engine.dispose()


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


def _gateway_answers(server: str) -> bool:
    try:
        return httpx.get(f"{server}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _strike(chaos: Chaos, up: int, kind: str, server: str) -> float:
    """Do one kind of damage; returns the seconds until that part works again."""
    started = time.monotonic()
    if kind == "torchserve":
        assert chaos.torchserve is not None
        chaos.torchserve()  # returns once the new TorchServe serves the model
        return time.monotonic() - started
    if kind == "postgres":
        assert _drop_database_connections(chaos.database_url) > 0
        return 0.0  # nothing to restart: the pools reconnect on their next checkout
    pid = _target(up, kind)
    while pid is None:  # a child still starting after the previous kill
        assert time.monotonic() - started < 60, (kind, children_of(up))
        time.sleep(0.5)
        pid = _target(up, kind)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while True:
        now = _target(up, kind)
        if now is not None and now != pid and (kind != "gateway" or _gateway_answers(server)):
            return time.monotonic() - killed_at
        assert time.monotonic() - killed_at < 120, f"{kind} did not come back"
        time.sleep(0.2)


# The last event at which a job's step was handed on (queued, scoring, ensembling) or it ended.
LAST_BOUNDARY = text(
    "SELECT max(id) FROM job_events "
    "WHERE status IN ('queued', 'scoring', 'ensembling', 'succeeded')"
)


def _kill_redis_at_boundaries(
    chaos: Chaos, up: int, server: str, rng: random.Random
) -> list[tuple[str, float]]:
    """SIGKILL Redis right after some job entered a status whose step is being published
    (polling the events in the embedded SQLite database), ``boundary_kills`` times; stops
    early when no job crosses a boundary for 60 s (all ended). Returns the recoveries."""
    engine = create_engine(chaos.database_url)
    recoveries: list[tuple[str, float]] = []
    seen = 0
    try:
        for _ in range(chaos.boundary_kills):
            quiet_until = time.monotonic() + 60
            last = seen
            while last <= seen and time.monotonic() < quiet_until:
                try:
                    with engine.connect() as db:
                        last = db.execute(LAST_BOUNDARY).scalar() or 0
                except Exception:  # locked by a writer for a moment
                    pass
                time.sleep(0.02)
            if last <= seen:
                break
            seen = last
            recoveries.append(("redis at a boundary", _strike(chaos, up, "redis", server)))
            time.sleep(rng.uniform(0, 1.5))
    finally:
        engine.dispose()
    return recoveries


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


def test_jobs_survive_random_kills(chaos: Chaos, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    env.update(ENV, **chaos.env)
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
        wait_up(server, tmp_path / "var", env.get("COVIDCT_BROKER_URL"), timeout_s=300)
        created = subprocess.run(
            [sys.executable, "-m", "services.cli", "tenants", "create", "chaos", "--json"],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        tenant = json.loads(created.stdout)
        client = ApiClient(server, tenant["api_key"])
        with callback_receiver() as receiver:

            def submit_all() -> None:
                for i in range(chaos.jobs):
                    state = UploadState(tmp_path / f"state-{i}.json")
                    study = _study(tmp_path, i)
                    job_ids.append(_submit_with_retries(client, study, state, receiver.url))

            submitter = threading.Thread(target=submit_all)
            submitter.start()
            for kind in rng.sample(chaos.kills, len(chaos.kills)):
                time.sleep(rng.uniform(3, 8))
                recoveries.append((kind, _strike(chaos, up.pid, kind, server)))
            if chaos.boundary_kills:
                recoveries += _kill_redis_at_boundaries(chaos, up.pid, server, rng)
                assert len(recoveries) >= 3, recoveries  # the jobs outlasted a few kills
            submitter.join(timeout=300)
            assert not submitter.is_alive() and len(job_ids) == chaos.jobs
            chaos_over = time.monotonic()
            final = {job_id: client.wait(job_id, timeout_s=JOBS_DEADLINE_S) for job_id in job_ids}
            all_done_s = time.monotonic() - chaos_over
            # Callbacks follow their job's end; one whose send the broker refused is sent
            # by the next recovery sweep, one lost with a killed Redis after STEP_REDISPATCH_S.
            deadline = time.monotonic() + 180
            while len({c.headers["webhook-id"] for c in receiver.received}) < chaos.jobs:
                assert time.monotonic() < deadline
                time.sleep(0.5)
            time.sleep(3)  # a duplicate would arrive now
            callbacks = list(receiver.received)
        print(f"\nrecovery after each kill: {', '.join(f'{k} {s:.1f} s' for k, s in recoveries)}")
        print(f"all {chaos.jobs} jobs ended {all_done_s:.1f} s after the last kill")
        assert up.poll() is None  # `covidct up` itself never went down
        statuses = Counter(job["status"] for job in final.values())
        assert statuses == {"succeeded": chaos.jobs}, {
            j: (job["status"], job.get("error")) for j, job in final.items()
        }
        _check_callbacks(callbacks, set(job_ids))
        _check_database(chaos.database_url, tmp_path / "var", set(job_ids))
        if chaos.one_run_per_stage:
            _check_one_run_per_stage(chaos.database_url, set(job_ids))
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


def _check_database(database_url: str, var_dir: Path, job_ids: set[str]) -> None:
    engine = create_engine(database_url)
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


def _check_one_run_per_stage(database_url: str, job_ids: set[str]) -> None:
    """Every stage of every job was claimed once: the event that ended it says run 1."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as db:
            rows = db.execute(
                text("SELECT job_id, status, detail FROM job_events ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    runs = {}
    for job_id, status, detail in rows:
        if job_id in job_ids and status in ("preprocessing", "scoring", "ensembling", "succeeded"):
            parsed = json.loads(detail) if isinstance(detail, str) else detail
            runs[(job_id, status)] = parsed.get("attempt")
    assert len(runs) == 4 * len(job_ids)
    assert set(runs.values()) == {1}, {k: v for k, v in runs.items() if v != 1}
