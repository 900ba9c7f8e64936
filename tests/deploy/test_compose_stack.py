"""The Docker Compose deployment end to end: ``make compose-test`` (not part of ``make test``:
``tests/deploy`` is in ``norecursedirs``; this file is run by name).

A private dockerd (cached data root), the offline CI images (debootstrapped base, host
wheelhouse), ``docker compose up --wait``; then a tenant made with ``docker compose exec``,
the shared COVID-CT-MD series P002 uploaded as a zip with tus from the host (stopped at half,
resumed by a new client), the inference worker SIGKILLed while the job is scoring and started
again, and the job must still succeed exactly once: one result row, one signed callback, a
verdict equal to ``covidct diagnose`` of the same zip, slice scores from TorchServe. The blobs
live in the S3 server (MinIO in production; its CI stand-in here), the viewer reads them back
through it, the job is read over the TLS proxy (profile tls), every container has limits and
rotated logs, Redis's password is on no command line. Then the backup and restore procedure:
``scripts/compose/backup.sh``, ``down -v``, ``restore.sh`` into the new empty volumes, and the
same job, slices and overlays read back. ``docker compose down -v`` and the daemon stopped by
pid, whatever happens.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.compose import (
    COMPOSE_FILE,
    Compose,
    Daemon,
    docker_client,
    ensure_base_image,
    ensure_wheelhouse,
    image_sizes,
    log,
    private_dockerd,
    prune_dangling_images,
    serve_directory,
)
from harness.stacks import wait_for
from services.cli.client import ApiClient, UploadState, submit, zip_directory
from services.common.config import REPO_ROOT, get_settings
from services.webhooks.delivery import verify
from tests.support.pacs import pacs_series
from tests.support.service import callback_receiver

pytestmark = pytest.mark.data

FILES = (COMPOSE_FILE, "docker-compose.ci.yml", "tests/deploy/docker-compose.test.yml")
IMAGES = (
    "covidct-app:0.1.0",
    "covidct-gateway:0.1.0",
    "covidct-torchserve:0.1.0",
    "covidct-ci-postgres:15",
    "covidct-ci-redis:7",
    "covidct-ci-s3:moto5",
    "covidct-ci-caddy:2",
    "covidct-ci-base:bookworm",
    "covidct-orthanc:0.1.0",
)
JOB_TIMEOUT_S = 900
# Profile pacs: the tenant Orthanc's AE title names, and Orthanc's web user's password.
PACS_TENANT = "hospital-pacs"
ORTHANC_PASSWORD = secrets.token_hex(16)
ARTIFACTS = REPO_ROOT / "var" / "compose-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env_file(path: Path) -> Path:
    """The stack's .env: random passwords, callbacks allowed to this host (http)."""
    path.write_text(
        "\n".join(
            [
                "POSTGRES_USER=covidct",
                f"POSTGRES_PASSWORD={secrets.token_hex(16)}",
                "POSTGRES_DB=covidct",
                f"REDIS_PASSWORD={secrets.token_hex(16)}",
                "S3_ACCESS_KEY=covidct-ci",
                f"S3_SECRET_KEY={secrets.token_hex(16)}",
                "COVIDCT_TLS_BIND=127.0.0.1",
                f"COVIDCT_TLS_PORT={_free_port()}",
                f'COVIDCT_SECRET_KEYS=["{base64.urlsafe_b64encode(os.urandom(32)).decode()}"]',
                "COVIDCT_GATEWAY_BIND=127.0.0.1",
                f"COVIDCT_GATEWAY_PORT={_free_port()}",
                "COVIDCT_WEBHOOK_ALLOW_HTTP=true",
                # The PACS (profile pacs) is on the compose network: a private address.
                'COVIDCT_WEBHOOK_ALLOWED_NETWORKS=["host.docker.internal","orthanc"]',
                f"ORTHANC_PASSWORD={ORTHANC_PASSWORD}",
                "COVIDCT_ORTHANC_BIND=127.0.0.1",
                f"COVIDCT_ORTHANC_HTTP_PORT={_free_port()}",
                f"COVIDCT_ORTHANC_DICOM_PORT={_free_port()}",
                "COVIDCT_DICOM_BIND=127.0.0.1",
                f"COVIDCT_DICOM_PORT={_free_port()}",
                f'COVIDCT_DICOM_AE_TITLES={{"ORTHANC":"{PACS_TENANT}"}}',
                "COVIDCT_DICOM_STABLE_AGE_S=5",
            ]
        )
        + "\n"
    )
    return path


@pytest.fixture(scope="module")
def study_zip(covid_series: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zip_directory(covid_series, tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def floor_process(study_zip: Path) -> Iterator[subprocess.Popen[str]]:
    """``covidct diagnose --json`` of the same zip on the host, running while images build."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "diagnose", str(study_zip), "--json"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def floor(floor_process: subprocess.Popen[str]) -> dict[str, Any]:
    start = time.monotonic()
    out, _ = floor_process.communicate(timeout=1200)
    assert floor_process.returncode == 0, "covidct diagnose failed on the host"
    log(f"waited {time.monotonic() - start:.1f} s more for covidct diagnose (host)")
    return dict(json.loads(out))


@pytest.fixture(scope="module")
def stack(
    floor_process: subprocess.Popen[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Compose]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env_file = _env_file(tmp_path_factory.mktemp("compose") / "ci.env")
    started = time.monotonic()
    # A CI timeout's SIGTERM unwinds like Ctrl-C, so the finally blocks below still take the
    # stack down and stop the daemon.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with private_dockerd() as daemon:
            yield from _stack(daemon, env_file, started)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def _stack(daemon: Daemon, env_file: Path, started: float) -> Iterator[Compose]:
    # Only the --env-file configures the stack, never this process's COVIDCT_* variables.
    env = {k: v for k, v in daemon.env.items() if not k.startswith(("COVIDCT_", "POSTGRES_"))}
    # The Caddy proxy and the PACS profile too, for every command (build and down included).
    env["COMPOSE_PROFILES"] = "tls,pacs"
    compose = Compose(env=env, files=FILES, env_file=env_file)
    try:
        compose.down()  # a project left by an interrupted run
        with compose.phase("base image"):
            env["COVIDCT_CI_BASE_IMAGE"] = ensure_base_image(env)
        with compose.phase("wheelhouse"):
            wheelhouse = ensure_wheelhouse()
        with serve_directory(wheelhouse) as url, compose.phase("build images"):
            env["COVIDCT_CI_WHEELHOUSE_URL"] = url
            build = compose.run("build", "--progress", "plain", capture_output=True, check=False)
            (ARTIFACTS / "build.txt").write_text(build.stdout + build.stderr)
            if build.returncode != 0:
                raise RuntimeError(f"docker compose build failed:\n{build.stderr[-6000:]}")
        prune_dangling_images(env)
        sizes = image_sizes(env, IMAGES)
        log("image sizes: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items()))
        with compose.phase("up --wait"):
            # All but dicom-listen: it refuses to start before its AE title's tenant exists
            # (test_pacs_profile_... starts it once it made the tenant).
            services = compose.output("config", "--services").split()
            services.remove("dicom-listen")
            compose.run("up", "--detach", "--wait", "--wait-timeout", "600", *services)
        yield compose
    finally:
        (ARTIFACTS / "ps.txt").write_text(compose.output("ps", "--all") if _ok(compose) else "")
        (ARTIFACTS / "logs.txt").write_text(compose.logs_tail(400))
        with compose.phase("down -v"):
            compose.down()
        compose.phases["total (stack fixture)"] = time.monotonic() - started
        summary = "\n".join(f"  {k:62s} {v:7.1f} s" for k, v in compose.phases.items())
        log(f"wall time per phase:\n{summary}\n  logs: {ARTIFACTS}")
        (ARTIFACTS / "phases.json").write_text(json.dumps(compose.phases, indent=2))


def _ok(compose: Compose) -> bool:
    return compose.run("ps", capture_output=True, check=False).returncode == 0


def test_pacs_profile_orthanc_to_sr_and_seg(
    stack: Compose, floor: dict[str, Any], covid_series: Path
) -> None:
    """README "Try it with Orthanc": P002 (a copy with valid UIDs) stored in Orthanc and sent
    by Orthanc's C-STORE to dicom-listen becomes the tenant's job, and its SR and SEG come back
    into Orthanc's study through a DICOM node destination on the compose network. Runs before
    the end-to-end test below, which ends with down -v and a restore."""
    url = f"http://127.0.0.1:{stack.published_port('gateway', 8000)}"
    orthanc_url = f"http://127.0.0.1:{stack.published_port('orthanc', 8042)}"
    orthanc = httpx.Client(base_url=orthanc_url, auth=("admin", ORTHANC_PASSWORD), timeout=60)
    with stack.phase("pacs: tenant, destination, dicom-listen up, Orthanc answers"):
        out = stack.exec("gateway", "covidct", "tenants", "create", PACS_TENANT, "--json")
        tenant = json.loads(out.strip().splitlines()[-1])
        stack.exec("gateway", "covidct", "tenants", "add-destination", PACS_TENANT, "orthanc",
                   "--host", "orthanc", "--port", "4242", "--ae-title", "ORTHANC")  # fmt: skip
        stack.run("up", "--detach", "--no-deps", "dicom-listen")
        wait_for(lambda: _answers(orthanc, "/system"), 120, interval_s=0.5)
        # Orthanc -> dicom-listen by C-ECHO: the listener is up with its AE titles.
        wait_for(lambda: _answers(orthanc, "/modalities/covidct/echo", {}), 180, interval_s=1)
    with stack.phase("pacs: P002 stored in Orthanc"):
        for _name, data in pacs_series(covid_series):
            assert orthanc.post("/instances", content=data).status_code == 200
        (study_id,) = orthanc.get("/studies").json()
        (series_id,) = orthanc.get(f"/studies/{study_id}").json()["Series"]
    with stack.phase("pacs: Orthanc C-STORE to dicom-listen"):
        sent = orthanc.post(
            "/modalities/covidct/store",
            json={"Resources": [series_id], "Synchronous": True},
            timeout=300,
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["FailedInstancesCount"] == 0, sent.json()
    client = ApiClient(url, tenant["api_key"])
    with stack.phase("pacs: series to job to verdict"):
        jobs = wait_for(lambda: client.http.get("/v1/jobs").json()["items"], 240, interval_s=1)
        assert len(jobs) == 1, jobs
        final = client.wait(jobs[0]["id"], timeout_s=JOB_TIMEOUT_S)
    assert final["status"] == "succeeded", final
    assert final["result"]["label"] == floor["label"]

    def delivered() -> dict[str, Any] | None:
        job = dict(client.get_job(final["id"]))
        states = {d["destination"]: d["status"] for d in job["deliveries"]}
        return job if states == {"orthanc": "delivered"} else None

    with stack.phase("pacs: SR and SEG delivered to Orthanc"):
        job = wait_for(delivered, 180, interval_s=1)
    series = orthanc.get(f"/studies/{study_id}/series").json()
    by_modality = {s["MainDicomTags"]["Modality"]: s for s in series}
    assert set(by_modality) == {"CT", "SR", "SEG"}, by_modality
    uids = {}
    for modality in ("SR", "SEG"):
        (instance,) = by_modality[modality]["Instances"]
        tags = orthanc.get(f"/instances/{instance}/simplified-tags").json()
        uids[modality.lower()] = tags["SOPInstanceUID"]
        assert tags["StudyInstanceUID"] == job["study"]["study_instance_uid"]
    assert uids == {k: job["deliveries"][0]["sent"][k] for k in ("sr", "seg")}
    orthanc.close()
    p_covid = final["result"]["probabilities"]["COVID"]
    log(f"pacs job {final['id']}: {final['result']['label']} P(COVID) {p_covid:.4f}; SR and SEG "
        f"in Orthanc's study {study_id}")  # fmt: skip


def _answers(http: httpx.Client, path: str, post: dict[str, Any] | None = None) -> bool:
    """GET path (POST the JSON ``post`` when given) answers 200; not yet listening: False."""
    try:
        response = http.get(path) if post is None else http.post(path, json=post)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def test_compose_stack_end_to_end(
    stack: Compose, floor: dict[str, Any], study_zip: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{stack.published_port('gateway', 8000)}"
    with stack.phase("tenant (compose exec)"):
        out = stack.exec("gateway", "covidct", "tenants", "create", "hospital-ci", "--json")
        tenant = json.loads(out.strip().splitlines()[-1])
    with callback_receiver(bind="0.0.0.0", url_host="host.docker.internal") as receiver:
        with stack.phase("tus upload, interrupted at half and resumed"):
            state = tmp_path / "client-state.json"
            half = study_zip.stat().st_size // 2
            client = ApiClient(url, tenant["api_key"])
            job, done = submit(
                client,
                study_zip,
                UploadState(state),
                receiver.url,
                chunk_size=1 << 20,
                stop_at=half,
            )
            assert not done and client.get_job(job["id"])["status"] == "awaiting_upload"
            sent: list[int] = []
            client = ApiClient(url, tenant["api_key"])  # a new client process resumes
            resumed, done = submit(
                client,
                study_zip,
                UploadState(state),
                receiver.url,
                chunk_size=1 << 20,
                progress=lambda offset, _total: sent.append(offset),
            )
            assert done and resumed["id"] == job["id"] and sent[0] >= half
        job_id = job["id"]

        with stack.phase("SIGKILL the inference worker while scoring, start it again"):
            status = wait_for(
                lambda: _status_once_past_preprocessing(client, job_id), 600, interval_s=0.1
            )
            assert status == "scoring", f"the job was {status} before the worker could be killed"
            stack.run("kill", "--signal", "KILL", "worker-inference")
            killed_while = client.get_job(job_id)["status"]
            stack.run("up", "--detach", "--no-deps", "--wait", "worker-inference")
        assert killed_while == "scoring"

        with stack.phase("job to verdict after the restart"):
            final = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        assert final["status"] == "succeeded", final
        result = final["result"]
        assert result["label"] == floor["label"]
        for name, p in floor["probabilities"].items():
            assert result["probabilities"][name] == pytest.approx(p, abs=1e-4)
        assert (result["slices_total"], result["slices_used"]) == (
            floor["slices_total"],
            floor["slices_used"],
        )
        assert result["model_versions"] == floor["model_versions"]

        wait_for(lambda: list(receiver.received), timeout_s=60)
        time.sleep(5)  # room for a duplicate to show up, were there one
        callbacks = list(receiver.received)
    assert len(callbacks) == 1
    assert verify(tenant["webhook_secret"], callbacks[0].headers, callbacks[0].body)
    assert callbacks[0].json() == {"type": "job.succeeded", "data": final}

    def count(table: str) -> int:
        return int(stack.sql(f"SELECT count(*) FROM {table} WHERE job_id = '{job_id}'")[0][0])

    assert count("results") == 1
    assert count("webhook_deliveries") == 1
    assert count("slice_scores") == floor["slices_used"]
    models = stack.sql(
        f"SELECT DISTINCT model_name, model_version FROM slice_scores WHERE job_id = '{job_id}'"
    )
    assert models == [["slice-cnn", get_settings().slice_model_version]]
    # Both scorers name the model slice-cnn: TorchServe's own access log shows it scored.
    access_log = stack.exec("torchserve", "cat", "/home/model-server/logs/access_log.log")
    assert "/predictions/slice-cnn" in access_log, access_log[-2000:]
    ts_metrics = stack.exec(
        "torchserve",
        "python",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8082/metrics').read().decode())",
    )
    requests = [
        line
        for line in ts_metrics.splitlines()
        if line.startswith("ts_inference_requests_total") and 'model_name="slice-cnn"' in line
    ]
    assert requests and float(requests[0].rsplit(" ", 1)[1]) > 0, ts_metrics[-2000:]
    events = [row[0] for row in stack.sql(
        f"SELECT status FROM job_events WHERE job_id = '{job_id}' ORDER BY id"
    )]  # fmt: skip
    assert events[-1] == "succeeded" and events.count("succeeded") == 1

    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": True, "broker": True}
    metrics = httpx.get(f"{url}/metrics", timeout=30)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
    covid = result["probabilities"]["COVID"]
    log(f"job {job_id}: {result['label']} P(COVID) {covid:.4f}, events {events}")

    with stack.phase("blobs in S3, read back by the viewer"):
        keys = _s3_keys(stack, f"jobs/{job_id}")
        assert {"slices.npy", "native.bin"} <= set(keys), keys
        assert "blobs" not in stack.exec("gateway", "ls", "/var/lib/covidct").split()
        viewer = _viewer_images(client, job_id)
    log(f"S3 keys of the job: {sorted(keys)}; viewer read {sorted(viewer)}")

    with stack.phase("the job over the TLS proxy"):
        _check_tls(stack, tenant["api_key"], job_id, final)
    _check_limits_logs_and_redis(stack)

    backup = tmp_path / "backup"
    compose_cmd = " ".join(stack.command())
    with stack.phase("backup (pg_dump + blob dump)"):
        _script(stack, "backup.sh", compose_cmd, str(backup))
    sizes = {p.name: p.stat().st_size for p in backup.iterdir()}
    log(f"backup: {sizes}")
    with stack.phase("down -v (every volume gone)"):
        stack.down()
    with stack.phase("restore into new volumes, gateway up"):
        _script(stack, "restore.sh", compose_cmd, str(backup), "gateway")
    with stack.phase("read back after the restore"):
        client = ApiClient(url, tenant["api_key"])
        restored = client.get_job(job_id)
        assert restored["status"] == "succeeded"
        assert restored["result"] == final["result"]
        assert _viewer_images(client, job_id) == viewer
        assert _s3_keys(stack, f"jobs/{job_id}") == keys
        again = stack.sql(f"SELECT status FROM job_events WHERE job_id = '{job_id}' ORDER BY id")
        assert [row[0] for row in again] == events


def _s3_keys(stack: Compose, prefix: str) -> dict[str, int]:
    """{name below prefix: size} listed in the S3 bucket, from inside the gateway."""
    script = (
        "import json, sys\n"
        "from services.common.config import get_settings\n"
        "from services.common.storage import make_storage\n"
        "s = make_storage(get_settings())\n"
        "full = s._key(sys.argv[1]) + '/'\n"
        "pages = s.client.get_paginator('list_objects_v2').paginate(Bucket=s.bucket, Prefix=full)\n"
        "print(json.dumps({o['Key'][len(full):]: o['Size'] for p in pages "
        "for o in p.get('Contents', [])}))"
    )
    out = stack.exec("gateway", "python", "-c", script, prefix)
    return dict(json.loads(out.strip().splitlines()[-1]))


def _viewer_images(client: ApiClient, job_id: str) -> dict[str, bytes]:
    """The viewer's PNGs of the first kept slice (and its lesion overlay when the study has
    one), as the console asks for them: each read from the blob store by range."""
    http = client.http
    listing = http.get(f"/v1/jobs/{job_id}/slices").raise_for_status().json()
    first = next(s for s in listing["slices"] if s["kept"])
    paths = {
        "slice": f"/v1/jobs/{job_id}/slices/{first['index']}.png",
        "native": f"/v1/jobs/{job_id}/slices/{first['index']}/image",
    }
    with_lesions = [s for s in listing["slices"] if s.get("lesions_url")]
    if listing.get("has_lesions") and with_lesions:
        paths["lesions"] = with_lesions[len(with_lesions) // 2]["lesions_url"]
    images = {}
    for name, path in paths.items():
        response = http.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.content.startswith(b"\x89PNG"), path
        images[name] = response.content
    return images


def _check_tls(stack: Compose, api_key: str, job_id: str, final: dict[str, Any]) -> None:
    import ssl

    root = stack.exec("caddy", "cat", "/data/caddy/pki/authorities/local/root.crt")
    context = ssl.create_default_context(cadata=root)
    port = stack.published_port("caddy", 8443)
    with httpx.Client(base_url=f"https://localhost:{port}", verify=context, timeout=30) as tls:
        job = tls.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {api_key}"})
        assert job.status_code == 200, job.text[:300]
        assert job.json()["result"] == final["result"]
        for inside in ("/metrics", "/readyz", "/healthz"):
            assert tls.get(inside).status_code == 404, inside
    with pytest.raises(httpx.ConnectError):  # not trusted without Caddy's root
        httpx.get(f"https://localhost:{port}/v1/jobs", timeout=10)


def _check_limits_logs_and_redis(stack: Compose) -> None:
    ids = stack.output("ps", "--quiet").split()
    fmt = (
        "{{.Name}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.LogConfig.Type}}"
        ' {{index .HostConfig.LogConfig.Config "max-size"}} {{.Id}}'
    )
    out = subprocess.run(
        [docker_client(), "inspect", "--format", fmt, *ids],
        env=stack.env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line]
    assert len(rows) >= 9, rows
    peaks = []
    for name, memory, cpus, driver, max_size, container_id in rows:
        assert int(memory) > 0 and int(cpus) > 0, name
        assert driver == "json-file" and max_size, name
        peak = _memory_peak(container_id)
        if peak is not None:
            peaks.append(f"{name.lstrip('/')} {peak / 2**20:.0f}/{int(memory) / 2**20:.0f} MiB")
    # What sizes the limits (README "Limits and logs"): the peak of each container so far.
    log("memory peak/limit: " + ", ".join(peaks))
    assert stack.env_file is not None
    password = next(
        line.split("=", 1)[1]
        for line in stack.env_file.read_text().splitlines()
        if line.startswith("REDIS_PASSWORD=")
    )
    for pid in ("1",):
        cmdline = stack.exec("redis", "cat", f"/proc/{pid}/cmdline")
        assert "redis-server" in cmdline and password not in cmdline, cmdline
    stack.exec("redis", "sh", "-c", "redis-cli ping | grep -q PONG")  # auth from the config
    log("limits and json-file rotation on " + ", ".join(r[0].lstrip("/") for r in rows))


def _memory_peak(container_id: str) -> int | None:
    """The container's peak memory: cgroup v1 max_usage_in_bytes or v2 memory.peak
    (dockerd's cgroupfs or systemd layout)."""
    for path in (
        Path("/sys/fs/cgroup/memory/docker") / container_id / "memory.max_usage_in_bytes",
        Path("/sys/fs/cgroup/docker") / container_id / "memory.peak",
        Path("/sys/fs/cgroup/system.slice") / f"docker-{container_id}.scope" / "memory.peak",
    ):
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def _script(stack: Compose, name: str, compose_cmd: str, *args: str) -> None:
    env = {**stack.env, "COVIDCT_COMPOSE": compose_cmd}
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "compose" / name), *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    (ARTIFACTS / f"{name}.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    log(f"{name}: {result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ''}")


def _status_once_past_preprocessing(client: ApiClient, job_id: str) -> str | None:
    status = str(client.get_job(job_id)["status"])
    return None if status in {"awaiting_upload", "queued", "preprocessing"} else status
