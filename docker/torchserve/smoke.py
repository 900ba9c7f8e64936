"""Smoke test of a covidct-torchserve image, run inside it on the CPU (CUDA absent is fine):

    docker run -i --rm --network none --entrypoint /opt/venv/bin/python IMAGE - < smoke.py

1. torch: which build (CUDA version or CPU) and whether a GPU is visible;
2. the handler of the image's .mar, loaded as TorchServe loads it (the archive unpacked, its
   shim imported, ``handle(None, context)`` then one request), with ``gpu_id`` 0 as TorchServe
   passes on a GPU host: it must fall back to the CPU and score one slice;
3. TorchServe itself started from the image's config, ``/ping`` Healthy and one slice scored
   through ``POST /predictions/slice-cnn`` (the scorer contract, docs/architecture.md).

Prints one JSON line with what it found; exits non-zero on any failure. Standard library,
numpy and torch only (what the image has), bounded in time.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODEL_STORE = Path("/home/model-server/model-store")
CONFIG = Path("/home/model-server/config.properties")
MODEL_NAME = "slice-cnn"
SERVER_TIMEOUT_S = 240


class Context:
    """What TorchServe's ``ts.context.Context`` gives the handler."""

    def __init__(self, model_dir: str, manifest: dict[str, Any]) -> None:
        self.system_properties = {"model_dir": model_dir, "gpu_id": 0, "batch_size": 1}
        self.manifest = manifest
        self.statuses: list[tuple[int, str, int]] = []

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses.append((code, phrase, idx))


def npy(slices: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, slices, allow_pickle=False)
    return buffer.getvalue()


def check_probabilities(result: dict[str, Any]) -> list[float]:
    (row,) = result["probabilities"]
    assert len(row) == 2 and abs(sum(row) - 1.0) < 1e-4, result
    assert result["model_name"] == MODEL_NAME, result
    return [float(p) for p in row]


def handler_in_process(mar: Path) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mar-") as scratch:
        zipfile.ZipFile(mar).extractall(scratch)
        manifest = json.loads((Path(scratch) / "MAR-INF" / "MANIFEST.json").read_text())
        handler_file = Path(scratch) / manifest["model"]["handler"]
        spec = importlib.util.spec_from_file_location(handler_file.stem, handler_file)
        assert spec is not None and spec.loader is not None
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
        context = Context(scratch, manifest)
        assert shim.handle(None, context) is None  # TorchServe's load call
        from services.inference.handler import _handler

        size = _handler._require_model().image_size
        (result,) = shim.handle([{"body": npy(np.zeros((1, size, size), np.uint8))}], context)
        return {
            "device": _handler.device,
            "model_version": result["model_version"],
            "image_size": size,
            "probabilities": check_probabilities(result),
            "seconds": round(time.monotonic() - started, 1),
        }


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def torchserve_round_trip(image_size: int) -> dict[str, Any]:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ts-"))
    env = {**os.environ, "LOG_LOCATION": str(workdir), "METRICS_LOCATION": str(workdir)}
    command = [
        sys.executable, "-m", "ts.model_server", "--foreground", "--ncs",
        "--model-store", str(MODEL_STORE), "--ts-config", str(CONFIG),
    ]  # fmt: skip
    log = (workdir / "torchserve.out").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = started + SERVER_TIMEOUT_S
        while True:
            try:
                status, body = get("http://127.0.0.1:8080/ping")
                if status == 200 and json.loads(body).get("status") == "Healthy":
                    # Healthy once the frontend is up; the model may still be loading.
                    models = json.loads(get("http://127.0.0.1:8081/models/slice-cnn")[1])
                    if any(w["status"] == "READY" for w in models[0]["workers"]):
                        break
            except (OSError, ValueError, KeyError, IndexError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "torchserve.out").read_bytes()[-4000:].decode(errors="replace")
                raise RuntimeError(f"TorchServe did not become ready:\n{tail}")
            time.sleep(1)
        ready_s = time.monotonic() - started
        request = urllib.request.Request(
            f"http://127.0.0.1:8080/predictions/{MODEL_NAME}",
            data=npy(np.zeros((1, image_size, image_size), np.uint8)),
            headers={"Content-Type": "application/octet-stream"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            result = json.loads(response.read())
        return {
            "ready_s": round(ready_s, 1),
            "probabilities": check_probabilities(result),
            "model_version": result["model_version"],
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main() -> int:
    mar = MODEL_STORE / f"{MODEL_NAME}.mar"
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "mar_bytes": mar.stat().st_size,
    }
    report["handler"] = handler_in_process(mar)
    if not report["cuda_available"]:
        assert report["handler"]["device"] == "cpu", report
    report["torchserve"] = torchserve_round_trip(report["handler"]["image_size"])
    # The same code on the same input: equal but for float summation order (thread counts).
    served, direct = report["torchserve"]["probabilities"], report["handler"]["probabilities"]
    assert all(abs(a - b) < 1e-5 for a, b in zip(served, direct, strict=True)), report
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
