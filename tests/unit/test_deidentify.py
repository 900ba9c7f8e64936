"""De-identification at ingest: DICOM alone, in a zip or in a tar; pseudonyms keyed per
tenant; pixels and geometry kept; what cannot be read is a clear StudyError."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from services.common.config import Settings
from services.common.errors import ErrorCode, StudyError
from services.upload.deidentify import deidentify_upload

CT = Path(str(get_testdata_file("CT_small.dcm", download=False)))
KEPT = ("Modality", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
        "SliceThickness", "RescaleSlope", "RescaleIntercept")  # fmt: skip


def _identified() -> bytes:
    dataset = pydicom.dcmread(CT)
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = "MRN-0042"
    dataset.PatientBirthDate = "19600102"
    dataset.InstitutionName = "St Example Hospital"
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _check(original: bytes, cleaned: bytes) -> pydicom.Dataset:
    for secret in (b"Doe^Jane", b"MRN-0042", b"19600102", b"St Example Hospital"):
        assert secret not in cleaned
    before, after = pydicom.dcmread(io.BytesIO(original)), pydicom.dcmread(io.BytesIO(cleaned))
    assert after.PatientIdentityRemoved == "YES"
    assert np.array_equal(before.pixel_array, after.pixel_array)
    for keyword in KEPT:
        assert after.get(keyword) == before.get(keyword), keyword
    assert after.SeriesInstanceUID != before.SeriesInstanceUID
    return after


@pytest.fixture
def settings(isolated_settings: Callable[..., Settings]) -> Settings:
    return isolated_settings()


def test_a_single_dicom_file(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "upload"
    path.write_bytes(original := _identified())
    assert deidentify_upload(path, "tenant-a", settings) == 1
    _check(original, path.read_bytes())


def test_zip_members_are_cleaned_and_pseudonyms_are_keyed_per_tenant(
    settings: Settings, tmp_path: Path
) -> None:
    original = _identified()
    members = {"series/1.dcm": original, "series/2.dcm": original, "notes.txt": b"plain"}
    runs = {}
    for name, tenant in (("a1", "tenant-a"), ("a2", "tenant-a"), ("b", "tenant-b")):
        path = _zip(tmp_path / f"{name}.zip", members)
        assert deidentify_upload(path, tenant, settings) == 2
        runs[name] = _read_zip(path)
    first = _check(original, runs["a1"]["series/1.dcm"])
    second = pydicom.dcmread(io.BytesIO(runs["a1"]["series/2.dcm"]))
    assert runs["a1"]["notes.txt"] == b"plain"
    # One series stays one series; the same tenant gets the same pseudonyms, another does not.
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert runs["a2"]["series/1.dcm"] == runs["a1"]["series/1.dcm"]
    other = pydicom.dcmread(io.BytesIO(runs["b"]["series/1.dcm"]))
    assert other.PatientName != first.PatientName
    assert other.SeriesInstanceUID != first.SeriesInstanceUID


def test_tar_members_are_cleaned(settings: Settings, tmp_path: Path) -> None:
    original = _identified()
    path = tmp_path / "study.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("ct/1.dcm")
        info.size = len(original)
        archive.addfile(info, io.BytesIO(original))
    assert deidentify_upload(path, "tenant-a", settings) == 1
    with tarfile.open(path) as archive:
        member = archive.extractfile("ct/1.dcm")
        assert member is not None
        _check(original, member.read())


def test_images_are_stored_as_sent(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "slice.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert deidentify_upload(path, "tenant-a", settings) == 0
    assert path.read_bytes() == b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.mark.parametrize(
    ("members", "code"),
    [
        ({"1.dcm": b"\0" * 128 + b"DICM" + b"\xff" * 10}, ErrorCode.CORRUPT_FILE),
        ({f"{i}.txt": b"x" for i in range(5)}, ErrorCode.UNSAFE_ARCHIVE),
    ],
)
def test_what_cannot_be_cleaned_is_a_study_error(
    isolated_settings: Callable[..., Settings],
    tmp_path: Path,
    members: dict[str, bytes],
    code: ErrorCode,
) -> None:
    settings = isolated_settings(max_archive_members=3)
    path = _zip(tmp_path / "bad.zip", members)
    before = path.read_bytes()
    with pytest.raises(StudyError) as caught:
        deidentify_upload(path, "tenant-a", settings)
    assert caught.value.code == code
    assert path.read_bytes() == before and not list(tmp_path.glob("*.deid"))
