"""The source series of a job as the DICOM objects we derive from it need it.

The raw upload is deleted when its job ends (``services.common.retention``), so our SR and
SEG are built from what preprocessing kept: the series report (``job.series``, with its
``dicom_source`` block: patient and study modules, frame of reference, image plane) and each
slice's row (``SliceRecord.info``: SOP class and instance UID, ImagePositionPatient). From
those, :func:`source_datasets` makes header-only datasets, one per source instance, that carry
exactly the attributes highdicom copies or references.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import UID


class NotDicomSource(Exception):
    """The job's study was not a DICOM series (``not_dicom_input``), or its identifiers
    cannot be referenced (``source_uids_invalid``: missing, or not DICOM UIDs, as some
    anonymisers leave them)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _valid(uid: Any) -> bool:
    return bool(uid) and UID(str(uid)).is_valid


@dataclass(frozen=True)
class SourceSlice:
    index: int  # the slice's index in the job (SliceRecord.index)
    sop_class_uid: str
    sop_instance_uid: str
    position: list[float] | None  # ImagePositionPatient


def derived_uid(job_id: str, what: str) -> str:
    """A stable UID (2.25.<hash>) for ``what`` (``sr-series``, ``sr``, ``seg``...) of a job:
    the same job always yields the same SR and SEG UIDs, so a PACS that receives a result
    twice replaces it instead of filing two."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'covidct:{job_id}:{what}').int}"


def source_slices(
    series: dict[str, Any] | None, infos: dict[int, dict[str, Any]]
) -> list[SourceSlice]:
    """Every slice of a DICOM job with its SOP identity, in slice order; ``NotDicomSource``
    for other inputs (images, NIfTI) or a series read before UIDs were kept."""
    if not series or series.get("source_format") != "dicom" or not series.get("dicom_source"):
        raise NotDicomSource("not_dicom_input", "the job's study was not a DICOM series")
    for key in ("study_instance_uid", "series_instance_uid"):
        if not _valid(series.get(key)):
            name = key.replace("_", " ").replace("uid", "UID")
            raise NotDicomSource(
                "source_uids_invalid", f"the source's {name} is missing or not a DICOM UID"
            )
    out = []
    for index in sorted(infos):
        info = infos[index]
        if not _valid(info.get("sop_instance_uid")) or not _valid(info.get("sop_class_uid")):
            raise NotDicomSource(
                "source_uids_invalid",
                f"slice {index}: its SOP Instance or Class UID is missing or not a DICOM UID",
            )
        position = info.get("image_position_patient")
        out.append(
            SourceSlice(
                index=index,
                sop_class_uid=str(info["sop_class_uid"]),
                sop_instance_uid=str(info["sop_instance_uid"]),
                position=[float(v) for v in position] if position else None,
            )
        )
    if not out:
        raise NotDicomSource("not_dicom_input", "the job has no source slices")
    return out


def source_datasets(series: dict[str, Any], slices: list[SourceSlice]) -> list[Dataset]:
    """Header-only datasets of the source instances (patient, study, series, frame of
    reference and image plane), in ``slices`` order."""
    header = series["dicom_source"]
    out = []
    for s in slices:
        ds = Dataset()
        ds.SOPClassUID = UID(s.sop_class_uid)
        ds.SOPInstanceUID = UID(s.sop_instance_uid)
        ds.StudyInstanceUID = UID(series["study_instance_uid"])
        ds.SeriesInstanceUID = UID(series["series_instance_uid"])
        ds.Modality = series.get("modality") or "CT"
        ds.PatientName = header.get("patient_name") or ""
        ds.PatientID = series.get("patient_id") or ""
        ds.PatientBirthDate = header.get("patient_birth_date") or ""
        ds.PatientSex = header.get("patient_sex") or ""
        ds.StudyDate = series.get("study_date") or ""
        ds.StudyTime = header.get("study_time") or ""
        ds.StudyID = header.get("study_id") or ""
        ds.AccessionNumber = series.get("accession_number") or ""
        ds.ReferringPhysicianName = header.get("referring_physician_name") or ""
        if header.get("series_number") is not None:
            ds.SeriesNumber = int(header["series_number"])
        # CT images must carry one (Type 1), yet anonymised sets drop it; a SEG cannot be made
        # without one, so such a series gets one derived from its Series Instance UID.
        frame = header.get("frame_of_reference_uid")
        ds.FrameOfReferenceUID = UID(
            frame if _valid(frame) else derived_uid(series["series_instance_uid"], "frame")
        )
        ds.Rows = int(header.get("rows") or 0)
        ds.Columns = int(header.get("columns") or 0)
        if header.get("pixel_spacing"):
            ds.PixelSpacing = [float(v) for v in header["pixel_spacing"]]
        if series.get("image_orientation_patient"):
            ds.ImageOrientationPatient = [float(v) for v in series["image_orientation_patient"]]
        if s.position:
            ds.ImagePositionPatient = s.position
        if header.get("slice_thickness"):
            ds.SliceThickness = float(header["slice_thickness"])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        out.append(ds)
    return out
