"""Liveness, readiness (this gateway's own database and broker) and Prometheus metrics.

Readiness answers for this pod only: whether it can take a request now. Scorer health is the
inference workers' own readiness probe (``covidct probe scorer``); a TorchServe outage must
not take every gateway out of its Service (jobs queue and wait for the scorer instead).
Dependency health goes to /metrics (``covidct_dependency_up``) for alerts.

/readyz and /metrics are for the kubelet and Prometheus, which call the pod directly: a
request that came through a proxy (it carries X-Forwarded-For or Forwarded) gets 404, so
the public ingress never exposes them even if a route to them were added.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel
from sqlalchemy import func, select, text

from services.common.db import get_engine, get_sessionmaker
from services.common.orm import Job
from services.common.queue import broker_reachable

router = APIRouter(tags=["health"])

JOBS_BY_STATUS = Gauge("covidct_jobs", "Jobs by status", ["status"])
DEPENDENCY_UP = Gauge(
    "covidct_dependency_up", "1 when the gateway reaches the dependency", ["dependency"]
)
PROXY_HEADERS = ("x-forwarded-for", "forwarded")


def _internal_only(request: Request) -> None:
    """404 (not 403: nothing to discover) for a request relayed by a proxy. A direct client
    that adds the header itself only hides the endpoint from itself."""
    if any(header in request.headers for header in PROXY_HEADERS):
        raise HTTPException(status_code=404, detail="Not Found")


def _database_ok() -> bool:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _dependencies() -> dict[str, bool]:
    checks = {"database": _database_ok(), "broker": broker_reachable()}
    for name, up in checks.items():
        DEPENDENCY_UP.labels(dependency=name).set(1 if up else 0)
    return checks


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
    responses={
        503: {"model": Readiness, "description": "The database or the broker is not reachable"}
    },
)
async def readyz(request: Request) -> JSONResponse:
    """This gateway's readiness: its database and its broker (no worker, no scorer)."""
    _internal_only(request)
    checks = await run_in_threadpool(_dependencies)
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    _internal_only(request)
    _dependencies()
    try:
        with get_sessionmaker()() as session:
            counts = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        JOBS_BY_STATUS.clear()
        for status, count in counts:
            JOBS_BY_STATUS.labels(status=status).set(count)
    except Exception:  # metrics must answer even when the database does not
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
