"""The lesion and lung masks of a job as a DICOM Segmentation (BINARY) on the source geometry.

Each frame lies on one source slice (same ImagePositionPatient, orientation and spacing) and
names that slice's SOP Instance in its Derivation Image Sequence, so a viewer overlays it on
the images it came from. Segments: 1 ground glass opacity, 2 consolidation, 3 lungs (both
lungs, lesions included); an HU series without lesion masks (older jobs) gets the lungs only.
Empty frames are left out. Its General Series' Related Series Sequence names the job's SR
series (purpose: same indication), the SR's volume groups name its segments.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.codedict import codes

from services.common.results.dicom_sr import (
    CONSOLIDATION,
    GGO,
    LUNG,
    MANUFACTURER,
    SEG_SERIES_NUMBER,
    seg_uids,
    sr_uids,
)

LESION = codes.SCT.MorphologicallyAbnormalStructure
ANATOMY = codes.SCT.AnatomicalStructure
# Lesion label values (services.common.native_slices.native_lesions_key).
GGO_LABEL, CONSOLIDATION_LABEL, OTHER_LUNG_LABEL = 1, 2, 3
# Segment numbers by finding, as the SR references them (dicom_sr.SegReference).
LESION_SEGMENTS = {"ggo": 1, "consolidation": 2, "lungs": 3}
LUNG_SEGMENTS = {"lungs": 1}


def segment_numbers(masks: NDArray[np.bool_]) -> dict[str, int]:
    """The segments build_seg makes of ``masks`` (3 planes: lesions and lungs; 1: lungs)."""
    return LUNG_SEGMENTS if masks.shape[-1] == 1 else LESION_SEGMENTS


def _segment(number: int, label: str, category: object, kind: object, version: str) -> object:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,  # type: ignore[arg-type]
        segmented_property_type=kind,  # type: ignore[arg-type]
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="covidct", family=codes.DCM.ImageProcessing, version=version
        ),
        anatomic_regions=None if kind is LUNG else [LUNG],
    )


def masks_from_labels(labels: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """(N, H, W) lesion labels -> (N, H, W, 3) GGO, consolidation, lungs."""
    return np.stack([labels == GGO_LABEL, labels == CONSOLIDATION_LABEL, labels > 0], axis=-1)


def build_seg(
    job_id: str,
    source_images: list[Dataset],
    masks: NDArray[np.bool_],
    version: str,
) -> hd.seg.Segmentation:
    """``masks``: (N, H, W, 3) GGO / consolidation / lungs, or (N, H, W, 1) lungs only, one
    plane per source image in the same order."""
    lungs_only = segment_numbers(masks) is LUNG_SEGMENTS
    descriptions = (
        [_segment(1, "Lungs", ANATOMY, LUNG, version)]
        if lungs_only
        else [
            _segment(1, "Ground glass opacity", LESION, GGO, version),
            _segment(2, "Consolidation", LESION, CONSOLIDATION, version),
            _segment(3, "Lungs", ANATOMY, LUNG, version),
        ]
    )
    series_uid, sop_uid = seg_uids(job_id)
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,  # type: ignore[arg-type]
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="covidct",
        software_versions=version[:64],
        device_serial_number="covidct",
        series_description="covidct lesions and lungs (research use, not for diagnosis)",
        content_label="COVIDCT",
        content_description="lesion and lung masks",
    )
    seg.RelatedSeriesSequence = [_related_sr(job_id, str(source_images[0].StudyInstanceUID))]
    return seg


def _related_sr(job_id: str, study_uid: str) -> Dataset:
    """The job's SR series, for General Series' Related Series Sequence (0008,1250)."""
    purpose = Dataset()  # CID 7210 Related Series Purpose of Reference
    code = codes.DCM.SameIndication
    purpose.CodeValue, purpose.CodingSchemeDesignator = code.value, code.scheme_designator
    purpose.CodeMeaning = code.meaning
    related = Dataset()
    related.StudyInstanceUID = study_uid
    related.SeriesInstanceUID = sr_uids(job_id)[0]
    related.PurposeOfReferenceCodeSequence = [purpose]
    return related
