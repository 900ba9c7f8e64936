"""``GET /v1/jobs`` as a worklist: filters, search, sort and paging on the server, tenant-scoped;
the category a verdict gets on success."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.asgi import create_app
from services.common.config import Settings
from services.common.db import session_scope
from services.common.jobs import transition, verdict_category
from services.common.orm import Job, JobStatus, Result
from tests.support.service import auth, make_tenant

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ROWS: list[dict[str, Any]] = [
    dict(external_id="ref-a", patient_id="P002", accession_number="ACC-100", study_date="20200411",
         series_description="ThorRoutine 2.0 D40s", status="succeeded", category="covid"),
    dict(external_id="ref-b", patient_id="NORMAL-7", accession_number="ACC-200",
         study_date="20200105", series_description="Lung 1.0", status="succeeded",
         category="no_pneumonia"),
    dict(external_id="ref-c", patient_id="cap_9", accession_number="ACC-300", study_date="20210720",
         series_description="Thorax 5mm", status="failed", category=None),
    dict(external_id="ref-d", patient_id=None, accession_number=None, study_date=None,
         series_description=None, status="awaiting_upload", category=None),
]  # fmt: skip


@pytest.fixture
def client(isolated_settings: Callable[..., Settings], started: list[str]) -> Iterator[TestClient]:
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def worklist(client: TestClient) -> tuple[dict[str, str], list[str]]:
    """Four jobs of alice (created a day apart, oldest first) and one of bob."""
    alice, bob = make_tenant("alice"), make_tenant("bob")
    ids = []
    with session_scope() as session:
        for k, row in enumerate(ROWS):
            job = Job(tenant_id=alice["id"], created_at=T0 + timedelta(days=k), **row)
            session.add(job)
            session.flush()
            ids.append(job.id)
        session.add(Job(tenant_id=bob["id"], patient_id="P002", status="succeeded"))
    return alice, ids


def _ids(client: TestClient, tenant: dict[str, str], **params: Any) -> list[str]:
    response = client.get("/v1/jobs", params=params, headers=auth(tenant))
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_default_is_newest_first_with_the_worklist_columns(
    client: TestClient, worklist: tuple[dict[str, str], list[str]]
) -> None:
    alice, ids = worklist
    body = client.get("/v1/jobs", headers=auth(alice)).json()
    assert [item["id"] for item in body["items"]] == ids[::-1]
    assert body["total"] == 4  # bob's job is not alice's
    first = body["items"][-1]["study"]
    assert first == {
        "patient_id": "P002", "accession_number": "ACC-100", "study_date": "20200411",
        "series_description": "ThorRoutine 2.0 D40s", "study_instance_uid": None,
        "series_instance_uid": None, "category": "covid",
    }  # fmt: skip


def test_sort_keys(client: TestClient, worklist: tuple[dict[str, str], list[str]]) -> None:
    alice, ids = worklist
    assert _ids(client, alice, sort="created_at") == ids
    # Study date: jobs without one last, whichever the direction.
    assert _ids(client, alice, sort="study_date") == [ids[1], ids[0], ids[2], ids[3]]
    assert _ids(client, alice, sort="-study_date") == [ids[2], ids[0], ids[1], ids[3]]
    assert _ids(client, alice, sort="status") == [ids[3], ids[2], ids[1], ids[0]]
    assert _ids(client, alice, sort="category")[:2] == [ids[0], ids[1]]
    # Patient id and accession number: case-insensitive, jobs without one last.
    assert _ids(client, alice, sort="patient_id") == [ids[2], ids[1], ids[0], ids[3]]
    assert _ids(client, alice, sort="-patient_id") == [ids[0], ids[1], ids[2], ids[3]]
    assert _ids(client, alice, sort="accession_number") == ids
    assert _ids(client, alice, sort="-accession_number") == [ids[2], ids[1], ids[0], ids[3]]
    assert client.get("/v1/jobs?sort=patient_name", headers=auth(alice)).status_code == 422


def test_filters(client: TestClient, worklist: tuple[dict[str, str], list[str]]) -> None:
    alice, ids = worklist
    assert set(_ids(client, alice, status="succeeded")) == {ids[0], ids[1]}
    assert set(_ids(client, alice, status=["failed", "awaiting_upload"])) == {ids[2], ids[3]}
    assert _ids(client, alice, category="no_pneumonia") == [ids[1]]
    assert set(_ids(client, alice, category=["covid", "no_pneumonia"])) == {ids[0], ids[1]}
    in_2020 = _ids(client, alice, study_date_from="2020-01-01", study_date_to="2020-12-31")
    assert set(in_2020) == {ids[0], ids[1]}
    assert _ids(client, alice, study_date_from="2020-04-11", study_date_to="2020-04-11") == [ids[0]]
    bad = client.get("/v1/jobs?study_date_from=11/04/2020", headers=auth(alice))
    assert bad.status_code == 422
    # a number is not a date (pydantic alone would read it as a Unix time; schemathesis ST201)
    assert client.get("/v1/jobs?study_date_to=0", headers=auth(alice)).status_code == 422
    # categories are the verdict's own words, nothing else (schemathesis ST201)
    assert client.get("/v1/jobs?category=-2.2e-250", headers=auth(alice)).status_code == 422


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("p002", [0]),  # patient id, any case
        ("acc-2", [1]),  # accession number
        ("REF-C", [2]),  # external id
        ("thor", [0, 2]),  # series description
        ("%", []),  # LIKE wildcards are literal
        ("_", [2]),  # cap_9
    ],
)
def test_search(
    client: TestClient, worklist: tuple[dict[str, str], list[str]], q: str, expected: list[int]
) -> None:
    alice, ids = worklist
    assert set(_ids(client, alice, q=q)) == {ids[k] for k in expected}


def test_paging_counts_every_match(
    client: TestClient, worklist: tuple[dict[str, str], list[str]]
) -> None:
    alice, ids = worklist
    page = client.get(
        "/v1/jobs", params={"sort": "created_at", "limit": 2, "offset": 1}, headers=auth(alice)
    ).json()
    assert [item["id"] for item in page["items"]] == ids[1:3]
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    filtered = client.get("/v1/jobs", params={"q": "thor", "limit": 1}, headers=auth(alice)).json()
    assert filtered["total"] == 2 and len(filtered["items"]) == 1


@pytest.mark.parametrize(
    ("label", "findings", "category"),
    [
        ("COVID", {"pattern": "typical"}, "covid"),
        ("NonCOVID", {"pattern": "indeterminate"}, "indeterminate"),
        ("NonCOVID", {"pattern": "atypical"}, "other_pneumonia"),
        ("NonCOVID", {"pattern": "negative"}, "no_pneumonia"),
        ("NonCOVID", None, "noncovid"),  # no HU findings: the label
        ("COVID", {"category": "covid", "pattern": "atypical"}, "covid"),  # named by the verdict
    ],
)
def test_category_of_a_verdict(label: str, findings: Any, category: str) -> None:
    assert verdict_category(label, findings) == category


def test_success_stores_the_category(client: TestClient) -> None:
    tenant = make_tenant("carol")
    with session_scope() as session:
        job = Job(tenant_id=tenant["id"], status=JobStatus.ENSEMBLING.value)
        session.add(job)
        session.flush()
        session.add(
            Result(job_id=job.id, label="NonCOVID", probabilities={}, slices_total=1,
                   slices_used=1, model_versions={}, findings={"pattern": "atypical"})
        )  # fmt: skip
        assert transition(session, job.id, JobStatus.SUCCEEDED, [JobStatus.ENSEMBLING])
        job_id = job.id
    assert _ids(client, tenant, category="other_pneumonia") == [job_id]
