"""`covidct up` and `covidct submit` as a user runs them: the embedded service comes up,
a submitted study gets its verdict, and SIGTERM stops every child process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from pydicom.data import get_testdata_file

from harness.stacks import wait_up
from services.cli.runtime import free_port
from tests.support.processes import child, children_of


def _processes_with_env(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _covidct(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_up_submit_and_sigterm_stops_everychild(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    env.update(
        COVIDCT_VAR_DIR=str(tmp_path / "var"),
        COVIDCT_CLIENT_STATE=str(tmp_path / "client.json"),
        COVIDCT_DATA_DIR=os.environ.get("COVIDCT_DATA_DIR", ""),
    )
    if not env["COVIDCT_DATA_DIR"]:
        del env["COVIDCT_DATA_DIR"]
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_up(f"http://127.0.0.1:{port}", tmp_path / "var", timeout_s=300)
        children = _processes_with_env(str(tmp_path / "var"))
        assert len(children) >= 4  # up, redis, worker (+ its pool), gateway

        tenant = json.loads(_covidct("tenants", "create", "cli", "--json", env=env).stdout)
        assert set(tenant) == {"id", "name", "api_key", "webhook_secret"}
        study = str(get_testdata_file("CT_small.dcm", download=False))
        submitted = _covidct(
            "submit", study, "--server", f"http://127.0.0.1:{port}",
            "--api-key", tenant["api_key"], "--wait", "--json",
            env=env,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        job = json.loads(submitted.stdout)
        assert job["status"] == "succeeded"
        assert job["result"]["label"] in {"COVID", "NonCOVID"}
        assert job["result"]["slices_total"] == 1

        wrong_key = _covidct(
            "submit", study, "--server", f"http://127.0.0.1:{port}", "--api-key", "cct_bad",
            env=env,
        )  # fmt: skip
        assert wrong_key.returncode == 2
        assert "401" in wrong_key.stderr

        # PHI at rest: the var dir, the database and stored uploads are owner-only.
        var = tmp_path / "var"
        assert stat.S_IMODE(var.stat().st_mode) == 0o700
        assert stat.S_IMODE((var / "covidct.db").stat().st_mode) == 0o600
        blobs = [f for f in (var / "blobs").rglob("*") if f.is_file()]
        assert blobs and all(stat.S_IMODE(f.stat().st_mode) & 0o077 == 0 for f in blobs)
        # The embedded Redis wants its password (kept in an owner-only file, not in argv).
        config = var / "redis" / "redis.conf"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        settings = dict(line.split(" ", 1) for line in config.read_text().splitlines())
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(settings["port"]), socket_timeout=5).get("x")
        authed = redis.Redis(port=int(settings["port"]), password=settings["requirepass"])
        assert authed.ping()
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(120)
    assert up.returncode == 0
    deadline = time.monotonic() + 30
    while _processes_with_env(str(tmp_path / "var")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_with_env(str(tmp_path / "var")) == []


def test_up_restarts_a_killed_worker_and_redis_and_the_job_still_succeeds(
    tmp_path: Path,
) -> None:
    """Supervision: SIGKILL of the Celery main process mid-job and of Redis; `covidct up`
    starts each again, and the job left running is sent again by the recovery sweeper
    once its stage's lease goes stale (`JOB_LEASE_S`). The kill may also land between the
    stage boundary and the next stage's claim (the step's message sent, not yet claimed,
    and lost with Redis or held unacked by the dead worker): then the step is sent again
    after `STEP_REDISPATCH_S`, shortened here from 300 s so either path fits the wait."""
    from services.cli.client import ApiClient, UploadState, submit

    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    env.update(COVIDCT_VAR_DIR=str(tmp_path / "var"), COVIDCT_STEP_REDISPATCH_S="60")
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_up(server, tmp_path / "var", timeout_s=300)
        tenant = json.loads(_covidct("tenants", "create", "sup", "--json", env=env).stdout)
        client = ApiClient(server, tenant["api_key"])
        demo = Path(__file__).resolve().parents[2] / "demo" / "covid-ct-md-P002"
        job, _ = submit(client, demo, state=UploadState(tmp_path / "state.json"))
        deadline = time.monotonic() + 240
        while client.get_job(job["id"])["status"] in ("queued", "preprocessing"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        worker = child(up.pid, "celery")
        os.kill(worker, signal.SIGKILL)
        redis_server = child(up.pid, "redis-server")
        os.kill(redis_server, signal.SIGKILL)
        recovered_by = time.monotonic() + 240
        while children_of(up.pid).keys() & {worker, redis_server} or not (
            any("celery" in c for c in children_of(up.pid).values())
            and any("redis-server" in c for c in children_of(up.pid).values())
        ):
            assert time.monotonic() < recovered_by, children_of(up.pid)
            time.sleep(0.5)
        assert up.poll() is None  # `covidct up` kept running
        final = client.wait(job["id"], timeout_s=300)
        assert final["status"] == "succeeded", final
        assert final["result"]["slices_used"] > 0
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(120)
    assert up.returncode == 0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("started", ["redis-server", "celery", "uvicorn"])
def test_sigterm_during_start_up_stops_every_child(tmp_path: Path, started: str) -> None:
    """Issue 18.6: SIGTERM before the stack is up (once ``started`` is running) leaves no
    child process and no port behind."""
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    env.update(COVIDCT_VAR_DIR=str(var))
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while not any(started in command for command in children_of(up.pid).values()):
            assert up.poll() is None, up.communicate()[1][-2000:]
            assert time.monotonic() < deadline, children_of(up.pid)
            time.sleep(0.02)
        config = (var / "redis" / "redis.conf").read_text().splitlines()
        redis_port = int(next(line for line in config if line.startswith("port ")).split()[1])
        children = set(children_of(up.pid))  # redis-server rewrites its environ: by pid
        assert children
        up.send_signal(signal.SIGTERM)
        _out, err = up.communicate(timeout=90)
        assert up.returncode == 0, err[-2000:]
        deadline = time.monotonic() + 30
        while _processes_with_env(str(var)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_with_env(str(var)) == []
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert not _listening(port) and not _listening(redis_port)
    finally:  # whatever happened, leave nothing running (each child leads its own group)
        children |= set(children_of(up.pid)) if up.poll() is None else set()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if up.poll() is None:
            up.kill()
            up.wait(30)
