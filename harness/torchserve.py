"""Start and stop a real TorchServe serving the shipped slice CNN (it needs Java 17)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from harness.components import ComponentMissing
from services.common.config import get_settings
from services.inference.mar import build_mar

STARTUP_TIMEOUT_S = 180.0
# Torch threads for the one TorchServe worker: at most 2, so it neither oversubscribes a
# 2-core runner nor starves the test process that waits on it.
WORKER_THREADS = max(1, min(2, os.cpu_count() or 1))


def require_java() -> str:
    """Path of ``java`` (JAVA_HOME first, as the torchserve launcher does), else raise."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if java and Path(java).is_file():
        return java
    where = f"JAVA_HOME={java_home}" if java_home else "PATH"
    raise ComponentMissing(f"TorchServe needs Java 17, none found via {where}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(log_dir: Path, console: Path, chars: int = 6000) -> str:
    parts = []
    for path in [console, log_dir / "ts_log.log", log_dir / "model_log.log"]:
        if path.is_file():
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name} ---\n{text[-chars:]}")
    return "\n".join(parts) or "(no TorchServe logs written)"


def _model_ready(client: httpx.Client, urls: dict[str, str], model_name: str) -> bool:
    """A READY worker for the model (management API) and a healthy inference API."""
    try:
        response = client.get(f"{urls['management']}/models/{model_name}")
        if response.status_code != 200:
            return False
        workers = [w for entry in response.json() for w in entry.get("workers", [])]
        if not any(w.get("status") == "READY" for w in workers):
            return False
        return client.get(f"{urls['inference']}/ping").status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the launcher, Java and the Python workers: they share one process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    # The launcher may exit before Java and the workers do; the group outlives it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def running_torchserve(
    mar_path: Path, tmp_dir: Path, ports: dict[str, int] | None = None
) -> Iterator[str]:
    """Serve ``mar_path`` from a private TorchServe; yield its inference base URL.

    ``ports`` (inference, management, metrics) pins the addresses, so a test can start it
    again where its clients expect it; its processes all carry ``tmp_dir`` on their
    command line or in their process group (``start_new_session``)."""
    require_java()
    torchserve = Path(sys.executable).parent / "torchserve"
    if not torchserve.is_file():
        raise ComponentMissing(f"torchserve is not installed next to {sys.executable}")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log_dir = tmp_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    # Java unpacks the .mar here and puts the worker's Unix socket here: a short path, because
    # socket paths are limited to 107 bytes and CI temp directories can be long.
    java_tmp = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp" if Path("/tmp").is_dir() else None))
    model_name = mar_path.stem
    ports = ports or {name: _free_port() for name in ("inference", "management", "metrics")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    config = tmp_dir / "config.properties"
    config.write_text(
        "\n".join(
            [
                f"inference_address={urls['inference']}",
                f"management_address={urls['management']}",
                f"metrics_address={urls['metrics']}",
                # Free gRPC ports too: the defaults (7070/7071) clash with any other TorchServe.
                f"grpc_inference_port={_free_port()}",
                f"grpc_management_port={_free_port()}",
                "disable_token_authorization=true",
                f"model_store={mar_path.parent}",
                f"load_models={mar_path.name}",
                "default_workers_per_model=1",
                "number_of_netty_threads=2",
                "netty_client_threads=2",
                "vmargs=-Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
            ]
        )
        + "\n"
    )
    env = {
        **os.environ,
        "LOG_LOCATION": str(log_dir),
        "METRICS_LOCATION": str(log_dir),
        "TEMP": str(java_tmp),
        "OMP_NUM_THREADS": str(WORKER_THREADS),
        "MKL_NUM_THREADS": str(WORKER_THREADS),
    }
    env.pop("TS_CONFIG_FILE", None)
    console = tmp_dir / "torchserve.out"
    command = [
        str(torchserve),
        "--foreground",
        "--ncs",
        "--model-store",
        str(mar_path.parent),
        "--ts-config",
        str(config),
    ]
    with console.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=tmp_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=5.0) as client:
            while not _model_ready(client, urls, model_name):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"TorchServe exited with {process.returncode} before {model_name} was "
                        f"ready:\n{_log_tail(log_dir, console)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"TorchServe did not serve {model_name} within {STARTUP_TIMEOUT_S:.0f} s:"
                        f"\n{_log_tail(log_dir, console)}"
                    )
                time.sleep(0.5)
        yield urls["inference"]
    finally:
        _stop(process)
        shutil.rmtree(java_tmp, ignore_errors=True)


@contextlib.contextmanager
def shipped_model_torchserve(root: Path) -> Iterator[str]:
    """Build the shipped slice-CNN into a .mar under ``root`` and serve it; yields its URL."""
    settings = get_settings()
    mar = build_mar(
        settings.slice_model_dir,
        root / "model-store",
        model_name=settings.scorer_model_name,
    )
    with running_torchserve(mar, root / "server") as url:
        yield url
