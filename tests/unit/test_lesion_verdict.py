"""Ensemble v3: the RSNA pattern and the three-way category read off lesion measurements."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.config import get_settings
from services.ensemble.lesion_verdict import (
    Category,
    LesionPatternVerdict,
    LesionVerdictConfig,
    classify,
)
from services.ensemble.series_verdict import PUBLISHED_LIKELIHOOD_RATIOS, Pattern
from services.ensemble.stage import load_ensemble_version, verdict

ZONES = ("right_upper", "right_middle", "right_lower", "left_upper", "left_middle", "left_lower")
CONFIG = LesionVerdictConfig()


def lesions(zones: dict[str, float] | None = None, **overrides: Any) -> dict[str, Any]:
    """A lesion-measurements dict: opacity % per zone, typical-COVID descriptors by default."""
    zone_percent = {z: 0.0 for z in ZONES} | (zones or {})
    out: dict[str, Any] = {
        "lung_slices": 120,
        "opacity_percent": sum(zone_percent.values()) / 6,
        "lesion_volume_ml": 10 * sum(zone_percent.values()),
        "ggo_fraction": 0.8,
        "severity_score": sum(1 for v in zone_percent.values() if v > 0),
        "zone_opacity_percent": zone_percent,
        "peripheral_central_ratio": 2.5,
        "lower_zone_fraction": 0.6,
        "lesion_components": 5,
        "lobar_consolidation": False,
        "nodules": 0,
        "centrilobular_nodules": False,
        "mass": False,
        "mass_diameter_mm": 0.0,
        "cavitation": False,
    }
    return out | overrides


TYPICAL = {"right_lower": 12.0, "left_lower": 8.0, "left_middle": 3.0}


def _pattern(findings: dict[str, Any]) -> Pattern:
    return classify(findings, CONFIG)[0]


def test_bilateral_peripheral_multifocal_ground_glass_is_typical_and_covid() -> None:
    reading = LesionPatternVerdict().read(lesions(TYPICAL))
    assert reading.pattern is Pattern.TYPICAL and reading.category is Category.COVID
    assert any("3 of 6 zones" in r for r in reading.reasons)
    assert "lower-zone predominant" in reading.reasons[-2]
    # Lower-zone predominance supports, it does not replace the peripheral distribution.
    central = LesionPatternVerdict().read(lesions(TYPICAL, peripheral_central_ratio=0.8))
    assert central.pattern is Pattern.INDETERMINATE and "peripheral" in central.reasons[-2]
    # Opacities with a pattern 2:1 against COVID-19 at the default prior: another pneumonia.
    assert central.category is Category.OTHER_PNEUMONIA
    not_lower = lesions(TYPICAL, lower_zone_fraction=0.2)
    assert _pattern(not_lower) is Pattern.TYPICAL


def test_a_central_component_beside_peripheral_disease_is_not_typical() -> None:
    # RSNA: perihilar opacities are indeterminate; "central and peripheral" favours another
    # pneumonia (Bai et al. 2020). The core as opaque as the lung overall: not typical.
    spared = lesions(TYPICAL, central_opacity_ratio=0.3)
    assert _pattern(spared) is Pattern.TYPICAL
    reading = LesionPatternVerdict().read(lesions(TYPICAL, central_opacity_ratio=1.5))
    assert reading.pattern is Pattern.INDETERMINATE
    assert reading.category is Category.OTHER_PNEUMONIA and reading.p_covid < 0.5
    assert any("central component" in r for r in reading.reasons)
    # Findings from before the key existed read as they did.
    assert "central_opacity_ratio" not in lesions(TYPICAL)
    assert _pattern(lesions(TYPICAL)) is Pattern.TYPICAL


def test_each_typical_feature_is_needed() -> None:
    one_side = {"right_lower": 12.0, "right_middle": 5.0}
    reading = LesionPatternVerdict().read(lesions(one_side))
    assert reading.pattern is Pattern.INDETERMINATE  # RSNA: unilateral is indeterminate
    assert reading.category is Category.OTHER_PNEUMONIA and "bilateral" in reading.reasons[-2]
    # Consolidation without ground glass is not "ground glass with or without consolidation".
    assert _pattern(lesions(TYPICAL, ggo_fraction=0.1)) is Pattern.INDETERMINATE
    # Bilateral, one focus per side in one zone each... still two zones: multifocal.
    single = lesions({"right_lower": 5.0, "left_lower": 5.0}, lesion_components=1)
    assert _pattern(single) is Pattern.TYPICAL
    strict = LesionVerdictConfig(min_involved_zones=3, min_components=3)
    assert classify(single, strict)[0] is Pattern.INDETERMINATE


def test_no_involved_zone_is_negative_and_no_pneumonia() -> None:
    reading = LesionPatternVerdict().read(lesions({"right_middle": 0.4}))
    assert reading.pattern is Pattern.NEGATIVE
    assert reading.category is Category.NO_PNEUMONIA
    assert reading.p_covid < 0.1


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"lobar_consolidation": True, "lobar_consolidation_ml": 150.0}, "lobar"),
        ({"centrilobular_nodules": True, "nodules": 14}, "centrilobular"),
    ],
)
def test_atypical_features_without_the_typical_pattern_are_other_pneumonia(
    overrides: dict[str, Any], words: str
) -> None:
    one_lung = {"right_lower": 20.0, "right_middle": 10.0}
    reading = LesionPatternVerdict().read(lesions(one_lung, **overrides))
    assert reading.pattern is Pattern.ATYPICAL
    assert reading.category is Category.OTHER_PNEUMONIA
    assert words in reading.reasons[-2]
    assert "atypical" in reading.reasons[-1]
    assert reading.p_covid < 0.1
    # The same features in lungs without involved zones are still atypical, not negative.
    assert _pattern(lesions(None, **overrides)) is Pattern.ATYPICAL


@pytest.mark.parametrize(
    "overrides",
    [{"mass": True, "mass_diameter_mm": 42.0}, {"cavitation": True}],
)
def test_a_mass_or_cavitation_is_never_covid(overrides: dict[str, Any]) -> None:
    # Even with the typical ground-glass pattern around it.
    for zones in (TYPICAL, None):
        reading = LesionPatternVerdict().read(lesions(zones, **overrides))
        assert reading.pattern is Pattern.ATYPICAL
        assert reading.category is Category.OTHER_PNEUMONIA
        assert reading.p_covid < 0.5


def test_typical_beats_stray_nodules_as_in_the_rsna_definition() -> None:
    findings = lesions(TYPICAL, centrilobular_nodules=True, nodules=12)
    assert _pattern(findings) is Pattern.TYPICAL


def test_weak_evidence_is_indeterminate() -> None:
    # Opacity near the segmenter's false-positive floor: too little to name a cause.
    faint = LesionPatternVerdict().read(lesions({"right_lower": 1.2, "left_lower": 1.1}))
    assert faint.pattern is Pattern.TYPICAL
    assert faint.category is Category.INDETERMINATE and "weak evidence" in faint.reasons[-1]
    # P(COVID) close to the threshold (a typical pattern at a prior of 0.19): abstain.
    close = LesionPatternVerdict(LesionVerdictConfig(prior_covid=0.19)).read(lesions(TYPICAL))
    assert abs(close.p_covid - 0.5) < 0.1
    assert close.category is Category.INDETERMINATE and "threshold" in close.reasons[-1]
    # Far below it (prior 0.05): the typical pattern is not enough to call COVID-19.
    low = LesionPatternVerdict(LesionVerdictConfig(prior_covid=0.05)).read(lesions(TYPICAL))
    assert low.p_covid < 0.4 and low.category is Category.OTHER_PNEUMONIA
    # With no margin the category follows the threshold exactly.
    exact = LesionPatternVerdict(LesionVerdictConfig(prior_covid=0.19, abstain_margin=0.0))
    assert exact.read(lesions(TYPICAL)).category is Category.COVID


def test_probability_is_the_prior_times_the_published_likelihood_ratio() -> None:
    lr = PUBLISHED_LIKELIHOOD_RATIOS[Pattern.TYPICAL]
    assert LesionPatternVerdict().read(lesions(TYPICAL)).p_covid == pytest.approx(lr / (1 + lr))
    lr = PUBLISHED_LIKELIHOOD_RATIOS[Pattern.INDETERMINATE]
    one_side = lesions({"right_lower": 12.0, "right_middle": 5.0})
    assert LesionPatternVerdict().read(one_side).p_covid == pytest.approx(lr / (1 + lr))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="prior_covid"):
        LesionVerdictConfig(prior_covid=0.0)
    with pytest.raises(ValueError, match="threshold"):
        LesionVerdictConfig(threshold=1.0)
    with pytest.raises(ValueError, match="fractions"):
        LesionVerdictConfig(min_ggo_fraction=1.5)
    with pytest.raises(ValueError, match="abstain_margin"):
        LesionVerdictConfig(abstain_margin=0.5)
    with pytest.raises(ValueError, match="involved_percent"):
        LesionVerdictConfig(involved_percent=0.0)
    with pytest.raises(ValueError, match="likelihood_ratios lacks"):
        LesionVerdictConfig(likelihood_ratios={"typical": 4.0})
    with pytest.raises(ValueError, match="positive"):
        LesionVerdictConfig(likelihood_ratios=dict.fromkeys(PUBLISHED_LIKELIHOOD_RATIOS, 0.0))
    with pytest.raises(ValueError, match="unknown"):
        LesionVerdictConfig.from_mapping({"bogus": 1})


def test_shipped_v3_config_is_valid_and_uses_the_published_ratios() -> None:
    directory = get_settings().models_dir / "ensemble" / "v3"
    config = json.loads((directory / "config.json").read_text())
    loaded = LesionVerdictConfig.from_mapping(config["lesions"])
    for pattern, lr in PUBLISHED_LIKELIHOOD_RATIOS.items():
        assert loaded.likelihood_ratios[pattern] == pytest.approx(lr, rel=1e-5)
    reader = LesionPatternVerdict.load(directory / "config.json")
    assert reader.config == loaded


def test_short_series_and_studies_without_lesions_are_not_read() -> None:
    reader = LesionPatternVerdict()
    assert reader.applies(lesions(TYPICAL))
    assert not reader.applies(lesions(TYPICAL, lung_slices=5))
    assert not reader.applies(None)


def test_shipped_v3_reads_lesions_then_falls_back_to_v2_and_the_soft_vote() -> None:
    settings = get_settings()
    ensemble = load_ensemble_version(settings.models_dir / "ensemble" / "v3", "v3")
    assert ensemble.lesions is not None and ensemble.series is not None
    assert ensemble.soft_vote_version == "v1"
    probs = np.tile([[0.9, 0.1]], (40, 1))

    decided = verdict(probs, None, ensemble, "v1.1", lesions(TYPICAL))
    assert decided.label == "COVID"
    assert decided.model_versions == {
        "slice_cnn": "v1.1",
        "ensemble": "v3",
        "verdict": "lesion-pattern",
    }
    assert decided.findings is not None
    assert decided.findings["category"] == "covid" and decided.findings["pattern"] == "typical"
    assert decided.findings["opacity_percent"] == pytest.approx(23 / 6)
    assert math.isclose(sum(decided.probabilities.values()), 1.0)
    prior, ratio = decided.findings["prior_covid"], decided.findings["likelihood_ratio"]
    assert prior == ensemble.lesions.config.prior_covid
    assert ratio == ensemble.lesions.config.likelihood_ratios["typical"]
    assert decided.probabilities["COVID"] == pytest.approx(
        prior * ratio / (prior * ratio + 1 - prior)
    )

    negative = verdict(probs, None, ensemble, "v1.1", lesions(None))
    assert negative.label == "NonCOVID" and negative.findings is not None
    assert negative.findings["category"] == "no_pneumonia"

    # A job preprocessed before v3 (lung features, no lesion measurements): the v2 rule.
    zones = {f"ggo_share_{z}": 0.0 for z in ZONES}
    v2_features = zones | {"lung_slices": 100, "ggo_share": 0.0, "consolidation_share": 0.0}
    older = verdict(probs, v2_features, ensemble, "v1.1", None)
    assert older.model_versions["verdict"] == "series-pattern"
    # Short studies: the v1 soft vote, as before.
    short = verdict(probs[:2], None, ensemble, "v1.1", lesions(TYPICAL, lung_slices=2))
    assert short.model_versions["verdict"] == "soft-vote-v1"


def test_v2_and_v1_stay_loadable_by_version() -> None:
    models = get_settings().models_dir / "ensemble"
    v2 = load_ensemble_version(models / "v2", "v2")
    assert v2.series is not None and v2.lesions is None
    v1 = load_ensemble_version(models / "v1", "v1")
    assert v1.series is None and v1.lesions is None


def test_default_ensemble_is_v3() -> None:
    assert get_settings().ensemble_model_version == "v3"
    assert (Path(get_settings().ensemble_model_dir) / "config.json").is_file()
