"""The verdict stage: per-slice probabilities of one study in, patient verdict out.

The Celery task and the offline ``diagnose`` both call :func:`verdict`, so there is one
decision rule and one class list (``CLASS_NAMES``).

Two paths, chosen per study by what it holds:

* a whole-lung series with HU (DICOM/NIfTI, at least ``min_lung_slices`` lung-bearing slices)
  is read by :class:`~services.ensemble.series_verdict.SeriesPatternVerdict` from its lung
  features (ensemble v2);
* anything else (single slices, screenshots, short series) goes to the XGBoost+SVM soft vote
  over slice probabilities, which was trained on data of that shape (ensemble v1).

Ensemble v3 (kind ``lesion-pattern``) reads whole-lung HU series from their lesion
measurements instead (:class:`~services.ensemble.lesion_verdict.LesionPatternVerdict`) and
adds ``findings.category``; a job without lesion measurements falls back to its ``series``
rule when the config names one, else to the soft vote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.common.caches import process_cache
from services.common.config import get_settings
from services.common.modelinfo import CLASS_NAMES
from services.ensemble.lesion_verdict import LesionPatternVerdict, LesionVerdictConfig
from services.ensemble.model import SoftVoteEnsemble, load_ensemble
from services.ensemble.series_verdict import SeriesPatternVerdict, SeriesVerdictConfig

SERIES_PATTERN_KIND = "series-pattern"
LESION_PATTERN_KIND = "lesion-pattern"


@dataclass(frozen=True)
class LoadedEnsemble:
    model: SoftVoteEnsemble  # the slice-probability soft vote (short studies, no HU)
    version: str
    series: SeriesPatternVerdict | None = None  # whole-lung HU series, when the version has it
    soft_vote_version: str | None = None  # version of ``model`` when it differs from ``version``
    lesions: LesionPatternVerdict | None = None  # whole-lung HU series with lesion masks (v3)


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
    """A soft-vote directory (v1), a series-pattern one naming its soft vote (v2), or a
    lesion-pattern one (v3: lesion rule, optional series rule, soft vote)."""
    config = json.loads((directory / "config.json").read_text())
    kind = config.get("kind")
    if kind not in (SERIES_PATTERN_KIND, LESION_PATTERN_KIND):
        return LoadedEnsemble(load_ensemble(directory), version)
    if tuple(config.get("classes", CLASS_NAMES)) != CLASS_NAMES:
        raise ValueError(f"{directory} decides {config.get('classes')}, expected {CLASS_NAMES}")
    soft_vote = str(config["soft_vote"])
    series = None
    if kind == SERIES_PATTERN_KIND or "series" in config:
        series = SeriesPatternVerdict(SeriesVerdictConfig.from_mapping(config.get("series", {})))
    lesions = None
    if kind == LESION_PATTERN_KIND:
        lesions = LesionPatternVerdict(LesionVerdictConfig.from_mapping(config.get("lesions", {})))
    return LoadedEnsemble(
        model=load_ensemble(directory.parent / soft_vote),
        version=version,
        series=series,
        soft_vote_version=soft_vote,
        lesions=lesions,
    )


def _bayes(config: SeriesVerdictConfig | LesionVerdictConfig, pattern: str) -> dict[str, float]:
    """The two numbers P(COVID) is computed from, so a reader can follow it."""
    return {
        "prior_covid": float(config.prior_covid),
        "likelihood_ratio": float(config.likelihood_ratios[pattern]),
    }


def verdict(
    slice_probabilities: NDArray[np.float64],
    lung_features: dict[str, Any] | None,
    ensemble: LoadedEnsemble,
    slice_model_version: str,
    lesion_findings: dict[str, Any] | None = None,
) -> Verdict:
    """(N, 2) [NonCOVID, COVID] slice probabilities in slice order (plus the study's HU lung
    features and lesion measurements when it had HU) -> patient verdict and its findings."""
    versions = {"slice_cnn": slice_model_version, "ensemble": ensemble.version}
    if ensemble.lesions is not None and ensemble.lesions.applies(lesion_findings):
        assert lesion_findings is not None
        lesion_reading = ensemble.lesions.read(lesion_findings)
        threshold = ensemble.lesions.config.threshold
        return Verdict(
            label="COVID" if lesion_reading.p_covid >= threshold else "NonCOVID",
            probabilities={
                "NonCOVID": 1.0 - lesion_reading.p_covid,
                "COVID": lesion_reading.p_covid,
            },
            model_versions=versions | {"verdict": LESION_PATTERN_KIND},
            # The lesion measurements replace the HU-range features: one source of numbers.
            findings=dict(lesion_findings)
            | {
                "category": lesion_reading.category.value,
                "pattern": lesion_reading.pattern.value,
                "pattern_reasons": lesion_reading.reasons,
                # Where P(COVID) comes from (issue 20.5): prior odds x this ratio.
                **_bayes(ensemble.lesions.config, lesion_reading.pattern.value),
            },
        )
    reported = findings(lung_features)
    if ensemble.series is not None and ensemble.series.applies(lung_features):
        assert lung_features is not None and reported is not None
        reading = ensemble.series.read(lung_features)
        threshold = ensemble.series.config.threshold
        label = "COVID" if reading.p_covid >= threshold else "NonCOVID"
        reported |= {
            "pattern": reading.pattern.value,
            "pattern_reasons": reading.reasons,
            **_bayes(ensemble.series.config, reading.pattern.value),
        }
        return Verdict(
            label=label,
            probabilities={"NonCOVID": 1.0 - reading.p_covid, "COVID": reading.p_covid},
            model_versions=versions | {"verdict": SERIES_PATTERN_KIND},
            findings=reported,
        )
    patient = ensemble.model.predict_proba([slice_probabilities])[0]
    if ensemble.soft_vote_version is not None:
        versions |= {"verdict": f"soft-vote-{ensemble.soft_vote_version}"}
    return Verdict(
        label=CLASS_NAMES[int(np.argmax(patient))],
        probabilities={name: float(p) for name, p in zip(CLASS_NAMES, patient, strict=True)},
        model_versions=versions,
        findings=reported,
    )
