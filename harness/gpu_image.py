"""The TorchServe GPU image, built offline like the compose test's images: ``make gpu-image``.

The same debootstrapped base and host wheelhouse as ``harness.compose``, plus a second
wheelhouse with PyPI's CUDA build of torch 2.13.0 (CUDA 13.0; the runtime, cuBLAS, cuDNN,
NCCL come as nvidia-* wheels), downloaded by a pip that ignores this machine's pip
configuration (its find-links hold the CPU wheel). ``docker compose`` with
docker-compose.gpu.yml and docker-compose.ci.yml builds the app image, then
``covidct-torchserve:TAG-gpu``; ``docker/torchserve/smoke.py`` then runs inside that image on
the CPU (no GPU here): the .mar's handler and TorchServe each score one slice.

Prints one JSON report (download size and time, build time, image size, smoke result) and
writes it to ``var/gpu-image/report.json``. ``--docker-host unix:///...`` builds on a running
daemon instead of starting the private one.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.compose import (
    CACHE_DIR,
    COMPOSE_FILE,
    Compose,
    client_env,
    docker,
    ensure_base_image,
    ensure_wheelhouse,
    log,
    private_dockerd,
    prune_dangling_images,
    serve_directory,
)
from services.common.config import REPO_ROOT

TORCH_CUDA_REQUIREMENT = "torch==2.13.0"
# Another port than the CPU wheelhouse's (both are served during the build).
TORCH_WHEELHOUSE_PORT = int(os.environ.get("COVIDCT_CI_TORCH_WHEELHOUSE_PORT", "38112"))
FILES = (COMPOSE_FILE, "docker-compose.gpu.yml", "docker-compose.ci.yml")
TAG = "0.1.0"
GPU_IMAGE = f"covidct-torchserve:{TAG}-gpu"
ARTIFACTS = REPO_ROOT / "var" / "gpu-image"
SMOKE_SCRIPT = REPO_ROOT / "docker" / "torchserve" / "smoke.py"
SMOKE_TIMEOUT_S = 600


def _directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.whl"))


def ensure_torch_cuda_wheelhouse(
    directory: Path = CACHE_DIR / "wheelhouse-torch-cuda",
) -> tuple[Path, dict[str, Any]]:
    """PyPI's CUDA torch and what it needs (nvidia-*, triton); cached by the requirement."""
    stamp = directory / f".complete-{TORCH_CUDA_REQUIREMENT}"
    if stamp.is_file():
        log(f"torch CUDA wheelhouse {directory}: cached")
        return directory, {"cached": True, "bytes": _directory_bytes(directory)}
    directory.mkdir(parents=True, exist_ok=True)
    # --isolated: no pip.conf (this machine's find-links hold the CPU wheel, its constraints
    # cap torch); the system CA bundle stays, for a proxy that re-signs TLS.
    command = [sys.executable, "-m", "pip", "download", "--isolated", "--quiet"]
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        command += ["--cert", str(bundle)]
    command += ["--only-binary", ":all:", "-d", str(directory), TORCH_CUDA_REQUIREMENT]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download of the CUDA torch failed:\n{result.stderr[-4000:]}")
    if not list(directory.glob("nvidia_cudnn*.whl")):
        raise RuntimeError(f"{TORCH_CUDA_REQUIREMENT} from PyPI brought no cuDNN: not CUDA")
    stamp.touch()
    info = {
        "cached": False,
        "seconds": round(time.monotonic() - started, 1),
        "bytes": _directory_bytes(directory),
        "wheels": len(list(directory.glob("*.whl"))),
    }
    log(f"torch CUDA wheelhouse {directory}: {info}")
    return directory, info


@contextlib.contextmanager
def _daemon_env(docker_host: str | None) -> Iterator[dict[str, str]]:
    if docker_host:
        env = client_env()
        env["DOCKER_HOST"] = docker_host
        yield env
    else:
        with private_dockerd() as daemon:
            yield daemon.env


def _env_file(path: Path) -> Path:
    """Interpolation values docker-compose.yml requires even for a build (never used)."""
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    path.write_text(
        f"POSTGRES_PASSWORD={secrets.token_hex(16)}\nREDIS_PASSWORD={secrets.token_hex(16)}\n"
        f'COVIDCT_SECRET_KEYS=["{key}"]\nCOVIDCT_IMAGE_TAG={TAG}\n'
        f"S3_SECRET_KEY={secrets.token_hex(16)}\n"
    )
    return path


def smoke(env: dict[str, str], image: str = GPU_IMAGE) -> dict[str, Any]:
    """docker/torchserve/smoke.py inside ``image``, no network: its JSON report."""
    result = docker(
        env,
        "run", "--rm", "-i", "--network", "none",
        "--entrypoint", "/opt/venv/bin/python", image, "-",
        input=SMOKE_SCRIPT.read_text(), capture_output=True, check=False, timeout=SMOKE_TIMEOUT_S,
    )  # fmt: skip
    out = result.stdout
    if result.returncode != 0:
        raise RuntimeError(f"smoke test failed in {image}:\n{out[-3000:]}\n{result.stderr[-6000:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def build_and_smoke(docker_host: str | None = None) -> dict[str, Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"image": GPU_IMAGE}
    started = time.monotonic()
    with _daemon_env(docker_host) as daemon_env, tempfile.TemporaryDirectory() as scratch:
        env = {k: v for k, v in daemon_env.items() if not k.startswith(("COVIDCT_", "POSTGRES_"))}
        compose = Compose(
            env=env, files=FILES, project="covidct-gpu", env_file=_env_file(Path(scratch) / "e")
        )
        with compose.phase("base image"):
            env["COVIDCT_CI_BASE_IMAGE"] = ensure_base_image(env)
        with compose.phase("wheelhouse"):
            wheelhouse = ensure_wheelhouse()
        with compose.phase("torch CUDA wheelhouse"):
            torch_wheelhouse, report["torch_cuda_wheelhouse"] = ensure_torch_cuda_wheelhouse()
        with (
            serve_directory(wheelhouse) as url,
            serve_directory(torch_wheelhouse, TORCH_WHEELHOUSE_PORT) as torch_url,
        ):
            env["COVIDCT_CI_WHEELHOUSE_URL"] = url
            env["COVIDCT_TORCH_GPU_WHEELHOUSE_URL"] = torch_url
            for service in ("migrate", "torchserve"):  # the app image first: TorchServe's base
                with compose.phase(f"build {service}"):
                    build = compose.run(
                        "build", "--progress", "plain", service, capture_output=True, check=False
                    )
                (ARTIFACTS / f"build-{service}.txt").write_text(build.stdout + build.stderr)
                if build.returncode != 0:
                    raise RuntimeError(f"build of {service} failed:\n{build.stderr[-6000:]}")
        prune_dangling_images(env)
        size = docker(env, "image", "inspect", "--format", "{{.Size}}", GPU_IMAGE,
                      capture_output=True).stdout  # fmt: skip
        report["image_bytes"] = int(size.strip())
        with compose.phase("smoke test on the CPU"):
            report["smoke"] = smoke(env)
        report["phases_s"] = {k: round(v, 1) for k, v in compose.phases.items()}
    report["total_s"] = round(time.monotonic() - started, 1)
    (ARTIFACTS / "report.json").write_text(json.dumps(report, indent=2))
    log(f"GPU image report: {json.dumps(report)}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.gpu_image", description=__doc__)
    parser.add_argument("--docker-host", help="a running daemon (default: a private dockerd)")
    parser.add_argument(
        "--smoke-only", metavar="IMAGE", help="only run the smoke test in an existing image"
    )
    args = parser.parse_args(argv)
    if args.smoke_only:
        with _daemon_env(args.docker_host) as env:
            print(json.dumps(smoke(env, args.smoke_only)))
        return 0
    print(json.dumps(build_and_smoke(args.docker_host)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
