"""DICOM series: pick the axial CT series of an upload, order its slices, window them.

Headers are read first for every file (``stop_before_pixels``), so the series choice and the
slice limit cost no pixel decoding; only the chosen series is decoded. Any transfer syntax
with an installed pydicom decoder works (JPEG-Lossless and JPEG 2000 via pylibjpeg).
Multi-frame (enhanced) files are split into one slice per frame, with geometry and rescale
taken from the per-frame or shared functional groups when not at the top level.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from services.common.config import Settings
from services.common.errors import ErrorCode, StudyError
from services.preprocess.types import Gray8, Study
from services.preprocess.windowing import window_to_uint8

_PREAMBLE = 128
# |normal . z| above this counts as axial; gantry tilt stays well inside (cos 37°).
_AXIAL_MIN_COS = 0.8
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # prefix of all SC image SOP classes


@dataclass(frozen=True)
class _Slice:
    """One frame of one file, as described by its header."""

    path: Path
    label: str
    frame: int | None  # None for single-frame files
    uid: str
    description: str
    modality: str
    image_type: tuple[str, ...]
    sop_class: str
    samples: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, ...] | None
    slice_location: float | None
    instance_number: int | None
    pixel_spacing: tuple[float, ...] | None
    thickness: float | None
    slope: float
    intercept: float
    body_part: str = ""
    study_description: str = ""
    # Identifiers reported with the result (what a radiologist checks: right patient, study,
    # series) and the patient check across the whole upload.
    sop_instance_uid: str = ""
    study_uid: str = ""
    accession: str = ""
    study_date: str = ""
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    images_in_acquisition: int | None = None
    # What a derived object (our DICOM SR and SEG, services.gateway.dicom_results) copies from
    # its source so the PACS files it with the study: patient/study modules, frame of reference.
    rows: int = 0
    columns: int = 0
    frame_of_reference_uid: str = ""
    patient_sex: str = ""
    study_time: str = ""
    study_id: str = ""
    referring_physician: str = ""
    series_number: int | None = None


@dataclass
class DicomScan:
    """Headers of the DICOM files of an upload."""

    slices: list[_Slice] = field(default_factory=list)
    corrupt: list[tuple[str, str | None]] = field(default_factory=list)  # (file, series UID)
    non_image: int = 0  # readable DICOM without pixels (DICOMDIR, reports)

    @property
    def has_dicom(self) -> bool:
        return bool(self.slices or self.corrupt)


def scan_dicom_headers(files: Iterable[Path], root: Path | None = None) -> DicomScan:
    """Headers of every readable DICOM among ``files``; non-DICOM files are skipped."""
    scan = DicomScan()
    with _quiet():
        for path in files:
            _scan_file(path, root, scan)
    return scan


def _scan_file(path: Path, root: Path | None, scan: DicomScan) -> None:
    label = str(path.relative_to(root)) if root is not None else path.name
    try:
        ds = _read(path, stop_before_pixels=True)
    except InvalidDicomError:
        return
    except Exception:  # pydicom raises many types on malformed headers
        scan.corrupt.append((label, None))
        return
    if "Rows" not in ds or "Columns" not in ds:
        # A header that claims an image but stops before its size was cut short.
        if "Image Storage" in _sop_class(ds).name:
            scan.corrupt.append((label, str(ds.get("SeriesInstanceUID", "")) or None))
        else:
            scan.non_image += 1
        return
    scan.slices.extend(_slices_of(ds, path, label))


def study_from_scan(scan: DicomScan, settings: Settings) -> Study:
    """Refuse several patients, choose the series, check limits, then decode and window only
    that series."""
    check_one_patient(scan.slices)
    groups: dict[str, list[_Slice]] = {}
    for s in scan.slices:
        groups.setdefault(s.uid, []).append(s)
    candidates = [_candidate(uid, slices) for uid, slices in groups.items()]
    eligible = [c for c in candidates if c["excluded"] is None]
    if not eligible:
        if scan.corrupt:
            raise StudyError(ErrorCode.CORRUPT_FILE, f"unreadable DICOM file {scan.corrupt[0][0]}")
        found = ", ".join(f"{c['modality'] or '?'} ({c['excluded']})" for c in candidates)
        raise StudyError(
            ErrorCode.NO_CT_SERIES,
            f"no axial CT image series in the upload; found: {found or 'none'}",
        )
    # Known-axial before unknown orientation, then the most slices; UID breaks ties stably.
    eligible.sort(key=lambda c: (c["axial"] is True, c["slices"], c["uid"]), reverse=True)
    chosen = eligible[0]
    bad = [f for f, uid in scan.corrupt if uid in (None, chosen["uid"])]
    if bad:
        raise StudyError(ErrorCode.CORRUPT_FILE, f"unreadable DICOM file {bad[0]}")
    if chosen["slices"] > settings.max_slices:
        raise StudyError(
            ErrorCode.TOO_MANY_SLICES,
            f"series has {chosen['slices']} slices, the limit is {settings.max_slices}",
        )
    ordered, keys, sort_by = _order(groups[chosen["uid"]])
    images, hu = _decode(ordered)
    first = ordered[0]
    for c in candidates:
        c["not_used_because"] = _not_used_because(c, chosen)
    return Study(
        images=images,
        source_format="dicom",
        is_volume=len(images) > 1 and len({im.shape for im in images}) == 1,
        slice_info=[_slice_info(s, k, sort_by) for s, k in zip(ordered, keys, strict=True)],
        series={
            "series_instance_uid": chosen["uid"],
            "series_description": chosen["description"],
            "modality": chosen["modality"],
            "slices": chosen["slices"],
            "candidates": candidates,
            "reason": _reason(chosen, eligible, candidates),
            # Read by the plausibility check (services.preprocess.plausibility) and by the
            # lung features (which side of the image is the patient's left).
            "body_part_examined": first.body_part,
            "study_description": first.study_description,
            "image_orientation_patient": list(first.iop) if first.iop else None,
            "orientation": edge_labels(first.iop),
            **series_identifiers(ordered),
            "dicom_source": dicom_source(ordered),
        },
        spacing_mm=_spacing(ordered, keys, sort_by),
        hu=hu,
    )


# --- headers -------------------------------------------------------------------------------


def _read(path: Path, stop_before_pixels: bool) -> Dataset:
    with path.open("rb") as fh:
        head = fh.read(_PREAMBLE + 4)
    # Bare datasets (no preamble) need force=True; Part-10 files are read strictly.
    force = head[_PREAMBLE:] != b"DICM"
    return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=force)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom's value warnings: scanners write slightly invalid values (UUIDs as
    UIDs...), which pydicom reports lazily on every access. Not the uploader's problem."""
    logger = logging.getLogger("pydicom")  # pydicom also logs each of those warnings
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _sop_class(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    value = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    return UID(str(value or ""))


def _slices_of(ds: Dataset, path: Path, label: str) -> list[_Slice]:
    frames = _as_int(ds.get("NumberOfFrames")) or 1
    return [
        _Slice(
            path=path,
            label=label,
            frame=f if frames > 1 else None,
            uid=str(ds.get("SeriesInstanceUID", "")),
            description=str(ds.get("SeriesDescription", "")),
            modality=str(ds.get("Modality", "")).upper(),
            image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType"))),
            sop_class=str(_sop_class(ds)),
            samples=_as_int(ds.get("SamplesPerPixel")) or 1,
            iop=_floats(_frame_attr(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")),
            ipp=_floats(_frame_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient")),
            slice_location=_as_float(ds.get("SliceLocation")),
            instance_number=_as_int(ds.get("InstanceNumber")),
            pixel_spacing=_floats(_frame_attr(ds, f, "PixelMeasuresSequence", "PixelSpacing")),
            thickness=_as_float(_frame_attr(ds, f, "PixelMeasuresSequence", "SliceThickness")),
            slope=_rescale(ds, f, "RescaleSlope", 1.0),
            intercept=_rescale(ds, f, "RescaleIntercept", 0.0),
            body_part=str(ds.get("BodyPartExamined", "") or "").strip(),
            study_description=str(ds.get("StudyDescription", "") or "").strip(),
            sop_instance_uid=_text(ds, "SOPInstanceUID") or _media_sop_uid(ds),
            study_uid=_text(ds, "StudyInstanceUID"),
            accession=_text(ds, "AccessionNumber"),
            study_date=_text(ds, "StudyDate"),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            birth_date=_text(ds, "PatientBirthDate"),
            images_in_acquisition=_as_int(ds.get("ImagesInAcquisition")),
            rows=_as_int(ds.get("Rows")) or 0,
            columns=_as_int(ds.get("Columns")) or 0,
            frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
            patient_sex=_text(ds, "PatientSex"),
            study_time=_text(ds, "StudyTime"),
            study_id=_text(ds, "StudyID"),
            referring_physician=_text(ds, "ReferringPhysicianName"),
            series_number=_as_int(ds.get("SeriesNumber")),
        )
        for f in range(frames)
    ]


def _media_sop_uid(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip() if meta else ""


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _frame_attr(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """A top-level attribute, else the per-frame, else the shared functional group one."""
    if keyword in ds:
        return ds.get(keyword)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = [per_frame[frame]] if per_frame is not None and frame < len(per_frame) else []
    groups += list(ds.get("SharedFunctionalGroupsSequence") or [])[:1]
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _rescale(ds: Dataset, frame: int, keyword: str, default: float) -> float:
    value = _as_float(_frame_attr(ds, frame, "PixelValueTransformationSequence", keyword))
    return default if value is None else value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _as_int(value: Any) -> int | None:
    f = _as_float(value)
    return None if f is None else int(f)


def _floats(value: Any) -> tuple[float, ...] | None:
    items = [_as_float(v) for v in _as_list(value)]
    if not items or any(v is None for v in items):
        return None
    return tuple(v for v in items if v is not None)


# --- series choice -------------------------------------------------------------------------


def _normal(iop: tuple[float, ...] | None) -> NDArray[np.float64] | None:
    """Unit slice normal (row × column cosines), or None without a usable orientation."""
    if iop is None or len(iop) != 6:
        return None
    n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 1e-6 else None


def _is_axial(iop: tuple[float, ...] | None) -> bool | None:
    n = _normal(iop)
    return None if n is None else bool(abs(n[2]) >= _AXIAL_MIN_COS)


def _candidate(uid: str, slices: list[_Slice]) -> dict[str, Any]:
    first = slices[0]
    axial = _is_axial(first.iop)
    excluded: str | None = None
    if first.modality != "CT":
        excluded = f"modality {first.modality or 'missing'}"
    elif any("LOCALIZER" in s.image_type for s in slices):
        excluded = "localizer"
    elif axial is False:
        excluded = "not axial"
    elif first.samples != 1:
        excluded = "colour image"
    elif axial is None and first.sop_class.startswith(_SECONDARY_CAPTURE):
        excluded = "secondary capture"
    return {
        "uid": uid,
        "description": first.description,
        "modality": first.modality,
        "slices": len(slices),
        "axial": axial,
        "excluded": excluded,
    }


def _reason(chosen: dict[str, Any], eligible: list[Any], candidates: list[Any]) -> str:
    if len(candidates) == 1:
        return "only series in the upload"
    if len(eligible) == 1:
        return f"only axial CT image series of {len(candidates)} series"
    return (
        f"axial CT series with the most slices ({chosen['slices']}) "
        f"of {len(eligible)} eligible, {len(candidates)} series in all"
    )


def _not_used_because(candidate: dict[str, Any], chosen: dict[str, Any]) -> str | None:
    """Why a series of the upload was not the one read, in words (None for the chosen)."""
    if candidate["uid"] == chosen["uid"]:
        return None
    if candidate["excluded"] is not None:
        return str(candidate["excluded"])
    if candidate["axial"] is None and chosen["axial"] is True:
        return "orientation unknown; an axial series was present"
    return f"fewer slices ({candidate['slices']} vs {chosen['slices']})"


def _direction_letters(vector: NDArray[np.float64]) -> str:
    """Patient directions a vector in DICOM LPS points to, strongest first ("L", "LA"...)."""
    letters = []
    for axis in np.argsort(-np.abs(vector)):
        value = float(vector[axis])
        if abs(value) >= 0.3:  # an oblique component a viewer would name
            letters.append(("RL", "AP", "FH")[axis][value > 0])
    return "".join(letters)


def edge_labels(iop: tuple[float, ...] | None) -> dict[str, str] | None:
    """Which patient direction each image edge faces (``left``/``right``/``top``/``bottom``:
    "R", "L", "A", "P", "H", "F"), from ImageOrientationPatient: columns grow along its row
    cosines (the right edge), rows along its column cosines (the bottom edge)."""
    if iop is None or len(iop) != 6:
        return None
    row, column = np.asarray(iop[:3], dtype=np.float64), np.asarray(iop[3:], dtype=np.float64)
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(column) < 1e-6:
        return None
    return {
        "left": _direction_letters(-row),
        "right": _direction_letters(row),
        "top": _direction_letters(-column),
        "bottom": _direction_letters(column),
    }


# --- patients and identifiers --------------------------------------------------------------


def _person(name: str, birth_date: str) -> tuple[str, str] | None:
    """Name (DICOM PN, case and trailing separators ignored) and birth date, None if both empty."""
    name = name.upper().rstrip("^ ").replace("^^", "^")
    return (name, birth_date) if name or birth_date else None


def check_one_patient(slices: list[_Slice]) -> None:
    """``multiple_patients`` when the instances of an upload belong to more than one patient:
    more than one PatientID, or (where an instance has no PatientID) differing name and birth
    date. A mixed upload would otherwise be scored as one study under one reference."""
    ids = sorted({s.patient_id for s in slices if s.patient_id})
    if len(ids) > 1:
        shown = ", ".join(ids[:3]) + (" ..." if len(ids) > 3 else "")
        raise StudyError(
            ErrorCode.MULTIPLE_PATIENTS,
            f"the upload holds instances of {len(ids)} patients (PatientID {shown}); "
            "send one patient's study per job",
        )
    if all(s.patient_id for s in slices):
        return
    people = {p for s in slices if (p := _person(s.patient_name, s.birth_date)) is not None}
    if len(people) > 1:
        raise StudyError(
            ErrorCode.MULTIPLE_PATIENTS,
            f"the upload holds instances of {len(people)} patients (differing patient name "
            "and birth date where PatientID is missing); send one patient's study per job",
        )


def series_identifiers(ordered: list[_Slice]) -> dict[str, Any]:
    """The identifiers of the series read, as reported with every result (after
    de-identification at ingest, these are the pseudonyms). ``single_slice_of_series``: one
    image whose header says its series has more (ImagesInAcquisition, or an InstanceNumber
    above 1), so the verdict rests on a fragment of the scan."""
    first = ordered[0]
    thickness = (
        statistics.median(s.thickness for s in ordered if s.thickness)
        if any(s.thickness for s in ordered)
        else None
    )
    single_of_many = len(ordered) == 1 and (
        (first.images_in_acquisition or 0) > 1 or (first.instance_number or 0) > 1
    )
    note = None
    if single_of_many:
        told = (
            f"the header says the acquisition has {first.images_in_acquisition} images"
            if (first.images_in_acquisition or 0) > 1
            else f"its InstanceNumber is {first.instance_number}"
        )
        note = (
            f"one slice of a multi-slice series was sent ({told}); the verdict rests on this "
            "slice alone: send the whole series for a study-level verdict"
        )
    return {
        "study_instance_uid": first.study_uid or None,
        "accession_number": first.accession or None,
        "study_date": first.study_date or None,
        "patient_id": first.patient_id or None,
        "slice_thickness_mm": float(thickness) if thickness else None,
        "instances": len({s.path for s in ordered}),  # SOP instances (files), not frames
        "single_slice_of_series": single_of_many,
        "single_slice_note": note,
    }


def dicom_source(ordered: list[_Slice]) -> dict[str, Any]:
    """The source attributes a derived DICOM object (SR, SEG) repeats or references: patient
    and study modules, series, frame of reference, the image plane shared by the series.
    Kept with the job because the raw upload is deleted when the job ends."""
    first = ordered[0]
    return {
        "patient_name": first.patient_name or None,
        "patient_birth_date": first.birth_date or None,
        "patient_sex": first.patient_sex or None,
        "study_time": first.study_time or None,
        "study_id": first.study_id or None,
        "referring_physician_name": first.referring_physician or None,
        "series_number": first.series_number,
        "frame_of_reference_uid": first.frame_of_reference_uid or None,
        "rows": first.rows,
        "columns": first.columns,
        "pixel_spacing": list(first.pixel_spacing) if first.pixel_spacing else None,
        "slice_thickness": first.thickness,
        "multi_frame": any(s.frame is not None for s in ordered),
    }


# --- ordering and pixels -------------------------------------------------------------------


def _order(slices: list[_Slice]) -> tuple[list[_Slice], list[float | None], str]:
    """Slices inferior→superior along the normal, else by SliceLocation, else InstanceNumber."""
    keys: list[float | None]
    normal = _normal(slices[0].iop)
    if normal is not None and all(s.ipp is not None and len(s.ipp) == 3 for s in slices):
        # Flip the normal to point to the head, so order is the same whatever row/column
        # directions the scanner wrote (feet-first, prone...).
        if normal[2] < 0:
            normal = -normal
        keys = [float(np.dot(s.ipp or (0.0, 0.0, 0.0), normal)) for s in slices]
        sort_by = "image_position"
    elif all(s.slice_location is not None for s in slices):
        keys, sort_by = [s.slice_location for s in slices], "slice_location"
    elif all(s.instance_number is not None for s in slices):
        keys = [float(s.instance_number or 0) for s in slices]
        sort_by = "instance_number"
    else:
        keys, sort_by = [None] * len(slices), "file_name"

    def tie_break(i: int) -> tuple[float, int, str, int]:
        s = slices[i]
        return (keys[i] or 0.0, s.instance_number or 0, s.label, s.frame or 0)

    order = sorted(range(len(slices)), key=tie_break)
    return [slices[i] for i in order], [keys[i] for i in order], sort_by


def _decode(ordered: list[_Slice]) -> tuple[list[Gray8], NDArray[np.int16] | None]:
    """Lung-windowed 8-bit slices, and the HU stack (None when slice shapes differ)."""
    images: list[Gray8] = []
    hus: list[NDArray[np.int16]] = []
    cache: dict[Path, NDArray[Any]] = {}  # multi-frame files are decoded once
    for s in ordered:
        pixels = cache.get(s.path)
        if pixels is None:
            pixels = _pixels(s.path, s.label)
            if s.frame is not None:
                cache[s.path] = pixels
        frame = pixels[s.frame] if s.frame is not None and pixels.ndim == 3 else pixels
        if frame.ndim != 2:
            raise StudyError(
                ErrorCode.CORRUPT_FILE, f"{s.label}: unexpected pixel shape {frame.shape}"
            )
        hu = frame.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        images.append(window_to_uint8(hu))
        hus.append(hu_to_int16(hu))
    if len({h.shape for h in hus}) != 1:
        return images, None
    return images, np.stack(hus)


def hu_to_int16(hu: NDArray[Any]) -> NDArray[np.int16]:
    """HU as int16: rounded, clipped to the int16 range; NaN (outside a NIfTI field of view)
    becomes air (-1024)."""
    values = np.nan_to_num(np.asarray(hu, dtype=np.float32), nan=-1024.0)
    return np.rint(np.clip(values, -32768, 32767)).astype(np.int16)


def _pixels(path: Path, label: str) -> NDArray[Any]:
    try:
        with _quiet():
            ds = _read(path, stop_before_pixels=False)
            _check_pixel_data_length(ds, label)
            syntax = ds.file_meta.TransferSyntaxUID
            if _decoder_missing(syntax):
                raise StudyError(
                    ErrorCode.UNSUPPORTED_FORMAT,
                    f"{label}: no decoder for transfer syntax {syntax}",
                )
            return np.asarray(ds.pixel_array)
    except StudyError:
        raise
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
        raise StudyError(ErrorCode.CORRUPT_FILE, f"cannot decode pixels of {label}: {exc}") from exc


_UNDEFINED_LENGTH = 0xFFFFFFFF  # encapsulated (compressed) pixel data


def _check_pixel_data_length(ds: Dataset, label: str) -> None:
    """The Pixel Data element holds as many bytes as its length field says: pydicom reads a
    value cut short by the end of the file without complaint (a length of 0xFFFFFFF0 on a
    64 KiB file decodes "fine" from whatever follows), so a lying or cut file would pass."""
    raw = ds.get_item(0x7FE00010)
    declared = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if declared is None or declared == _UNDEFINED_LENGTH or not isinstance(value, bytes):
        return
    if len(value) != declared:
        raise StudyError(
            ErrorCode.CORRUPT_FILE,
            f"{label}: pixel data length field says {declared} bytes, the file holds {len(value)}",
        )


def _decoder_missing(syntax: UID) -> bool:
    try:
        return not get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        return False  # unknown or damaged syntax UID: decoding fails as a corrupt file


def _slice_info(s: _Slice, key: float | None, sort_by: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "file": s.label,
        "instance_number": s.instance_number,
        "position": key,
        "sort_by": sort_by,
        "slice_location": s.slice_location,
        "sop_instance_uid": s.sop_instance_uid or None,
        "sop_class_uid": s.sop_class or None,
        "image_position_patient": list(s.ipp) if s.ipp else None,
    }
    if s.frame is not None:
        info["frame"] = s.frame
    return info


def _spacing(
    ordered: list[_Slice], keys: list[float | None], sort_by: str
) -> tuple[float, float, float] | None:
    first = ordered[0]
    if first.pixel_spacing is None or len(first.pixel_spacing) != 2:
        return None
    gap: float | None = None
    if sort_by in ("image_position", "slice_location") and len(keys) > 1:
        steps = [abs(b - a) for a, b in itertools.pairwise(keys) if a is not None and b is not None]
        gap = statistics.median(steps) if steps else None
    if not gap:
        gap = first.thickness
    if not gap:
        return None
    return (float(gap), first.pixel_spacing[0], first.pixel_spacing[1])
