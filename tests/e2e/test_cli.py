"""The `covidct` command end to end with the shipped models."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app
from services.common.config import REPO_ROOT

runner = CliRunner()


def run_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def p002_result(covid_series: Path) -> dict:
    return run_json("diagnose", str(covid_series))


def test_diagnose_json_contract_on_the_shared_covid_series(p002_result: dict) -> None:
    body = p002_result
    assert {
        "label",
        "probabilities",
        "slices_total",
        "slices_used",
        "slice_probabilities",
        "model_versions",
    } <= body.keys()
    assert body["label"] in {"COVID", "NonCOVID"}
    assert set(body["probabilities"]) == {"COVID", "NonCOVID"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-6
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["slices_total"] == 133
    assert len(body["slice_probabilities"]) == body["slices_used"] <= 133
    assert all(0 <= p <= 1 for p in body["slice_probabilities"])
    assert set(body["model_versions"]) == {"slice_cnn", "ensemble", "verdict"}


def test_diagnose_calls_the_shared_covid_series_covid(p002_result: dict) -> None:
    # P002 is COVID-19 (COVID-CT-MD studies.csv). Ensemble v3 reads the lesion measurements:
    # bilateral, peripheral, multifocal ground glass is the RSNA "typical" pattern.
    assert p002_result["label"] == "COVID"
    assert p002_result["model_versions"]["verdict"] == "lesion-pattern"
    findings = p002_result["findings"]
    assert findings["category"] == "covid"
    assert findings["pattern"] == "typical"
    assert findings["bilateral"] is True
    assert 0 < findings["opacity_percent"] < 100 and 0 <= findings["severity_score"] <= 24
    assert findings["lesion_volume_ml"] < findings["lung_volume_ml"]
    assert len(findings["slice_lesion_share"]) == p002_result["slices_total"]


@pytest.mark.parametrize(
    ("series", "category"),
    [
        # cap002's lesions are bilateral and peripheral but with a central (perihilar) component
        # as opaque as the lung overall: "central and peripheral" -> indeterminate pattern.
        ("cap002", "other_pneumonia"),
        ("normal001", "no_pneumonia"),
    ],
)
def test_diagnose_calls_the_shared_cap_and_normal_series_noncovid(
    ctmd_dir: Path, series: str, category: str
) -> None:
    body = run_json("diagnose", str(ctmd_dir / series))
    assert body["label"] == "NonCOVID"
    assert body["probabilities"]["COVID"] < 0.5
    assert body["findings"]["category"] == category


def test_diagnose_json_matches_the_in_process_pipeline(
    covid_series: Path, p002_result: dict
) -> None:
    # What the CLI prints must be exactly what the pipeline computes.
    from services.diagnosis import diagnose_path

    result, prepared = diagnose_path(covid_series)
    assert p002_result == json.loads(json.dumps(result.as_json()))
    assert len(prepared.kept) == p002_result["slices_used"]


def test_diagnose_writes_heatmaps(tmp_path: Path, data_dir: Path) -> None:
    image = next((data_dir / "ucsd-covid-ct" / "images" / "COVID").iterdir())
    body = run_json("diagnose", str(image), "--heatmaps", str(tmp_path / "maps"))
    assert body["slices_total"] == 1 and len(body["heatmaps"]) == 1
    assert Path(body["heatmaps"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"this is not a CT study at all" * 10, "unsupported_format")],
)
def test_diagnose_bad_input_exits_2_with_code(tmp_path: Path, content: bytes, code: str) -> None:
    bad = tmp_path / "study.bin"
    bad.write_bytes(content)
    result = runner.invoke(app, ["diagnose", str(bad), "--json"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {code}: ")
    assert "Traceback" not in result.output


def test_diagnose_missing_path_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["diagnose", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_evaluate_lungs_meets_dice_target(data_dir: Path) -> None:
    body = run_json(
        "evaluate",
        "lungs",
        "--images",
        str(data_dir / "lung-masks" / "images"),
        "--masks",
        str(data_dir / "lung-masks" / "masks"),
    )
    assert body["n"] == 11 and body["dice_mean"] >= 0.95 and body["dice_min"] <= body["dice_mean"]


def test_evaluate_slices_prints_metrics(tmp_path: Path, data_dir: Path) -> None:
    root = data_dir / "ucsd-covid-ct"
    rows = [r for r in csv.DictReader((root / "labels.csv").open()) if r["split"] == "val"]
    subset = rows[:8] + rows[-8:]  # both classes
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label"])
        writer.writeheader()
        writer.writerows({"file": r["file"], "label": r["label"]} for r in subset)
    body = run_json("evaluate", "slices", "--root", str(root), "--labels", str(labels))
    assert {"accuracy", "sensitivity", "specificity", "f1", "auc", "n"} <= body.keys()
    assert body["n"] == 16


def test_evaluate_studies_on_the_shared_series(ctmd_dir: Path) -> None:
    body = run_json(
        "evaluate", "studies", "--root", str(ctmd_dir), "--labels", str(ctmd_dir / "studies.csv")
    )
    assert body["n"] == 3
    assert [s["study"] for s in body["studies"]] == ["P002", "cap002", "normal001"]
    assert all({"study", "diagnosis", "label", "probability"} <= s.keys() for s in body["studies"])


def test_demo_falls_back_to_the_shipped_demo_study_without_shared_data(tmp_path: Path) -> None:
    env = {**os.environ, "COVIDCT_DATA_DIR": str(tmp_path / "absent")}
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.demo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "covid-ct-md-P002" in out.stdout and "verdict: " in out.stdout
    assert "known diagnosis: COVID" in out.stdout
    assert "verdict: COVID" in out.stdout
