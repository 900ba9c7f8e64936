"""The integrator's side: create a job, upload the study with tus (resumable), poll the verdict.

Used by ``covidct submit`` and by the demo. Resumption survives a client restart: the job id,
the idempotency key and the tus URL of an unfinished upload are kept in a small JSON state
file keyed by server and file checksum, so running the same submit again continues where the
last one stopped instead of creating a second job.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError

from services.common.hashing import file_sha256

TERMINAL = {"succeeded", "failed", "cancelled"}
DEFAULT_CHUNK = 32 * 1024 * 1024  # fewer PATCHes: each costs ~30 ms of fixed work
Progress = Callable[[int, int], None]  # (bytes sent so far, total)


def default_state_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("COVIDCT_CLIENT_STATE", Path(base) / "covidct" / "uploads.json"))


class UploadState:
    """Unfinished uploads, so a restarted client resumes rather than starting over."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, str]:
        return dict(self._load().get(key, {}))

    def update(self, key: str, **values: str) -> None:
        data = self._load()
        data.setdefault(key, {}).update(values)
        self._save(data)

    def forget(self, key: str) -> None:
        data = self._load()
        if data.pop(key, None) is not None:
            self._save(data)

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(data, indent=2))
        os.replace(partial, self.path)


def zip_directory(directory: Path, out_dir: Path) -> Path:
    """A DICOM folder travels as one zip (members sorted, so the bytes repeat run to run)."""
    target = out_dir / f"{directory.name or 'study'}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(
                str(path.relative_to(directory)), date_time=(1980, 1, 1, 0, 0, 0)
            )
            archive.writestr(info, path.read_bytes())
    return target


FILETYPES = {
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
    ".dcm": "application/dicom",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}


@dataclass
class ApiClient:
    server: str
    api_key: str
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        self.server = self.server.rstrip("/")
        self.http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=self.timeout_s,
        )

    def _check(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                body = response.json()
                message = f"{body.get('code')}: {body.get('message')}"
            except ValueError:
                message = response.text[:200]
            raise ApiClientError(response.status_code, message)
        return dict(response.json())

    def create_job(
        self,
        callback_url: str | None = None,
        external_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(
            self.http.post(
                "/v1/jobs",
                json={"callback_url": callback_url, "external_id": external_id},
                headers=headers,
            )
        )

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout_s: float = 1800, poll_s: float = 0.5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def upload_url(self, job: dict[str, Any]) -> str:
        url = str(job["upload_url"])
        return url if url.startswith("http") else f"{self.server}{url}"

    def upload(
        self,
        job: dict[str, Any],
        path: Path,
        sha256: str,
        state: UploadState | None = None,
        state_key: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        stop_at: int | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Send ``path`` with tus, resuming a stored upload URL; True when every byte is in."""
        tus = TusClient(self.upload_url(job), headers={"Authorization": f"Bearer {self.api_key}"})
        stored = (state.get(state_key) if state and state_key else {}).get("upload_url")
        metadata = {
            "job_id": job["id"],
            "filename": path.name,
            "filetype": FILETYPES.get(path.suffix.lower(), "application/octet-stream"),
            "sha256": sha256,
        }
        try:
            uploader = tus.uploader(
                file_path=str(path), chunk_size=chunk_size, metadata=metadata, url=stored
            )
        except TusCommunicationError:
            # The stored upload is gone (expired or terminated): start it again on this job.
            uploader = tus.uploader(file_path=str(path), chunk_size=chunk_size, metadata=metadata)
        total = uploader.get_file_size()
        if uploader.url is None:
            uploader.set_url(uploader.create_url())
            uploader.offset = 0
        if state and state_key and uploader.url:
            state.update(state_key, upload_url=str(uploader.url))
        limit = total if stop_at is None else min(stop_at, total)
        if progress:
            progress(uploader.offset, total)
        while uploader.offset < limit:
            uploader.upload_chunk()
            if progress:
                progress(uploader.offset, total)
        return uploader.offset >= total


class ApiClientError(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code


def submit(
    client: ApiClient,
    path: Path,
    state: UploadState | None = None,
    callback_url: str | None = None,
    external_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    stop_at: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], bool]:
    """Create (or resume) the job for ``path`` and upload it; returns (job, upload finished)."""
    state = state or UploadState(default_state_path())
    with tempfile.TemporaryDirectory(prefix="covidct-submit-") as scratch:
        upload_path = zip_directory(path, Path(scratch)) if path.is_dir() else path
        sha256 = file_sha256(upload_path)
        key = f"{client.server}|{sha256}"
        saved = state.get(key)
        job: dict[str, Any] | None = None
        if saved.get("job_id"):
            try:
                current = client.get_job(saved["job_id"])
                if current["status"] == "awaiting_upload":
                    job = {**current, "upload_url": saved.get("job_upload_url", "/v1/uploads")}
            except ApiClientError:
                job = None
        if job is None:
            state.forget(key)
            idempotency_key = str(uuid.uuid4())
            state.update(key, idempotency_key=idempotency_key)  # a crash here reuses the job
            job = client.create_job(callback_url, external_id, idempotency_key)
            state.update(key, job_id=job["id"], job_upload_url=job["upload_url"])
        done = client.upload(
            job, upload_path, sha256, state, key, chunk_size, stop_at=stop_at, progress=progress
        )
        if done:
            state.forget(key)
        return job, done
