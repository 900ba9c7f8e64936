"""The verdict stage: per-slice probabilities of one study in, patient verdict out.

The Celery task and the offline ``diagnose`` both call :func:`verdict`, so there is one
decision rule and one class list (``CLASS_NAMES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from services.common.caches import process_cache
from services.common.config import get_settings
from services.common.modelinfo import CLASS_NAMES
from services.ensemble.model import SoftVoteEnsemble, load_ensemble


@dataclass(frozen=True)
class LoadedEnsemble:
    model: SoftVoteEnsemble
    version: str


@dataclass(frozen=True)
class Verdict:
    label: str
    probabilities: dict[str, float]
    model_versions: dict[str, str]


@process_cache
def loaded_ensemble() -> LoadedEnsemble:
    settings = get_settings()
    return load_ensemble_version(settings.ensemble_model_dir, settings.ensemble_model_version)


def load_ensemble_version(directory: Path, version: str) -> LoadedEnsemble:
    return LoadedEnsemble(load_ensemble(directory), version)


def verdict(
    slice_probabilities: NDArray[np.float64], ensemble: LoadedEnsemble, slice_model_version: str
) -> Verdict:
    """(N, 2) [NonCOVID, COVID] slice probabilities in slice order -> patient verdict."""
    patient = ensemble.model.predict_proba([slice_probabilities])[0]
    return Verdict(
        label=CLASS_NAMES[int(np.argmax(patient))],
        probabilities={name: float(p) for name, p in zip(CLASS_NAMES, patient, strict=True)},
        model_versions={"slice_cnn": slice_model_version, "ensemble": ensemble.version},
    )
