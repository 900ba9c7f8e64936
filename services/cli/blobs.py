"""``covidct blobs``: the blob store for an admin.

- ``ensure-bucket``: create the S3 bucket ``COVIDCT_STORAGE_URL`` names when it is missing
  (compose's ``s3-init``; production buckets with their own policy exist already, and then this
  only checks that the credentials reach it).
- ``dump`` / ``load``: every blob as one tar stream on stdout / from stdin, for backups and
  restores (``scripts/compose/backup.sh``) and for moving a local blob directory into S3 (dump
  with one ``COVIDCT_STORAGE_URL``, load with the other). Streams: neither side holds a whole
  blob in memory or on disk, so it runs in a container without scratch space.
"""

from __future__ import annotations

import os
import sys
import tarfile
import time
from collections.abc import Iterator
from typing import IO, Annotated, Any

import typer

from services.common.config import get_settings
from services.common.storage import BlobStorage, LocalStorage, check_key, make_storage

blobs_app = typer.Typer(no_args_is_help=True, help="Blob store: bucket, backup and restore.")


def _fail(code: str, message: str) -> typer.Exit:
    typer.echo(f"error: {code}: {message}", err=True)
    return typer.Exit(2)


@blobs_app.command("ensure-bucket")
def ensure_bucket(
    wait_s: Annotated[float, typer.Option(help="Seconds to wait for the S3 endpoint.")] = 120.0,
) -> None:
    """Create the bucket of an s3:// COVIDCT_STORAGE_URL if missing (nothing for local)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from services.common.storage_s3 import S3Storage

    storage = make_storage(get_settings())
    if not isinstance(storage, S3Storage):
        typer.echo("local blob storage: no bucket to create")
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            storage.client.head_bucket(Bucket=storage.bucket)
            typer.echo(f"bucket {storage.bucket}: exists")
            return
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code"))
            if code in {"404", "NoSuchBucket", "NotFound"}:
                storage.client.create_bucket(Bucket=storage.bucket)
                typer.echo(f"bucket {storage.bucket}: created")
                return
            if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                raise _fail("s3_access_denied", f"bucket {storage.bucket}: {code}") from None
            last = f"{code}: {error}"
        except BotoCoreError as error:  # endpoint not up yet
            last = str(error)
        if time.monotonic() > deadline:
            raise _fail("s3_unreachable", last)
        time.sleep(1.0)


def _keys(storage: BlobStorage) -> Iterator[tuple[str, int]]:
    """(key, size) of every blob, relative to the store's root or prefix."""
    if isinstance(storage, LocalStorage):
        for path in sorted(storage.root.rglob("*")):
            if path.is_file() and not path.name.endswith(".partial"):
                yield path.relative_to(storage.root).as_posix(), path.stat().st_size
        return
    from services.common.storage_s3 import S3Storage

    assert isinstance(storage, S3Storage)
    root = f"{storage.prefix}/" if storage.prefix else ""
    paginator = storage.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=storage.bucket, Prefix=root):
        for item in page.get("Contents", []):
            yield item["Key"][len(root) :], int(item["Size"])


def _open(storage: BlobStorage, key: str) -> IO[bytes] | Any:
    if isinstance(storage, LocalStorage):
        return storage.root.joinpath(*check_key(key).parts).open("rb")
    from services.common.storage_s3 import S3Storage

    assert isinstance(storage, S3Storage)
    return storage.client.get_object(Bucket=storage.bucket, Key=storage._key(key))["Body"]


def _store(storage: BlobStorage, key: str, stream: IO[bytes]) -> None:
    if isinstance(storage, LocalStorage):
        target = storage.root.joinpath(*check_key(key).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        os.replace(partial, target)
        return
    from services.common.storage_s3 import S3Storage

    assert isinstance(storage, S3Storage)
    # A tar member in stream mode claims to be seekable and is not: hand boto3 read() only,
    # so it uploads in parts as the bytes come.
    reader = _ReadOnly(stream)
    storage.client.upload_fileobj(
        reader, storage.bucket, storage._key(key), Config=storage.transfer
    )


class _ReadOnly:
    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


@blobs_app.command("dump")
def dump() -> None:
    """Every blob as an uncompressed tar on stdout (keys as member names)."""
    storage = make_storage(get_settings())
    count = total = 0
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as archive:
        for key, size in _keys(storage):
            info = tarfile.TarInfo(key)
            info.size, info.mode, info.mtime = size, 0o600, int(time.time())
            body = _open(storage, key)
            try:
                archive.addfile(info, body)
            finally:
                body.close()
            count, total = count + 1, total + size
    typer.echo(f"dumped {count} blobs, {total} bytes", err=True)


@blobs_app.command("load")
def load() -> None:
    """Blobs from a ``covidct blobs dump`` tar on stdin, written under their keys (a blob of
    the same key is replaced; nothing else is removed)."""
    storage = make_storage(get_settings())
    count = total = 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            try:
                check_key(member.name)
            except ValueError:
                raise _fail("invalid_blob_key", f"{member.name!r} in the archive") from None
            stream = archive.extractfile(member)
            if stream is None:
                continue
            _store(storage, member.name, stream)
            count, total = count + 1, total + member.size
    typer.echo(f"loaded {count} blobs, {total} bytes", err=True)
