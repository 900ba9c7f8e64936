"""DICOM SR + SEG and FHIR results in-process (eager Celery, SQLite) on the real P002 series:
SR read back by highdicom says what the job JSON says; SEG frames lie on and reference the
source instances; every SR and SEG passes dciodvfy with no error; the FHIR Bundle validates;
another tenant gets 404, an unfinished or non-DICOM job a 409 with a machine code."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from services.asgi import create_app
from services.celery import TASK_MODULES
from services.common.config import Settings
from services.common.db import session_scope
from services.common.jobs import job_view
from services.common.orm import Job
from services.common.queue import celery_app
from services.common.results.dicom_source import derived_uid
from services.common.results.dicom_sr import SCHEME
from tests.support.pacs import pacs_series
from tests.support.service import auth, make_tenant, new_job, serving, upload_study

for _module in TASK_MODULES:
    importlib.import_module(_module)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture
def eager_client(isolated_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    isolated_settings(broker_url="memory://")
    celery_app.conf.task_always_eager = True
    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        celery_app.conf.task_always_eager = False


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    """The ``Error`` lines of dciodvfy (Debian dicom3tools) on one object. Missing dciodvfy
    is a failure under CI=true, a skip elsewhere."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (dicom3tools) is not installed")
        pytest.skip("dciodvfy (apt-get install dicom3tools) is not installed")
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def _zip_series(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(f"P002/{name}", data)
    return buffer.getvalue()


def referenced_segments(sr: Any) -> dict[str, tuple[str, int]]:
    """Tracking identifier of each volumetric ROI group -> (SEG SOP Instance UID, segment)."""
    out = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        item = next(
            i
            for i in group[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == "121191"
        )
        reference = item.ReferencedSOPSequence[0]
        out[str(group.tracking_identifier)] = (
            str(reference.ReferencedSOPInstanceUID),
            int(reference.ReferencedSegmentNumber),
        )
    return out


def _measurements(group: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for m in group.get_measurements():
        out.setdefault(m.name.meaning, []).append(m)
    return out


def _evaluations(group: Any) -> dict[str, str]:
    return {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}


def test_p002_results_as_dicom_sr_seg_and_fhir(
    eager_client: TestClient, covid_series: Path, tmp_path: Path
) -> None:
    client = eager_client
    alice, mallory = make_tenant("alice"), make_tenant("mallory")
    files = pacs_series(covid_series)
    job_id = upload_study(
        client, alice, _zip_series(files), filename="p002.zip", filetype="application/zip"
    )
    job = client.get(f"/v1/jobs/{job_id}", headers=auth(alice)).json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    with session_scope() as session:
        # The source header kept for SR/SEG (patient name, birth date) is never in a callback.
        stored = session.get(Job, job_id)
        assert stored is not None and stored.series and "dicom_source" in stored.series
        assert "dicom_source" not in job_view(stored)["result"]["series"]
    sources = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for _, data in files]
    source_uids = {str(ds.SOPInstanceUID) for ds in sources}

    # --- SR -------------------------------------------------------------------------------
    response = client.get(f"/v1/jobs/{job_id}/dicom/sr", headers=auth(alice))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert dciodvfy_errors(response.content, tmp_path) == []
    sr = hd.sr.srread(io.BytesIO(response.content))
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == result["series"]["study_instance_uid"]
    assert sr.PatientID == "P002"
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    seg_sop = derived_uid(job_id, "seg")
    assert evidence == source_uids | {seg_sop}  # every instance of the series read, the SEG
    report = sr.content
    groups = {
        str(g.tracking_identifier): g
        for g in [
            *report.get_image_measurement_groups(),
            *report.get_volumetric_roi_measurement_groups(),
        ]
    }
    assert set(groups) >= {"COVID-19 assessment", "Lungs", "Lung opacity"}
    # The volumes measured on a mask name its SEG segment (TID 1411 Referenced Segment).
    assert referenced_segments(sr) == {
        "Ground glass opacity": (seg_sop, 1),
        "Consolidation": (seg_sop, 2),
        "Lungs": (seg_sop, 3),
    }
    verdict = groups["COVID-19 assessment"]
    (p_covid,) = _measurements(verdict)["Probability"]
    assert float(p_covid.value) == pytest.approx(result["probabilities"]["COVID"])
    evaluations = _evaluations(verdict)
    category = job["study"]["category"]
    assert category == "covid"
    assert evaluations["Triage category"].value == "840539006"  # SNOMED CT COVID-19
    assert evaluations["RSNA chest CT pattern of COVID-19 pneumonia"].meaning == (
        f"RSNA {result['findings']['pattern']} appearance"
    )
    reasons = [
        item.TextValue
        for item in verdict[0].ContentSequence
        if item.ValueType == "TEXT"
        and item.ConceptNameCodeSequence[0].CodeValue == "PATTERN_REASON"
    ]
    assert reasons == result["findings"]["pattern_reasons"]
    used = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in verdict[0].ContentSequence
        if item.ValueType == "IMAGE"
    }
    assert len(used) == result["slices_used"] and used <= source_uids
    opacity = _measurements(groups["Lung opacity"])
    findings = result["findings"]
    volume = opacity["Volume"][0]
    assert float(volume.value) == pytest.approx(findings["lesion_volume_ml"])
    assert volume.unit.value == "mL"
    percent = opacity["Opacity volume, percent of lung volume"][0]
    assert float(percent.value) == pytest.approx(findings["opacity_percent"])
    score = opacity["CT severity score (0-24)"][0]
    assert float(score.value) == findings["severity_score"]
    assert len(opacity["Opacity volume, percent of the zone"]) == 6
    lung = _measurements(groups["Lungs"])["Volume"][0]
    assert float(lung.value) == pytest.approx(findings["lung_volume_ml"])
    texts = {
        item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
        for item in verdict[0].ContentSequence
        if item.ValueType == "TEXT"
    }
    assert texts["111003"] == "; ".join(
        f"{k} {v}" for k, v in sorted(result["model_versions"].items())
    )
    # Our own codes carry our private coding scheme designator.
    assert evaluations["Triage category"].scheme_designator == "SCT"
    assert any(
        c.scheme_designator == SCHEME
        for c in (e.name for e in verdict.get_qualitative_evaluations())
    )
    # The same job gives the same object (a PACS replaces, never duplicates).
    again = client.get(f"/v1/jobs/{job_id}/dicom/sr", headers=auth(alice)).content
    assert pydicom.dcmread(io.BytesIO(again)).SOPInstanceUID == sr.SOPInstanceUID

    # --- SEG ------------------------------------------------------------------------------
    response = client.get(f"/v1/jobs/{job_id}/dicom/seg", headers=auth(alice))
    assert response.status_code == 200, response.text
    assert dciodvfy_errors(response.content, tmp_path) == []
    seg = hd.seg.segread(io.BytesIO(response.content))
    assert seg.SegmentationType == "BINARY"
    assert seg.SOPInstanceUID == seg_sop  # what the SR references
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Ground glass opacity", "Consolidation", "Lungs"]
    (related,) = seg.RelatedSeriesSequence  # and the SEG names the SR's series
    assert (related.StudyInstanceUID, related.SeriesInstanceUID) == (
        sr.StudyInstanceUID,
        sr.SeriesInstanceUID,
    )
    assert seg.StudyInstanceUID == result["series"]["study_instance_uid"]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    frames = 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        ds = by_uid[str(source.ReferencedSOPInstanceUID)]  # a source instance
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == pytest.approx(
            [float(v) for v in ds.ImagePositionPatient]
        )
        frames += 1
    assert frames > 0
    ggo = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sorted(
            {
                str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                for f in seg.PerFrameFunctionalGroupsSequence
            }
        ),
        segment_numbers=[1],
    )
    spacing = result["series"]["pixel_spacing_mm"]
    ggo_ml = (
        float(ggo.sum()) * spacing[0] * spacing[1] * result["series"]["slice_spacing_mm"] / 1000
    )
    assert ggo_ml == pytest.approx(findings["ggo_volume_ml"], rel=0.02)

    # --- FHIR -----------------------------------------------------------------------------
    response = client.get(f"/v1/jobs/{job_id}/fhir", headers=auth(alice))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(response.json())
    resources = [e.resource for e in bundle.entry]
    kinds = [r.get_resource_type() for r in resources]
    assert kinds[0] == "DiagnosticReport" and "ImagingStudy" in kinds and "Patient" in kinds
    report_resource = resources[0]
    study = next(r for r in resources if r.get_resource_type() == "ImagingStudy")
    assert study.identifier[0].value == f"urn:oid:{result['series']['study_instance_uid']}"
    assert report_resource.imagingStudy[0].reference == next(
        e.fullUrl for e in bundle.entry if e.resource.get_resource_type() == "ImagingStudy"
    )
    observations = {r.code.text: r for r in resources if r.get_resource_type() == "Observation"}
    assert float(observations["P(COVID-19)"].valueQuantity.value) == pytest.approx(
        result["probabilities"]["COVID"], abs=1e-4
    )
    assert observations["Triage category"].valueCodeableConcept.coding[0].code == "840539006"
    assert len(report_resource.result) == len(observations)

    # --- another tenant -------------------------------------------------------------------
    for path in ("dicom/sr", "dicom/seg", "fhir"):
        denied = client.get(f"/v1/jobs/{job_id}/{path}", headers=auth(mallory))
        assert denied.status_code == 404
        assert denied.json()["code"] == "job_not_found"

    # --- DICOMweb QIDO-RS / WADO-RS, with dicomweb-client against the served app ----------
    check_dicomweb(job_id, sr, seg, alice, mallory)


def check_dicomweb(job_id: str, sr: Any, seg: Any, alice: dict[str, str], mallory: Any) -> None:
    """The job's SR and SEG found by the source study's UID and fetched by their own UIDs,
    as a viewer or PACS would; another tenant finds nothing and fetches nothing."""
    study = str(sr.StudyInstanceUID)
    with serving(create_app()) as base:
        dicomweb = DICOMwebClient(url=f"{base}/dicomweb", headers=auth(alice))
        found = {
            ds["0020000E"]["Value"][0]: ds["00080060"]["Value"][0]
            for ds in dicomweb.search_for_series(study)
        }
        assert found == {sr.SeriesInstanceUID: "SR", seg.SeriesInstanceUID: "SEG"}
        only_seg = dicomweb.search_for_series(study, search_filters={"Modality": "SEG"})
        assert [ds["0020000E"]["Value"][0] for ds in only_seg] == [seg.SeriesInstanceUID]
        (instance,) = dicomweb.search_for_instances(study, seg.SeriesInstanceUID)
        assert instance["00080018"]["Value"] == [seg.SOPInstanceUID]

        (got_sr,) = dicomweb.retrieve_series(study, sr.SeriesInstanceUID)
        assert got_sr.SOPInstanceUID == sr.SOPInstanceUID
        assert hd.sr.Comprehensive3DSR.from_dataset(got_sr).content  # an SR highdicom reads
        got_seg = dicomweb.retrieve_instance(study, seg.SeriesInstanceUID, seg.SOPInstanceUID)
        back = hd.seg.Segmentation.from_dataset(got_seg)
        assert [s.SegmentLabel for s in back.SegmentSequence] == [
            s.SegmentLabel for s in seg.SegmentSequence
        ]
        assert back.NumberOfFrames == seg.NumberOfFrames

        # Not ours, not found, not acceptable: a clear 4xx with a machine code.
        headers = auth(alice)
        url = f"{base}/dicomweb/studies/{study}/series/{sr.SeriesInstanceUID}"
        wrong = httpx.get(f"{url}/instances/1.2.3", headers=headers)
        assert (wrong.status_code, wrong.json()["code"]) == (404, "instance_not_found")
        other = httpx.get(f"{base}/dicomweb/studies/{study}/series/1.2.3", headers=headers)
        assert (other.status_code, other.json()["code"]) == (404, "series_not_found")
        as_json = httpx.get(url, headers={**headers, "Accept": "application/dicom+json"})
        assert (as_json.status_code, as_json.json()["code"]) == (406, "not_acceptable")
        assert httpx.get(url).status_code == 401

        intruder = DICOMwebClient(url=f"{base}/dicomweb", headers=auth(mallory))
        assert intruder.search_for_series(study) == []
        for path in ("", f"/instances/{sr.SOPInstanceUID}"):
            denied = httpx.get(f"{url}{path}", headers=auth(mallory))
            assert (denied.status_code, denied.json()["code"]) in {
                (404, "series_not_found"),
                (404, "instance_not_found"),
            }


def test_not_finished_and_not_dicom_are_409(eager_client: TestClient, data_dir: Path) -> None:
    client = eager_client
    alice = make_tenant("alice")
    waiting = new_job(client, alice)["id"]
    for path in ("dicom/sr", "dicom/seg", "fhir"):
        response = client.get(f"/v1/jobs/{waiting}/{path}", headers=auth(alice))
        assert response.status_code == 409
        assert response.json()["code"] == "job_not_finished"
    image = sorted((data_dir / "ucsd-covid-ct").rglob("*.png"))[0]
    job_id = upload_study(
        client, alice, image.read_bytes(), filename="slice.png", filetype="image/png"
    )
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(alice)).json()["status"] == "succeeded"
    for path in ("dicom/sr", "dicom/seg"):
        response = client.get(f"/v1/jobs/{job_id}/{path}", headers=auth(alice))
        assert response.status_code == 409
        assert response.json()["code"] == "not_dicom_input"
    # FHIR needs no DICOM: the report and its observations, without an ImagingStudy.
    response = client.get(f"/v1/jobs/{job_id}/fhir", headers=auth(alice))
    assert response.status_code == 200
    kinds = [e.resource.get_resource_type() for e in Bundle.model_validate(response.json()).entry]
    assert kinds[0] == "DiagnosticReport" and "ImagingStudy" not in kinds
    assert client.get("/v1/jobs/nope/fhir", headers=auth(alice)).status_code == 404


def test_sr_without_hu_findings_has_the_verdict_only() -> None:
    """A verdict of images (no lesion measurements): the COVID-19 assessment group only,
    the label as the category."""
    from services.common.results.dicom_sr import measurement_groups

    result = {
        "label": "NonCOVID",
        "probabilities": {"COVID": 0.2},
        "model_versions": {"slice_cnn": "v1"},
    }
    groups = measurement_groups("job-1", result, "noncovid", [])
    assert len(groups) == 1
    assert [e.value.value for e in groups[0].get_qualitative_evaluations()] == ["NONCOVID"]
    assert np.isclose(float(groups[0].get_measurements()[0].value), 0.2)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"source_format": "nifti"}, "not_dicom_input"),
        ({"dicom_source": None}, "not_dicom_input"),
        # the published P002 as its anonymiser left it: a UUID, not a DICOM UID
        ({"study_instance_uid": "896911bf-1143-4c8d-8f04-f3cd1a7f6204"}, "source_uids_invalid"),
        ({"series_instance_uid": None}, "source_uids_invalid"),
    ],
)
def test_sources_that_cannot_be_referenced_are_refused(change: dict[str, Any], code: str) -> None:
    from services.common.results.dicom_source import NotDicomSource, source_slices

    series = {
        "source_format": "dicom",
        "dicom_source": {"rows": 2, "columns": 2},
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
    }
    info = {"sop_instance_uid": "1.2.3.4.5", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}
    assert [s.sop_instance_uid for s in source_slices(series, {0: info})] == ["1.2.3.4.5"]
    with pytest.raises(NotDicomSource) as refused:
        source_slices({**series, **change}, {0: info})
    assert refused.value.code == code
    with pytest.raises(NotDicomSource) as refused:
        source_slices(series, {0: {**info, "sop_instance_uid": None}})  # SOPInstanceUID removed
    assert refused.value.code == "source_uids_invalid"


def _synthetic_source(n: int = 4, size: int = 16) -> tuple[dict[str, Any], list[Any]]:
    from services.common.results.dicom_source import SourceSlice

    series = {
        "source_format": "dicom",
        "modality": "CT",
        "patient_id": "PX",
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "series_instance_uid": "1.2.826.0.1.3680043.8.498.2",
        "image_orientation_patient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "dicom_source": {"rows": size, "columns": size, "pixel_spacing": [0.7, 0.7],
                         "slice_thickness": 2.0, "patient_sex": "F"},
    }  # fmt: skip
    slices = [
        SourceSlice(k, "1.2.840.10008.5.1.4.1.1.2", f"1.2.826.0.1.3680043.8.498.3.{k}",
                    [-5.0, -5.0, 2.0 * k])
        for k in range(n)
    ]  # fmt: skip
    return series, slices


def test_lungs_only_seg_and_image_verdict_sr_pass_dciodvfy(tmp_path: Path) -> None:
    """The other shapes of our objects: a SEG of lungs only (a DICOM series without lesion
    masks) and an SR without HU findings, each valid for dciodvfy."""
    from services.common.results.dicom_seg import build_seg
    from services.common.results.dicom_source import source_datasets
    from services.common.results.dicom_sr import build_sr

    series, slices = _synthetic_source()
    sources = source_datasets(series, slices)
    lungs = np.zeros((4, 16, 16, 1), bool)
    lungs[1:3, 4:12, 3:8] = True
    seg = build_seg("job-2", sources, lungs, "slice_cnn v1")
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    assert dciodvfy_errors(buffer.getvalue(), tmp_path) == []
    back = hd.seg.segread(io.BytesIO(buffer.getvalue()))
    assert [s.SegmentLabel for s in back.SegmentSequence] == ["Lungs"]
    assert back.NumberOfFrames == 2  # empty frames are left out
    # a derived frame of reference, the same for every slice of the series
    assert back.FrameOfReferenceUID == sources[0].FrameOfReferenceUID

    result = {
        "label": "COVID",
        "probabilities": {"COVID": 0.7},
        "model_versions": {"slice_cnn": "v1"},
    }
    sr = build_sr("job-2", result, "covid", sources, {s.sop_instance_uid for s in slices[1:3]})
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    assert dciodvfy_errors(buffer.getvalue(), tmp_path) == []
    # A lung volume measured on the lungs-only SEG: the SR names segment 1 of that SEG.
    hu = {**result, "findings": {"lung_volume_ml": 12.5}}
    linked = build_sr("job-2", hu, "covid", sources, set(), segments={"lungs": 1})
    buffer = io.BytesIO()
    linked.save_as(buffer, enforce_file_format=True)
    assert dciodvfy_errors(buffer.getvalue(), tmp_path) == []
    back_sr = hd.sr.srread(io.BytesIO(buffer.getvalue()))
    assert referenced_segments(back_sr) == {"Lungs": (back.SOPInstanceUID, 1)}
    assert back.RelatedSeriesSequence[0].SeriesInstanceUID == back_sr.SeriesInstanceUID
    again = build_sr("job-2", result, "covid", sources, set())
    assert again.SOPInstanceUID == sr.SOPInstanceUID  # fixed by the job id


def _finished_synthetic_job(tenant_id: str, settings: Settings, *, masks: bool) -> str:
    """A succeeded job of the synthetic 4-slice series written straight to the database (no
    shared data, no pipeline): its verdict with HU volumes, its slices' SOP identities and,
    with ``masks``, its lesion label maps on the source geometry."""
    from services.common.native_slices import native_lesions_key
    from services.common.orm import JobStatus, Result, SliceRecord
    from services.common.storage import make_storage

    series, slices = _synthetic_source()
    with session_scope() as session:
        job = Job(
            tenant_id=tenant_id, status=JobStatus.SUCCEEDED.value, series=series,
            study_instance_uid=series["study_instance_uid"],
            series_instance_uid=series["series_instance_uid"], category="covid",
        )  # fmt: skip
        session.add(job)
        session.flush()
        session.add(
            Result(
                job_id=job.id, label="COVID", probabilities={"COVID": 0.8, "NonCOVID": 0.2},
                slices_total=4, slices_used=2, model_versions={"slice_cnn": "v1"},
                findings={"lung_volume_ml": 10.0, "lesion_volume_ml": 1.5,
                          "ggo_volume_ml": 1.0, "consolidation_volume_ml": 0.5},
            )
        )  # fmt: skip
        for s in slices:
            info = {"sop_instance_uid": s.sop_instance_uid, "sop_class_uid": s.sop_class_uid,
                    "image_position_patient": s.position}  # fmt: skip
            session.add(
                SliceRecord(job_id=job.id, index=s.index, kept=s.index in (1, 2), info=info)
            )
        job_id = job.id
    if masks:
        labels = np.zeros((4, 16, 16), np.uint8)
        labels[1:3, 4:12, 3:8] = 3
        labels[1, 5:7, 4:6] = 1
        labels[2, 8:10, 4:6] = 2
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=labels)
        make_storage(settings).put_bytes(native_lesions_key(job_id), buffer.getvalue())
    return job_id


def test_dicomweb_serves_sr_and_seg_that_reference_each_other(
    isolated_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """QIDO-RS / WADO-RS with dicomweb-client against the served app, on synthetic finished
    jobs: the SR and SEG of a job with masks (valid for dciodvfy, each naming the other), the
    SR only of a job without; another tenant sees and fetches nothing."""
    settings = isolated_settings(broker_url="memory://")
    alice, mallory = make_tenant("alice"), make_tenant("mallory")
    with_masks = _finished_synthetic_job(alice["id"], settings, masks=True)
    study = "1.2.826.0.1.3680043.8.498.1"
    with serving(create_app()) as base:
        dicomweb = DICOMwebClient(url=f"{base}/dicomweb", headers=auth(alice))
        listed = dicomweb.search_for_series(study)
        assert [ds["00080060"]["Value"][0] for ds in listed] == ["SR", "SEG"]
        sr_series, seg_series = (ds["0020000E"]["Value"][0] for ds in listed)
        assert listed[0]["00081190"]["Value"][0].endswith(
            f"/dicomweb/studies/{study}/series/{sr_series}"
        )
        (sr,) = dicomweb.retrieve_series(study, sr_series)
        (seg_instance,) = dicomweb.search_for_instances(study, seg_series)
        seg_sop = seg_instance["00080018"]["Value"][0]
        seg = dicomweb.retrieve_instance(study, seg_series, seg_sop)
        for data in (sr, seg):
            buffer = io.BytesIO()
            data.save_as(buffer, enforce_file_format=True)
            assert dciodvfy_errors(buffer.getvalue(), tmp_path) == []
        assert referenced_segments(hd.sr.Comprehensive3DSR.from_dataset(sr)) == {
            "Ground glass opacity": (seg_sop, 1),
            "Consolidation": (seg_sop, 2),
            "Lungs": (seg_sop, 3),
        }
        assert seg.RelatedSeriesSequence[0].SeriesInstanceUID == sr.SeriesInstanceUID
        assert (sr.SOPInstanceUID, seg.SOPInstanceUID) == (
            derived_uid(with_masks, "sr"),
            derived_uid(with_masks, "seg"),
        )

        # A job without masks: its SR (volumes on the source images), no SEG anywhere.
        without = _finished_synthetic_job(alice["id"], settings, masks=False)
        modalities = [
            (ds["0020000E"]["Value"][0], ds["00080060"]["Value"][0])
            for ds in dicomweb.search_for_series(study)
        ]
        assert (derived_uid(without, "sr-series"), "SR") in modalities
        assert derived_uid(without, "seg-series") not in dict(modalities)
        (plain,) = dicomweb.retrieve_series(study, derived_uid(without, "sr-series"))
        assert referenced_segments(hd.sr.Comprehensive3DSR.from_dataset(plain)) == {}
        missing = httpx.get(
            f"{base}/dicomweb/studies/{study}/series/{derived_uid(without, 'seg-series')}",
            headers=auth(alice),
        )
        assert (missing.status_code, missing.json()["code"]) == (404, "series_not_found")

        # The whole study: every SR and SEG we made of it.
        everything = dicomweb.retrieve_study(study)
        assert sorted(ds.Modality for ds in everything) == ["SEG", "SR", "SR"]

        intruder = DICOMwebClient(url=f"{base}/dicomweb", headers=auth(mallory))
        assert intruder.search_for_series(study) == []
        nothing = httpx.get(f"{base}/dicomweb/studies/{study}", headers=auth(mallory))
        assert (nothing.status_code, nothing.json()["code"]) == (404, "study_not_found")
        denied = httpx.get(
            f"{base}/dicomweb/studies/{study}/series/{sr_series}", headers=auth(mallory)
        )
        assert (denied.status_code, denied.json()["code"]) == (404, "series_not_found")
        bad = httpx.get(f"{base}/dicomweb/studies/not-a-uid/series", headers=auth(alice))
        assert bad.status_code == 422
