"""Offline diagnosis of one study: the service's three stages, run in a row in-process.

The Celery tasks call the same stage functions one per task (with storage and database
around them); this is the floor the service is benchmarked against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.config import get_settings
from services.common.modelinfo import COVID_INDEX, slice_model_info
from services.ensemble.stage import loaded_ensemble, verdict
from services.inference.stage import loaded_scorer, score_slices
from services.preprocess.stage import preprocess_path
from services.preprocess.types import PreparedStudy


@dataclass
class Diagnosis:
    label: str
    probabilities: dict[str, float]
    slices_total: int
    slices_used: int
    slice_probabilities: list[float]  # P(COVID) of each used slice, in slice order
    model_versions: dict[str, str]
    # HU findings (DICOM/NIfTI inputs): lesion measurements, category and pattern under v3
    findings: dict[str, Any] | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probabilities": self.probabilities,
            "slices_total": self.slices_total,
            "slices_used": self.slices_used,
            "slice_probabilities": self.slice_probabilities,
            "model_versions": self.model_versions,
            "findings": self.findings,
            "dropped": self.dropped,
            "series": self.series,
        }


def diagnose_path(path: Path) -> tuple[Diagnosis, PreparedStudy]:
    """Preprocess -> score -> verdict for one study, with the process's settings."""
    settings = get_settings()
    scorer, ensemble = loaded_scorer(), loaded_ensemble()  # loaded before the clock starts
    started = time.perf_counter()
    preprocessed = preprocess_path(path, settings, slice_model_info(settings.slice_model_dir))
    prepared = preprocessed.prepared
    prep_done = time.perf_counter()
    scores = score_slices(prepared.inputs, scorer)
    score_done = time.perf_counter()
    decided = verdict(
        scores.probabilities,
        prepared.lung_features,
        ensemble,
        scores.model_version,
        prepared.lesion_findings,
    )
    return Diagnosis(
        label=decided.label,
        probabilities=decided.probabilities,
        slices_total=prepared.slices_total,
        slices_used=len(prepared.kept),
        slice_probabilities=[float(p) for p in scores.probabilities[:, COVID_INDEX]],
        model_versions=decided.model_versions,
        findings=decided.findings,
        dropped=[
            {"index": d.index, "reason": d.reason.value, "detail": d.detail}
            for d in prepared.dropped
        ],
        series=preprocessed.series,
        timings={
            "preprocess": prep_done - started,
            "score": score_done - prep_done,
            "ensemble": time.perf_counter() - score_done,
        },
    ), prepared
