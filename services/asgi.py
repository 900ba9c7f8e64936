"""The web process's composition root (``uvicorn services.asgi:create_app --factory``).

It joins the gateway's routers (jobs, health) and the upload room's tus router into one
FastAPI app; neither room imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool

from services.common.config import Settings, ensure_directories, get_settings
from services.common.queue import configure
from services.gateway import health, jobs
from services.gateway.errors import install_error_handlers
from services.upload.ingest import sweep_expired_uploads
from services.upload.tus import create_upload_router, install_upload_lifecycle, tus_auth

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 3600


async def _sweep_forever(settings: Settings) -> None:
    while True:
        try:
            removed = await run_in_threadpool(sweep_expired_uploads, settings.upload_dir)
            if removed:
                log.info("removed %d expired uploads", removed)
        except Exception:
            log.exception("expired-upload sweep failed")
        await asyncio.sleep(SWEEP_INTERVAL_S)


def create_app() -> FastAPI:
    settings = get_settings()
    ensure_directories(settings)
    configure(settings)  # the broker named by these settings, not import-time ones

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep_forever(settings))
        try:
            yield
        finally:
            sweeper.cancel()

    app = FastAPI(
        title="covidct",
        version="1",
        summary="COVID-19 pneumonia from chest CT: async jobs, tus uploads, signed callbacks.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_upload_lifecycle(app, settings)
    app.include_router(jobs.router)
    # Authenticate tus requests before any route dependency reads the body.
    app.include_router(create_upload_router(settings), dependencies=[Depends(tus_auth)])
    app.include_router(health.router)
    return app
