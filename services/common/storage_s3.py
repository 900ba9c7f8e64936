"""Blob storage in an S3-compatible bucket (``COVIDCT_STORAGE_URL=s3://bucket/prefix``).

What several machines need: the gateway stores a finished upload, a preprocess worker on
another node reads it, the gateway later serves heatmaps an inference worker wrote.

- ``put_file`` streams the file from disk (boto3's managed transfer): above
  ``storage_multipart_threshold_bytes`` it goes up in parts, several at once, so a
  multi-gigabyte upload never sits in memory; the source file is removed afterwards (the
  same "move" as the local backend).
- ``get_range`` is an HTTP range request; ``get_bytes`` reads a whole (small) blob.
- ``local_path`` downloads (streaming) into a per-process directory under
  ``<var_dir>/blob-cache/<host>-<pid>/`` (the host name keeps containers that share a volume
  apart); the oldest copies are removed once the directory holds more
  than ``storage_cache_max_bytes``, and directories of processes that are gone are removed
  when a process first downloads.
- ``delete_prefix`` lists page by page and deletes 1,000 keys per request (the S3 limit).

The bucket must exist: it is never created here (a deployment creates it with its policy,
lifecycle and encryption; tests create theirs).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from services.common.caches import process_cache
from services.common.config import Settings
from services.common.storage import check_key

log = logging.getLogger(__name__)

DELETE_BATCH = 1000  # keys per DeleteObjects request (S3's maximum)
_MISSING = {"NoSuchKey", "404", "NotFound"}


@process_cache
def _client(
    endpoint_url: str | None, region: str | None, key_id: str | None, secret: str | None
) -> Any:
    """One client per process and configuration (boto3 clients are thread-safe; building
    one costs tens of milliseconds, too much per request)."""
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        max_pool_connections=32,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=config,
    )


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING


_HOST = socket.gethostname().replace("/", "_") or "host"
# A cache directory of another host (container) untouched this long is left over: local_path
# downloads anew on every call, so nothing reads a copy that old.
OTHER_HOST_STALE_S = 6 * 3600.0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class S3Storage:
    list_page_size = 1000  # keys per ListObjectsV2 page (S3's maximum)
    delete_batch = DELETE_BATCH

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        cache_root: Path,
        transfer: TransferConfig | None = None,
        cache_max_bytes: int = 4 * 1024**3,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 storage URL names a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.transfer = transfer or TransferConfig()
        self.cache_root = cache_root
        self.cache_max_bytes = cache_max_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        parsed = urlparse(settings.storage_url or "")
        secret = settings.storage_secret_access_key
        # An empty value (a blank key in a Kubernetes Secret) counts as unset.
        client = _client(
            settings.storage_endpoint_url or None,
            settings.storage_region or None,
            settings.storage_access_key_id or None,
            (secret.get_secret_value() if secret is not None else None) or None,
        )
        transfer = TransferConfig(
            multipart_threshold=settings.storage_multipart_threshold_bytes,
            multipart_chunksize=settings.storage_multipart_chunk_bytes,
            max_concurrency=settings.storage_max_concurrency,
        )
        return cls(
            parsed.netloc,
            parsed.path,
            client,
            cache_root=settings.var_dir / "blob-cache",
            transfer=transfer,
            cache_max_bytes=settings.storage_cache_max_bytes,
        )

    def _key(self, key: str) -> str:
        relative = str(check_key(key))
        return f"{self.prefix}/{relative}" if self.prefix else relative

    # --- writes ----------------------------------------------------------------------------

    def put_file(self, key: str, source: Path) -> None:
        self.client.upload_file(str(source), self.bucket, self._key(key), Config=self.transfer)
        source.unlink()

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    # --- reads -----------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _missing(error):
                raise FileNotFoundError(key) from error
            raise
        data: bytes = response["Body"].read()
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError("start and length must not be negative")
        if length == 0:
            if not self.exists(key):
                raise FileNotFoundError(key)
            return b""
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{start + length - 1}"
            )
        except ClientError as error:
            if _missing(error):
                raise FileNotFoundError(key) from error
            if error.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # start at or past the end, as a file read there
            raise
        data: bytes = response["Body"].read()
        return data

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _missing(error):
                return False
            raise
        return True

    def local_path(self, key: str) -> Path:
        """Download ``key`` (streaming, in parts) into this process's cache directory."""
        full = self._key(key)
        directory = self._cache_dir()
        # Keep the file name: readers dispatch on the extension.
        target = directory / hashlib.sha256(full.encode()).hexdigest()[:32] / Path(full).name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        try:
            self.client.download_file(self.bucket, full, str(partial), Config=self.transfer)
        except ClientError as error:
            partial.unlink(missing_ok=True)
            if _missing(error):
                raise FileNotFoundError(key) from error
            raise
        os.replace(partial, target)
        self._evict(directory, keep=target)
        return target

    def _cache_dir(self) -> Path:
        # <host>-<pid>: containers sharing one volume (compose) each have their own pid 1, 2,
        # ...; the host name (the container id) keeps their directories apart.
        directory = self.cache_root / f"{_HOST}-{os.getpid()}"
        if not directory.exists():
            self._sweep_dead_processes()
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory

    def _sweep_dead_processes(self) -> None:
        """Directories of this host's processes that are gone; another host's (container's)
        only once untouched for ``OTHER_HOST_STALE_S``: its pids are not ours to check, and a
        removed container's directory has no one else to remove it."""
        if not self.cache_root.exists():
            return
        now = time.time()
        for child in self.cache_root.iterdir():
            host, _, pid = child.name.rpartition("-")
            if not pid.isdigit():
                continue
            if host == _HOST or not host:  # "<pid>": the layout before host names
                if not _process_alive(int(pid)):
                    shutil.rmtree(child, ignore_errors=True)
            elif now - _mtime(child) > OTHER_HOST_STALE_S:
                shutil.rmtree(child, ignore_errors=True)

    def _evict(self, directory: Path, keep: Path) -> None:
        """Oldest first, never ``keep``. The directory is this process's alone, and a worker
        process runs one task at a time (Celery prefork), so no other task is reading what
        goes; a file still open is readable until closed anyway (POSIX unlink)."""
        files = sorted(
            (p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.cache_max_bytes:
                break
            if path == keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()

    # --- deletion --------------------------------------------------------------------------

    def delete_prefix(self, prefix: str) -> int:
        """Delete ``prefix`` and every key below it (``prefix/...``), 1,000 per request."""
        full = self._key(prefix)
        batch: list[dict[str, str]] = []
        count = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.list_page_size}
        ):
            for item in page.get("Contents", []):
                name = item["Key"]
                if name != full and not name.startswith(full + "/"):
                    continue  # jobs/abc0 is not under jobs/abc
                batch.append({"Key": name})
                if len(batch) == self.delete_batch:
                    count += self._delete(batch)
                    batch = []
        if batch:
            count += self._delete(batch)
        return count

    def _delete(self, batch: list[dict[str, str]]) -> int:
        response = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
        )
        errors = response.get("Errors", [])
        if errors:
            raise OSError(f"S3 refused to delete {len(errors)} blob(s): {errors[:3]}")
        return len(batch)
