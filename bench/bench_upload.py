"""tus upload throughput of a 200 MB file through the real gateway against a plain HTTP PUT.

Both servers run as uvicorn subprocesses on this machine in the same run: the gateway
(``services.asgi:create_app``, SQLite in a temp dir, the shared Redis on db 15, no
worker) and a minimal FastAPI app whose one route streams ``request.stream()`` into a file.
The tus side is timed around :meth:`services.cli.client.ApiClient.upload` only (creation POST,
every PATCH, and the completion work the server does inside the last PATCH: sha256 check,
blob move, job -> ``queued``); the job is created and the client-side sha256 computed
before the clock starts. Per-PATCH times come from the client's progress callback.

tuspyserver fsyncs every PATCH (a resumed upload must never be told an offset the disk does
not hold), so the plain PUT is also timed with one fsync at the end: ``ratio_tus_vs_plain``
is against page-cache speed, ``ratio_tus_vs_plain_fsync`` against an equally durable PUT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from bench.common import flush_redis, report
from services.cli.client import ApiClient
from services.cli.runtime import free_port, gateway_command
from services.common.hashing import file_sha256

SIZE = 200 * 1000 * 1000  # bytes ("200 MB"; MB/s below are 10**6 bytes per second)
MB = 1e6
CHUNKS = {"8mib": 8 * 1024 * 1024, "32mib": 32 * 1024 * 1024, "64mib": 64 * 1024 * 1024}
ROUNDS = 3
BROKER_URL = "redis://127.0.0.1:6379/15"

PLAIN_APP = """
import os

from fastapi import FastAPI, Request

app = FastAPI()


@app.put("/upload/{name}")
async def put(name: str, request: Request, fsync: bool = False) -> dict:
    path = os.path.join(os.environ["PLAIN_UPLOAD_DIR"], name)
    size = 0
    with open(path, "wb") as handle:
        async for chunk in request.stream():
            handle.write(chunk)
            size += len(chunk)
        if fsync:  # durable before the answer, as tus must be before it advertises an offset
            handle.flush()
            os.fsync(handle.fileno())
    return {"bytes": size}
"""


def _write_random(path: Path, size: int) -> None:
    block = 8 * 1024 * 1024
    with path.open("wb") as handle:
        left = size
        while left:
            n = min(block, left)
            handle.write(os.urandom(n))
            left -= n


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@contextmanager
def _server(
    command: list[str], env: dict[str, str], health_url: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_http(health_url, process)
        yield process
    finally:
        _stop(process)


def _create_tenant(env: dict[str, str], name: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "tenants", "create", name, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _time_plain(client: httpx.Client, url: str, source: Path) -> float:
    started = time.perf_counter()
    with source.open("rb") as handle:
        response = client.put(url, content=handle, headers={"Content-Length": str(SIZE)})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    if response.json()["bytes"] != SIZE:
        raise RuntimeError(f"plain PUT stored {response.json()} bytes, sent {SIZE}")
    return elapsed


def _time_tus(
    api: ApiClient, source: Path, sha256: str, chunk: int, blobs: Path
) -> tuple[float, list[float]]:
    """Seconds for one tus upload; also the gaps between progress calls (POST, each PATCH)."""
    job = api.create_job()
    marks: list[float] = []
    started = time.perf_counter()
    done = api.upload(
        job,
        source,
        sha256,
        chunk_size=chunk,
        progress=lambda _s, _t: marks.append(time.perf_counter()),
    )
    elapsed = time.perf_counter() - started
    if not done:
        raise RuntimeError("tus upload did not finish")
    status = api.get_job(job["id"])["status"]
    if status not in {"queued", "preprocessing", "failed"}:
        raise RuntimeError(f"job {job['id']} is {status} after its upload")
    gaps = [b - a for a, b in zip([started, *marks], marks, strict=False)]
    shutil.rmtree(blobs / "jobs" / job["id"], ignore_errors=True)  # 200 MB each
    return elapsed, gaps


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="covidct-bench-upload-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "random.bin"
        _write_random(source, SIZE)
        sha256 = file_sha256(source)
        var_dir = tmp / "var"
        plain_dir = tmp / "plain"
        var_dir.mkdir()
        plain_dir.mkdir()
        (tmp / "plain_upload_app.py").write_text(PLAIN_APP)

        env = dict(os.environ)
        env.update(
            COVIDCT_VAR_DIR=str(var_dir),
            COVIDCT_DATABASE_URL=f"sqlite:///{var_dir / 'covidct.db'}",
            COVIDCT_BROKER_URL=BROKER_URL,
            COVIDCT_LOG_LEVEL="WARNING",
            PLAIN_UPLOAD_DIR=str(plain_dir),
        )
        tenant = _create_tenant(env, "bench-upload")  # also migrates the fresh database
        gateway_port, plain_port = free_port(), free_port()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        plain_url = f"http://127.0.0.1:{plain_port}"
        plain_cmd = [
            sys.executable, "-m", "uvicorn", "plain_upload_app:app",
            "--app-dir", str(tmp), "--host", "127.0.0.1", "--port", str(plain_port),
            "--no-access-log",
        ]  # fmt: skip
        flush_redis(BROKER_URL)
        results: dict[str, list[float]] = {"plain": [], "plain_fsync": []}
        results |= {k: [] for k in CHUNKS}
        gaps: dict[str, list[float]] = {}
        try:
            with (
                _server(
                    gateway_command(gateway_port), env, f"{gateway_url}/healthz", tmp / "gw.log"
                ),
                _server(plain_cmd, env, f"{plain_url}/docs", tmp / "plain.log"),
                httpx.Client(timeout=300) as http,
            ):
                api = ApiClient(gateway_url, tenant["api_key"], timeout_s=300)
                for _ in range(ROUNDS):  # interleaved, so background load hits both alike
                    results["plain"].append(_time_plain(http, f"{plain_url}/upload/f", source))
                    (plain_dir / "f").unlink()
                    results["plain_fsync"].append(
                        _time_plain(http, f"{plain_url}/upload/f?fsync=1", source)
                    )
                    (plain_dir / "f").unlink()
                    for name, chunk in CHUNKS.items():
                        seconds, chunk_gaps = _time_tus(
                            api, source, sha256, chunk, var_dir / "blobs"
                        )
                        results[name].append(seconds)
                        if seconds <= min(results[name]):
                            gaps[name] = chunk_gaps
        finally:
            flush_redis(BROKER_URL)

    plain_s = min(results["plain"])
    fsync_s = min(results["plain_fsync"])
    result: dict[str, float] = {
        "plain_put_s": plain_s,
        "plain_put_mb_s": SIZE / MB / plain_s,
        "plain_put_fsync_s": fsync_s,
        "plain_put_fsync_mb_s": SIZE / MB / fsync_s,
    }
    for name in CHUNKS:
        best = min(results[name])
        patches = gaps[name][1:]  # gaps[0] is the creation POST
        result |= {
            f"tus_{name}_s": best,
            f"tus_{name}_mb_s": SIZE / MB / best,
            f"tus_{name}_create_s": gaps[name][0],
            f"tus_{name}_patch_median_s": sorted(patches[:-1])[len(patches[:-1]) // 2],
            f"tus_{name}_last_patch_s": patches[-1],  # includes sha256 + move + enqueue
        }
    best_name = min(CHUNKS, key=lambda n: min(results[n]))
    tus_mb_s = SIZE / MB / min(results[best_name])
    result |= {
        "tus_best_chunk_mib": CHUNKS[best_name] / 1024 / 1024,
        "tus_best_mb_s": tus_mb_s,
        "ratio_tus_vs_plain": tus_mb_s / result["plain_put_mb_s"],
        "ratio_tus_vs_plain_fsync": tus_mb_s / result["plain_put_fsync_mb_s"],
    }
    return report(result)


if __name__ == "__main__":
    main()
