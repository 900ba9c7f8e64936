"""The verdict stage: per-slice probabilities of one study in, patient verdict out.

The Celery task and the offline ``diagnose`` both call :func:`verdict`, so there is one
decision rule and one class list (``CLASS_NAMES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    findings: dict[str, Any] | None = None


# What the verdict reports of the HU lung features: the signs radiologists read (extent,
# side, zone, peripheral vs central). Per-slice lists stay with the job.
FINDING_KEYS = (
    "ggo_share",
    "consolidation_share",
    "ggo_share_left",
    "ggo_share_right",
    *(f"ggo_share_{side}_{level}" for side in ("left", "right")
      for level in ("upper", "middle", "lower")),
    "ggo_share_peripheral",
    "ggo_share_central",
    "left_right_balance",
    "peripheral_central_ratio",
    "lower_zone_fraction",
    "zones_involved",
    "sides_involved",
)  # fmt: skip


def findings(lung_features: dict[str, Any] | None) -> dict[str, Any] | None:
    """The reported subset of the lung features, plus the three pattern flags in words."""
    if not lung_features:
        return None
    out: dict[str, Any] = {key: lung_features[key] for key in FINDING_KEYS if key in lung_features}
    out["bilateral"] = lung_features.get("sides_involved") == 2
    out["peripheral_predominant"] = float(lung_features.get("peripheral_central_ratio", 0)) > 1
    out["lower_zone_predominant"] = float(lung_features.get("lower_zone_fraction", 0)) > 0.5
    return out


@process_cache
def loaded_ensemble() -> LoadedEnsemble:
    settings = get_settings()
    return load_ensemble_version(settings.ensemble_model_dir, settings.ensemble_model_version)


def load_ensemble_version(directory: Path, version: str) -> LoadedEnsemble:
    return LoadedEnsemble(load_ensemble(directory), version)


def verdict(
    slice_probabilities: NDArray[np.float64],
    lung_features: dict[str, Any] | None,
    ensemble: LoadedEnsemble,
    slice_model_version: str,
) -> Verdict:
    """(N, 2) [NonCOVID, COVID] slice probabilities in slice order (plus the study's HU lung
    features when it had HU) -> patient verdict and its findings."""
    patient = ensemble.model.predict_proba([slice_probabilities])[0]
    return Verdict(
        label=CLASS_NAMES[int(np.argmax(patient))],
        probabilities={name: float(p) for name, p in zip(CLASS_NAMES, patient, strict=True)},
        model_versions={"slice_cnn": slice_model_version, "ensemble": ensemble.version},
        findings=findings(lung_features),
    )
