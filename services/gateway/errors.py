"""4xx errors with a stable machine-readable code; never a bare 500 for a user's mistake."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.schemas import Problem

log = logging.getLogger(__name__)


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    412: "precondition_failed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_failed_auth",
    503: "unavailable",
}

DESCRIPTIONS = {
    400: "Bad request (e.g. missing tus metadata)",
    401: "Missing or unknown API key (`Authorization: Bearer <api_key>`) or console session",
    403: "Authenticated, but the role is too low (`forbidden`) or a console request that "
    "changes state lacks its session's `X-CSRF-Token` (`csrf_failed`)",
    404: "No such job or upload for this API key",
    406: "The `Accept` header allows no media type this route serves (DICOMweb retrieve: "
    '`multipart/related; type="application/dicom"`)',
    409: "Conflict (Idempotency-Key reused with another body; the job already has an upload; "
    "`upload_busy`: another request is writing this upload, retry from HEAD)",
    410: "The upload expired, or its job ended (`job_ended`)",
    412: "Unsupported `Tus-Resumable` version",
    413: "The upload exceeds the size limit",
    415: "Wrong `Content-Type` (tus PATCH needs application/offset+octet-stream)",
    422: "The request is not valid (body, path or query)",
    429: "Too many failed authentications from this address or for this key prefix "
    "(`too_many_failed_auth`; a valid key is never refused), or this client already has its "
    "share of uploads in flight (`too_many_requests_in_flight`): retry after `Retry-After` "
    "seconds",
    503: "The gateway is at capacity or the database is unavailable: retry after "
    "`Retry-After` seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these error statuses, all with the ``Problem`` body."""
    return {code: {"model": Problem, "description": DESCRIPTIONS[code]} for code in codes}


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(max(1, seconds))}


class ApiError(Exception):
    def __init__(
        self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def problem(status_code: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status_code)


def allowed_methods(request: Request) -> list[str]:
    """Every documented method at this path (Starlette's 405 names only the first matching
    route's, and a path like /v1/jobs has one route per method)."""
    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def install_error_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        response = problem(exc.status_code, exc.code, exc.message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return problem(422, "invalid_request", "the request is not valid", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if isinstance(exc.detail, dict) and {"code", "message"} <= exc.detail.keys():
            code, message = str(exc.detail["code"]), str(exc.detail["message"])  # a room's own
        response = problem(exc.status_code, code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response

    # The pool had no connection within db_pool_timeout_s, or the database is down or
    # locked: the request did nothing, so the client may retry (503, not 500).
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(OperationalError)
    async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        response = problem(503, "database_unavailable", "the database is busy; retry later")
        response.headers.update(retry_after(retry_after_s))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "internal_error", "internal error; nothing was lost, retry later")
