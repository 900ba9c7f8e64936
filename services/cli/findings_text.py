"""The verdict's HU findings in a few lines of text (``covidct diagnose``, ``make demo``).

Plain dict in, lines out: imports nothing of the server, so any CLI may use it.
"""

from __future__ import annotations

from typing import Any

ZONE_ORDER = (
    "right_upper",
    "right_middle",
    "right_lower",
    "left_upper",
    "left_middle",
    "left_lower",
)


def findings_lines(findings: dict[str, Any] | None) -> list[str]:
    """Category, opacity scores and the RSNA pattern with its reasons; [] without findings."""
    if not findings:
        return []
    lines = []
    if findings.get("category"):
        lines.append(f"category: {findings['category']}")
    if findings.get("opacity_percent") is not None:
        lesion_ml = float(findings.get("lesion_volume_ml") or 0.0)
        lung_ml = float(findings.get("lung_volume_ml") or 0.0)
        lines.append(
            f"opacity {findings['opacity_percent']:.1f} % of the lungs "
            f"(high opacity {findings.get('high_opacity_percent', 0.0):.1f} %), lesions "
            f"{lesion_ml:.0f} mL of {lung_ml:.0f} mL lung, "
            f"severity {findings.get('severity_score', 0)}/24"
        )
        zones = findings.get("zone_opacity_percent") or {}
        if zones:
            lines.append(
                "zones: "
                + ", ".join(
                    f"{zone.replace('_', ' ')} {float(zones[zone]):.1f} %"
                    for zone in ZONE_ORDER
                    if zone in zones
                )
            )
    if findings.get("pattern"):
        reasons = "; ".join(findings.get("pattern_reasons") or [])
        lines.append(f"CT pattern (RSNA): {findings['pattern']}: {reasons}")
    return lines
