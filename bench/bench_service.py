"""Service wall time (upload finished -> verdict) against ``covidct diagnose`` of the same study.

The shared 133-slice series is zipped and uploaded with tus (:func:`services.cli.client.submit`)
to two stacks started in this run:

- ``embedded``: :func:`services.cli.runtime.start_stack` on a temp ``var_dir`` (SQLite, the
  embedded Redis, the in-process scorer inside the Celery worker);
- ``production``: PostgreSQL (a fresh database, dropped afterwards), the shared Redis on
  db 14 (flushed first) and a TorchServe serving the shipped slice CNN (built into a .mar).

The service's wall time is ``succeeded.created_at - queued.created_at`` from the job's
``job_events`` rows; the floor is :func:`services.diagnosis.diagnose_path` in this process
(warmed once, best of 2), measured right before each stack's jobs so both see the same load.
Each stack runs one warm-up job (model loads happen on a worker's first task), then
``JOBS`` timed jobs; the best is reported with its per-stage durations from the events:
queue wait (queued -> preprocessing), preprocess (-> scoring), score (-> ensembling: scorer
call + Grad-CAM + score rows; ``score_call`` is the scorer alone, from the event's detail)
and ensemble (-> succeeded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.common import best_of, children_output, flush_redis, report, sample_series
from harness.stacks import fresh_postgres_database
from harness.torchserve import shipped_model_torchserve
from services.cli.client import ApiClient, UploadState, submit
from services.cli.runtime import Stack, free_port, start_stack, wait_ready
from services.common.config import Settings
from services.common.db import make_engine
from services.common.orm import JobEvent
from services.diagnosis import diagnose_path

JOBS = 2
PG_DB = "covidct_bench"
PROD_BROKER = "redis://127.0.0.1:6379/14"
QUIET_ENV = {"COVIDCT_LOG_LEVEL": "WARNING"}
STAGES = ("queued", "preprocessing", "scoring", "ensembling", "succeeded")
STAGE_NAMES = ("queue_wait", "preprocess", "score", "ensemble")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _diagnose_floor(series: Path) -> tuple[float, dict[str, float]]:
    diagnose_path(series)  # warm: model load, imports
    timings: dict[str, float] = {}

    def run() -> None:
        diagnosis, _ = diagnose_path(series)
        if not timings or sum(diagnosis.timings.values()) < sum(timings.values()):
            timings.clear()
            timings.update(diagnosis.timings)

    return best_of(run, JOBS), timings


@contextmanager
def _stack(settings: Settings, log: Path, extra_env: dict[str, str]) -> Iterator[Stack]:
    with children_output(log):
        stack = start_stack(settings, free_port(), extra_env={**QUIET_ENV, **extra_env})
    try:
        wait_ready(stack.url, timeout_s=180)
        yield stack
    finally:
        with children_output(log):
            stack.stop()


def _tenant(stack: Stack) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "tenants", "create", "bench", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _events(database_url: str, job_id: str) -> list[JobEvent]:
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
            return list(rows)
    finally:
        engine.dispose()


def _run_job(api: ApiClient, series: Path, state: UploadState, database_url: str) -> dict[str, Any]:
    job, done = submit(api, series, state)
    if not done:
        raise RuntimeError(f"upload of job {job['id']} did not finish")
    final = api.wait(job["id"], timeout_s=900, poll_s=0.25)
    if final["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {final['status']}: {final.get('error')}")
    events = {e.status: e for e in _events(database_url, job["id"])}
    missing = [s for s in STAGES if s not in events]
    if missing:
        raise RuntimeError(f"job {job['id']} has no {missing} events")
    times = [events[s].created_at for s in STAGES]
    stages = {
        name: (b - a).total_seconds()
        for name, a, b in zip(STAGE_NAMES, times[:-1], times[1:], strict=True)
    }
    detail = (events["ensembling"].detail or {}) | (events["scoring"].detail or {})
    return {
        "wall": (times[-1] - times[0]).total_seconds(),
        "stages": stages,
        "score_call": float(detail.get("score_s", "nan")),
        "preprocess_detail": float(detail.get("preprocess_s", "nan")),
        "inference_worker": str((events["ensembling"].detail or {}).get("worker")),
    }


def _measure_stack(
    prefix: str,
    series: Path,
    settings: Settings,
    tmp: Path,
    extra_env: dict[str, str] | None = None,
) -> dict[str, float]:
    floor, floor_stages = _diagnose_floor(series)
    _progress(f"{prefix}: diagnose floor {floor:.1f}s {floor_stages}")
    database_url = settings.sqlalchemy_url
    with _stack(settings, tmp / f"{prefix}.log", extra_env or {}) as stack:
        api = ApiClient(stack.url, _tenant(stack)["api_key"], timeout_s=60)
        state = UploadState(tmp / f"{prefix}-client-state.json")
        warm = _run_job(api, series, state, database_url)
        _progress(f"{prefix}: warm-up job {warm}")
        runs = []
        for _ in range(JOBS):
            runs.append(_run_job(api, series, state, database_url))
            _progress(f"{prefix}: job {runs[-1]}")
    best = min(runs, key=lambda r: r["wall"])
    warmed = {r["inference_worker"] for r in [warm, *runs[: runs.index(best)]]}
    result = {
        f"{prefix}_diagnose_wall_s": floor,
        **{f"{prefix}_diagnose_{k}_s": v for k, v in floor_stages.items()},
        f"{prefix}_warmup_wall_s": warm["wall"],
        f"{prefix}_service_wall_s": best["wall"],
        **{f"{prefix}_stage_{k}_s": v for k, v in best["stages"].items()},
        f"{prefix}_preprocess_task_s": best["preprocess_detail"],
        f"{prefix}_score_call_s": best["score_call"],
        f"{prefix}_gradcam_and_rows_s": best["stages"]["score"] - best["score_call"],
        f"{prefix}_scored_on_warm_child": float(best["inference_worker"] in warmed),
        f"{prefix}_ratio_service_vs_diagnose": best["wall"] / floor,
    }
    for index, run in enumerate(runs):
        result[f"{prefix}_job{index + 1}_wall_s"] = run["wall"]
    return result


def main(stacks: tuple[str, ...] = ("embedded", "production")) -> dict[str, float]:
    series = sample_series()
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="covidct-bench-service-") as tmp_name:
        tmp = Path(tmp_name)
        if "embedded" in stacks:
            embedded = Settings(var_dir=tmp / "embedded")
            result |= _measure_stack("embedded", series, embedded, tmp)
        if "production" not in stacks:
            return report(result)
        with ExitStack() as stack:
            database_url = stack.enter_context(fresh_postgres_database(PG_DB))
            flush_redis(PROD_BROKER)
            stack.callback(flush_redis, PROD_BROKER)
            scorer_url = stack.enter_context(shipped_model_torchserve(tmp / "torchserve"))
            production = Settings(
                var_dir=tmp / "production",
                database_url=database_url,
                broker_url=PROD_BROKER,
                scorer_url=scorer_url,
            )
            result |= _measure_stack(
                "production", series, production, tmp, {"COVIDCT_SCORER_URL": scorer_url}
            )
    return report(result)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("embedded", "production"))
