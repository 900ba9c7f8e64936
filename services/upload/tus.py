"""The tus 1.0 endpoint (tuspyserver) at ``/v1/uploads``, bound to jobs and API keys.

- Every tus request needs the job owner's API key; an upload of another tenant is 404.
- Creation needs metadata ``job_id``, ``filename``, ``filetype`` (optional ``sha256``); a job
  takes one upload (a second creation is 409) and the size limit is checked up front (413).
- tuspyserver reads a creation-with-upload body whole into memory: a creation with a body
  is turned into a creation and a streamed PATCH (``StreamedCreationWithUpload``).
  tuspyserver does not release a job when an upload is terminated; the lifecycle
  middleware does.
- A PATCH to an upload another request is writing is 409 ``upload_busy`` at once (its lock
  is never waited for); an upload whose job ended (cancelled) is 410 ``job_ended``.
- Upload-Metadata is bounded (number of keys, key and value lengths: settings) before
  anything is written; 400 ``metadata_too_large``.
- tuspyserver reads a PATCH body (and writes it) in a dependency, before it checks the
  headers: ``tus_protocol_guard`` checks every header against the stored upload first, so a
  request that will be refused writes nothing. Offered extensions: ``TUS_EXTENSIONS`` only
  (tuspyserver's concatenation and deferred length are refused with 400); checksum is ours
  (the guard parses ``Upload-Checksum``, the storage verifies it while streaming).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from sqlalchemy import select, update
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tuspyserver import create_tus_router
from tuspyserver.router import noop

from services.common.accounts import (
    CROSS_ORIGIN_MESSAGE,
    CROSS_ORIGIN_SESSION,
    CSRF_HEADER,
    SESSION_COOKIE,
    Role,
    cookie_from_another_origin,
    cookie_tenant,
    session_user,
)
from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.orm import TERMINAL_STATUSES, Job, JobStatus, utcnow
from services.common.retention import discard_partial_upload
from services.common.security import bearer_token
from services.common.tenants import tenant_by_api_key
from services.common.throttle import KEY_PREFIX_CHARS, auth_failures, identities
from services.upload.ingest import (
    SHA256_RE,
    complete_upload,
    completed_upload_metadata,
    release_upload,
    stored_filename,
    upload_progress,
)
from services.upload.storage import (
    CONCURRENT_PATCH,
    StreamingLocalStorage,
    expect_checksum,
)

UPLOADS_PREFIX = "/v1/uploads"
REQUIRED_METADATA = ("job_id", "filename", "filetype")
TUS_VERSION = "1.0.0"
# What works end to end here; tuspyserver also advertises creation-defer-length and
# concatenation, which this service refuses (a partial would complete and queue a job).
TUS_EXTENSIONS = ("creation", "creation-with-upload", "termination", "expiration", "checksum")
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")  # Tus-Checksum-Algorithm, hashlib names
OFFSET_STREAM = "application/offset+octet-stream"
# What a browser client on another origin sends and must be able to read (CORS).
TUS_ALLOW_HEADERS = (
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Upload-Checksum",
    "X-HTTP-Method-Override",
    "X-Requested-With",
)
TUS_EXPOSE_HEADERS = (
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Expires",
)
_UNSIGNED = re.compile(r"^[0-9]{1,19}$")


def tus_auth(request: Request) -> None:
    """API key on every tus request; an existing upload must belong to the caller.

    One session for both lookups: this runs on every PATCH of every upload.
    """
    api_key = bearer_token(request.headers.get("authorization"))
    throttled_as = identities(request.client.host if request.client else None, api_key)
    # Failures are throttled, never a valid key: a throttled address or key prefix still
    # gets in with a key that is valid (the lookup is one indexed hash comparison).
    wait = auth_failures().retry_after(*throttled_as)
    # The console's session cookie (an uploader or admin; CSRF token on unsafe methods).
    cookie = None if api_key else request.cookies.get(SESSION_COOKIE)
    if api_key is None and not cookie:
        auth_failures().record_failure(*throttled_as)
        raise _refused("missing Authorization: Bearer <api_key>", wait)
    if cookie and cookie_from_another_origin(request.headers.get("sec-fetch-site")):
        raise refusal(403, CROSS_ORIGIN_SESSION, CROSS_ORIGIN_MESSAGE)
    upload_id = request.path_params.get("uuid")
    with session_scope() as session:
        if api_key is not None:
            tenant = tenant_by_api_key(session, api_key)
            tenant_id = tenant.id if tenant is not None else None
            actor = f"key:{api_key[:KEY_PREFIX_CHARS]}"
        else:
            unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
            csrf = request.headers.get(CSRF_HEADER)
            tenant_id = cookie_tenant(session, cookie or "", csrf, unsafe, Role.UPLOADER)
            found_user = session_user(session, cookie or "") if tenant_id else None
            actor = f"user:{found_user[0].username}" if found_user else ""
        if tenant_id is None:
            auth_failures().record_failure(*throttled_as)
            raise _refused("unknown API key, or a session without upload rights", wait)
        request.state.tenant_id = tenant_id
        # Who, for jobs this request creates (STOW-RS) and the audit trail (as the gateway's).
        request.state.actor = actor
        if upload_id is None:
            return
        found = session.execute(
            select(Job.tenant_id, Job.status).where(Job.upload_id == upload_id)
        ).first()
    if found is None or found.tenant_id != request.state.tenant_id:
        raise HTTPException(404, "Upload not found")
    if JobStatus(found.status) in TERMINAL_STATUSES:
        # Cancelled (or failed) mid-upload: no further byte is taken; its partial upload
        # was removed with the cancel.
        raise refusal(410, "job_ended", "the job of this upload has ended; it takes no bytes")


def _refused(message: str, throttled_for: float | None) -> HTTPException:
    if throttled_for is not None:
        return HTTPException(
            429, "too many failed authentications", {"Retry-After": str(math.ceil(throttled_for))}
        )
    return HTTPException(401, message)


# Bounds of what is stored from the metadata (jobs.upload_filename is String(300)).
MAX_FILENAME_CHARS = 255


def _validate_creation(tenant_id: str, metadata: dict[str, str], size: int | None) -> None:
    missing = [k for k in REQUIRED_METADATA if not metadata.get(k)]
    if missing:
        raise HTTPException(400, f"missing upload metadata: {', '.join(missing)}")
    max_value = get_settings().upload_metadata_max_value_chars
    for key, value in metadata.items():
        if len(value) > max_value:
            raise refusal(
                400, "metadata_too_large", f"metadata {key[:64]} is longer than {max_value}"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise HTTPException(400, f"metadata {key} holds control characters")
    if len(metadata["filename"]) > MAX_FILENAME_CHARS:
        raise HTTPException(400, f"metadata filename is longer than {MAX_FILENAME_CHARS}")
    if metadata.get("sha256") and not SHA256_RE.match(metadata["sha256"]):
        raise HTTPException(400, "metadata sha256 must be 64 hex digits")
    limit = get_settings().max_upload_bytes
    if size is not None and size > limit:
        raise HTTPException(413, f"upload of {size} bytes exceeds the limit of {limit}")
    with session_scope() as session:
        job = session.get(Job, metadata["job_id"])
        if job is None or job.tenant_id != tenant_id:
            raise HTTPException(404, f"no job {metadata['job_id']}")
        if job.status != JobStatus.AWAITING_UPLOAD or job.upload_id is not None:
            raise HTTPException(409, "this job already has an upload")


def pre_create_dep(
    request: Request,
) -> Callable[[dict[str, str], dict[str, Any]], Awaitable[None]]:
    tenant_id: str = request.state.tenant_id

    async def hook(metadata: dict[str, str], info: dict[str, Any]) -> None:
        # tuspyserver calls this from its async route: the database work goes to a thread.
        await run_in_threadpool(_validate_creation, tenant_id, metadata, info.get("size"))

    return hook


def _unsigned_header(request: Request, name: str) -> int | None:
    """A header that must be a non-negative decimal integer; None when absent, else 400."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not _UNSIGNED.match(raw.strip()):
        raise HTTPException(400, f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _upload_checksum(request: Request) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; 400 when it is not one we take."""
    raw = request.headers.get("upload-checksum")
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise HTTPException(400, f"checksum algorithm must be one of {CHECKSUM_ALGORITHMS}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, "Upload-Checksum digest is not base64") from exc
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise HTTPException(400, f"Upload-Checksum is not a {algorithm} digest")
    return algorithm, digest


def refusal(status: int, code: str, message: str) -> HTTPException:
    """An HTTPException whose body carries ``code`` (the gateway's error handler keeps it)."""
    return HTTPException(status, {"code": code, "message": message})


def check_metadata_bounds(raw: str | None, settings: Settings) -> None:
    """``Upload-Metadata`` within the configured number of keys and key/value lengths,
    checked on the raw header before tuspyserver decodes it or anything is written."""
    if not raw:
        return
    pairs = [p.strip() for p in raw.split(",") if p.strip()]
    if len(pairs) > settings.upload_metadata_max_keys:
        raise refusal(
            400, "metadata_too_large",
            f"Upload-Metadata has {len(pairs)} keys; at most "
            f"{settings.upload_metadata_max_keys} are accepted",
        )  # fmt: skip
    # n characters are at most 4n bytes of UTF-8, so 4 * ceil(4n / 3) of base64: a coarse
    # bound here, the decoded value's exact length in _validate_creation.
    max_encoded = 4 * math.ceil(4 * settings.upload_metadata_max_value_chars / 3)
    for pair in pairs:
        key, _, value = pair.partition(" ")
        if len(key) > settings.upload_metadata_max_key_chars:
            raise refusal(
                400, "metadata_too_large",
                f"an Upload-Metadata key is {len(key)} characters long; at most "
                f"{settings.upload_metadata_max_key_chars} are accepted",
            )  # fmt: skip
        if len(value.strip()) > max_encoded:
            raise refusal(
                400, "metadata_too_large",
                f"Upload-Metadata {key[:64]} is longer than "
                f"{settings.upload_metadata_max_value_chars} characters",
            )  # fmt: skip


async def _check_creation(request: Request, max_bytes: int) -> None:
    if request.headers.get("upload-concat") is not None:
        raise HTTPException(400, "the concatenation extension is not supported")
    check_metadata_bounds(request.headers.get("upload-metadata"), get_settings())
    length = _unsigned_header(request, "upload-length")
    if length is None:
        # creation-defer-length is not offered: the length is known before the first byte.
        raise HTTPException(400, "Upload-Length is required (deferred length is not supported)")
    if length > max_bytes:
        raise HTTPException(413, f"upload of {length} bytes exceeds the limit of {max_bytes}")
    body = _unsigned_header(request, "content-length") or 0
    if body > 0:  # creation-with-upload
        if request.headers.get("content-type") != OFFSET_STREAM:
            raise HTTPException(415, f"Content-Type must be {OFFSET_STREAM}")
        if body > length:
            raise HTTPException(400, f"a body of {body} bytes exceeds Upload-Length {length}")
    # A creation body (and its Upload-Checksum) never reaches here: StreamedCreationWithUpload
    # turns it into a PATCH, so nothing reads it whole.


async def _check_patch(request: Request, storage: StreamingLocalStorage, uid: str) -> None:
    if request.headers.get("content-type") != OFFSET_STREAM:
        raise HTTPException(415, f"Content-Type must be {OFFSET_STREAM}")
    offset = _unsigned_header(request, "upload-offset")
    if offset is None:
        raise HTTPException(400, "Upload-Offset is required")
    body = _unsigned_header(request, "content-length")
    if body is None:
        raise HTTPException(400, "Content-Length is required")
    if storage.locked(uid):  # refused before its body is read (the lock refuses it too)
        raise HTTPException(409, CONCURRENT_PATCH)
    info = await storage.read_info(uid)
    if info is None:
        raise HTTPException(404, "Upload not found")
    if offset != info.get("offset"):
        raise HTTPException(409, f"Upload-Offset {offset} != the upload's {info.get('offset')}")
    size = info.get("size")
    if isinstance(size, int) and offset + body > size:
        raise HTTPException(
            400, f"{body} bytes at offset {offset} exceed the Upload-Length of {size}"
        )
    expect_checksum(*(_upload_checksum(request) or (None, None)))


def tus_protocol_guard_for(
    storage: StreamingLocalStorage, max_bytes: int
) -> Callable[[Request], Awaitable[None]]:
    """The tus header checks, as a router dependency resolved before tuspyserver's own
    (which reads the body): after ``tus_auth``, so a stranger learns nothing from them.
    Under the upload's lock tuspyserver checks the offset again before reading."""

    async def tus_protocol_guard(request: Request) -> None:
        method = request.method  # X-HTTP-Method-Override already applied by TusAPIRoute
        if method == "OPTIONS":
            return
        if request.headers.get("tus-resumable") != TUS_VERSION:
            raise HTTPException(
                412, f"Tus-Resumable must be {TUS_VERSION}", headers={"Tus-Version": TUS_VERSION}
            )
        uid = request.path_params.get("uuid")
        if method == "POST":
            await _check_creation(request, max_bytes)
        elif method == "PATCH" and uid is not None:
            await _check_patch(request, storage, uid)

    return tus_protocol_guard


def file_dep(request: Request) -> Callable[[dict[str, str]], Awaitable[dict[str, str]]]:
    """On creation, claim the job for a fresh upload id (atomically: one upload per job)."""

    async def claim(metadata: dict[str, str]) -> dict[str, str]:
        if not metadata.get("job_id"):
            return {}  # PATCH / DELETE call this with no metadata
        upload_id = uuid.uuid4().hex
        tenant_id: str = request.state.tenant_id
        await run_in_threadpool(_claim, metadata["job_id"], upload_id, metadata, tenant_id)
        return {"uid": upload_id}

    return claim


def _claim(job_id: str, upload_id: str, metadata: dict[str, str], tenant_id: str) -> None:
    filename = stored_filename(metadata.get("filename", "upload"), tenant_id, get_settings())
    with session_scope() as session:
        claimed = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.AWAITING_UPLOAD,
                Job.upload_id.is_(None),
            )
            .values(
                upload_id=upload_id,
                upload_filename=filename,
                updated_at=utcnow(),
            )
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise HTTPException(409, "this job already has an upload")


def create_upload_router(settings: Settings) -> APIRouter:
    """The tus routes. Include them with ``dependencies=[Depends(tus_auth)]`` (see below)."""
    directory = settings.upload_dir
    storage = StreamingLocalStorage(str(directory), fsync=settings.upload_fsync)

    def upload_complete_dep() -> Callable[[str, dict[str, str]], Awaitable[None]]:
        async def on_complete(file_path: str, metadata: dict[str, str]) -> None:
            path = Path(file_path)
            await run_in_threadpool(_complete, path, metadata)

        return on_complete

    def _complete(path: Path, metadata: dict[str, str]) -> None:
        # Waiting for the hashing thread and the stat both stay off the event loop.
        try:
            known = storage.take_sha256(path.name, path.stat().st_size)
        except FileNotFoundError:
            known = None  # a concurrent completion moved it on: complete_upload finds out
        complete_upload(path.name, path, metadata, known)

    # tuspyserver's annotations say hooks return None; FastAPI accepts our richer ones.
    hooks: dict[str, Any] = {
        # Its PATCH reads the body in a dependency declared before its ``auth`` one, so
        # auth there would run after the bytes hit the disk: the gateway puts tus_auth on
        # the whole router instead, which FastAPI resolves first.
        "auth": noop,
        "upload_complete_dep": upload_complete_dep,
        "pre_create_dep": pre_create_dep,
        "file_dep": file_dep,
    }
    tus = create_tus_router(
        prefix=UPLOADS_PREFIX,
        files_dir=str(directory),
        storage=storage,
        max_size=settings.max_upload_bytes,
        days_to_keep=settings.upload_expiry_days,
        tags=["uploads"],
        **hooks,
    )
    _replace_options_route(tus, settings.max_upload_bytes)
    _replace_head_route(tus, directory)
    # Resolved after the including router's tus_auth and before every route's own
    # dependencies, among them tuspyserver's body reader.
    guard = tus_protocol_guard_for(storage, settings.max_upload_bytes)
    router = APIRouter(dependencies=[Depends(guard)])
    router.include_router(tus)
    return router


def _replace_options_route(tus: APIRouter, max_bytes: int) -> None:
    """tuspyserver's OPTIONS advertises extensions this service does not offer."""
    tus.routes[:] = [
        r for r in tus.routes if not (isinstance(r, APIRoute) and "OPTIONS" in (r.methods or ()))
    ]

    async def tus_options() -> Response:
        return Response(
            status_code=204,
            headers={
                "Tus-Resumable": TUS_VERSION,
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": ",".join(TUS_EXTENSIONS),
                "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
                "Tus-Max-Size": str(max_bytes),
            },
        )

    for path in ("", "/"):
        tus.add_api_route(path, tus_options, methods=["OPTIONS"], status_code=204)


def _replace_head_route(tus: APIRouter, directory: Path) -> None:
    """tuspyserver's HEAD is 404 once the file left the upload folder, i.e. from the moment
    a complete upload is moved into blob storage: a client that lost the answer to its last
    PATCH would start over and be refused (its job keeps this upload). This one says
    complete at every point after the last byte (``upload_progress``)."""
    tus.routes[:] = [
        r for r in tus.routes if not (isinstance(r, APIRoute) and "HEAD" in (r.methods or ()))
    ]

    async def tus_head(uuid: str) -> Response:
        progress = await run_in_threadpool(upload_progress, directory, uuid)
        if progress is None:
            raise HTTPException(404, "Upload not found")
        if not progress.complete and _expired(progress.expires):
            raise HTTPException(410, "Upload expired")
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(progress.offset),
            "Upload-Length": str(progress.length),
            "Cache-Control": "no-store",
        }
        shown = [k for k in ("filename", "filetype") if progress.metadata.get(k)]
        if shown:
            headers["Upload-Metadata"] = ", ".join(
                f"{k} {base64.b64encode(progress.metadata[k].encode()).decode()}" for k in shown
            )
        if progress.expires and not progress.complete:
            headers["Upload-Expires"] = progress.expires
        return Response(status_code=200, headers=headers)

    tus.add_api_route("/{uuid}", tus_head, methods=["HEAD"], status_code=200)


def _expired(expires: str | None) -> bool:
    if not expires:
        return False
    try:
        when = parsedate_to_datetime(expires)
    except (TypeError, ValueError):
        return False
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) <= datetime.now(UTC)


def _discard_if_job_ended(settings: Settings, upload_id: str) -> None:
    with session_scope() as session:
        status = session.scalar(select(Job.status).where(Job.upload_id == upload_id))
    if status is None or JobStatus(status) in TERMINAL_STATUSES:  # deleted, or ended
        discard_partial_upload(settings, upload_id)


class _Captured:
    """A response of an inner call, held (tus answers are headers and a few bytes)."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def header(self, name: bytes) -> str | None:
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == name), None)

    async def replay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _json(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


class StreamedCreationWithUpload:
    """creation-with-upload without the body in memory. tuspyserver (and a checksum of the
    creation body) read the whole body with ``request.body()`` (a 1 GiB POST grew the
    gateway by 2 GB); here such a POST becomes, inside the one request, a creation without
    body and then a PATCH at offset 0 that streams the body through the same storage as any
    PATCH (checksum, the acknowledged offset, completion). Its answer is the creation's 201
    with the PATCH's ``Upload-Offset``; if the PATCH is refused (e.g. 460), the new upload is
    terminated and its job freed, so a refused creation leaves nothing, as before.
    """

    _DROP_FOR_CREATION = frozenset({b"content-length", b"content-type", b"upload-checksum"})
    _DROP_FOR_PATCH = frozenset({b"upload-length", b"upload-metadata", b"upload-offset"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._creation_with_body(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refused = self._refused(headers)
        if refused is not None:
            await refused(scope, receive, send)
            return
        plain = [(k, v) for k, v in scope["headers"] if k not in self._DROP_FOR_CREATION]
        created = _Captured()
        creation = {**scope, "headers": [*plain, (b"content-length", b"0")]}
        await self.app(creation, _no_body, created.send)
        location = created.header(b"location")
        if created.status != 201 or not location:
            await created.replay(send)
            return
        path = urlsplit(location).path
        kept = [(k, v) for k, v in scope["headers"] if k not in self._DROP_FOR_PATCH]
        patch = {
            **scope, "method": "PATCH", "path": path, "raw_path": path.encode(),
            "headers": [*kept, (b"upload-offset", b"0")],
        }  # fmt: skip
        written = _Captured()
        await self.app(patch, receive, written.send)
        if written.status != 204:
            await self._terminate(scope, path)
            await written.replay(send)
            return
        offset = written.header(b"upload-offset") or "0"
        answer = [(k, v) for k, v in created.headers if k.lower() != b"upload-offset"]
        answer.append((b"upload-offset", offset.encode()))
        created.headers = answer
        await created.replay(send)

    @staticmethod
    def _creation_with_body(scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        if scope["path"].rstrip("/") != UPLOADS_PREFIX:
            return False
        headers = Headers(scope=scope)
        if headers.get("x-http-method-override", "POST").strip().upper() != "POST":
            return False
        length = headers.get("content-length", "0").strip()
        return _UNSIGNED.match(length) is not None and int(length) > 0

    @staticmethod
    def _refused(headers: Headers) -> JSONResponse | None:
        """What the protocol guard checked on the body before it was streamed."""
        if headers.get("content-type") != OFFSET_STREAM:
            return _json(415, "unsupported_media_type", f"Content-Type must be {OFFSET_STREAM}")
        length, body = headers.get("upload-length", ""), headers["content-length"]
        if _UNSIGNED.match(length.strip()) and int(body) > int(length):
            return _json(400, "bad_request", f"a body of {body} bytes exceeds Upload-Length")
        return None

    async def _terminate(self, scope: Scope, path: str) -> None:
        kept = [(k, v) for k, v in scope["headers"] if k in (b"authorization", b"tus-resumable")]
        deletion = {
            **scope, "method": "DELETE", "path": path, "raw_path": path.encode(),
            "headers": [*kept, (b"content-length", b"0")],
        }  # fmt: skip
        await self.app(deletion, _no_body, _Captured().send)
        await run_in_threadpool(release_upload, path.rstrip("/").rsplit("/", 1)[-1])


def install_upload_lifecycle(app: FastAPI, settings: Settings) -> None:
    directory = settings.upload_dir
    # Inside the lifecycle hooks below: they see the one creation request.
    app.add_middleware(StreamedCreationWithUpload)

    @app.middleware("http")
    async def upload_lifecycle(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        path = request.url.path.rstrip("/")
        if not path.startswith(UPLOADS_PREFIX):
            return response
        # tus lets a client tunnel PATCH and DELETE through POST (TusAPIRoute honours it).
        method = request.headers.get("x-http-method-override", request.method).strip().upper()
        if method == "POST" and response.status_code == 201:
            upload_id = response.headers.get("location", "").rstrip("/").rsplit("/", 1)[-1]
            metadata = await run_in_threadpool(completed_upload_metadata, directory, upload_id)
            if metadata is not None:
                file_path = directory / upload_id
                await run_in_threadpool(complete_upload, upload_id, file_path, metadata)
        elif method == "DELETE" and response.status_code == 204:
            await run_in_threadpool(release_upload, path.rsplit("/", 1)[-1])
        elif method == "PATCH":
            # A PATCH that was writing when its job was cancelled saved its sidecar again.
            await run_in_threadpool(_discard_if_job_ended, settings, path.rsplit("/", 1)[-1])
        return response
