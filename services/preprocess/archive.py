"""Safe unpacking of uploaded zip and tar archives.

Uploads come from outside, so every member is checked before a byte is written: no path may
leave the target folder, links and device files are refused, and the member count, the total
size and the compression ratio are capped. Declared sizes can lie, so the bytes actually
written are counted as well and extraction stops at the first limit crossed. Nested archives
are written as plain files, never expanded.
"""

from __future__ import annotations

import errno
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from services.common.config import Settings
from services.common.errors import ErrorCode, StudyError

ArchiveKind = Literal["zip", "tar"]

_CHUNK = 1 << 20
# Ratios are only judged past this many bytes: tiny members (a 4 KiB block of zeros) compress
# far beyond any sane cap yet cannot hurt anyone.
RATIO_GRACE_BYTES = 1 << 20
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a member, or the end record of an empty zip
# Errors the decompressors raise on damaged input.
_CORRUPT_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, ValueError)
_SERVER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES}


def archive_kind(path: Path) -> ArchiveKind | None:
    """``zip`` or ``tar`` (plain, gzip, bzip2 or xz) by content, else ``None``."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head in _ZIP_MAGICS:
        return "zip"
    try:
        return "tar" if tarfile.is_tarfile(path) else None
    except (OSError, EOFError, zlib.error, ValueError):
        return None


def extract_archive(path: Path, dest: Path, settings: Settings) -> list[Path]:
    """Unpack the zip or tar at ``path`` into the existing folder ``dest``.

    Returns the files written. Raises ``StudyError``: ``UNSAFE_ARCHIVE`` for anything that
    could escape ``dest`` or exhaust disk, ``CORRUPT_FILE`` for a damaged archive,
    ``UNSUPPORTED_FORMAT`` for something that is not a zip or tar (or an encrypted zip).
    """
    kind = archive_kind(path)
    if kind is None:
        raise StudyError(ErrorCode.UNSUPPORTED_FORMAT, f"{path.name} is not a zip or tar archive")
    budget = _Budget(settings, archive_bytes=path.stat().st_size, name=path.name)
    try:
        if kind == "zip":
            return _extract_zip(path, dest, budget)
        return _extract_tar(path, dest, budget)
    except _CORRUPT_ERRORS as exc:
        raise StudyError(ErrorCode.CORRUPT_FILE, f"damaged archive {path.name}: {exc}") from exc


@dataclass
class _Budget:
    """Running totals checked against the settings while an archive is unpacked."""

    settings: Settings
    archive_bytes: int
    name: str
    members: int = 0
    declared: int = 0
    written: int = 0
    files: list[Path] = field(default_factory=list)

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.settings.max_archive_members:
            self._unsafe(f"more than {self.settings.max_archive_members} members")

    def declare(self, member: str, size: int, compressed: int | None) -> None:
        """Check a member's declared size (and ratio, when the format records it)."""
        self.declared += size
        self._check_total(self.declared, "declared")
        self.check_member(member, size, compressed)
        self._check_ratio(self.declared, self.archive_bytes, "archive (declared)")

    def wrote(self, size: int) -> None:
        """Account for ``size`` more bytes really written."""
        self.written += size
        self._check_total(self.written, "extracted")
        self._check_ratio(self.written, self.archive_bytes, "archive")

    def check_member(self, member: str, written: int, compressed: int | None) -> None:
        if compressed is not None:
            self._check_ratio(written, compressed, f"member {member}")

    def _check_total(self, total: int, what: str) -> None:
        if total > self.settings.max_uncompressed_bytes:
            self._unsafe(f"{what} size exceeds {self.settings.max_uncompressed_bytes} bytes")

    def _check_ratio(self, size: int, compressed: int, what: str) -> None:
        if size <= RATIO_GRACE_BYTES:
            return
        ratio = size / max(compressed, 1)
        if ratio > self.settings.max_compression_ratio:
            self._unsafe(
                f"{what} compression ratio {ratio:.0f} exceeds "
                f"{self.settings.max_compression_ratio:g} (zip bomb?)"
            )

    def _unsafe(self, why: str) -> None:
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"{self.name}: {why}")


def safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path a member may be written to; ``None`` for members to skip.

    Raises ``UNSAFE_ARCHIVE`` for absolute paths, drive letters and ``..`` anywhere. Skips
    folders, ``__MACOSX/`` resource forks and dotfiles (``.DS_Store``, ``._IM0001``).
    """
    # Backslashes are separators for zips made on Windows; treat them as such when checking.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"absolute member path {name!r}")
    if "\x00" in normalized:
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"member name with NUL byte {name!r}")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"path traversal in member {name!r}")
    if not parts or normalized.endswith("/"):
        return None
    if parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    return PurePosixPath(*parts)


def _target(dest: Path, rel: PurePosixPath) -> Path:
    target = dest.joinpath(*rel.parts)
    # Belt and braces: the checks above already rule this out.
    if not target.resolve().is_relative_to(dest.resolve()):
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"member {rel} escapes the target folder")
    return target


def _copy(
    src: IO[bytes], target: Path, member: str, compressed: int | None, budget: _Budget
) -> None:
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                budget.wrote(len(chunk))
                budget.check_member(member, written, compressed)
                out.write(chunk)
    except OSError as exc:
        if exc.errno in _SERVER_ERRNOS:
            raise
        # File/folder name clashes, over-long names: the archive's fault, not ours.
        raise StudyError(
            ErrorCode.CORRUPT_FILE, f"cannot extract member {member!r}: {exc.strerror or exc}"
        ) from exc
    budget.files.append(target)


def _extract_zip(path: Path, dest: Path, budget: _Budget) -> list[Path]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        # Check every member before writing anything: a bad member rejects the whole upload.
        for info in infos:
            budget.count_member()
            _check_zip_type(info)
            rel = safe_member_path(info.filename)
            if rel is None or info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise StudyError(
                    ErrorCode.UNSUPPORTED_FORMAT, f"encrypted zip member {info.filename!r}"
                )
            budget.declare(info.filename, info.file_size, info.compress_size)
            plan.append((info, rel))
        for info, rel in plan:
            try:
                src = zf.open(info)
            except NotImplementedError as exc:  # e.g. deflate64, which zipfile cannot read
                raise StudyError(
                    ErrorCode.UNSUPPORTED_FORMAT, f"zip member {info.filename!r}: {exc}"
                ) from exc
            with src:
                _copy(src, _target(dest, rel), info.filename, info.compress_size, budget)
    return budget.files


def _check_zip_type(info: zipfile.ZipInfo) -> None:
    """Refuse symlinks and special files (the Unix mode lives in the high external bits)."""
    # Many writers store permission bits only (no file type): those are plain files.
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "symlink" if stat.S_ISLNK(mode) else "special file"
        raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"{kind} member {info.filename!r}")


def _extract_tar(path: Path, dest: Path, budget: _Budget) -> list[Path]:
    # Streaming mode ("r|*") reads each header once, in order: a tar with millions of members
    # is refused after max_archive_members + 1 headers, without listing them all first.
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            budget.count_member()
            if member.issym() or member.islnk():
                raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"link member {member.name!r}")
            rel = safe_member_path(member.name)
            if member.isdir():
                continue
            if not member.isreg():
                raise StudyError(ErrorCode.UNSAFE_ARCHIVE, f"special member {member.name!r}")
            if rel is None:
                continue
            budget.declare(member.name, member.size, None)
            src = tf.extractfile(member)
            if src is None:  # cannot happen for a regular member; keep mypy and us honest
                continue
            with src:
                _copy(src, _target(dest, rel), member.name, None, budget)
    return budget.files
