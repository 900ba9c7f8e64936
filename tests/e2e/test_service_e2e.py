"""End to end through real processes: tus upload (interrupted and resumed) -> Celery workers
-> scorer -> ensemble -> verdict in the database, polled over HTTP, one signed callback.

Two stacks: the embedded default (SQLite, embedded Redis, in-process scorer) and production
(PostgreSQL, Redis, TorchServe). Plus a worker SIGKILLed mid-preprocessing, and bad inputs.
"""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from harness.stacks import (
    create_tenant,
    fresh_postgres_database,
    fresh_redis_db,
    rows,
    running_stack,
    stack_engine,
    wait_for,
)
from services.cli.client import ApiClient, UploadState, submit, zip_directory
from services.cli.runtime import Stack
from services.common.config import Settings, get_settings
from services.common.hashing import file_sha256
from services.diagnosis import Diagnosis, diagnose_path
from services.webhooks.delivery import verify
from tests.support.service import CallbackReceiver, callback_receiver

pytestmark = pytest.mark.data

JOB_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def study_zip(covid_series: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zip_directory(covid_series, tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def floor(study_zip: Path) -> Diagnosis:
    """`covidct diagnose` of the same upload, in this process."""
    result, _prepared = diagnose_path(study_zip)
    return result


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(var_dir=tmp_path_factory.mktemp("embedded"))
    settings.database_url = settings.broker_url = settings.scorer_url = None
    with running_stack(settings) as stack:
        yield stack


@pytest.fixture(scope="module")
def production_stack(
    tmp_path_factory: pytest.TempPathFactory, torchserve_url: str
) -> Iterator[Stack]:
    with fresh_postgres_database("covidct_e2e") as database_url:
        settings = Settings(
            var_dir=tmp_path_factory.mktemp("production"),
            database_url=database_url,
            broker_url=fresh_redis_db(11),
            scorer_url=torchserve_url,
        )
        with running_stack(settings) as stack:
            yield stack


def _upload_interrupted_then_resumed(
    stack: Stack, study: Path, receiver: CallbackReceiver, tmp: Path
) -> tuple[ApiClient, dict[str, Any], dict[str, str]]:
    tenant = create_tenant(stack, f"hospital-{os.urandom(4).hex()}")
    client = ApiClient(stack.url, tenant["api_key"])
    state = UploadState(tmp / "client-state.json")
    half = study.stat().st_size // 2
    job, done = submit(
        client, study, state, callback_url=receiver.url, chunk_size=1 << 20, stop_at=half
    )
    assert not done
    assert client.get_job(job["id"])["status"] == "awaiting_upload"
    # A new client process: the state file makes it resume the same job and upload.
    resumed_client = ApiClient(stack.url, tenant["api_key"])
    sent: list[int] = []
    resumed, done = submit(
        resumed_client,
        study,
        UploadState(tmp / "client-state.json"),
        callback_url=receiver.url,
        chunk_size=1 << 20,
        progress=lambda offset, _total: sent.append(offset),
    )
    assert done and resumed["id"] == job["id"]
    assert sent[0] >= half  # resumed, not restarted
    return resumed_client, resumed, tenant


def _assert_verdict_and_callback(
    client: ApiClient,
    job_id: str,
    floor: Diagnosis,
    receiver: CallbackReceiver,
    tenant: dict[str, str],
) -> dict[str, Any]:
    final = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
    assert final["status"] == "succeeded", final
    result = final["result"]
    # P002 is COVID-19: the service must say so, by the same lesion-pattern verdict (v3).
    assert result["label"] == floor.label == "COVID"
    assert result["findings"]["pattern"] == "typical"
    assert result["findings"]["category"] == "covid"
    for name, p in floor.probabilities.items():
        assert result["probabilities"][name] == pytest.approx(p, abs=1e-4)
    assert (result["slices_total"], result["slices_used"]) == (
        floor.slices_total,
        floor.slices_used,
    )
    assert result["model_versions"] == floor.model_versions
    # Lesion measurements: computed by preprocess, stored with the job, reported with the verdict.
    assert floor.findings is not None and floor.findings["opacity_percent"] > 1.0
    numeric = {k for k, v in floor.findings.items() if isinstance(v, float)}
    assert {k: result["findings"][k] for k in numeric} == pytest.approx(
        {k: floor.findings[k] for k in numeric}
    )
    assert {k: v for k, v in result["findings"].items() if k not in numeric} == {
        k: v for k, v in floor.findings.items() if k not in numeric
    }
    wait_for(lambda: list(receiver.received), timeout_s=60)
    time.sleep(3)  # room for a duplicate to show up, were there one
    callbacks = list(receiver.received)
    assert len(callbacks) == 1
    callback = callbacks[0]
    assert verify(tenant["webhook_secret"], callback.headers, callback.body)
    assert callback.json() == {"type": "job.succeeded", "data": final}
    return dict(final)


def _assert_slices_and_heatmap(client: ApiClient, job_id: str, floor: Diagnosis) -> None:
    body = client.http.get(f"/v1/jobs/{job_id}/slices").json()
    assert len(body["slices"]) == floor.slices_total
    kept = [s for s in body["slices"] if s["kept"]]
    assert len(kept) == floor.slices_used
    covid = [s["probabilities"]["COVID"] for s in kept]
    assert covid == pytest.approx(floor.slice_probabilities, abs=1e-4)
    dropped = {s["index"]: s["drop_reason"] for s in body["slices"] if not s["kept"]}
    assert dropped == {d["index"]: d["reason"] for d in floor.dropped}
    heatmaps = [s["heatmap_url"] for s in kept if s["heatmap_url"]]
    assert heatmaps
    png = client.http.get(heatmaps[0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")


def _full_flow(
    stack: Stack, study_zip: Path, floor: Diagnosis, tmp_path: Path
) -> tuple[Any, dict[str, Any]]:
    """Interrupted-then-resumed upload, verdict equal to the floor, one signed callback,
    slices and a heatmap; returns the client and the job."""
    with callback_receiver() as receiver:
        client, job, tenant = _upload_interrupted_then_resumed(stack, study_zip, receiver, tmp_path)
        _assert_verdict_and_callback(client, job["id"], floor, receiver, tenant)
        _assert_slices_and_heatmap(client, job["id"], floor)
    return client, job


def test_embedded_default_end_to_end(
    embedded_stack: Stack, study_zip: Path, floor: Diagnosis, tmp_path: Path
) -> None:
    client, job = _full_flow(embedded_stack, study_zip, floor, tmp_path)
    # Deleting a finished job removes its rows and every blob (upload, slice stack, heatmaps).
    blobs = Path(embedded_stack.env["COVIDCT_VAR_DIR"]) / "blobs" / "jobs" / job["id"]
    assert (blobs / "slices.npy").is_file() and any((blobs / "heatmaps").iterdir())
    assert client.http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.http.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert not blobs.exists()


def test_production_stack_end_to_end(
    production_stack: Stack, study_zip: Path, floor: Diagnosis, tmp_path: Path
) -> None:
    _client, job = _full_flow(production_stack, study_zip, floor, tmp_path)
    engine = stack_engine(production_stack)
    versions = rows(
        engine,
        "SELECT DISTINCT model_name, model_version FROM slice_scores WHERE job_id = :j",
        j=job["id"],
    )
    assert [tuple(v) for v in versions] == [("slice-cnn", get_settings().slice_model_version)]
    engine.dispose()


def test_worker_killed_in_preprocessing_still_succeeds_once(
    production_stack: Stack, study_zip: Path, floor: Diagnosis
) -> None:
    engine = stack_engine(production_stack)
    tenant = create_tenant(production_stack, "kill-test")
    client = ApiClient(production_stack.url, tenant["api_key"])
    with callback_receiver() as receiver:
        job = client.create_job(callback_url=receiver.url)
        client.upload(job, study_zip, file_sha256(study_zip))

        def preprocessing_worker() -> str | None:
            found = rows(
                engine,
                "SELECT detail FROM job_events WHERE job_id = :j AND status = 'preprocessing'",
                j=job["id"],
            )
            return found[0][0]["worker"] if found else None

        worker = wait_for(preprocessing_worker, timeout_s=120)
        killed_pid = int(worker.rsplit(":", 1)[1])
        assert client.get_job(job["id"])["status"] == "preprocessing"
        os.kill(killed_pid, signal.SIGKILL)

        final = client.wait(job["id"], timeout_s=JOB_TIMEOUT_S)
        assert final["status"] == "succeeded", final
        assert final["result"]["label"] == floor.label
        wait_for(lambda: receiver.received, timeout_s=60)
    events = rows(
        engine,
        "SELECT status, detail FROM job_events WHERE job_id = :j ORDER BY id",
        j=job["id"],
    )
    statuses = [e[0] for e in events]
    assert statuses == [
        "awaiting_upload",
        "queued",
        "preprocessing",
        "scoring",
        "ensembling",
        "succeeded",
    ]
    # Another process finished the preprocessing the killed one had started.
    assert events[3][1]["worker"] != worker

    def count(table: str, column: str = "job_id") -> int:
        return int(
            rows(engine, f"SELECT count(*) FROM {table} WHERE {column} = :j", j=job["id"])[0][0]
        )

    assert count("results") == 1
    assert count("slices") == floor.slices_total
    assert count("slice_scores") == floor.slices_used
    assert count("webhook_deliveries") == 1
    assert len(receiver.received) == 1
    engine.dispose()


# --- bad inputs end as failed jobs with the ML core's codes ----------------------------------


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _mr_series(covid_series: Path) -> bytes:
    members = {}
    for path in sorted(covid_series.iterdir())[:3]:
        dataset = pydicom.dcmread(path)
        dataset.Modality = "MR"
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        members[path.name] = buffer.getvalue()
    return _zip_bytes(members)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("corrupt_zip", "corrupt_file"),
        ("not_ct", "no_ct_series"),
        ("unsafe_archive", "unsafe_archive"),
        ("checksum_mismatch", "checksum_mismatch"),
    ],
)
def test_bad_inputs_fail_with_codes(
    embedded_stack: Stack, covid_series: Path, tmp_path: Path, case: str, code: str
) -> None:
    payloads = {
        "corrupt_zip": b"PK\x03\x04" + os.urandom(2000),
        "not_ct": _mr_series(covid_series),
        "unsafe_archive": _zip_bytes({"../../escape.dcm": b"x" * 10}),
        "checksum_mismatch": _zip_bytes({"a.dcm": b"x"}),
    }
    path = tmp_path / "study.zip"
    path.write_bytes(payloads[case])
    tenant = create_tenant(embedded_stack, f"bad-{case}")
    client = ApiClient(embedded_stack.url, tenant["api_key"])
    with callback_receiver() as receiver:
        job = client.create_job(callback_url=receiver.url)
        checksum = "0" * 64 if case == "checksum_mismatch" else file_sha256(path)
        assert client.upload(job, path, checksum)
        final = client.wait(job["id"], timeout_s=120)
        assert final["status"] == "failed"
        assert final["error"]["code"] == code, final
        callbacks = wait_for(lambda: list(receiver.received), timeout_s=60)
        assert [c.json()["type"] for c in callbacks] == ["job.failed"]
        assert verify(tenant["webhook_secret"], callbacks[0].headers, callbacks[0].body)


def test_embedded_stack_answers_api_misuse_with_4xx(embedded_stack: Stack) -> None:
    response = httpx.get(f"{embedded_stack.url}/v1/jobs/nope")
    assert response.status_code == 401
    tenant = create_tenant(embedded_stack, "misuse")
    client = ApiClient(embedded_stack.url, tenant["api_key"])
    assert client.http.get("/v1/jobs/nope").status_code == 404
    # The gateway's readiness is its own database and broker; workers are not asked.
    assert httpx.get(f"{embedded_stack.url}/readyz").json()["checks"] == {
        "database": True,
        "broker": True,
    }
    # Internal endpoints: a request relayed by a proxy does not see them.
    relayed = {"X-Forwarded-For": "203.0.113.7"}
    assert httpx.get(f"{embedded_stack.url}/readyz", headers=relayed).status_code == 404
    assert httpx.get(f"{embedded_stack.url}/metrics", headers=relayed).status_code == 404
    metrics = httpx.get(f"{embedded_stack.url}/metrics").text
    assert 'covidct_dependency_up{dependency="broker"} 1.0' in metrics
