"""tus storage that streams each PATCH to disk and hashes it on the way.

tuspyserver's ``LocalFileStorage`` buffers a whole PATCH body in memory and copies it on the
event loop before one write: with 32 MiB chunks that is 2x the chunk in RAM per upload and
nothing overlaps the network. Here each piece is written as it arrives (a page-cache write
of one ASGI chunk), and ``flush`` makes it durable before tuspyserver advertises the new
offset. The running SHA-256 lets the upload-finished step skip re-reading the file when all
PATCHes of an upload reached this process in order (else it hashes the file as before).

The file never holds a byte past the acknowledged offset (the ``offset`` of the ``.info``
sidecar): a PATCH that ends without its ``flush`` (a 4xx mid-body, a failed write) has its
bytes cut off and its handle closed before the upload's lock is released, and every PATCH
starts by cutting whatever a crash left behind.

tus checksum extension: the request's ``Upload-Checksum`` (set by the protocol guard through
:func:`expect_checksum`, a context variable of the request) is computed over the chunks as
they are written and compared in ``flush``; a mismatch is 460 and, the flush not having
happened, the lock's exit cuts the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from fastapi import HTTPException
from tuspyserver.lock import FileLock
from tuspyserver.storage.local import LocalFileStorage

log = logging.getLogger(__name__)

# One thread hashes for every upload, in arrival order: hashlib releases the GIL on large
# buffers, so the event loop keeps receiving while the previous 4 MiB are hashed.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tus-sha256")
_HASH_BATCH = 4 * 1024 * 1024


class _Running:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.offset = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.last: Future[None] | None = None

    def add(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        self.offset += len(chunk)
        if self.pending_bytes >= _HASH_BATCH:
            self.submit()

    def submit(self) -> None:
        if self.pending:
            self.last = _HASHER.submit(self.digest.update, b"".join(self.pending))
            self.pending, self.pending_bytes = [], 0

    def hexdigest(self) -> str:
        self.submit()
        if self.last is not None:
            self.last.result()  # the single hashing thread keeps order: the last is the latest
        return self.digest.hexdigest()


CHECKSUM_MISMATCH_STATUS = 460  # tus checksum extension
CONCURRENT_PATCH = {
    "code": "upload_busy",
    "message": "another request is writing this upload; retry from HEAD when it has ended",
}


@dataclass
class _ChunkChecksum:
    algorithm: str
    expected: bytes
    hasher: Any = field(init=False)

    def __post_init__(self) -> None:
        self.hasher = hashlib.new(self.algorithm)


_CHECKSUM: contextvars.ContextVar[_ChunkChecksum | None] = contextvars.ContextVar(
    "tus_upload_checksum", default=None
)


def expect_checksum(algorithm: str | None, expected: bytes | None = None) -> None:
    """The body of the current request must hash to ``expected`` (None: no checksum)."""
    check = None if algorithm is None or expected is None else _ChunkChecksum(algorithm, expected)
    _CHECKSUM.set(check)


class StreamingLocalStorage(LocalFileStorage):
    def __init__(self, files_dir: str, fsync: bool = True) -> None:
        super().__init__(files_dir)
        self.fsync = fsync
        self._handles: dict[str, IO[bytes]] = {}
        self._hashes: dict[str, _Running] = {}
        self._guard = threading.Lock()
        self._locked: set[str] = set()  # uploads a request of this process is writing

    async def append(self, uid: str, chunk: bytes) -> None:
        try:
            handle = self._handles.get(uid)
            if handle is None:
                handle = await asyncio.to_thread(self._open, uid)
            handle.write(chunk)  # one ASGI chunk (~64 KiB) into the page cache: microseconds
        except OSError as exc:
            # An HTTPException, so tuspyserver keeps the old offset; the lock's exit cuts
            # the bytes of this PATCH.
            log.exception("could not write upload %s", uid)
            raise HTTPException(500, "could not store the upload; retry from HEAD") from exc
        running = self._hashes.get(uid)
        if running is not None:
            running.add(chunk)
        check = _CHECKSUM.get()
        if check is not None:
            check.hasher.update(chunk)

    def _open(self, uid: str) -> IO[bytes]:
        self._ensure_dir()
        handle = open(self._path(uid), "ab")  # noqa: SIM115 - closed in flush/delete
        start = handle.tell()
        with self._guard:
            self._handles[uid] = handle
            running = self._hashes.get(uid)
            if start == 0:
                self._hashes[uid] = _Running()
            elif running is None or running.offset != start:
                self._hashes.pop(uid, None)  # bytes before this PATCH went elsewhere
        return handle

    async def flush(self, uid: str) -> None:
        check = _CHECKSUM.get()
        if check is not None:
            _CHECKSUM.set(None)
            if check.hasher.digest() != check.expected:
                # Not flushed: the handle stays registered and the lock's exit cuts the bytes.
                raise HTTPException(CHECKSUM_MISMATCH_STATUS, "Checksum Mismatch")
        handle = self._handles.pop(uid, None)
        if handle is None:
            return

        def _do() -> None:
            try:
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            finally:
                handle.close()

        try:
            await asyncio.to_thread(_do)
        except OSError as exc:
            log.exception("could not write upload %s", uid)
            raise HTTPException(500, "could not store the upload; retry from HEAD") from exc

    # TusStorage annotates lock() with its undecorated type; callers use it as here.
    @contextlib.asynccontextmanager
    async def lock(self, uid: str) -> AsyncIterator[None]:  # type: ignore[override]
        """The upload's lock, with the file cut back to its acknowledged offset on entry and,
        when the PATCH did not reach ``flush``, on exit (both still under the lock).

        Never waited for: a PATCH to an upload that another request (of this process or
        another one sharing the directory) is writing is refused at once with 409 (tus:
        "423/409 on concurrent access"). Waiting would park a threadpool thread for up to
        tuspyserver's 30 s lock timeout, and a handful of such requests starve every other
        upload and route of threads."""
        if uid in self._locked:
            raise HTTPException(409, CONCURRENT_PATCH)
        self._locked.add(uid)
        try:
            held = await asyncio.to_thread(self._try_file_lock, uid)
            if held is None:
                raise HTTPException(409, CONCURRENT_PATCH)
            try:
                await asyncio.to_thread(self._settle, uid)
                try:
                    yield
                finally:
                    if uid in self._handles:
                        await asyncio.to_thread(self._settle, uid)
            finally:
                await asyncio.to_thread(held.release)
        finally:
            self._locked.discard(uid)

    def locked(self, uid: str) -> bool:
        """Whether a request of this process is writing ``uid`` now."""
        return uid in self._locked

    def _try_file_lock(self, uid: str) -> FileLock | None:
        """tuspyserver's cross-process lock file, taken without waiting (None: held)."""
        lock = FileLock(self._path(uid), locks_dir=os.path.join(self.files_dir, ".locks"))
        return lock if lock.acquire(blocking=False) else None

    def _settle(self, uid: str) -> None:
        """Close ``uid``'s handle if a PATCH left it open, then cut the file to the offset
        its sidecar acknowledges (bytes past it were never acknowledged to anyone)."""
        handle = self._handles.pop(uid, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
        try:
            with open(self._info_path(uid)) as f:
                acknowledged = int(json.load(f)["offset"])
            size = os.path.getsize(self._path(uid))
        except (OSError, ValueError, TypeError, KeyError):
            return  # no sidecar (terminated, finished) or no file: nothing to cut
        if size > acknowledged:
            os.truncate(self._path(uid), acknowledged)
            self._hashes.pop(uid, None)  # it hashed the bytes just cut: hash the file later
            log.warning("upload %s: cut %d unacknowledged bytes", uid, size - acknowledged)

    async def delete(self, uid: str) -> None:
        handle = self._handles.pop(uid, None)
        if handle is not None:
            await asyncio.to_thread(handle.close)
        self._hashes.pop(uid, None)
        await super().delete(uid)

    def take_sha256(self, uid: str, size: int) -> str | None:
        """The SHA-256 of a finished upload if every byte of it was hashed here."""
        running = self._hashes.pop(uid, None)
        if running is None or running.offset != size:
            return None
        return running.hexdigest()

    def __repr__(self) -> str:
        return f"StreamingLocalStorage({self.files_dir!r}, fsync={self.fsync})"
