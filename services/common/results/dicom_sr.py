"""The verdict of a job as a DICOM Comprehensive 3D SR: a TID 1500 Measurement Report.

What a PACS shows next to the study and what a reader can map (docs/dicom-results.md has the
content tree and every code): one measurement group (TID 1501) per finding, each with the
algorithm that made it and the source images it rests on:

* **COVID-19 assessment**: P(COVID) (DCM 122157 Probability), the category and the RSNA
  pattern (qualitative evaluations) and the pattern's reasons (TEXT);
* **Lungs**: lung volume;
* **Lung opacity**: opacity volume and percent of the lungs, high-opacity percent, severity
  score 0-24, zones involved, opacity percent per zone, bilateral / lobar consolidation / mass
  / cavitation / centrilobular nodules;
* **Ground glass opacity** and **Consolidation**: their volumes.

When the job has a SEG (``segments`` given), the Lungs, Ground glass opacity and Consolidation
groups are TID 1411 volumetric ROI groups whose region is the SEG's segment (a Referenced
Segment content item naming the SEG's SOP Instance UID and segment number, with the source
series), and the SEG is listed in the evidence: a viewer jumps from each volume to the mask
it was measured on. Both objects' UIDs come from the job id, so they agree without either
being stored.

Standard codes (SNOMED CT, DCM, UCUM, LOINC) where one exists for the concept; our own
scheme ``99COVIDCT`` (DICOM PS3.16 8.2: private designators start with 99) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from services.common.results.dicom_source import derived_uid

SCHEME = "99COVIDCT"
MANUFACTURER = "covidct"
SR_SERIES_NUMBER = 9901  # high, so PACS list our results after the scanner's series
SEG_SERIES_NUMBER = 9902


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, SCHEME, meaning)


PROCEDURE_CT_CHEST = CodedConcept("24627-2", "LN", "CT Chest")
# Its fully specified name exceeds the 64 characters of a Code Meaning; COVID-19 is a synonym.
COVID19 = CodedConcept("840539006", "SCT", "COVID-19")
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
LUNG = codes.SCT.Lung
VOLUME = codes.SCT.Volume
PROBABILITY = codes.DCM.Probability
GGO = codes.DCM.GroundGlassOpacity
OPACITY = codes.DCM.Opacity
CONSOLIDATION = private("CONSOLIDATION", "Consolidation")
UNIT_PERCENT = codes.UCUM.Percent
UNIT_ML = CodedConcept("mL", "UCUM", "milliliter")
UNIT_ONE = CodedConcept("1", "UCUM", "no units")
UNIT_SCORE = CodedConcept("{score}", "UCUM", "score")

CATEGORY = private("CATEGORY", "Triage category")
CATEGORY_VALUES = {
    "covid": COVID19,
    "other_pneumonia": private("OTHER_PNEUMONIA", "Pneumonia of another cause"),
    "no_pneumonia": private("NO_PNEUMONIA", "No pneumonia"),
    "indeterminate": codes.SCT.Indeterminate,
}
# Categories of verdicts without HU findings (the label, images and short series).
LABEL_VALUES = {"covid": COVID19, "noncovid": private("NONCOVID", "No COVID-19 pattern")}
PATTERN = private("RSNA_PATTERN", "RSNA chest CT pattern of COVID-19 pneumonia")
PATTERN_VALUES = {
    name: private(f"RSNA_{name.upper()}", f"RSNA {name} appearance")
    for name in ("typical", "indeterminate", "atypical", "negative")
}
PATTERN_REASON = private("PATTERN_REASON", "Reason for the pattern")
OPACITY_PERCENT = private("OPACITY_PCT", "Opacity volume, percent of lung volume")
HIGH_OPACITY_PERCENT = private("HIGH_OPACITY_PCT", "High opacity volume, percent of lung volume")
SEVERITY_SCORE = private("SEVERITY_SCORE", "CT severity score (0-24)")
ZONES_INVOLVED = private("ZONES_INVOLVED", "Lung zones involved (of 6)")
ZONE_OPACITY = private("ZONE_OPACITY_PCT", "Opacity volume, percent of the zone")
ZONES = {
    "upper": private("UPPER_ZONE", "Upper lung zone"),
    "middle": private("MIDDLE_ZONE", "Middle lung zone"),
    "lower": private("LOWER_ZONE", "Lower lung zone"),
}
SIDES = {"right": codes.SCT.Right, "left": codes.SCT.Left}
FLAGS = {
    "bilateral": private("BILATERAL", "Bilateral opacities"),
    "lobar_consolidation": private("LOBAR_CONSOLIDATION", "Lobar or segmental consolidation"),
    "mass": private("MASS", "Lung mass (3 cm or more)"),
    "cavitation": private("CAVITATION", "Cavitation"),
    "centrilobular_nodules": private("CENTRILOBULAR_NODULES", "Multiple centrilobular nodules"),
}


def category_code(category: str | None, label: str) -> CodedConcept:
    if category in CATEGORY_VALUES:
        return CATEGORY_VALUES[category]
    return LABEL_VALUES.get(label.lower(), private(label.upper()[:16], label))


def algorithm(model_versions: dict[str, str]) -> hd.sr.AlgorithmIdentification:
    """The models behind the verdict, ``slice_cnn`` / ``ensemble`` / ``verdict`` (the path)."""
    versions = sorted(model_versions.items())
    version = "; ".join(f"{k} {v}" for k, v in versions) or "unknown"
    return hd.sr.AlgorithmIdentification(
        name="covidct", version=version[:64], parameters=[f"{k}={v}" for k, v in versions]
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _measurement(name: CodedConcept, value: Any, unit: CodedConcept, **kw: Any) -> list[Any]:
    number = _number(value)
    return [] if number is None else [hd.sr.Measurement(name=name, value=number, unit=unit, **kw)]


def sr_uids(job_id: str) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the job's SR."""
    return derived_uid(job_id, "sr-series"), derived_uid(job_id, "sr")


def seg_uids(job_id: str) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the job's SEG, as build_seg gives them."""
    return derived_uid(job_id, "seg-series"), derived_uid(job_id, "seg")


@dataclass(frozen=True)
class SegReference:
    """The job's SEG as the SR names it: its segment numbers by finding (``lungs``,
    ``ggo``, ``consolidation``) and the source series it lies on."""

    segments: dict[str, int]
    source_series_uid: str


def _group(
    job_id: str,
    what: str,
    label: str,
    algo: hd.sr.AlgorithmIdentification,
    sources: list[hd.sr.SourceImageForMeasurementGroup],
    seg: SegReference | None = None,
    segment: str | None = None,
    **kw: Any,
) -> (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
):
    """A TID 1501 group on the source images, or a TID 1411 group on the SEG's segment
    of ``segment`` (default ``what``) when the SEG has one."""
    segment = segment or what
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(job_id, f"tracking-{what}"), identifier=label
    )
    if seg is not None and segment in seg.segments:
        _series_uid, sop_uid = seg_uids(job_id)
        referenced = hd.sr.ReferencedSegment(
            sop_class_uid=SegmentationStorage,
            sop_instance_uid=sop_uid,
            segment_number=seg.segments[segment],
            source_series=hd.sr.SourceSeriesForSegmentation(seg.source_series_uid),
        )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=referenced, algorithm_id=algo, **kw
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, algorithm_id=algo, source_images=sources, **kw
    )


def measurement_groups(
    job_id: str,
    result: dict[str, Any],
    category: str | None,
    sources: list[hd.sr.SourceImageForMeasurementGroup],
    seg: SegReference | None = None,
) -> list[Any]:
    """The measurement groups of a verdict (``job_view``'s ``result``): TID 1501, and TID
    1411 for the findings the SEG has a segment of."""
    findings = result.get("findings") or {}
    algo = algorithm(result.get("model_versions") or {})
    p_covid = (result.get("probabilities") or {}).get("COVID")
    evaluations = [
        hd.sr.QualitativeEvaluation(CATEGORY, category_code(category, result.get("label", "")))
    ]
    if findings.get("pattern") in PATTERN_VALUES:
        evaluations.append(
            hd.sr.QualitativeEvaluation(PATTERN, PATTERN_VALUES[findings["pattern"]])
        )
    verdict = _group(
        job_id, "verdict", "COVID-19 assessment", algo, sources,
        finding_type=COVID19, finding_sites=[hd.sr.FindingSite(LUNG)],
        measurements=_measurement(PROBABILITY, p_covid, UNIT_ONE),
        qualitative_evaluations=evaluations,
    )  # fmt: skip
    for reason in findings.get("pattern_reasons") or []:
        verdict[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=PATTERN_REASON, value=str(reason)[:1024], relationship_type="CONTAINS"
            )
        )
    groups = [verdict]
    if "lung_volume_ml" not in findings:
        return groups  # no HU measurements (images, short series): the verdict only
    groups.append(
        _group(
            job_id, "lungs", "Lungs", algo, sources, seg, finding_type=LUNG,
            measurements=_measurement(VOLUME, findings.get("lung_volume_ml"), UNIT_ML),
        )
    )  # fmt: skip
    opacity = [
        *_measurement(VOLUME, findings.get("lesion_volume_ml"), UNIT_ML),
        *_measurement(OPACITY_PERCENT, findings.get("opacity_percent"), UNIT_PERCENT),
        *_measurement(HIGH_OPACITY_PERCENT, findings.get("high_opacity_percent"), UNIT_PERCENT),
        *_measurement(SEVERITY_SCORE, findings.get("severity_score"), UNIT_SCORE),
        *_measurement(ZONES_INVOLVED, findings.get("zones_involved"), UNIT_ONE),
    ]
    for zone, value in (findings.get("zone_opacity_percent") or {}).items():
        side, _, level = str(zone).partition("_")
        if side in SIDES and level in ZONES:
            site = hd.sr.FindingSite(
                LUNG, laterality=SIDES[side], topographical_modifier=ZONES[level]
            )
            opacity += _measurement(ZONE_OPACITY, value, UNIT_PERCENT, finding_sites=[site])
    flags = [
        hd.sr.QualitativeEvaluation(name, codes.SCT.Yes if findings[key] else codes.SCT.No)
        for key, name in FLAGS.items()
        if isinstance(findings.get(key), bool)
    ]
    groups.append(
        _group(
            job_id, "opacity", "Lung opacity", algo, sources, finding_type=OPACITY,
            finding_sites=[hd.sr.FindingSite(LUNG)], measurements=opacity,
            qualitative_evaluations=flags,
        )
    )  # fmt: skip
    for key, what, code, label in (
        ("ggo_volume_ml", "ggo", GGO, "Ground glass opacity"),
        ("consolidation_volume_ml", "consolidation", CONSOLIDATION, "Consolidation"),
    ):
        if _number(findings.get(key)) is not None:
            groups.append(
                _group(
                    job_id, key, label, algo, sources, seg, segment=what, finding_type=code,
                    finding_sites=[hd.sr.FindingSite(LUNG)],
                    measurements=_measurement(VOLUME, findings[key], UNIT_ML),
                )
            )  # fmt: skip
    return groups


def build_sr(
    job_id: str,
    result: dict[str, Any],
    category: str | None,
    source_images: list[Dataset],
    used: set[str],
    segments: dict[str, int] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of a job's verdict. ``source_images``: every instance of the series read (the
    evidence); ``used``: SOP Instance UIDs of the slices the verdict used (the groups'
    source images); ``segments``: the job's SEG segment numbers by finding (``lungs``,
    ``ggo``, ``consolidation``), None when it has no SEG."""
    sources = [
        hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
        for ds in source_images
        if str(ds.SOPInstanceUID) in used
    ]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", "covidct"),
            name="covidct",
            manufacturer_name=MANUFACTURER,
            model_name="covidct",
        ),
    )
    seg = None
    evidence = list(source_images)
    if segments and source_images:
        seg = SegReference(segments, str(source_images[0].SeriesInstanceUID))
        evidence.append(_seg_evidence(job_id, source_images[0]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE_CT_CHEST,
        imaging_measurements=measurement_groups(job_id, result, category, sources, seg),
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=sr_uids(job_id)[0],
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sr_uids(job_id)[1],
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # research software: never a verified, final report
        is_verified=False,
        series_description="covidct AI result (research use, not for diagnosis)",
    )


def _seg_evidence(job_id: str, source: Dataset) -> Dataset:
    """The SEG as SR evidence: what the Current Requested Procedure Evidence names of it."""
    ds = Dataset()
    ds.SOPClassUID = SegmentationStorage
    ds.SeriesInstanceUID, ds.SOPInstanceUID = seg_uids(job_id)
    ds.StudyInstanceUID = source.StudyInstanceUID
    return ds
