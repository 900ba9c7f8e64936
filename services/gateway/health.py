"""Liveness, readiness (database, broker, scorer) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel
from sqlalchemy import func, select, text

from services.common.db import get_engine, get_sessionmaker
from services.common.orm import Job
from services.common.queue import SCORER_READY_COMMAND, ask_workers, broker_reachable

router = APIRouter(tags=["health"])

JOBS_BY_STATUS = Gauge("covidct_jobs", "Jobs by status", ["status"])


def _database_ok() -> bool:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _scorer_ready() -> bool:
    """Whether some worker can score: the inference room answers for its scorer (TorchServe
    or in-process), so the gateway needs to know neither."""
    return any(
        isinstance(answer, dict) and bool(answer.get("ready"))
        for answer in ask_workers(SCORER_READY_COMMAND)
    )


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, bool]


@router.get("/healthz", response_model=Health)
@router.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD
async def healthz() -> JSONResponse:
    """Liveness: answered on the event loop, touching neither the database nor the
    threadpool, so it answers at once however loaded the gateway is."""
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Some dependency is not ready"}},
)
async def readyz() -> JSONResponse:
    checks: dict[str, Any] = {
        "database": await run_in_threadpool(_database_ok),
        "broker": await run_in_threadpool(broker_reachable),
        "scorer": await run_in_threadpool(_scorer_ready),
    }
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    try:
        with get_sessionmaker()() as session:
            counts = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        JOBS_BY_STATUS.clear()
        for status, count in counts:
            JOBS_BY_STATUS.labels(status=status).set(count)
    except Exception:  # metrics must answer even when the database does not
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
