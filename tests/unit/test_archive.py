"""Safe unpacking: traversal, links, special files, member count and zip-bomb limits."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from services.common.config import Settings
from services.common.errors import ErrorCode, StudyError
from services.preprocess.archive import archive_kind, extract_archive, safe_member_path

SETTINGS = Settings()


def _zip(path: Path, members: dict[str, bytes], level: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=level) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes], mode: str) -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for info in members:
            payload = data.get(info.name)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _code(exc: pytest.ExceptionInfo[StudyError]) -> ErrorCode:
    return exc.value.code


def test_zip_extracts_and_skips_junk(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "a.zip",
        {
            "study/IM1.dcm": b"one",
            "study/sub/IM2.dcm": b"two",
            "study/.DS_Store": b"junk",
            "__MACOSX/study/._IM1.dcm": b"fork",
            "study/inner.zip": b"PK\x05\x06" + b"\0" * 18,
            "./study/./dot.dcm": b"dot",
        },
    )
    out = tmp_path / "out"
    out.mkdir()
    files = extract_archive(archive, out, SETTINGS)
    rel = sorted(p.relative_to(out).as_posix() for p in files)
    assert rel == ["study/IM1.dcm", "study/dot.dcm", "study/inner.zip", "study/sub/IM2.dcm"]
    assert (out / "study/sub/IM2.dcm").read_bytes() == b"two"
    assert not (out / "__MACOSX").exists()
    # Nested archives stay files.
    assert (out / "study/inner.zip").is_file()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_variants_extract(tmp_path: Path, mode: str) -> None:
    archive = _tar(
        tmp_path / "a.tar",
        [_file_info("s/IM1.dcm", 3), _file_info("s/.hidden", 1)],
        {"s/IM1.dcm": b"abc", "s/.hidden": b"x"},
        mode,
    )
    assert archive_kind(archive) == "tar"
    out = tmp_path / "out"
    out.mkdir()
    files = extract_archive(archive, out, SETTINGS)
    assert [p.relative_to(out).as_posix() for p in files] == ["s/IM1.dcm"]


@pytest.mark.parametrize(
    "name",
    ["../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "..\\evil.dcm", "C:/evil.dcm", "a/.."],
)
def test_zip_path_escapes_are_unsafe(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "evil.zip", {"ok.dcm": b"fine", name: b"evil"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, SETTINGS)
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE
    # Checked before anything is written.
    assert not any(out.iterdir())
    assert not (tmp_path / "evil.dcm").exists()


def test_safe_member_path_rules() -> None:
    assert str(safe_member_path("a/b/c.dcm")) == "a/b/c.dcm"
    assert safe_member_path("a/b/") is None
    assert safe_member_path("a/.DS_Store") is None
    assert safe_member_path("__MACOSX/a") is None
    with pytest.raises(StudyError):
        safe_member_path("a/../../b")


def test_zip_symlink_is_unsafe(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, SETTINGS)
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)
def test_tar_links_and_devices_are_unsafe(tmp_path: Path, kind: bytes) -> None:
    special = tarfile.TarInfo("s/special")
    special.type = kind
    special.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    archive = _tar(
        tmp_path / "a.tar.gz", [_file_info("s/IM1.dcm", 1), special], {"s/IM1.dcm": b"x"}, "w:gz"
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, SETTINGS)
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE


def test_tar_traversal_is_unsafe(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", [_file_info("../evil", 1)], {"../evil": b"x"}, "w")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, SETTINGS)
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE
    assert not (tmp_path / "evil").exists()


ZEROS = b"\0" * (50 * 1024 * 1024)


def test_zip_bomb_ratio_is_unsafe(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"zeros.dcm": ZEROS})
    assert archive.stat().st_size < 1024 * 1024  # ratio ~1000, over the default cap of 200
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, SETTINGS)
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE
    assert "ratio" in exc.value.message
    assert not any(out.rglob("*.dcm"))


def test_zip_total_size_cap(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "big.zip", {f"{i}.dcm": bytes(300_000) for i in range(4)})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, Settings(max_uncompressed_bytes=1_000_000))
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE
    assert "size" in exc.value.message


def test_tar_gz_bomb_is_unsafe(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "bomb.tgz", [_file_info("zeros.dcm", len(ZEROS))], {"zeros.dcm": ZEROS}, "w:gz"
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, SETTINGS)
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE
    # Stopped early: the 50 MB member was never written out in full.
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < len(ZEROS)


def test_member_count_cap(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(11)})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StudyError) as exc:
        extract_archive(archive, out, Settings(max_archive_members=10))
    assert _code(exc) == ErrorCode.UNSAFE_ARCHIVE


def test_damaged_archives_are_corrupt(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", {"a.dcm": bytes(range(256)) * 100})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:200])
    noise = os.urandom(100_000)  # incompressible, so the cut falls inside the member
    tgz = _tar(tmp_path / "good.tgz", [_file_info("a.dcm", len(noise))], {"a.dcm": noise}, "w:gz")
    cut_tgz = tmp_path / "cut.tgz"
    cut_tgz.write_bytes(tgz.read_bytes()[:50_000])
    for archive in (cut, cut_tgz):
        out = tmp_path / f"out-{archive.name}"
        out.mkdir()
        with pytest.raises(StudyError) as exc:
            extract_archive(archive, out, SETTINGS)
        assert _code(exc) == ErrorCode.CORRUPT_FILE, archive.name
