"""A finished job's SR and SEG as datasets and as Part 10 bytes, from what the job kept.

One code path for the gateway's ``GET /v1/jobs/{id}/dicom/sr|seg`` and for the delivery of
results to a tenant's PACS (``services.webhooks.destinations``): the same job always yields
the same objects, with the same UIDs (``derived_uid``), so a PACS that receives them twice
keeps one copy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.config import get_settings
from services.common.jobs import job_view
from services.common.native_slices import decode_mask, native_blob_key, native_lesions_key
from services.common.orm import Job, JobStatus, SliceRecord
from services.common.results.dicom_seg import build_seg, masks_from_labels, segment_numbers
from services.common.results.dicom_source import (
    NotDicomSource,
    SourceSlice,
    source_datasets,
    source_slices,
)
from services.common.results.dicom_sr import SCHEME, build_sr
from services.common.storage import make_storage


class ResultUnavailable(Exception):
    """This object cannot be made for this job; ``code`` is machine-readable
    (``job_not_finished``, ``not_dicom_input``, ``source_uids_invalid``, ``masks_unavailable``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class JobMaterial:
    view: dict[str, Any]  # job_view
    series: dict[str, Any]  # the series as stored (with dicom_source)
    slices: list[SourceSlice]
    used: set[str]  # SOP Instance UIDs of the slices the verdict used
    infos: dict[int, dict[str, Any]]  # each slice's info


def ensure_finished(job: Job) -> None:
    if job.status != JobStatus.SUCCEEDED or job.result is None:
        raise ResultUnavailable(
            "job_not_finished", f"job {job.id} is {job.status}; results need a verdict"
        )


def load_material(session: Session, job: Job) -> JobMaterial:
    """What the SR and SEG are built from; ``ResultUnavailable`` when they cannot be."""
    ensure_finished(job)
    view = job_view(job)
    series = dict(job.series or {})
    rows = session.scalars(
        select(SliceRecord).where(SliceRecord.job_id == job.id).order_by(SliceRecord.index)
    ).all()
    infos = {r.index: dict(r.info or {}) for r in rows}
    kept = {r.index for r in rows if r.kept}
    try:
        slices = source_slices(series, infos)
    except NotDicomSource as error:
        raise ResultUnavailable(error.code, f"job {job.id}: {error}") from None
    used = {s.sop_instance_uid for s in slices if s.index in kept}
    return JobMaterial(view, series, slices, used, infos)


def seg_masks(job_id: str, material: JobMaterial) -> tuple[Any, str]:
    """(the SEG's masks, "") when the job has a SEG, else (None, why not). The SR asks the
    same, so it references the SEG exactly when one can be made."""
    series, slices = material.series, material.slices
    if (series.get("dicom_source") or {}).get("multi_frame"):
        return None, "a SEG of a multi-frame source is not made"
    masks = _masks(job_id, slices, series, material.infos)
    if masks is None or not masks.any():
        return None, f"job {job_id} has no masks on the source images"
    if any(s.position is None for s in slices) or not series["dicom_source"].get("pixel_spacing"):
        return None, "the source images lack their plane geometry"
    return masks, ""


def sr_dataset(job_id: str, material: JobMaterial, masks: Any = None) -> Dataset:
    """The job's SR; its volumes reference the SEG's segments when ``masks`` (from
    ``seg_masks``) says the job has a SEG."""
    # One reference per instance (the frames of a multi-frame source share one).
    unique = {s.sop_instance_uid: s for s in reversed(material.slices)}
    sources = source_datasets(material.series, sorted(unique.values(), key=lambda s: s.index))
    category = (material.view.get("study") or {}).get("category")
    segments = None if masks is None else segment_numbers(masks)
    return with_scheme(
        build_sr(job_id, material.view["result"], category, sources, material.used, segments)
    )


def seg_dataset(job_id: str, material: JobMaterial, masks: Any = None) -> Dataset:
    """The job's SEG; ``ResultUnavailable`` (``masks_unavailable``) when it has none."""
    if masks is None:
        masks, why = seg_masks(job_id, material)
        if masks is None:
            raise ResultUnavailable("masks_unavailable", why)
    sources = source_datasets(material.series, material.slices)
    versions = "; ".join(
        f"{k} {v}" for k, v in sorted(material.view["result"]["model_versions"].items())
    )
    return with_scheme(build_seg(job_id, sources, masks, versions))


def with_scheme(data: Dataset) -> Dataset:
    # Names our private coding scheme (PS3.3 C.12.1.1.3.1) for readers that list schemes.
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "covidct result codes"
    scheme.CodingSchemeResponsibleOrganization = "covidct"
    data.CodingSchemeIdentificationSequence = [scheme]
    return data


def part10(data: Dataset) -> bytes:
    buffer = io.BytesIO()
    data.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _masks(
    job_id: str,
    slices: list[SourceSlice],
    series: dict[str, Any],
    infos: dict[int, dict[str, Any]],
) -> Any:
    """(N, H, W, 3) lesion + lung masks, else (N, H, W, 1) lungs, else None."""
    storage = make_storage(get_settings())
    header = series["dicom_source"]
    shape = (len(slices), int(header.get("rows") or 0), int(header.get("columns") or 0))
    try:
        with np.load(io.BytesIO(storage.get_bytes(native_lesions_key(job_id)))) as data:
            labels = data["labels"]
        if labels.shape == shape:
            return masks_from_labels(labels)
    except FileNotFoundError:
        pass
    # No lesion masks (not an HU volume, or a job from before they were kept): the lungs.
    entries = [(infos.get(s.index) or {}).get("native") or {} for s in slices]
    try:
        blob = storage.get_bytes(native_blob_key(job_id))
    except FileNotFoundError:
        return None
    lungs = np.zeros(shape, bool)
    for k, entry in enumerate(entries):
        if entry.get("mask"):
            start, length = entry["mask"]
            mask = decode_mask(blob[start : start + length])
            if mask.shape != shape[1:]:
                return None
            lungs[k] = mask
    return lungs[..., None]
