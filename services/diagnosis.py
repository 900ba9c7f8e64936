"""Offline diagnosis of one study: read -> preprocess -> slice CNN -> patient ensemble.

The Celery tasks run the same three stages one by one; this module chains them in-process
(the floor the service is benchmarked against).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from services.common.config import Settings, get_settings
from services.ensemble.model import SoftVoteEnsemble
from services.inference.artifacts import SliceModel, load_slice_model
from services.inference.model import CLASSES
from services.preprocess.pipeline import PreprocessOptions, preprocess_study
from services.preprocess.readers import read_study
from services.preprocess.types import PreparedStudy, Study


@dataclass
class Diagnosis:
    label: str
    probabilities: dict[str, float]
    slices_total: int
    slices_used: int
    slice_probabilities: list[float]  # P(COVID) of each used slice, in slice order
    model_versions: dict[str, str]
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
            "dropped": self.dropped,
            "series": self.series,
        }


@dataclass
class Models:
    slice_model: SliceModel
    ensemble: SoftVoteEnsemble
    ensemble_version: str


@lru_cache(maxsize=4)
def _load_models(models_dir: Path, slice_version: str, ensemble_version: str) -> Models:
    from services.ensemble.model import load_ensemble

    return Models(
        slice_model=load_slice_model(models_dir / "slice-cnn" / slice_version),
        ensemble=load_ensemble(models_dir / "ensemble" / ensemble_version),
        ensemble_version=ensemble_version,
    )


def load_models(settings: Settings | None = None) -> Models:
    settings = settings or get_settings()
    return _load_models(
        settings.models_dir, settings.slice_model_version, settings.ensemble_model_version
    )


def preprocess_options(models: Models) -> PreprocessOptions:
    return PreprocessOptions(
        size=models.slice_model.image_size, enhancement=models.slice_model.enhancement
    )


def verdict(
    study: Study, prepared: PreparedStudy, slice_probs: np.ndarray, models: Models
) -> Diagnosis:
    """Patient-level decision from the per-slice probabilities of one study."""
    patient = models.ensemble.predict_proba([slice_probs])[0]
    probabilities = {name: float(p) for name, p in zip(CLASSES, patient, strict=True)}
    return Diagnosis(
        label=CLASSES[int(np.argmax(patient))],
        probabilities=probabilities,
        slices_total=prepared.slices_total,
        slices_used=len(prepared.kept),
        slice_probabilities=[float(p) for p in slice_probs[:, 1]],
        model_versions={
            "slice_cnn": models.slice_model.version,
            "ensemble": models.ensemble_version,
        },
        dropped=[
            {"index": d.index, "reason": d.reason.value, "detail": d.detail}
            for d in prepared.dropped
        ],
        series=study.series,
    )


def diagnose_path(path: Path, settings: Settings | None = None) -> tuple[Diagnosis, PreparedStudy]:
    settings = settings or get_settings()
    models = load_models(settings)
    started = time.perf_counter()
    study = read_study(path, settings)
    read_done = time.perf_counter()
    prepared = preprocess_study(study, preprocess_options(models))
    prep_done = time.perf_counter()
    slice_probs = models.slice_model.predict_proba(prepared.inputs)
    score_done = time.perf_counter()
    result = verdict(study, prepared, slice_probs, models)
    result.timings = {
        "read": read_done - started,
        "preprocess": prep_done - read_done,
        "score": score_done - prep_done,
        "ensemble": time.perf_counter() - score_done,
    }
    return result, prepared
