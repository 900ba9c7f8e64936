"""Ensemble v2: the RSNA pattern read off HU lung features, and when the stage uses it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from services.common.config import get_settings
from services.ensemble.series_verdict import (
    PUBLISHED_LIKELIHOOD_RATIOS,
    Pattern,
    SeriesPatternVerdict,
    SeriesVerdictConfig,
    classify,
    posterior_covid,
)
from services.ensemble.stage import load_ensemble_version, verdict

SIDES = ("left", "right")
LEVELS = ("upper", "middle", "lower")


def features(
    ggo_zones: dict[str, float] | None = None,
    consolidation: float = 0.002,
    peripheral_central_ratio: float = 2.0,
    lung_slices: int = 100,
) -> dict[str, Any]:
    """A lung-features dict: ground-glass share per side_level zone, the rest derived."""
    zones = {f"{s}_{lv}": 0.0 for s in SIDES for lv in LEVELS} | (ggo_zones or {})
    out: dict[str, Any] = {f"ggo_share_{z}": v for z, v in zones.items()}
    out["ggo_share"] = sum(zones.values()) / 6
    out["consolidation_share"] = consolidation
    out["peripheral_central_ratio"] = peripheral_central_ratio
    out["lung_slices"] = lung_slices
    out["sides_involved"] = len({z.split("_")[0] for z, v in zones.items() if v > 0.01})
    return out


CONFIG = SeriesVerdictConfig()
TYPICAL = {"left_lower": 0.12, "left_middle": 0.03, "right_lower": 0.02}


def test_bilateral_peripheral_multifocal_ground_glass_is_typical() -> None:
    pattern, reasons = classify(features(TYPICAL), CONFIG)
    assert pattern is Pattern.TYPICAL
    assert any("3 of 6 zones" in r for r in reasons)


def test_no_involved_zone_is_negative() -> None:
    pattern, _ = classify(features({"right_middle": 0.004}), CONFIG)
    assert pattern is Pattern.NEGATIVE


def test_one_lung_only_is_atypical() -> None:
    pattern, reasons = classify(features({"left_lower": 0.2, "left_middle": 0.05}), CONFIG)
    assert pattern is Pattern.ATYPICAL and "confined to the left lung" in reasons[-1]


def test_consolidation_outweighing_ground_glass_is_atypical() -> None:
    pattern, _ = classify(features(TYPICAL, consolidation=0.2), CONFIG)
    assert pattern is Pattern.ATYPICAL


def test_central_bilateral_opacity_is_indeterminate() -> None:
    pattern, _ = classify(features(TYPICAL, peripheral_central_ratio=0.8), CONFIG)
    assert pattern is Pattern.INDETERMINATE


def test_probability_is_the_prior_times_the_published_likelihood_ratio() -> None:
    reading = SeriesPatternVerdict().read(features(TYPICAL))
    lr = PUBLISHED_LIKELIHOOD_RATIOS[Pattern.TYPICAL]
    assert reading.p_covid == pytest.approx(lr / (1 + lr))
    low_prior = SeriesPatternVerdict(SeriesVerdictConfig(prior_covid=0.1)).read(features(TYPICAL))
    assert low_prior.p_covid == pytest.approx((lr / 9) / (1 + lr / 9))
    assert low_prior.p_covid < reading.p_covid
    # Typical pushes above the prior, everything else below it.
    for zones, ratio in ((None, 2.0), (TYPICAL, 0.8), ({"left_lower": 0.2}, 2.0)):
        assert (
            SeriesPatternVerdict().read(features(zones, peripheral_central_ratio=ratio)).p_covid
            < 0.5
        )


def test_config_rejects_a_bad_prior_and_unknown_settings() -> None:
    with pytest.raises(ValueError, match="prior_covid"):
        SeriesVerdictConfig(prior_covid=1.0)
    with pytest.raises(ValueError, match="unknown"):
        SeriesVerdictConfig.from_mapping({"threshold": 0.5, "bogus": 1})


def test_short_series_and_studies_without_hu_are_not_read_as_whole_lungs() -> None:
    reader = SeriesPatternVerdict()
    assert reader.applies(features(TYPICAL))
    assert not reader.applies(features(TYPICAL, lung_slices=3))
    assert not reader.applies(None)


def test_shipped_v2_uses_the_pattern_for_series_and_the_v1_soft_vote_otherwise() -> None:
    settings = get_settings()
    ensemble = load_ensemble_version(settings.models_dir / "ensemble" / "v2", "v2")
    assert ensemble.series is not None and ensemble.soft_vote_version == "v1"
    probs = np.tile([[0.9, 0.1]], (40, 1))

    series = verdict(probs, features(TYPICAL), ensemble, "v1.1")
    assert series.label == "COVID"
    assert series.model_versions == {
        "slice_cnn": "v1.1",
        "ensemble": "v2",
        "verdict": "series-pattern",
    }
    assert series.findings is not None and series.findings["pattern"] == "typical"
    assert math.isclose(sum(series.probabilities.values()), 1.0)
    # Issue 20.5: the result says where P(COVID) comes from; the two numbers give it back.
    prior, ratio = series.findings["prior_covid"], series.findings["likelihood_ratio"]
    assert ratio == ensemble.series.config.likelihood_ratios["typical"]
    assert series.probabilities["COVID"] == pytest.approx(posterior_covid(prior, ratio))

    short = verdict(probs[:2], features(TYPICAL, lung_slices=2), ensemble, "v1.1")
    assert short.model_versions["verdict"] == "soft-vote-v1"
    v1 = load_ensemble_version(settings.models_dir / "ensemble" / "v1", "v1")
    expected = verdict(probs[:2], None, v1, "v1.1")
    assert short.probabilities == expected.probabilities


def test_v1_stays_loadable_by_version() -> None:
    v1 = load_ensemble_version(get_settings().models_dir / "ensemble" / "v1", "v1")
    assert v1.series is None
    decided = verdict(np.tile([[0.2, 0.8]], (5, 1)), None, v1, "v1")
    assert decided.model_versions == {"slice_cnn": "v1", "ensemble": "v1"}
