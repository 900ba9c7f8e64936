"""The Celery tasks in-process (eager), on SQLite: a full job from tus upload to verdict,
and every task run a second time changes nothing (no duplicate rows, no second webhook)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from services.asgi import create_app
from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.native_slices import decode_label_map
from services.common.orm import (
    Job,
    JobEvent,
    Result,
    SliceRecord,
    SliceScore,
    WebhookAttempt,
    WebhookDelivery,
)
from services.common.queue import celery_app
from services.common.storage import make_storage
from services.diagnosis import diagnose_path
from services.ensemble.tasks import ensemble_job
from services.inference.tasks import score_job
from services.preprocess.tasks import preprocess_job
from services.webhooks.delivery import verify
from tests.support.service import auth, callback_receiver, make_tenant, row_counts, upload_study


@pytest.fixture
def eager(isolated_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    isolated_settings(broker_url="memory://")
    celery_app.conf.task_always_eager = True
    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        celery_app.conf.task_always_eager = False


def _counts(job_id: str) -> dict[str, int]:
    return row_counts(job_id, JobEvent, SliceRecord, SliceScore, Result, WebhookDelivery)


def test_job_runs_to_a_verdict_and_tasks_are_idempotent(eager: TestClient) -> None:
    study = Path(str(get_testdata_file("CT_small.dcm", download=False)))
    data = study.read_bytes()
    tenant = make_tenant("eager")
    with callback_receiver() as receiver:
        job = {"id": upload_study(eager, tenant, data, callback_url=receiver.url)}

        body = eager.get(f"/v1/jobs/{job['id']}", headers=auth(tenant)).json()
        assert body["status"] == "succeeded", body
        floor, _ = diagnose_path(study)
        assert body["result"]["label"] == floor.label
        assert body["result"]["probabilities"]["COVID"] == pytest.approx(
            floor.probabilities["COVID"], abs=1e-6
        )
        assert len(receiver.received) == 1
        assert verify(
            tenant["webhook_secret"], receiver.received[0].headers, receiver.received[0].body
        )

        before = _counts(job["id"])
        assert before == {
            "job_events": 6,
            "slices": 1,
            "slice_scores": 1,
            "results": 1,
            "webhook_deliveries": 1,
        }
        for task in (preprocess_job, score_job, ensemble_job):
            assert task.apply(args=(job["id"],)).get() == "skipped"
        assert _counts(job["id"]) == before
        assert len(receiver.received) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(WebhookAttempt)) == 1


def test_a_job_passes_each_stage_function_once(
    eager: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data walk: upload -> preprocess_path -> score_slices -> verdict, each exactly once,
    each in its own task, with what the previous stage stored."""
    import services.ensemble.tasks as ensemble_tasks
    import services.inference.tasks as inference_tasks
    import services.preprocess.tasks as preprocess_tasks

    calls: list[str] = []

    def spy(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)

    spy(preprocess_tasks, "preprocess_path")
    spy(inference_tasks, "score_slices")
    spy(ensemble_tasks, "verdict")
    study = Path(str(get_testdata_file("CT_small.dcm", download=False)))
    data = study.read_bytes()
    tenant = make_tenant("walk")
    job = {"id": upload_study(eager, tenant, data)}
    body = eager.get(f"/v1/jobs/{job['id']}", headers=auth(tenant)).json()
    assert body["status"] == "succeeded", body
    assert calls == ["preprocess_path", "score_slices", "verdict"]


def test_lesion_measurements_and_overlay_travel_from_preprocess_to_the_verdict(
    eager: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HU volumes: preprocess stores the lesion label maps (jobs/<id>/lesions.npz, aligned
    with slices.npy) and jobs.lesion_findings; the ensemble task hands them to verdict v3,
    and the gateway serves the overlay. (CT_small is one slice, too small for the segmenter:
    the stage's output gets a typical-COVID measurement added to test the wiring.)"""
    import services.preprocess.tasks as preprocess_tasks

    zones = ("right_upper", "right_middle", "right_lower", "left_upper", "left_middle")
    findings = {
        "lung_slices": 120,
        "opacity_percent": 6.0,
        "lesion_volume_ml": 240.0,
        "ggo_fraction": 0.9,
        "severity_score": 7,
        "zone_opacity_percent": dict.fromkeys(zones, 3.0) | {"left_lower": 20.0},
        "peripheral_central_ratio": 3.0,
        "lower_zone_fraction": 0.55,
        "lesion_components": 12,
        "slice_lesion_share": [0.25],
    }
    real = preprocess_tasks.preprocess_path

    def with_lesions(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        maps = np.zeros(out.prepared.inputs.shape, np.uint8)
        maps[:, :10, :10] = 1
        maps[:, -10:, -10:] = 2
        out.prepared.lesion_findings, out.prepared.lesion_maps = findings, maps
        return out

    monkeypatch.setattr(preprocess_tasks, "preprocess_path", with_lesions)
    data = Path(str(get_testdata_file("CT_small.dcm", download=False))).read_bytes()
    tenant = make_tenant("lesions")
    job_id = upload_study(eager, tenant, data)
    body = eager.get(f"/v1/jobs/{job_id}", headers=auth(tenant)).json()
    assert body["status"] == "succeeded", body
    assert body["result"]["model_versions"]["verdict"] == "lesion-pattern"
    assert body["result"]["findings"]["category"] == "covid"
    assert body["result"]["label"] == "COVID"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.lesion_findings == findings
        assert job.lesions_blob == f"jobs/{job_id}/lesions.bin"
        info = session.scalars(
            select(SliceRecord.info).where(SliceRecord.job_id == job_id, SliceRecord.kept)
        ).one()
    offset, length = info["lesions"]
    data = make_storage(get_settings()).get_range(f"jobs/{job_id}/lesions.bin", offset, length)
    labels = decode_label_map(data)
    assert labels.dtype == np.uint8 and labels[0, 0] == 1 and labels[-1, -1] == 2
    listing = eager.get(f"/v1/jobs/{job_id}/slices", headers=auth(tenant)).json()
    assert listing["has_lesions"] is True and listing["slices"][0]["lesion_share"] == 0.25
    overlay = eager.get(listing["slices"][0]["lesions_url"], headers=auth(tenant))
    assert overlay.status_code == 200 and overlay.content[:8] == b"\x89PNG\r\n\x1a\n"
