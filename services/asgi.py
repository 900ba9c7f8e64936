"""The web process's composition root (``uvicorn services.asgi:create_app --factory``).

It joins the gateway's routers (jobs, health) and the upload room's tus router into one
FastAPI app; neither room imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from services.common.config import Settings, ensure_directories, get_settings
from services.common.db import pool_capacity
from services.common.logging import configure_logging
from services.common.queue import configure
from services.common.retention import sweep_retention
from services.gateway import (
    accounts,
    dicom_results,
    dicomweb,
    health,
    jobs,
    report,
    slices,
    sso,
)
from services.gateway.auth import bearer_scheme
from services.gateway.console import install_console
from services.gateway.docs import install_docs
from services.gateway.errors import error_responses, install_error_handlers
from services.gateway.limits import InFlightLimit, RouteClass
from services.upload.ingest import finish_completed_uploads, sweep_expired_uploads
from services.upload.stow import STOW_PREFIX, create_stow_router, remove_stow_leftovers
from services.upload.tus import (
    TUS_ALLOW_HEADERS,
    TUS_EXPOSE_HEADERS,
    UPLOADS_PREFIX,
    create_upload_router,
    install_upload_lifecycle,
    tus_auth,
)

log = logging.getLogger(__name__)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _sweep_until(stop: asyncio.Event, settings: Settings) -> None:
    """Expired tus uploads, STOW-RS leftovers and the retention policy, on every gateway
    (all idempotent), until ``stop`` is set."""
    while not stop.is_set():
        try:
            removed = await run_in_threadpool(sweep_expired_uploads, settings.upload_dir)
            if removed:
                log.info("removed %d expired uploads", removed)
        except Exception:
            log.exception("expired-upload sweep failed")
        try:
            await run_in_threadpool(remove_stow_leftovers, settings.upload_dir)
        except Exception:
            log.exception("STOW-RS leftover sweep failed")
        try:
            await run_in_threadpool(sweep_retention, settings)
        except Exception:
            log.exception("retention sweep failed")
        await _pause(stop, settings.retention_sweep_interval_s)


async def _recover_uploads_until(stop: asyncio.Event, settings: Settings) -> None:
    """Uploads whose every byte arrived but whose job a crash left waiting are completed (at
    start, then every recovery_interval_s): this process's upload directory is the only
    place that knows them."""
    while not stop.is_set():
        try:
            recovered = await run_in_threadpool(finish_completed_uploads, settings.upload_dir)
            if recovered:
                log.info("finished or freed %d uploads a crash left undone", recovered)
        except Exception:
            log.exception("upload recovery failed")
        await _pause(stop, settings.recovery_interval_s)


def check_pool(settings: Settings) -> None:
    """Every database session of this process lives inside one call on one thread (a worker
    thread, or the event loop for a hook the upload library calls there), one session at a
    time; so with a pool of gateway_threads + 1 connections a checkout never waits."""
    needed = settings.gateway_threads + 1
    if pool_capacity(settings) < needed:
        raise ValueError(
            f"db_pool_size + db_max_overflow = {pool_capacity(settings)} is below "
            f"gateway_threads + 1 = {needed}: requests could wait for a connection"
        )


def trusted_proxies(settings: Settings) -> list[str]:
    """The configured proxies, each an address or a CIDR (anything else is refused at start,
    rather than silently never matching or, as ``*``, trusting everyone)."""
    for entry in settings.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {entry!r} is not an address or CIDR") from exc
    return list(settings.trusted_proxies)


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)  # JSON, as every process
    check_pool(settings)
    ensure_directories(settings)
    configure(settings)  # the broker named by these settings, not import-time ones

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The threadpool that runs sync routes and dependencies, sized to match the pool.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.gateway_threads
        stop = asyncio.Event()
        sweeper = asyncio.create_task(_sweep_until(stop, settings))
        recovery = asyncio.create_task(_recover_uploads_until(stop, settings))
        try:
            yield
        finally:
            # Not cancelled: a sweep already in a worker thread would run on after the app
            # (a thread cannot be cancelled). Each loop ends after the step in progress.
            stop.set()
            await asyncio.gather(sweeper, recovery)

    app = FastAPI(
        title="covidct",
        version="1",
        summary="COVID-19 pneumonia from chest CT: async jobs, tus uploads, signed callbacks.",
        lifespan=lifespan,
        docs_url=None,  # services.gateway.docs: Swagger UI from this process, not a CDN
        redoc_url=None,  # one documentation page, and no CDN
    )
    install_error_handlers(app, settings.gateway_retry_after_s)
    install_upload_lifecycle(app, settings)
    # Outermost of the app's middleware, so a slot covers the upload lifecycle hooks too.
    app.add_middleware(
        InFlightLimit,
        classes=[
            RouteClass(
                "jobs",
                jobs.router.prefix,
                settings.gateway_max_in_flight,
                body_timeout_s=settings.gateway_body_timeout_s,
            ),
            RouteClass(
                "uploads",
                UPLOADS_PREFIX,
                settings.gateway_max_uploads_in_flight,
                per_key=settings.gateway_max_uploads_per_key,
                per_address=settings.gateway_max_uploads_per_address,
                body_timeout_s=settings.gateway_body_timeout_s,
            ),
            RouteClass(
                "dicomweb",
                STOW_PREFIX,
                settings.gateway_max_uploads_in_flight,
                per_key=settings.gateway_max_uploads_per_key,
                per_address=settings.gateway_max_uploads_per_address,
                body_timeout_s=settings.gateway_body_timeout_s,
            ),
        ],
        queue_timeout_s=settings.gateway_queue_timeout_s,
        retry_after_s=settings.gateway_retry_after_s,
    )
    # CORS for a console on another origin (settings.cors_allowed_origins). A preflight
    # (OPTIONS with Origin and Access-Control-Request-Method) is answered here, before any
    # route, so it needs no key: browsers send preflights without credentials. Every other
    # request, a tus OPTIONS included, still goes through the routes' authentication.
    # Outermost, so a preflight takes no in-flight slot.
    if settings.cors_allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed_origins,
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-CSRF-Token",
                *TUS_ALLOW_HEADERS,
            ],
            expose_headers=["Location", "Retry-After", *TUS_EXPOSE_HEADERS],
            max_age=600,
        )
    # Outermost: the client address that the limits and the auth-failure throttle see.
    # X-Forwarded-For counts only from settings.trusted_proxies; the gateway runs uvicorn with
    # --no-proxy-headers, whose default would believe any loopback peer (a client on the
    # same host, or a sidecar, could then pose as any address).
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_proxies(settings))
    app.include_router(jobs.router)
    app.include_router(slices.router)
    app.include_router(report.router)
    app.include_router(dicom_results.router)
    app.include_router(dicomweb.router)  # QIDO-RS / WADO-RS of our results (GET)
    app.include_router(accounts.router)
    app.include_router(sso.router)
    # Authenticate tus requests before any route dependency reads the body; the bearer
    # scheme only documents the key (it never rejects by itself).
    app.include_router(
        create_upload_router(settings),
        dependencies=[Depends(tus_auth), Security(bearer_scheme)],
        responses=error_responses(400, 401, 404, 409, 410, 412, 413, 415, 429, 503),
    )
    # DICOMweb STOW-RS: tenant-authenticated as tus, before the body is read.
    app.include_router(
        create_stow_router(),
        dependencies=[Security(bearer_scheme)],
        responses=error_responses(400, 401, 413, 415, 429, 503),
    )
    app.include_router(health.router)
    install_docs(app)
    # Last: its routes must not shadow the API's.
    cards = [d / "MODEL_CARD.md" for d in (settings.ensemble_model_dir, settings.slice_model_dir)]
    install_console(app, settings.console_dir, cards)
    _hide_upload_internals(app)
    return app


# Parameters of tuspyserver's route functions that are not part of our API: its internal
# ``post_request`` flag, Content-Length (the HTTP server owns it), and the concatenation and
# deferred-length headers of extensions we refuse (documenting them invites requests we 400).
HIDDEN_UPLOAD_PARAMETERS = {
    "post_request", "content-length", "upload-concat", "upload-defer-length",
}  # fmt: skip


def _hide_upload_internals(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path, operations in schema["paths"].items():
                if not path.startswith(UPLOADS_PREFIX):
                    continue
                for operation in operations.values():
                    kept = [
                        p for p in operation.get("parameters", [])
                        if p["name"].lower() not in HIDDEN_UPLOAD_PARAMETERS
                    ]  # fmt: skip
                    operation["parameters"] = kept
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
