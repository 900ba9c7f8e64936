"""DICOMweb STOW-RS intake: ``POST /dicomweb/studies`` (PS3.18 10.5).

The body is ``multipart/related; type="application/dicom"``, one Part-10 instance per part,
streamed to disk (never whole in memory) and bounded by ``max_upload_bytes`` (413) and
``max_archive_members`` parts (413). Each instance is checked as the C-STORE SCP checks it
(``dicom_intake``); the accepted ones become one job per series. The answer is the STOW-RS
store response (``application/dicom+json``): Referenced SOP Sequence (0008,1199) for every
stored instance, Failed SOP Sequence (0008,1198) with a Failure Reason (0008,1197) for every
refused one; 200 when all were stored, 202 when some, 409 when none. A body without its
closing boundary (cut short) is 400 ``incomplete_body`` and stores nothing. The jobs made are named
in a private element (creator ``COVIDCT`` in group 0009: (0009,1001) the job of each stored
instance, and the list at the top level) and in the ``Covidct-Job-Ids`` header. Each job
records who stored it (``created_by``: the API key's prefix or the signed-in user) and gets
its ``job_create`` audit event, as a job made by ``POST /v1/jobs``.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from services.common.config import Settings, get_settings
from services.upload.dicom_intake import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    Instance,
    InstanceRefused,
    check_instance,
    create_series_job,
)
from services.upload.tus import refusal, tus_auth

STOW_PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"
PRIVATE_CREATOR = "COVIDCT"
JOB_ID_HEADER = "Covidct-Job-Ids"
# Private block 0x10 of group 0009: (0009,0010) names the creator, (0009,1001) a job id.
_CREATOR_TAG, _JOB_TAG = "00090010", "00091001"


@dataclass
class _Parts:
    """What the multipart parser wrote: one file per part, and each part's content type."""

    folder: Path
    max_parts: int
    files: list[Path] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    too_many: bool = False
    ended: bool = False  # the close delimiter arrived: the body is whole
    _out: BinaryIO | None = None
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> Any:  # python_multipart's MultipartCallbacks (a TypedDict)
        return {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_end": self._body_end,
        }

    def _begin(self) -> None:
        if len(self.files) >= self.max_parts:
            self.too_many = True
            return
        path = self.folder / f"part-{len(self.files):05d}.dcm"
        self.files.append(path)
        self.types.append("")
        self._out = path.open("wb")

    def _header_end(self) -> None:
        if self._out is not None and self._field.decode("latin-1").lower() == "content-type":
            self.types[-1] = parse_options_header(bytes(self._value))[0].decode("latin-1")
        self._field.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self._out.write(data[start:end])

    def _end(self) -> None:
        self.close()

    def _body_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


STOW_FOLDER_PREFIX = "stow-"
# A request's parts folder nothing was written to for this long belongs to no live request.
STOW_LEFTOVER_IDLE_S = 3600.0


def remove_stow_leftovers(upload_dir: Path, idle_s: float = STOW_LEFTOVER_IDLE_S) -> int:
    """Parts a crash left behind (a request removes its folder when it ends): folders in
    which nothing was written for ``idle_s``. The upload directory may be shared by several
    gateways (a ReadWriteMany volume), so a live request's folder, written at least every
    body timeout while it streams, is never taken. Run by every gateway's periodic sweep."""
    cutoff = time.time() - idle_s
    removed = 0
    for folder in upload_dir.glob(f"{STOW_FOLDER_PREFIX}*"):
        try:
            newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
        except OSError:
            continue  # removed meanwhile by its request
        if newest < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _boundary(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request, or 415 for any other media type."""
    media, options = parse_options_header(content_type or "")
    kind = options.get(b"type", b"").lower()
    if media.lower() != b"multipart/related" or kind != b"application/dicom":
        raise refusal(
            415,
            "unsupported_media_type",
            'STOW-RS takes multipart/related; type="application/dicom" (Part-10 instances)',
        )
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise refusal(400, "bad_multipart", "the multipart/related body names no boundary")
    return boundary


def _too_large(limit: int) -> Exception:
    return refusal(413, "upload_too_large", f"the request exceeds the limit of {limit} bytes")


async def _receive(request: Request, parts: _Parts, boundary: bytes, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parser = MultipartParser(boundary, parts.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            await run_in_threadpool(parser.write, chunk)
            if parts.too_many:
                raise refusal(
                    413,
                    "too_many_instances",
                    f"more than {parts.max_parts} instances in one request",
                )
        parser.finalize()
    except MultipartParseError as exc:
        raise refusal(400, "bad_multipart", f"the multipart body cannot be read: {exc}") from exc
    except ClientDisconnect:
        raise refusal(400, "incomplete_body", "the client went before the body ended") from None
    finally:
        parts.close()
    if not parts.ended:
        # Cut short (a proxy or client that stopped mid-body): the last part may be half an
        # instance and the series half sent. Nothing is stored; the sender sends it again.
        raise refusal(
            400, "incomplete_body",
            "the multipart body ends before its closing boundary: nothing was stored",
        )  # fmt: skip
    if not parts.files:
        raise refusal(400, "no_instances", "the request holds no DICOM instance")


def _failed(status: int, sop_class: str = "", sop_instance: str = "") -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [status]}}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return item


def _store(
    parts: _Parts, tenant_id: str, settings: Settings, actor: str, client_address: str | None
) -> tuple[int, dict[str, Any], list[str]]:
    """Check every part, make one job per series; (HTTP status, response body, job ids)."""
    accepted: dict[str, list[Instance]] = {}
    failed: list[dict[str, Any]] = []
    for path, media in zip(parts.files, parts.types, strict=True):
        if media and media.lower() != "application/dicom":
            failed.append(_failed(CANNOT_UNDERSTAND))  # a part of another media type
            continue
        try:
            instance = check_instance(path)
        except InstanceRefused as refused:
            failed.append(_failed(refused.status, refused.sop_class, refused.sop_instance))
            continue
        accepted.setdefault(instance.series_uid, []).append(instance)
    stored: list[dict[str, Any]] = []
    jobs: list[str] = []
    for instances in accepted.values():
        try:
            job_id, _status = create_series_job(
                tenant_id, [i.path for i in instances], settings,
                created_by=actor, via="stow-rs", client_address=client_address,
            )  # fmt: skip
        except OSError:  # the disk is full: nothing of this series was taken
            failed.extend(_failed(OUT_OF_RESOURCES, i.sop_class, i.sop_instance) for i in instances)
            continue
        jobs.append(job_id)
        for i in instances:
            stored.append(
                {
                    "00081150": {"vr": "UI", "Value": [i.sop_class]},
                    "00081155": {"vr": "UI", "Value": [i.sop_instance]},
                    _CREATOR_TAG: {"vr": "LO", "Value": [PRIVATE_CREATOR]},
                    _JOB_TAG: {"vr": "LO", "Value": [job_id]},
                }
            )
    body: dict[str, Any] = {}
    if jobs:
        body[_CREATOR_TAG] = {"vr": "LO", "Value": [PRIVATE_CREATOR]}
        body[_JOB_TAG] = {"vr": "LO", "Value": jobs}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed else 202 if stored else 409
    return status, body, jobs


def create_stow_router() -> APIRouter:
    router = APIRouter(prefix=STOW_PREFIX, tags=["dicomweb"])

    @router.post(
        "/studies",
        dependencies=[Depends(tus_auth)],
        response_class=JSONResponse,
        responses={
            200: {"content": {DICOM_JSON: {}}, "description": "every instance stored"},
            202: {"content": {DICOM_JSON: {}}, "description": "some instances refused"},
            409: {"content": {DICOM_JSON: {}}, "description": "every instance refused"},
        },
    )
    async def store_instances(request: Request) -> JSONResponse:
        """Store CT instances (STOW-RS); every series becomes one job. Failure reasons:
        0xC000 unreadable or cut short, 0xA900 a required UID missing, 0x0122 not a CT image,
        0xA700 out of resources."""
        settings = get_settings()
        boundary = _boundary(request.headers.get("content-type"))
        folder = settings.upload_dir / f"{STOW_FOLDER_PREFIX}{uuid.uuid4().hex}"
        folder.mkdir(mode=0o700)
        try:
            parts = _Parts(folder, settings.max_archive_members)
            await _receive(request, parts, boundary, settings.max_upload_bytes)
            tenant_id: str = request.state.tenant_id
            actor: str = request.state.actor
            address = request.client.host if request.client else None
            status, body, jobs = await run_in_threadpool(
                _store, parts, tenant_id, settings, actor, address
            )
        finally:
            await run_in_threadpool(shutil.rmtree, folder, True)
        headers = {JOB_ID_HEADER: ",".join(jobs)} if jobs else None
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)

    return router
