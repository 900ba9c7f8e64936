"""read_study on every supported input, real data where it exists, and every error code."""

from __future__ import annotations

import itertools
import shutil
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from services.common.config import Settings
from services.common.errors import ErrorCode, StudyError
from services.preprocess import dicom as dicom_module
from services.preprocess.readers import natural_key, read_study
from services.preprocess.types import Study
from services.preprocess.windowing import window_to_uint8

# COVID-CT-MD writes UUIDs where DICOM wants numeric UIDs; pydicom warns on every access.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

SETTINGS = Settings()


# --- helpers -------------------------------------------------------------------------------


def _code_of(path: Path, settings: Settings = SETTINGS) -> ErrorCode:
    with pytest.raises(StudyError) as exc:
        read_study(path, settings)
    return exc.value.code


def _zip_files(zip_path: Path, files: Iterable[tuple[Path, str]], stored: bool = True) -> Path:
    # Stored: the DICOM pixels are JPEG-compressed already; deflating them only costs CPU.
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(zip_path, "w", compression=method, compresslevel=None) as zf:
        for src, arcname in files:
            zf.write(src, arcname)
    return zip_path


def _series_files(series: Path, prefix: str) -> list[tuple[Path, str]]:
    return [(f, f"{prefix}/{f.name}") for f in sorted(series.iterdir())]


def _copy_modified(files: list[Path], out: Path, **changes: Any) -> list[Path]:
    """Copies of DICOM files with header changes, as one new series."""
    out.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    written = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        for key, value in changes.items():
            setattr(ds, key, value)
        target = out / f"mod_{f.name}"
        ds.save_as(target)
        written.append(target)
    return written


def _hu_and_affine(series: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (slice, row, col) sorted by z, and the RAS affine of its (col, row, slice)
    transpose, built from the DICOM geometry independently of the reader under test."""
    dss = sorted(
        (pydicom.dcmread(f) for f in series.iterdir()),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    hu = np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss]
    ).astype(np.int16)
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    d_row, d_col = (float(v) for v in dss[0].PixelSpacing)
    first = np.array([float(v) for v in dss[0].ImagePositionPatient])
    last = np.array([float(v) for v in dss[-1].ImagePositionPatient])
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * d_col  # voxel axis 0 = DICOM column index
    lps[:3, 1] = iop[3:] * d_row  # voxel axis 1 = DICOM row index
    lps[:3, 2] = (last - first) / (len(dss) - 1)
    lps[:3, 3] = first
    return hu, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS (DICOM) → RAS (NIfTI)


def _assert_same_study(a: Study, b: Study, max_diff: int = 0) -> None:
    assert len(a) == len(b)
    for x, y in zip(a.images, b.images, strict=True):
        assert x.shape == y.shape
        assert int(np.abs(x.astype(int) - y.astype(int)).max()) <= max_diff


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def p002(covid_series: Path) -> Study:
    return read_study(covid_series, SETTINGS)


@pytest.fixture(scope="session")
def cap_series(ctmd_dir: Path) -> Path:
    path = ctmd_dir / "cap002"
    assert path.is_dir(), "COVID-CT-MD cap002 missing from the shared data"
    return path


@pytest.fixture(scope="session")
def single_slices(data_dir: Path) -> list[Path]:
    files = sorted((data_dir / "dicom-single-slice").glob("*.dcm"))
    assert files, "dicom-single-slice missing from the shared data"
    return files


@pytest.fixture(scope="session")
def ucsd_images(data_dir: Path) -> dict[str, Path]:
    """One real UCSD image per PIL mode and one JPEG."""
    found: dict[str, Path] = {}
    for f in sorted((data_dir / "ucsd-covid-ct" / "images").rglob("*")):
        if not f.is_file():
            continue
        key = "jpeg" if f.suffix.lower() in (".jpg", ".jpeg") else Image.open(f).mode
        found.setdefault(key, f)
        if {"jpeg", "RGB", "RGBA", "L"} <= found.keys():
            break
    return found


# --- DICOM ---------------------------------------------------------------------------------


def test_dicom_folder_p002(p002: Study) -> None:
    assert len(p002) == 133
    assert p002.source_format == "dicom" and p002.is_volume
    assert all(im.dtype == np.uint8 and im.shape == (512, 512) for im in p002.images)
    positions = [info["position"] for info in p002.slice_info]
    assert all(b > a for a, b in itertools.pairwise(positions))  # inferior → superior
    assert {info["sort_by"] for info in p002.slice_info} == {"image_position"}
    # File names run head→feet in this series, so the sorted order reverses them.
    assert p002.slice_info[0]["file"] == "IM0133.dcm"
    assert p002.slice_info[0]["instance_number"] == 133
    assert p002.spacing_mm is not None and p002.spacing_mm[0] == pytest.approx(2.0)
    assert p002.spacing_mm[1] == pytest.approx(0.6035, abs=1e-3)
    assert p002.series is not None
    assert p002.series["slices"] == 133 and p002.series["modality"] == "CT"
    assert len(p002.series["candidates"]) == 1
    # Lung window (L -600, W 1500): air (-1000 HU) is dark grey ~60, bone saturates at 255.
    mid = p002.images[66]
    assert 50 <= int(np.median(mid[:40, :40])) <= 70
    assert mid.max() == 255


def test_dicom_zip_and_tar_match_folder(tmp_path: Path, covid_series: Path, p002: Study) -> None:
    files = _series_files(covid_series, "upload/P002")
    zipped = _zip_files(tmp_path / "p002.zip", files)
    with zipfile.ZipFile(zipped, "a") as zf:  # the junk a Mac adds to every zip
        zf.writestr("__MACOSX/upload/P002/._IM0001.dcm", b"\0" * 100)
        zf.writestr("upload/.DS_Store", b"\0" * 100)
        zf.writestr("upload/notes.txt", b"scanned on tuesday")
    from_zip = read_study(zipped, SETTINGS)
    _assert_same_study(from_zip, p002)
    assert from_zip.slice_info[0]["file"] == "upload/P002/IM0133.dcm"

    tarred = tmp_path / "p002.tar.gz"
    with tarfile.open(tarred, "w:gz", compresslevel=1) as tf:
        for src, arcname in files:
            tf.add(src, arcname)
    _assert_same_study(read_study(tarred, SETTINGS), p002)


def test_single_slice_dicom(single_slices: list[Path]) -> None:
    for f in single_slices:
        study = read_study(f, SETTINGS)
        assert len(study) == 1 and not study.is_volume
        assert study.images[0].dtype == np.uint8 and study.images[0].shape == (512, 512)
        assert study.spacing_mm is not None
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(study.images[0], window_to_uint8(hu))


def _same_patient_copy(series: Path, out: Path, patient_id: str) -> list[tuple[Path, str]]:
    """The files of ``series`` rewritten as ``patient_id``'s (headers only, pixels as they are)."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientID = patient_id
        ds.save_as(out / f.name)
        files.append((out / f.name, f"{out.name}/{f.name}"))
    return files


def test_multi_series_zip_takes_the_larger_ct(
    tmp_path: Path, covid_series: Path, cap_series: Path
) -> None:
    # The CAP series relabelled as P002's: one patient, two CT series.
    cap = _same_patient_copy(cap_series, tmp_path / "cap002", "P002")
    files = _series_files(covid_series, "P002") + cap
    study = read_study(_zip_files(tmp_path / "two.zip", files), SETTINGS)
    assert len(study) == 133
    assert study.series is not None
    chosen = pydicom.dcmread(covid_series / "IM0001.dcm", stop_before_pixels=True)
    assert study.series["series_instance_uid"] == str(chosen.SeriesInstanceUID)
    assert sorted(c["slices"] for c in study.series["candidates"]) == [131, 133]
    assert "most slices" in study.series["reason"]
    other = [c for c in study.series["candidates"] if c["uid"] != str(chosen.SeriesInstanceUID)]
    assert other[0]["not_used_because"] == "fewer slices (131 vs 133)"
    assert study.series["patient_id"] == "P002"
    assert study.series["study_instance_uid"] == str(chosen.StudyInstanceUID)
    assert study.series["slice_thickness_mm"] == pytest.approx(float(chosen.SliceThickness))
    assert study.series["instances"] == 133 and not study.series["single_slice_of_series"]


def test_two_patients_in_one_upload_are_refused(
    tmp_path: Path, covid_series: Path, cap_series: Path
) -> None:
    """P002 and cap002 as sent (two PatientIDs): never scored as one study."""
    files = _series_files(covid_series, "P002")[:3] + _series_files(cap_series, "cap002")[:3]
    with pytest.raises(StudyError) as exc:
        read_study(_zip_files(tmp_path / "two.zip", files), SETTINGS)
    assert exc.value.code == ErrorCode.MULTIPLE_PATIENTS
    assert "2 patients" in exc.value.message


def test_without_patient_ids_name_and_birth_date_tell_patients_apart(
    tmp_path: Path, covid_series: Path
) -> None:
    src = sorted(covid_series.iterdir())[60:62]
    for name, birth, folder in (("DOE^JANE", "19500101", "a"), ("ROE^RICHARD", "19600202", "b")):
        for f in src:
            ds = pydicom.dcmread(f)
            del ds.PatientID
            ds.PatientName, ds.PatientBirthDate = name, birth
            (tmp_path / "up" / folder).mkdir(parents=True, exist_ok=True)
            ds.save_as(tmp_path / "up" / folder / f.name)
    assert _code_of(tmp_path / "up") == ErrorCode.MULTIPLE_PATIENTS
    shutil.rmtree(tmp_path / "up" / "b")  # one person, name written differently: accepted
    ds = pydicom.dcmread(tmp_path / "up" / "a" / src[0].name)
    ds.PatientName = "doe^jane^"
    ds.save_as(tmp_path / "up" / "a" / src[0].name)
    assert len(read_study(tmp_path / "up", SETTINGS)) == 2


def test_single_slice_of_a_series_is_flagged(covid_series: Path) -> None:
    study = read_study(covid_series / "IM0061.dcm", SETTINGS)
    assert study.series is not None
    assert study.series["single_slice_of_series"] is True
    assert "InstanceNumber is 61" in study.series["single_slice_note"]
    assert study.slice_info[0]["instance_number"] == 61
    whole = read_study(covid_series / "IM0001.dcm", SETTINGS)  # instance 1, nothing says more
    assert whole.series is not None and whole.series["single_slice_of_series"] is False


def test_localizer_and_non_axial_series_are_ignored(tmp_path: Path, covid_series: Path) -> None:
    ct = sorted(covid_series.iterdir())[60:65]
    upload = tmp_path / "upload"
    upload.mkdir()
    for f in ct:
        shutil.copy(f, upload / f.name)
    # More slices than the real series, so only the exclusion rules keep them out.
    src = sorted(covid_series.iterdir())[:8]
    _copy_modified(src, upload / "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _copy_modified(src, upload / "coronal", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    study = read_study(upload, SETTINGS)
    assert len(study) == 5
    assert study.series is not None
    excluded = sorted(str(c["excluded"]) for c in study.series["candidates"])
    assert excluded == ["None", "localizer", "not axial"]
    reasons = sorted(str(c["not_used_because"]) for c in study.series["candidates"])
    assert reasons == ["None", "localizer", "not axial"]


def test_mixed_folder_prefers_dicom(tmp_path: Path, covid_series: Path) -> None:
    for f in sorted(covid_series.iterdir())[:3]:
        shutil.copy(f, tmp_path / f.name)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "preview.png")
    study = read_study(tmp_path, SETTINGS)
    assert study.source_format == "dicom" and len(study) == 3


def test_mr_only_or_secondary_capture_is_no_ct(tmp_path: Path, covid_series: Path) -> None:
    src = sorted(covid_series.iterdir())[:3]
    _copy_modified(src, tmp_path / "mr", Modality="MR")
    assert _code_of(tmp_path / "mr") == ErrorCode.NO_CT_SERIES
    sc = _copy_modified(
        src,
        tmp_path / "sc",
        Modality="OT",
        SOPClassUID="1.2.840.10008.5.1.4.1.1.7",
    )
    assert _code_of(sc[0]) == ErrorCode.NO_CT_SERIES


def test_too_many_dicom_slices_fails_before_decoding(
    covid_series: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*_: object) -> None:
        raise AssertionError("pixels decoded before the slice limit was checked")

    monkeypatch.setattr(dicom_module, "_pixels", no_decoding)
    assert _code_of(covid_series, Settings(max_slices=5)) == ErrorCode.TOO_MANY_SLICES


def test_truncated_dicom_is_corrupt(tmp_path: Path, covid_series: Path) -> None:
    files = sorted(covid_series.iterdir())[:4]
    data = files[0].read_bytes()
    single = tmp_path / "cut.dcm"
    single.write_bytes(data[: len(data) // 2])  # pixel data cut
    assert _code_of(single) == ErrorCode.CORRUPT_FILE
    header_cut = tmp_path / "header_cut.dcm"
    header_cut.write_bytes(data[:1000])  # cut before Rows/Columns
    assert _code_of(header_cut) == ErrorCode.CORRUPT_FILE
    # One damaged file inside the chosen series fails the study, naming the file.
    folder = tmp_path / "series"
    folder.mkdir()
    for f in files[1:]:
        shutil.copy(f, folder / f.name)
    (folder / "IM9999.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(StudyError) as exc:
        read_study(folder, SETTINGS)
    assert exc.value.code == ErrorCode.CORRUPT_FILE and "IM9999.dcm" in exc.value.message


# --- NIfTI ---------------------------------------------------------------------------------


def test_nifti_matches_dicom(tmp_path: Path, covid_series: Path, p002: Study) -> None:
    hu, affine = _hu_and_affine(covid_series)
    # Stored as LPS (DICOM order): the reader must flip two axes to reach RAS.
    path = tmp_path / "p002.nii"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), path)
    study = read_study(path, SETTINGS)
    assert study.source_format == "nifti" and study.is_volume
    _assert_same_study(study, p002, max_diff=1)
    assert study.spacing_mm == pytest.approx(p002.spacing_mm)
    z = [info["position"] for info in study.slice_info]
    assert z == sorted(z)

    # The same slices stored superior→inferior and mirrored, gzip-compressed, with no
    # NIfTI extension: same pictures, same inferior→superior order.
    part = slice(50, 60)
    sub = hu[part][::-1, :, ::-1].transpose(2, 1, 0)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = 511, 9  # voxel index i → 511 - i, k → 9 - k
    shift = np.eye(4)
    shift[2, 3] = 50  # start at the 51st slice
    sub_affine = affine @ shift @ flip
    gz = tmp_path / "p002.nii.gz"
    nib.save(nib.Nifti1Image(sub, sub_affine), gz)
    renamed = tmp_path / "volume.bin"
    gz.rename(renamed)
    partial = read_study(renamed, SETTINGS)
    assert partial.source_format == "nifti"
    _assert_same_study(partial, Study(p002.images[part], "dicom", True), max_diff=1)


def test_nifti_limits(tmp_path: Path) -> None:
    vol = np.full((16, 16, 8), -1000, np.int16)
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    assert len(read_study(path, SETTINGS)) == 8
    assert _code_of(path, Settings(max_slices=5)) == ErrorCode.TOO_MANY_SLICES
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"\0" * 400)
    assert _code_of(bad) == ErrorCode.CORRUPT_FILE
    four_d = tmp_path / "4d.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), four_d)
    assert _code_of(four_d) == ErrorCode.UNSUPPORTED_FORMAT


# --- images --------------------------------------------------------------------------------


def test_png_set_in_natural_order(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        Image.fromarray(np.full((32, 48), n, np.uint8)).save(tmp_path / f"slice{n}.png")
    study = read_study(tmp_path, SETTINGS)
    assert study.source_format == "image_set" and not study.is_volume
    assert [info["file"] for info in study.slice_info] == [
        "slice1.png",
        "slice2.png",
        "slice10.png",
    ]
    assert [int(im[0, 0]) for im in study.images] == [1, 2, 10]
    assert _code_of(tmp_path, Settings(max_slices=2)) == ErrorCode.TOO_MANY_SLICES


def test_natural_key() -> None:
    names = ["s10.png", "s2.png", "S1.png", "a/s3.png", "s2b.png"]
    assert sorted(names, key=natural_key) == ["a/s3.png", "S1.png", "s2.png", "s2b.png", "s10.png"]


def test_real_jpg_and_png_set(tmp_path: Path, ucsd_images: dict[str, Path]) -> None:
    for i, (_, f) in enumerate(sorted(ucsd_images.items())):
        shutil.copy(f, tmp_path / f"img{i}{f.suffix}")
    study = read_study(tmp_path, SETTINGS)
    assert len(study) == len(ucsd_images)
    for info, im in zip(study.slice_info, study.images, strict=True):
        with Image.open(tmp_path / info["file"]) as src:
            assert im.shape == (src.height, src.width) and im.dtype == np.uint8


def test_single_image_modes(tmp_path: Path, ucsd_images: dict[str, Path]) -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.jpg", quality=95)
    rgba = np.stack([grey] * 3 + [np.full_like(grey, 255)], axis=-1)
    rgba[:, :10, 3] = 0  # transparent strip: shown as black background
    rgba[:, :10, :3] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16bit.png")

    assert np.array_equal(read_study(tmp_path / "l.png", SETTINGS).images[0], grey)
    rgb = read_study(tmp_path / "rgb.jpg", SETTINGS)
    assert rgb.source_format == "image"
    assert int(np.abs(rgb.images[0].astype(int) - grey).max()) <= 3
    alpha = read_study(tmp_path / "rgba.png", SETTINGS).images[0]
    assert (alpha[:, :10] == 0).all() and np.array_equal(alpha[:, 10:], grey[:, 10:])
    assert np.array_equal(read_study(tmp_path / "16bit.png", SETTINGS).images[0], grey)
    for f in ucsd_images.values():
        im = read_study(f, SETTINGS).images[0]
        assert im.ndim == 2 and im.dtype == np.uint8


# --- errors --------------------------------------------------------------------------------


def test_unsupported_and_corrupt_single_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "upload.bin").write_bytes(noise)
    assert _code_of(tmp_path / "upload.bin") == ErrorCode.UNSUPPORTED_FORMAT
    # The name promises a format the bytes do not deliver.
    (tmp_path / "scan.png").write_bytes(noise)
    assert _code_of(tmp_path / "scan.png") == ErrorCode.CORRUPT_FILE
    Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert _code_of(tmp_path / "cut.png") == ErrorCode.CORRUPT_FILE
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + noise[:100])
    assert _code_of(tmp_path / "cut.jpg") == ErrorCode.CORRUPT_FILE
    (tmp_path / "cut.zip").write_bytes(b"PK\x03\x04" + noise[:200])
    assert _code_of(tmp_path / "cut.zip") == ErrorCode.CORRUPT_FILE
    (tmp_path / "cut.tgz").write_bytes(b"\x1f\x8b\x08\x00" + noise[:50])
    assert _code_of(tmp_path / "cut.tgz") == ErrorCode.CORRUPT_FILE


def test_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _code_of(empty) == ErrorCode.EMPTY_STUDY
    assert _code_of(tmp_path / "missing") == ErrorCode.EMPTY_STUDY
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    assert _code_of(tmp_path / "empty.zip") == ErrorCode.EMPTY_STUDY
    with zipfile.ZipFile(tmp_path / "junk.zip", "w") as zf:
        zf.writestr("__MACOSX/._x", b"x")
        zf.writestr(".DS_Store", b"x")
    assert _code_of(tmp_path / "junk.zip") == ErrorCode.EMPTY_STUDY
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    assert _code_of(tmp_path / "empty.tar") == ErrorCode.EMPTY_STUDY
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no images here")
    assert _code_of(notes) == ErrorCode.UNSUPPORTED_FORMAT


def test_unsafe_archives_through_read_study(tmp_path: Path) -> None:
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    for name in ("../evil.png", "/abs/evil.png"):
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.write(png, "ok.png")
            zf.writestr(name, png.read_bytes())
        assert _code_of(bad) == ErrorCode.UNSAFE_ARCHIVE, name
    link_tar = tmp_path / "link.tar"
    with tarfile.open(link_tar, "w") as tf:
        tf.add(png, "ok.png")
        info = tarfile.TarInfo("evil.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    assert _code_of(link_tar) == ErrorCode.UNSAFE_ARCHIVE
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("slice.png", b"\0" * (50 * 1024 * 1024))
    assert _code_of(bomb) == ErrorCode.UNSAFE_ARCHIVE
    small_cap = Settings(max_uncompressed_bytes=10_000_000, max_compression_ratio=1e9)
    assert _code_of(bomb, small_cap) == ErrorCode.UNSAFE_ARCHIVE


def _synthetic_ct(path: Path, size: int = 64) -> Path:
    """A small uncompressed CT slice (Explicit VR Little Endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", generate_uid(), generate_uid()
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept, ds.InstanceNumber = 1, -1024, 1
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1
    pixels = np.random.default_rng(0).integers(0, 2000, (size, size), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# Defect (issue 18.12): a DICOM whose pixel data length field says 0xFFFFFFF0 was read
# (pydicom takes a value cut short by the end of the file) and scored.
def test_pixel_data_length_beyond_the_file_is_corrupt(tmp_path: Path) -> None:
    import struct

    honest = _synthetic_ct(tmp_path / "honest.dcm")
    assert read_study(honest, SETTINGS, check_plausibility=False).hu is not None
    data = bytearray(honest.read_bytes())
    at = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00") + 8  # (7FE0,0010) OW, 4-byte length
    assert struct.unpack("<I", data[at : at + 4])[0] == 64 * 64 * 2
    data[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)
    lying = tmp_path / "lying.dcm"
    lying.write_bytes(bytes(data))
    with pytest.raises(StudyError) as exc:
        read_study(lying, SETTINGS, check_plausibility=False)
    assert exc.value.code == ErrorCode.CORRUPT_FILE
    assert "pixel data length" in exc.value.message
