"""The BlobStorage contract, the same tests for the local directory and for S3 (a real S3
HTTP server on 127.0.0.1: moto's server mode), then what only S3 has: multipart uploads,
bounded memory for large files, paginated batch deletion, and a job's blobs in S3 from
upload to deletion through the service."""

from __future__ import annotations

import hashlib
import io
import os
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from boto3.s3.transfer import TransferConfig
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

import services.ensemble.tasks
import services.inference.tasks
import services.preprocess.tasks  # noqa: F401  (the eager pipeline runs these)
from harness.s3 import moto_s3_server
from services.asgi import create_app
from services.common.config import Settings
from services.common.npy_rows import NotARowStack, npy_row
from services.common.queue import celery_app
from services.common.storage import BlobStorage, LocalStorage, make_storage
from services.common.storage_s3 import S3Storage, _client
from tests.support.service import auth, make_tenant, upload_study

MiB = 1024**2
KEY_ID, SECRET, REGION = "testing", "testing", "us-east-1"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as url:
        yield url


def s3_client(endpoint: str) -> Any:
    return _client(endpoint, REGION, KEY_ID, SECRET)


def new_bucket(endpoint: str) -> str:
    bucket = f"covidct-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return bucket


def s3_storage(endpoint: str, tmp_path: Path, part: int = 5 * MiB, **kwargs: Any) -> S3Storage:
    transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part, **kwargs)
    return S3Storage(
        new_bucket(endpoint),
        "prefix/covidct",
        s3_client(endpoint),
        cache_root=tmp_path / "blob-cache",
        transfer=transfer,
        cache_max_bytes=1 * MiB,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "blobs")
    return s3_storage(request.getfixturevalue("s3_endpoint"), tmp_path)


# --- the contract, both backends ------------------------------------------------------------


def test_bytes_round_trip_exists_and_replace(storage: BlobStorage) -> None:
    assert not storage.exists("jobs/a/slices.npy")
    storage.put_bytes("jobs/a/slices.npy", b"first")
    storage.put_bytes("jobs/a/slices.npy", b"second")
    assert storage.exists("jobs/a/slices.npy")
    assert storage.get_bytes("jobs/a/slices.npy") == b"second"
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("jobs/a/missing.png")


def test_ranged_reads(storage: BlobStorage) -> None:
    data = bytes(range(256)) * 4
    storage.put_bytes("jobs/a/heatmaps/slice-0001.png", data)
    key = "jobs/a/heatmaps/slice-0001.png"
    assert storage.get_range(key, 0, 10) == data[:10]
    assert storage.get_range(key, 100, 50) == data[100:150]
    assert storage.get_range(key, len(data) - 5, 100) == data[-5:]  # short at the end
    assert storage.get_range(key, len(data) + 10, 5) == b""
    assert storage.get_range(key, 3, 0) == b""
    with pytest.raises(FileNotFoundError):
        storage.get_range("jobs/a/nothing", 0, 1)


def test_one_row_of_a_stack_by_ranged_reads(storage: BlobStorage, tmp_path: Path) -> None:
    """The slice viewer's read: one slice of a .npy stack, without a local copy of it."""
    stack = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    buffer = io.BytesIO()
    np.save(buffer, stack)
    storage.put_bytes("jobs/r/slices.npy", buffer.getvalue())
    for index in range(5):
        row = npy_row(storage, "jobs/r/slices.npy", index)
        assert row is not None and np.array_equal(row, stack[index])
    assert npy_row(storage, "jobs/r/slices.npy", 5) is None
    with pytest.raises(FileNotFoundError):
        npy_row(storage, "jobs/none/slices.npy", 0)
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(stack))
    storage.put_bytes("jobs/r/fortran.npy", fortran.getvalue())
    with pytest.raises(NotARowStack):
        npy_row(storage, "jobs/r/fortran.npy", 0)
    if isinstance(storage, S3Storage):  # nothing downloaded to the pod's scratch disk
        assert not [f for f in (tmp_path / "blob-cache").rglob("*") if f.is_file()]


def test_put_file_moves_and_local_path_keeps_the_name(storage: BlobStorage, tmp_path: Path) -> None:
    source = tmp_path / "incoming.bin"
    source.write_bytes(b"\x00study\xff" * 1000)
    storage.put_file("jobs/a/upload/study.dcm", source)
    assert not source.exists()  # moved, as the tus ingest expects
    path = storage.local_path("jobs/a/upload/study.dcm")
    assert path.name == "study.dcm"  # readers dispatch on the extension
    assert path.read_bytes() == b"\x00study\xff" * 1000
    with pytest.raises(FileNotFoundError):
        storage.local_path("jobs/a/upload/other.dcm")


def test_delete_prefix_removes_the_job_and_nothing_beside_it(storage: BlobStorage) -> None:
    for key in ("jobs/abc/upload/x.zip", "jobs/abc/slices.npy", "jobs/abc/heatmaps/s-1.png"):
        storage.put_bytes(key, b"1")
    storage.put_bytes("jobs/abc0/slices.npy", b"neighbour")
    assert storage.delete_prefix("jobs/abc") == 3
    assert not storage.exists("jobs/abc/slices.npy")
    assert storage.get_bytes("jobs/abc0/slices.npy") == b"neighbour"
    assert storage.delete_prefix("jobs/abc") == 0
    assert storage.delete_prefix("jobs/abc0/slices.npy") == 1  # a single blob


@pytest.mark.parametrize("key", ["", "/etc/passwd", "jobs/../../x"])
def test_invalid_keys_are_refused(storage: BlobStorage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put_bytes(key, b"x")


# --- S3 only --------------------------------------------------------------------------------


def test_make_storage_reads_the_s3_url_and_credentials(
    isolated_settings: Callable[..., Settings], s3_endpoint: str
) -> None:
    bucket = new_bucket(s3_endpoint)
    settings = isolated_settings(
        storage_url=f"s3://{bucket}/deploy/a",
        storage_endpoint_url=s3_endpoint,
        storage_region=REGION,
        storage_access_key_id=KEY_ID,
        storage_secret_access_key=SECRET,
    )
    assert "testing" not in repr(settings.storage_secret_access_key)
    storage = make_storage(settings)
    assert isinstance(storage, S3Storage)
    storage.put_bytes("jobs/j/slices.npy", b"abc")
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["deploy/a/jobs/j/slices.npy"]


def test_large_files_go_up_in_parts(s3_endpoint: str, tmp_path: Path) -> None:
    storage = s3_storage(s3_endpoint, tmp_path)
    source = tmp_path / "study.zip"
    data = os.urandom(12 * MiB + 123)
    source.write_bytes(data)
    storage.put_file("jobs/big/upload/study.zip", source)
    head = storage.client.head_object(
        Bucket=storage.bucket, Key="prefix/covidct/jobs/big/upload/study.zip"
    )
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
    assert head["ContentLength"] == len(data)
    path = storage.local_path("jobs/big/upload/study.zip")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_file_much_larger_than_a_part_streams_both_ways(s3_endpoint: str, tmp_path: Path) -> None:
    """64 MiB in 5 MiB parts: the client never holds the file, in either direction (the
    multi-gigabyte case, scaled down: memory depends on part size and concurrency only)."""
    storage = s3_storage(s3_endpoint, tmp_path, max_concurrency=2)
    source = tmp_path / "large.bin"
    size = 64 * MiB
    with source.open("wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
    tracemalloc.start()
    try:
        storage.put_file("jobs/large/upload/large.bin", source)
        _, peak_up = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        path = storage.local_path("jobs/large/upload/large.bin")
        _, peak_down = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size == size
    # A few parts at most (measured: about 5 MiB each way), never the 64 MiB file.
    assert peak_up < size / 4, f"upload peaked at {peak_up / MiB:.1f} MiB"
    assert peak_down < size / 4, f"download peaked at {peak_down / MiB:.1f} MiB"


def test_delete_prefix_pages_and_batches(s3_endpoint: str, tmp_path: Path) -> None:
    storage = s3_storage(s3_endpoint, tmp_path)
    storage.list_page_size, storage.delete_batch = 4, 10  # S3's 1000 each, scaled down
    for i in range(25):
        storage.put_bytes(f"jobs/many/heatmaps/slice-{i:04d}.png", b"png")
    storage.put_bytes("jobs/other/slices.npy", b"keep")
    calls: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        calls.append(len(params["Delete"]["Objects"]))

    storage.client.meta.events.register("provide-client-params.s3.DeleteObjects", count)
    try:
        assert storage.delete_prefix("jobs/many") == 25
    finally:
        storage.client.meta.events.unregister("provide-client-params.s3.DeleteObjects", count)
    assert calls == [10, 10, 5]
    assert storage.exists("jobs/other/slices.npy")


def test_local_copies_are_bounded_and_dead_processes_swept(
    s3_endpoint: str, tmp_path: Path
) -> None:
    storage = s3_storage(s3_endpoint, tmp_path)  # cache_max_bytes: 1 MiB
    stale = tmp_path / "blob-cache" / "999999999"  # no such process
    stale.mkdir(parents=True)
    (stale / "old.bin").write_bytes(b"x")
    for name in ("a", "b", "c"):
        storage.put_bytes(f"jobs/{name}/upload/s.bin", os.urandom(MiB // 2 + 1))
    paths = [storage.local_path(f"jobs/{name}/upload/s.bin") for name in ("a", "b", "c")]
    assert not stale.exists()
    assert [p.exists() for p in paths] == [False, False, True]  # newest kept, within 1 MiB


# --- through the service: a job's blobs live in S3 and go with the job ------------------------


@pytest.mark.parametrize("keep_raw", [True, False], ids=["raw-kept", "raw-deleted-at-end"])
def test_a_jobs_blobs_land_in_s3_and_deletion_sweeps_them(
    isolated_settings: Callable[..., Settings], s3_endpoint: str, keep_raw: bool
) -> None:
    """Upload, slice stack and heatmaps in S3; the raw upload removed from S3 when the job
    ends (retention) unless kept; DELETE removes everything under the job."""
    bucket = new_bucket(s3_endpoint)
    settings = isolated_settings(
        broker_url="memory://",
        retention_keep_raw_upload=str(keep_raw).lower(),
        storage_url=f"s3://{bucket}/covidct",
        storage_endpoint_url=s3_endpoint,
        storage_region=REGION,
        storage_access_key_id=KEY_ID,
        storage_secret_access_key=SECRET,
    )
    client = s3_client(s3_endpoint)
    study = Path(str(get_testdata_file("CT_small.dcm", download=False)))
    data = study.read_bytes()
    celery_app.conf.task_always_eager = True
    try:
        with TestClient(create_app()) as api:
            tenant = make_tenant("s3")
            job = {"id": upload_study(api, tenant, data)}
            body = api.get(f"/v1/jobs/{job['id']}", headers=auth(tenant)).json()
            assert body["status"] == "succeeded", body

            def keys() -> set[str]:
                listed = client.list_objects_v2(Bucket=bucket, Prefix="covidct/")
                return {item["Key"] for item in listed.get("Contents", [])}

            base = f"covidct/jobs/{job['id']}"
            stored = keys()
            assert (f"{base}/upload/CT_small.dcm" in stored) is keep_raw
            assert f"{base}/slices.npy" in stored
            heatmaps = sorted(k for k in stored if k.startswith(f"{base}/heatmaps/"))
            assert heatmaps, stored
            index = int(heatmaps[0].rsplit("-", 1)[1].removesuffix(".png"))
            png = api.get(f"/v1/jobs/{job['id']}/heatmaps/{index}", headers=auth(tenant))
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
            # Nothing stayed on this machine: no local blobs, no upload left behind.
            assert not (settings.var_dir / "blobs").exists()
            assert not any(p.is_file() for p in settings.upload_dir.rglob("*"))

            assert api.delete(f"/v1/jobs/{job['id']}", headers=auth(tenant)).status_code == 204
            assert keys() == set()
    finally:
        celery_app.conf.task_always_eager = False


def test_cache_directories_are_per_host_and_process(tmp_path: Path) -> None:
    """Containers sharing one volume (compose) have the same pids: a directory of another
    host is not swept for its pid, only once stale; this host's dead processes' are."""
    import services.common.storage_s3 as storage_s3

    root = tmp_path / "blob-cache"
    other_live = root / "other-container-1"  # pid 1 of another container
    other_stale = root / "gone-container-7"
    own_dead = root / f"{storage_s3._HOST}-{2**22 + 12345}"  # no such pid here
    for directory in (other_live, other_stale, own_dead):
        directory.mkdir(parents=True)
    old = time.time() - storage_s3.OTHER_HOST_STALE_S - 60
    os.utime(other_stale, (old, old))
    store = S3Storage("bucket", "", client=None, cache_root=root)
    mine = store._cache_dir()
    assert mine.name == f"{storage_s3._HOST}-{os.getpid()}" and mine.is_dir()
    assert other_live.is_dir() and not other_stale.exists() and not own_dead.exists()
