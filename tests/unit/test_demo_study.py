"""The demo study shipped in demo/ reads, passes the plausibility check and shows GGO."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.config import get_settings
from services.preprocess.pipeline import preprocess_study
from services.preprocess.plausibility import assess
from services.preprocess.readers import read_study

DEMO = Path(__file__).resolve().parents[2] / "demo" / "covid-ct-md-P002"


def test_demo_study_reads_and_keeps_its_lung_slices() -> None:
    study = read_study(DEMO, get_settings())  # includes the not_chest_ct check
    assert len(study) == 45 and study.source_format == "dicom" and study.is_volume
    assert study.images[0].shape == (256, 256)
    assert study.spacing_mm is not None and abs(study.spacing_mm[0] - 6.0) < 0.01
    assert study.hu is not None and study.hu.shape == (45, 256, 256)
    assert -1100 < int(study.hu[:, :20, :20].mean()) < -900  # air around the body in HU
    study.series = None  # and without its header, on the HU profile alone
    assert assess(study).ok
    prepared = preprocess_study(read_study(DEMO, get_settings()))
    assert 35 <= len(prepared.kept) <= 45
    features = prepared.lung_features
    assert features is not None
    assert features["ggo_share"] > 0.015  # measured 0.023
    assert features["ggo_share_left_lower"] > features["ggo_share_right_upper"]
    diagnosis = json.loads((DEMO / "diagnosis.json").read_text())
    assert diagnosis["diagnosis"] == "COVID" and "CC BY 4.0" in diagnosis["source"]


def test_demo_study_is_small() -> None:
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 5_000_000
