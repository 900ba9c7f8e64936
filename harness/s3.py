"""A real S3 HTTP server on 127.0.0.1 for tests: moto's server mode, in its own process.

Its own process (not moto's in-process thread) so that what a test measures in the test
process (memory while a large file streams up) is the client's alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from harness.components import ComponentMissing


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_moto() -> None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise ComponentMissing("moto[server] (pip install -e '.[dev]')")


@contextlib.contextmanager
def moto_s3_server(timeout_s: float = 60.0) -> Iterator[str]:
    """Start ``python -m moto.server`` on a free port; yield its endpoint URL."""
    require_moto()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise ComponentMissing(
                        f"moto server exited: {log_path.read_text(errors='replace')[-2000:]}"
                    )
                try:
                    if httpx.get(f"{url}/moto-api/", timeout=2).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ComponentMissing(f"moto server did not answer on {url}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
