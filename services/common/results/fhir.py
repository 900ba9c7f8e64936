"""The verdict of a job as a FHIR R4 Bundle (``fhir.resources.R4B``, validated on build).

A ``collection`` Bundle: the DiagnosticReport (status ``preliminary``: research software,
never a verified report; code LOINC 24627-2 CT Chest; conclusion and conclusion code the
category), its Observations (category, P(COVID), RSNA pattern, opacity measurements), and for
DICOM inputs the Patient and the ImagingStudy (StudyInstanceUID, the series read) they point
to. Codes are those of the DICOM SR (services.common.results.dicom_sr): SNOMED CT, DICOM (DCM),
LOINC, UCUM where they exist; ours (system :data:`PRIVATE_SYSTEM`) otherwise.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from highdicom.sr import CodedConcept

from services.common.results import dicom_sr as sr

PRIVATE_SYSTEM = "http://covidct.invalid/fhir/CodeSystem/99COVIDCT"
SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    sr.SCHEME: PRIVATE_SYSTEM,
}
UCUM = SYSTEMS["UCUM"]
# Numeric findings reported as Observations: key -> (code, UCUM unit).
QUANTITIES: dict[str, tuple[CodedConcept, str]] = {
    "opacity_percent": (sr.OPACITY_PERCENT, "%"),
    "high_opacity_percent": (sr.HIGH_OPACITY_PERCENT, "%"),
    "lesion_volume_ml": (sr.private("OPACITY_VOLUME", "Opacity volume"), "mL"),
    "ggo_volume_ml": (sr.private("GGO_VOLUME", "Ground glass opacity volume"), "mL"),
    "consolidation_volume_ml": (sr.private("CONSOLIDATION_VOLUME", "Consolidation volume"), "mL"),
    "lung_volume_ml": (sr.private("LUNG_VOLUME", "Lung volume"), "mL"),
    "severity_score": (sr.SEVERITY_SCORE, "{score}"),
    "zones_involved": (sr.ZONES_INVOLVED, "1"),
}


def coding(code: CodedConcept) -> dict[str, str]:
    return {
        "system": SYSTEMS[code.scheme_designator],
        "code": code.value,
        "display": code.meaning,
    }


def concept(code: CodedConcept, text: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(code)], "text": text or code.meaning}


def _urn(job_id: str, what: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'covidct:{job_id}:{what}')}"


def _number(value: Any) -> float | None:
    return None if isinstance(value, bool) or not isinstance(value, int | float) else value


def build_bundle(view: dict[str, Any], issued: str) -> dict[str, Any]:
    """The Bundle (as JSON) of a succeeded job's view (``job_view``); ``issued``: ISO time."""
    job_id = view["id"]
    result = view["result"] or {}
    series = result.get("series") or {}
    findings = result.get("findings") or {}
    category = (view.get("study") or {}).get("category")
    versions = "; ".join(
        f"{k} {v}" for k, v in sorted((result.get("model_versions") or {}).items())
    )
    entries: list[dict[str, Any]] = []
    patient_ref = study_ref = None
    if series.get("source_format") == "dicom" and series.get("study_instance_uid"):
        patient_ref, study_ref = _urn(job_id, "patient"), _urn(job_id, "study")
        entries.append(_entry(patient_ref, _patient(series)))
        entries.append(_entry(study_ref, _imaging_study(series, patient_ref)))
    common: dict[str, Any] = {
        "status": "preliminary",
        "category": [_imaging_category()],
        "issued": issued,
        "bodySite": concept(sr.LUNG),
        "method": {"text": f"covidct {versions}".strip()},
    }
    if patient_ref:
        common["subject"] = {"reference": patient_ref}
    if study_ref:
        common["derivedFrom"] = [{"reference": study_ref}]
    code = sr.category_code(category, str(result.get("label", "")))
    observations: list[dict[str, Any]] = [
        {"code": concept(sr.CATEGORY), "valueCodeableConcept": concept(code, category)},
    ]
    p_covid = _number((result.get("probabilities") or {}).get("COVID"))
    if p_covid is not None:
        observations.append(
            {
                "code": concept(sr.PROBABILITY, "P(COVID-19)"),
                "valueQuantity": {
                    "value": round(p_covid, 4),
                    "unit": "1",
                    "system": UCUM,
                    "code": "1",
                },
            }
        )
    if findings.get("pattern") in sr.PATTERN_VALUES:
        observations.append(
            {
                "code": concept(sr.PATTERN),
                "valueCodeableConcept": concept(sr.PATTERN_VALUES[findings["pattern"]]),
                "note": [{"text": str(r)} for r in findings.get("pattern_reasons") or []],
            }
        )
    for key, (name, unit) in QUANTITIES.items():
        value = _number(findings.get(key))
        if value is not None:
            quantity = {"value": value, "unit": unit, "system": UCUM, "code": unit}
            observations.append({"code": concept(name), "valueQuantity": quantity})
    refs = []
    for k, body in enumerate(observations):
        ref = _urn(job_id, f"observation-{k}")
        refs.append({"reference": ref})
        entries.append(_entry(ref, {"resourceType": "Observation", **common, **body}))
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": _urn(job_id, "report")}],
        "status": "preliminary",
        "category": [_imaging_category()],
        "code": concept(sr.PROCEDURE_CT_CHEST),
        "issued": issued,
        "result": refs,
        "conclusion": _conclusion(category, p_covid, findings),
        "conclusionCode": [concept(code, category)],
    }
    if patient_ref:
        report["subject"] = {"reference": patient_ref}
    if study_ref:
        report["imagingStudy"] = [{"reference": study_ref}]
    entries.insert(0, _entry(_urn(job_id, "report"), report))
    bundle = Bundle.model_validate(
        {"resourceType": "Bundle", "type": "collection", "timestamp": issued, "entry": entries}
    )
    return dict(bundle.model_dump(mode="json", exclude_none=True))


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource}


def _imaging_category() -> dict[str, Any]:
    return {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                "code": "RAD",
                "display": "Radiology",
            }
        ]
    }


def _patient(series: dict[str, Any]) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient"}
    if series.get("patient_id"):
        patient["identifier"] = [{"value": str(series["patient_id"])}]
    return patient


def _imaging_study(series: dict[str, Any], patient_ref: str) -> dict[str, Any]:
    modality = {
        "system": SYSTEMS["DCM"],
        "code": str(series.get("modality") or "CT"),
    }
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{series['study_instance_uid']}"}
        ],
        "status": "available",
        "subject": {"reference": patient_ref},
        "modality": [modality],
        "numberOfSeries": 1,
    }
    if series.get("accession_number"):
        study["identifier"].append(
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": str(series["accession_number"]),
            }
        )
    if series.get("series_instance_uid"):
        entry: dict[str, Any] = {"uid": series["series_instance_uid"], "modality": modality}
        if series.get("series_description"):
            entry["description"] = str(series["series_description"])
        if series.get("instances"):
            entry["numberOfInstances"] = int(series["instances"])
            study["numberOfInstances"] = int(series["instances"])
        study["series"] = [entry]
    return study


def _conclusion(category: str | None, p_covid: float | None, findings: dict[str, Any]) -> str:
    parts = [f"Category: {category or '-'}"]
    if p_covid is not None:
        parts.append(f"P(COVID-19) {p_covid:.2f}")
    if findings.get("pattern"):
        parts.append(f"RSNA pattern: {findings['pattern']}")
    if _number(findings.get("opacity_percent")) is not None:
        parts.append(f"opacity {findings['opacity_percent']:.1f} % of the lungs")
    return "; ".join(parts) + ". Research software, not a diagnosis."


def transaction_bundle(bundle: dict[str, Any]) -> dict[str, Any]:
    """The collection Bundle as a FHIR transaction a server stores: every resource gets the
    id of its ``urn:uuid`` (fixed by the job id) and is PUT at ``<Type>/<id>``, references
    rewritten to match, so sending the same job twice updates the same resources."""
    local: dict[str, str] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        local[entry["fullUrl"]] = f"{resource['resourceType']}/{entry['fullUrl'].split(':')[-1]}"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return local.get(node, node) if isinstance(node, str) else node

    entries = []
    for entry in bundle["entry"]:
        path = local[entry["fullUrl"]]
        resource = {**rewrite(entry["resource"]), "id": path.split("/", 1)[1]}
        entries.append(
            {"fullUrl": entry["fullUrl"], "resource": resource,
             "request": {"method": "PUT", "url": path}}
        )  # fmt: skip
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    Bundle.model_validate(transaction)
    return transaction
