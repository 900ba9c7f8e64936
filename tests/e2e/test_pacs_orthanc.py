"""A real PACS end to end: Debian's Orthanc (with its DICOMweb plugin) on loopback, the
embedded stack and ``covidct dicom-listen`` as separate processes.

P002 is stored into Orthanc, Orthanc sends it by C-STORE (REST ``/modalities/covidct/store``)
to our SCP, the series becomes alice's job, and its SR and SEG come back into Orthanc by both
kinds of destination (C-STORE to Orthanc's DICOM port, STOW-RS to its DICOMweb root): Orthanc
keeps one copy of each (same SOP instances: the second delivery is harmless), beside the
source series in the same study. Read back through Orthanc (REST file, and WADO-RS with
dicomweb-client), highdicom finds the verdict the job API gives. Orthanc calling with an AE
title we do not know is refused at association and makes no job; bob's destination receives
nothing of alice's study and bob cannot read her job."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from harness.components import require
from harness.stacks import create_tenant, running_stack, wait_for
from services.cli.client import ApiClient
from services.cli.runtime import Stack, free_port
from services.common.config import Settings
from tests.service.test_result_destinations import StoreScp
from tests.support.pacs import pacs_series

pytestmark = [pytest.mark.data, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
JOB_TIMEOUT_S = 900
STABLE_AGE_S = 3.0


@dataclass(frozen=True)
class Orthanc:
    http: httpx.Client
    url: str
    dicom_port: int
    ae_title: str = "ORTHANC"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(var_dir=tmp_path_factory.mktemp("embedded"))
    settings.database_url = settings.broker_url = settings.scorer_url = None
    with running_stack(settings) as running:
        yield running


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, scp_port: int) -> Iterator[Orthanc]:
    """Orthanc with a generated configuration: random free ports, temporary storage, HTTP
    for this machine only, the DICOMweb plugin, our SCP as modality ``covidct`` (Orthanc
    calls as ORTHANC) and again as ``stranger`` (calling as an AE title we do not know)."""
    require(
        os.path.exists(ORTHANC) and os.path.exists(DICOMWEB_PLUGIN),
        "Orthanc with its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb)",
    )
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    scp = {"AET": "COVIDCT", "Host": "127.0.0.1", "Port": scp_port}
    config = {
        "Name": "covidct-test-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {"covidct": scp, "stranger": {**scp, "LocalAet": "STRANGER"}},
        "DicomScuTimeout": 30,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("w")
    process = subprocess.Popen(
        [ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    http = httpx.Client(base_url=url, timeout=60)
    try:
        wait_for(lambda: _answers(http), 60, 0.2)
        yield Orthanc(http, url, dicom_port)
    finally:
        http.close()
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/system").status_code == 200
    except httpx.HTTPError:
        return False


def _covidct(stack: Stack, *args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", *args], env=stack.env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


def _sr_verdict(data: bytes) -> dict[str, Any]:
    sr = hd.sr.srread(io.BytesIO(data))
    groups = {str(g.tracking_identifier): g for g in sr.content.get_image_measurement_groups()}
    verdict = groups["COVID-19 assessment"]
    (p_covid,) = [m for m in verdict.get_measurements() if m.name.meaning == "Probability"]
    evaluations = {e.name.meaning: e.value for e in verdict.get_qualitative_evaluations()}
    return {
        "study": str(sr.StudyInstanceUID),
        "p_covid": float(p_covid.value),
        "category": evaluations["Triage category"].value,
        "pattern": evaluations["RSNA chest CT pattern of COVID-19 pneumonia"].meaning,
    }


def test_p002_from_orthanc_comes_back_as_sr_and_seg(
    stack: Stack, orthanc: Orthanc, scp_port: int, covid_series: Path
) -> None:
    require(shutil.which("echoscu") is not None, "dcmtk (echoscu)")
    alice = create_tenant(stack, f"alice-{os.urandom(4).hex()}")
    bob = create_tenant(stack, f"bob-{os.urandom(4).hex()}")
    port = str(orthanc.dicom_port)
    _covidct(stack, "tenants", "add-destination", alice["name"], "orthanc-dimse",
             "--host", "127.0.0.1", "--port", port, "--ae-title", orthanc.ae_title)  # fmt: skip
    _covidct(stack, "tenants", "add-destination", alice["name"], "orthanc-web",
             "--url", f"{orthanc.url}/dicom-web")  # fmt: skip
    bob_pacs = StoreScp("BOBPACS")
    _covidct(stack, "tenants", "add-destination", bob["name"], "bob-pacs",
             "--host", "127.0.0.1", "--port", str(bob_pacs.port),
             "--ae-title", "BOBPACS")  # fmt: skip
    assert "orthanc-web" in _covidct(stack, "tenants", "list-destinations", alice["name"])

    # The hospital's copy of P002: the published files have an empty SOPInstanceUID and
    # UUIDs for study/series UIDs, which no PACS would hold; this copy has valid UIDs (as a
    # PACS that imported the files would have made), pixel data as published.
    for _name, data in pacs_series(covid_series):
        assert orthanc.http.post("/instances", content=data).status_code == 200
    (study_id,) = orthanc.http.get("/studies").json()
    (series_id,) = orthanc.http.get(f"/studies/{study_id}").json()["Series"]

    env = {
        **stack.env,
        "COVIDCT_DICOM_AE_TITLES": json.dumps({"ORTHANC": alice["name"], "BOBPACS": bob["name"]}),
        "COVIDCT_DICOM_STABLE_AGE_S": str(STABLE_AGE_S),
    }
    listener = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dicom-listen", "--host", "127.0.0.1",
         "--port", str(scp_port)],
        env=env, start_new_session=True,
    )  # fmt: skip
    alice_api, bob_api = (
        ApiClient(stack.url, alice["api_key"]),
        ApiClient(stack.url, bob["api_key"]),
    )
    try:
        echo = ["echoscu", "-aet", "ORTHANC", "-aec", "COVIDCT", "127.0.0.1", str(scp_port)]
        wait_for(lambda: subprocess.run(echo, capture_output=True).returncode == 0, 60, 0.2)
        assert orthanc.http.post("/modalities/covidct/echo", json={}).status_code == 200

        # An AE title we do not know: association rejected (echo and store), no job.
        stranger = subprocess.run(
            ["echoscu", "-aet", "STRANGER", "-aec", "COVIDCT", "127.0.0.1", str(scp_port)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert stranger.returncode != 0
        assert "Association Rejected" in stranger.stdout + stranger.stderr
        assert orthanc.http.post("/modalities/stranger/echo", json={}).status_code != 200
        refused = orthanc.http.post(
            "/modalities/stranger/store", json={"Resources": [series_id], "Synchronous": True}
        )
        assert refused.status_code != 200, refused.text

        sent = orthanc.http.post(
            "/modalities/covidct/store",
            json={"Resources": [series_id], "Synchronous": True},
            timeout=300,
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["InstancesCount"] == 133 and sent.json()["FailedInstancesCount"] == 0
        jobs = wait_for(lambda: alice_api.http.get("/v1/jobs").json()["items"], 240, 0.5)
        assert len(jobs) == 1
        job_id = jobs[0]["id"]
        final = alice_api.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        assert final["status"] == "succeeded", final

        def delivered() -> dict[str, Any] | None:
            job = alice_api.http.get(f"/v1/jobs/{job_id}").json()
            states = {d["destination"]: d["status"] for d in job["deliveries"]}
            return (
                job
                if states == {"orthanc-dimse": "delivered", "orthanc-web": "delivered"}
                else None
            )

        job = wait_for(delivered, 120, 0.5)
    finally:
        listener.terminate()
        listener.wait(timeout=30)
        bob_pacs.stop()

    # In Orthanc, in the source study: one SR and one SEG (delivered twice, kept once).
    series = orthanc.http.get(f"/studies/{study_id}/series").json()
    by_modality = {s["MainDicomTags"]["Modality"]: s for s in series}
    assert set(by_modality) == {"CT", "SR", "SEG"}
    assert len(by_modality["SR"]["Instances"]) == len(by_modality["SEG"]["Instances"]) == 1
    (sr_id,) = by_modality["SR"]["Instances"]
    (seg_id,) = by_modality["SEG"]["Instances"]
    sr_bytes = orthanc.http.get(f"/instances/{sr_id}/file").content
    seg = pydicom.dcmread(io.BytesIO(orthanc.http.get(f"/instances/{seg_id}/file").content))
    sent_uids = job["deliveries"][0]["sent"]
    assert str(seg.SOPInstanceUID) == sent_uids["seg"]
    assert str(pydicom.dcmread(io.BytesIO(sr_bytes)).SOPInstanceUID) == sent_uids["sr"]
    assert len(seg.PerFrameFunctionalGroupsSequence) > 0

    # The verdict read back from the PACS is the job API's.
    result = job["result"]
    verdict = _sr_verdict(sr_bytes)
    assert verdict["study"] == job["study"]["study_instance_uid"]
    assert verdict["p_covid"] == pytest.approx(result["probabilities"]["COVID"])
    assert job["study"]["category"] == "covid" and verdict["category"] == "840539006"
    assert verdict["pattern"] == f"RSNA {result['findings']['pattern']} appearance"
    # ... and through Orthanc's DICOMweb (WADO-RS) with dicomweb-client.
    web = DICOMwebClient(f"{orthanc.url}/dicom-web")
    instance = web.retrieve_instance(
        verdict["study"], str(pydicom.dcmread(io.BytesIO(sr_bytes)).SeriesInstanceUID),
        sent_uids["sr"],
    )  # fmt: skip
    buffer = io.BytesIO()
    instance.save_as(buffer, enforce_file_format=True)
    assert _sr_verdict(buffer.getvalue()) == verdict

    # Bob: nothing of alice's study reached his PACS, and her job is not his to read.
    assert bob_pacs.received == []
    assert bob_api.http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert bob_api.http.get("/v1/jobs").json()["total"] == 0
