"""The findings lines `covidct diagnose` and `make demo` print under the verdict."""

from __future__ import annotations

from services.cli.findings_text import findings_lines


def test_v3_findings_print_category_opacity_severity_zones_and_pattern() -> None:
    lines = findings_lines(
        {
            "category": "covid",
            "opacity_percent": 6.33,
            "high_opacity_percent": 0.16,
            "lesion_volume_ml": 246.5,
            "lung_volume_ml": 3895.0,
            "severity_score": 7,
            "zone_opacity_percent": {"left_lower": 27.0, "right_upper": 1.1},
            "pattern": "typical",
            "pattern_reasons": ["bilateral", "peripheral"],
        }
    )
    assert lines[0] == "category: covid"
    assert lines[1] == (
        "opacity 6.3 % of the lungs (high opacity 0.2 %), lesions 246 mL of 3895 mL lung, "
        "severity 7/24"
    )
    assert lines[2] == "zones: right upper 1.1 %, left lower 27.0 %"  # reading order
    assert lines[3] == "CT pattern (RSNA): typical: bilateral; peripheral"


def test_v2_findings_print_the_pattern_only_and_images_nothing() -> None:
    assert findings_lines({"pattern": "negative", "pattern_reasons": ["none"]}) == [
        "CT pattern (RSNA): negative: none"
    ]
    assert findings_lines(None) == [] and findings_lines({}) == []
