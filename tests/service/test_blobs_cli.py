"""``covidct blobs``: the bucket made at a compose start, and the blob half of a backup: a
dump of one store loaded into another gives the same blobs, local <-> S3 (a real S3 HTTP server
on 127.0.0.1: moto's server mode), streamed through a pipe as the backup script does."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.s3 import moto_s3_server
from services.common.config import REPO_ROOT
from services.common.storage import LocalStorage
from services.common.storage_s3 import _client

MiB = 1024**2


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as url:
        yield url


def _env(tmp_path: Path, storage_url: str, endpoint: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
    env |= {"COVIDCT_VAR_DIR": str(tmp_path / "var"), "COVIDCT_STORAGE_URL": storage_url}
    if endpoint:
        env |= {
            "COVIDCT_STORAGE_ENDPOINT_URL": endpoint,
            "COVIDCT_STORAGE_REGION": "us-east-1",
            "COVIDCT_STORAGE_ACCESS_KEY_ID": "testing",
            "COVIDCT_STORAGE_SECRET_ACCESS_KEY": "testing",
            # Small parts: the 6 MiB blob goes up as a multipart upload from the pipe.
            "COVIDCT_STORAGE_MULTIPART_THRESHOLD_BYTES": str(5 * MiB),
            "COVIDCT_STORAGE_MULTIPART_CHUNK_BYTES": str(5 * MiB),
        }
    return env


def _blobs(env: dict[str, str], *args: str, stdin: bytes | None = None) -> tuple[bytes, str]:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "blobs", *args],
        input=stdin,
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout, result.stderr.decode()


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_ensure_bucket_creates_it_once(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"covidct-{uuid.uuid4().hex[:12]}"
    env = _env(tmp_path, f"s3://{bucket}/blobs", s3_endpoint)
    out, _ = _blobs(env, "ensure-bucket")
    assert out.decode().strip() == f"bucket {bucket}: created"
    out, _ = _blobs(env, "ensure-bucket")
    assert out.decode().strip() == f"bucket {bucket}: exists"
    _client(s3_endpoint, "us-east-1", "testing", "testing").head_bucket(Bucket=bucket)


def test_ensure_bucket_says_local_storage_needs_none(tmp_path: Path) -> None:
    out, _ = _blobs(_env(tmp_path, str(tmp_path / "blobs")), "ensure-bucket")
    assert "no bucket" in out.decode()


def test_dump_and_load_carry_every_blob_local_to_s3_and_back(
    s3_endpoint: str, tmp_path: Path
) -> None:
    source = LocalStorage(tmp_path / "source")
    source.put_bytes("jobs/a/upload", os.urandom(6 * MiB + 123))  # multipart on the way up
    source.put_bytes("jobs/a/slices.npy", b"\x93NUMPY stack")
    source.put_bytes("jobs/b0/native.bin", b"")  # empty blobs survive too
    local_env = _env(tmp_path, str(tmp_path / "source"))
    bucket = f"covidct-{uuid.uuid4().hex[:12]}"
    s3_env = _env(tmp_path, f"s3://{bucket}/prefix/blobs", s3_endpoint)
    _blobs(s3_env, "ensure-bucket")

    tar, log = _blobs(local_env, "dump")
    assert "dumped 3 blobs" in log
    _, log = _blobs(s3_env, "load", stdin=tar)
    assert "loaded 3 blobs" in log
    keys = _client(s3_endpoint, "us-east-1", "testing", "testing").list_objects_v2(Bucket=bucket)
    assert sorted(item["Key"] for item in keys["Contents"]) == [
        "prefix/blobs/jobs/a/slices.npy",
        "prefix/blobs/jobs/a/upload",
        "prefix/blobs/jobs/b0/native.bin",
    ]

    tar, _ = _blobs(s3_env, "dump")  # a backup of the S3 store, restored into a new one
    _, log = _blobs(_env(tmp_path, str(tmp_path / "restored")), "load", stdin=tar)
    assert _digests(tmp_path / "restored") == _digests(tmp_path / "source")


def test_load_refuses_keys_outside_the_store(tmp_path: Path) -> None:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "blobs", "load"],
        input=buffer.getvalue(),
        env=_env(tmp_path, str(tmp_path / "store")),
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 2 and b"invalid_blob_key" in result.stderr
    assert not (tmp_path / "escape").exists()
