"""Blob storage behind a small interface (uploads, slice stacks, heatmaps).

``LocalStorage`` (a directory: the embedded service, one machine) and ``S3Storage``
(``storage_s3.py``: ``COVIDCT_STORAGE_URL=s3://bucket/prefix``, any number of machines).
Keys are relative POSIX paths such as ``jobs/<id>/upload``; ``delete_prefix("jobs/<id>")``
removes that key and everything below it, never ``jobs/<id>0``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlparse

from services.common.config import Settings


class BlobStorage(Protocol):
    def put_file(self, key: str, source: Path) -> None:
        """Move ``source`` into the store under ``key`` (replacing any blob there)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes:
        """The whole blob; ``FileNotFoundError`` when there is none."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """At most ``length`` bytes from offset ``start`` (fewer at the end of the blob)."""

    def local_path(self, key: str) -> Path:
        """A readable local file for ``key`` (the blob itself for local storage)."""

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix``; returns how many were removed."""


def check_key(key: str) -> PurePosixPath:
    relative = PurePosixPath(key)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"invalid blob key {key!r}")
    return relative


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).parts)

    def put_file(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)  # readers never see half a blob

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError("start and length must not be negative")
        with self._path(key).open("rb") as f:
            f.seek(start)
            return f.read(length)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(key)
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix)
        if path.is_file():
            path.unlink()
            return 1
        if not path.exists():
            return 0
        count = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return count


def make_storage(settings: Settings) -> BlobStorage:
    url = settings.storage_url
    if not url:
        return LocalStorage(settings.var_dir / "blobs")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStorage(Path(parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        from services.common.storage_s3 import S3Storage  # boto3 only where S3 is used

        return S3Storage.from_settings(settings)
    raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r}")
