"""Patient verdict for whole CT series from the HU lung features: the RSNA reading, quantified.

A radiologist reads a chest CT for COVID-19 with the RSNA expert consensus categories
(Simpson et al., Radiology: Cardiothoracic Imaging 2020;2:e200152):

* **typical**: bilateral, peripheral, multifocal ground-glass opacity (with or without
  consolidation);
* **indeterminate**: opacities without that distribution (diffuse, central, perihilar);
* **atypical**: isolated lobar or segmental consolidation without ground glass, or disease
  confined to one lung;
* **negative**: no features of pneumonia.

This module reads those categories off :mod:`services.preprocess.lung_features` (shares of
lung volume in the ground-glass and consolidation HU ranges per lung, zone and depth) and
turns the category into P(COVID) with Bayes' rule: prior odds x the category's likelihood
ratio. The likelihood ratios come from a published multireader study of the RSNA categories
(Som et al., Radiology: Cardiothoracic Imaging 2020, doi:10.1148/ryct.2020200276; 89 CTs,
9 readers, RT-PCR reference): "typical" sensitivity 0.86 / specificity 0.802, "typical or
indeterminate" sensitivity 0.975 / specificity 0.547. So P(category | COVID) is 0.86 / 0.115
/ 0.025 for typical / indeterminate / atypical-or-negative and P(category | not COVID) is
0.198 / 0.255 / 0.547: likelihood ratios 4.34, 0.45 and 0.046. Nothing here is fitted on
this project's data; the three COVID-CT-MD series are only the test.

The rule needs the whole lungs (zones, sides); studies with fewer lung-bearing slices than
``min_lung_slices`` (single slices, screenshots) go to the slice-probability soft vote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

SIDES = ("left", "right")
LEVELS = ("upper", "middle", "lower")


class Pattern(StrEnum):
    TYPICAL = "typical"
    INDETERMINATE = "indeterminate"
    ATYPICAL = "atypical"
    NEGATIVE = "negative"


# Som et al. 2020 (see the module docstring); atypical and negative share one estimate.
PUBLISHED_LIKELIHOOD_RATIOS: dict[str, float] = {
    Pattern.TYPICAL: 0.86 / 0.198,
    Pattern.INDETERMINATE: 0.115 / 0.255,
    Pattern.ATYPICAL: 0.025 / 0.547,
    Pattern.NEGATIVE: 0.025 / 0.547,
}


@dataclass(frozen=True)
class SeriesVerdictConfig:
    """The rule's constants (``models/ensemble/<version>/config.json`` → ``series``)."""

    min_lung_slices: int = 20  # fewer lung-bearing slices: not a whole-lung series
    involved_share: float = 0.01  # a zone with over 1 % ground glass is involved
    min_involved_zones: int = 2  # multifocal: at least two of the six zones
    prior_covid: float = 0.5  # pre-test probability; set it to the local prevalence
    threshold: float = 0.5  # P(COVID) at or above this is labelled COVID
    likelihood_ratios: dict[str, float] = field(
        default_factory=lambda: dict(PUBLISHED_LIKELIHOOD_RATIOS)
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.prior_covid < 1.0:
            raise ValueError("prior_covid must lie strictly between 0 and 1")
        missing = {p.value for p in Pattern} - set(self.likelihood_ratios)
        if missing:
            raise ValueError(f"likelihood_ratios lacks {sorted(missing)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SeriesVerdictConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown series verdict settings {sorted(unknown)}")
        return cls(**dict(values))


@dataclass(frozen=True)
class PatternReading:
    pattern: Pattern
    reasons: list[str]
    p_covid: float


def involved_zones(features: Mapping[str, Any], share: float) -> list[str]:
    """Side x level zones whose ground-glass share exceeds ``share``."""
    return [
        f"{side}_{level}"
        for side in SIDES
        for level in LEVELS
        if float(features.get(f"ggo_share_{side}_{level}", 0.0)) > share
    ]


def classify(features: Mapping[str, Any], config: SeriesVerdictConfig) -> tuple[Pattern, list[str]]:
    """The RSNA category of a series and the measurements that decided it, in words."""
    zones = involved_zones(features, config.involved_share)
    sides = {zone.split("_")[0] for zone in zones}
    ggo = float(features.get("ggo_share", 0.0))
    consolidation = float(features.get("consolidation_share", 0.0))
    ratio = float(features.get("peripheral_central_ratio", 0.0))
    extent = f"ground glass {ggo:.1%} of the lungs, consolidation {consolidation:.1%}"
    if not zones:
        return Pattern.NEGATIVE, [
            f"no lung zone has over {config.involved_share:.0%} ground glass ({extent})"
        ]
    reasons = [extent, f"ground glass in {len(zones)} of 6 zones: {', '.join(zones)}"]
    if len(sides) == 1:
        return Pattern.ATYPICAL, [*reasons, f"confined to the {next(iter(sides))} lung"]
    if consolidation > ggo:
        return Pattern.ATYPICAL, [*reasons, "consolidation outweighs ground glass"]
    peripheral = ratio > 1.0
    multifocal = len(zones) >= config.min_involved_zones
    reasons.append(
        f"peripheral/central opacity ratio {ratio:.2f} "
        + ("(peripheral predominant)" if peripheral else "(not peripheral predominant)")
    )
    if peripheral and multifocal:
        return Pattern.TYPICAL, [*reasons, "bilateral, peripheral, multifocal ground glass"]
    return Pattern.INDETERMINATE, [*reasons, "bilateral opacities without the typical distribution"]


def posterior_covid(prior: float, likelihood_ratio: float) -> float:
    """P(COVID) by Bayes' rule in odds form: prior odds times the pattern's likelihood ratio."""
    odds = prior / (1.0 - prior) * likelihood_ratio
    return odds / (1.0 + odds)


class SeriesPatternVerdict:
    """P(COVID) of a whole-lung series from its RSNA pattern (no fitted parameters)."""

    def __init__(self, config: SeriesVerdictConfig | None = None) -> None:
        self.config = config or SeriesVerdictConfig()

    def applies(self, features: Mapping[str, Any] | None) -> bool:
        """True for HU lung features over enough slices for zones to mean anything."""
        if not features:
            return False
        return int(features.get("lung_slices") or 0) >= self.config.min_lung_slices

    def read(self, features: Mapping[str, Any]) -> PatternReading:
        pattern, reasons = classify(features, self.config)
        ratio = float(self.config.likelihood_ratios[pattern.value])
        return PatternReading(pattern, reasons, posterior_covid(self.config.prior_covid, ratio))

    @classmethod
    def load(cls, config_path: Path) -> SeriesPatternVerdict:
        config = json.loads(config_path.read_text())
        return cls(SeriesVerdictConfig.from_mapping(config.get("series", {})))
