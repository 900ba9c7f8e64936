"""Fixtures of the in-process service tests (each module defines its own ``client``)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.common import tasks as common_tasks
from tests.support.service import make_tenant


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Jobs whose pipeline was started (no broker in these tests); callbacks are dropped."""
    calls: list[str] = []
    monkeypatch.setattr(
        common_tasks, "dispatch", lambda job_id, _step, _attempt: calls.append(job_id)
    )
    monkeypatch.setattr(common_tasks, "send_webhook", lambda _id: None)
    return calls


@pytest.fixture
def alice(client: TestClient) -> dict[str, str]:
    return make_tenant("alice")
