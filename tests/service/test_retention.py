"""PHI in the service: the raw upload goes when its job ends, derived data after N days, a
DELETE racing a running stage leaves no blob behind, and de-identification at ingest stores
no identifying header."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import select

import services.ensemble.tasks  # noqa: F401  (registers the task the eager pipeline runs last)
from services.asgi import create_app
from services.common.config import Settings
from services.common.db import session_scope
from services.common.orm import Job, JobEvent, Result, SliceRecord, SliceScore, utcnow
from services.common.queue import celery_app
from services.common.retention import sweep_retention
from services.inference.tasks import score_job
from services.preprocess.tasks import preprocess_job
from tests.support.service import auth, make_tenant, row_counts, upload_study

STUDY = Path(str(get_testdata_file("CT_small.dcm", download=False)))


def _service(
    isolated_settings: Callable[..., Settings], eager: bool, **overrides: Any
) -> Iterator[tuple[TestClient, Settings]]:
    settings = isolated_settings(broker_url="memory://", **overrides)
    celery_app.conf.task_always_eager = eager
    try:
        with TestClient(create_app()) as client:
            yield client, settings
    finally:
        celery_app.conf.task_always_eager = False


@pytest.fixture
def eager(isolated_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, Settings]]:
    yield from _service(isolated_settings, eager=True)


@pytest.fixture
def stepwise(
    isolated_settings: Callable[..., Settings],
) -> Iterator[tuple[TestClient, Settings]]:
    yield from _service(isolated_settings, eager=False)


def _submit(client: TestClient, tenant: dict[str, str], data: bytes | None = None) -> str:
    return upload_study(client, tenant, STUDY.read_bytes() if data is None else data)


def _blobs(settings: Settings, job_id: str) -> list[str]:
    root = settings.var_dir / "blobs" / "jobs" / job_id
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _rows(job_id: str) -> dict[str, int]:
    return row_counts(job_id, SliceRecord, SliceScore, Result)


def test_raw_upload_goes_when_the_job_ends_and_derived_data_after_n_days(
    eager: tuple[TestClient, Settings],
) -> None:
    client, settings = eager
    tenant = make_tenant("retention")
    job_id = _submit(client, tenant)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()["status"] == "succeeded"
    blobs = _blobs(settings, job_id)
    assert "slices.npy" in blobs and any(b.startswith("heatmaps/") for b in blobs)
    assert not any(b.startswith("upload") for b in blobs), blobs  # PHI gone at once
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        ended = job.updated_at
    # The sweep fixes the column the commit hook cannot touch, and leaves recent data alone.
    assert sweep_retention(settings, now=ended + timedelta(days=1)) == {
        "raw_uploads": 1,
        "derived": 0,
    }
    assert _rows(job_id) == {"slices": 1, "slice_scores": 1, "results": 1}
    later = ended + timedelta(days=settings.retention_derived_days, minutes=1)
    assert sweep_retention(settings, now=later) == {"raw_uploads": 0, "derived": 1}
    assert _blobs(settings, job_id) == []
    assert _rows(job_id) == {"slices": 0, "slice_scores": 0, "results": 0}
    body = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
    assert body["status"] == "succeeded" and body["result"] is None
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.purged_at is not None
        stages = session.scalars(select(JobEvent.stage).where(JobEvent.job_id == job_id))
        assert "retention" in set(stages)
    assert sweep_retention(settings, now=later) == {"raw_uploads": 0, "derived": 0}


def test_keeping_raw_uploads_is_a_setting(isolated_settings: Callable[..., Settings]) -> None:
    for client, settings in _service(
        isolated_settings, eager=True, retention_keep_raw_upload="true"
    ):
        job_id = _submit(client, make_tenant("keeps"))
        assert any(b.startswith("upload/") for b in _blobs(settings, job_id))
        assert sweep_retention(settings, now=utcnow()) == {"raw_uploads": 0, "derived": 0}


def test_delete_racing_a_running_stage_leaves_no_blob(
    stepwise: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.inference.tasks as inference_tasks

    client, settings = stepwise
    tenant = make_tenant("racer")
    job_id = _submit(client, tenant)
    assert preprocess_job.apply(args=(job_id,)).get() == "done"
    real_explain = inference_tasks.explain_slices

    def delete_then_explain(*args: Any, **kwargs: Any) -> Any:
        # The client cancels, then deletes, while heatmaps are being computed.
        assert client.delete(f"/v1/jobs/{job_id}", headers=auth(tenant)).status_code == 202
        assert client.delete(f"/v1/jobs/{job_id}", headers=auth(tenant)).status_code == 204
        return real_explain(*args, **kwargs)

    monkeypatch.setattr(inference_tasks, "explain_slices", delete_then_explain)
    assert score_job.apply(args=(job_id,)).get() == "deleted"
    assert _blobs(settings, job_id) == []
    with session_scope() as session:
        assert session.get(Job, job_id) is None


def test_deidentified_uploads_keep_no_identifying_header(
    isolated_settings: Callable[..., Settings],
) -> None:
    for client, settings in _service(
        isolated_settings, eager=True, deidentify_uploads="true", retention_keep_raw_upload="true"
    ):
        tenant = make_tenant("deid")
        job_id = _submit(client, tenant)
        body = client.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
        assert body["status"] == "succeeded", body
        stored = [p for p in (settings.var_dir / "blobs" / "jobs" / job_id).rglob("*.dcm")]
        assert len(stored) == 1
        assert b"CompressedSamples^CT1" in STUDY.read_bytes()
        assert b"CompressedSamples^CT1" not in stored[0].read_bytes()
        with session_scope() as session:
            details = session.scalars(select(JobEvent.detail).where(JobEvent.job_id == job_id))
            assert any((d or {}).get("deidentified_dicom_files") == 1 for d in details)
        # What cannot be de-identified fails the job and stores none of its bytes.
        broken = _submit(client, tenant, b"\0" * 128 + b"DICM" + b"\xff" * 10)
        body = client.get(f"/v1/jobs/{broken}", headers=auth(tenant)).json()
        assert body["status"] == "failed"
        assert body["error"]["code"] == "corrupt_file"
        assert "de-identified" in body["error"]["message"]
        assert _blobs(settings, broken) == []


def test_shutdown_waits_for_a_sweep_in_progress(
    isolated_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retention sweep running in a worker thread when the gateway stops finishes before
    the shutdown returns: no database work outlives the app (a leftover thread once read the
    next test's settings half-changed and broke it)."""
    import threading
    import time

    import services.asgi

    started, finished = threading.Event(), threading.Event()

    def slow_sweep(_settings: Settings) -> None:
        started.set()
        time.sleep(0.5)
        finished.set()

    monkeypatch.setattr(services.asgi, "sweep_retention", slow_sweep)
    isolated_settings(broker_url="memory://")
    with TestClient(create_app()):
        assert started.wait(10)
    assert finished.is_set()
