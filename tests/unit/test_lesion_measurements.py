"""Lesion measurements on hand-built masks whose volumes, zones and shapes are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.preprocess import lesion_measurements as lm
from services.preprocess.lesions import LesionMasks

# 60 slices of 2 mm, 1 mm pixels: one voxel = 2 uL, 500 voxels = 1 mL.
SPACING = (2.0, 1.0, 1.0)
Z, Y, X = 60, 100, 140
RIGHT = (slice(0, 60), slice(20, 80), slice(10, 60))  # patient's right lung, image left
LEFT = (slice(0, 60), slice(20, 80), slice(80, 130))


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lungs = np.zeros((Z, Y, X), np.uint8)
    lungs[RIGHT] = 1
    lungs[LEFT] = 2
    hu = np.full((Z, Y, X), 40, np.int16)
    hu[lungs > 0] = -850
    return lungs, np.zeros_like(lungs, bool), np.zeros_like(lungs, bool), hu


def _masks(lungs: np.ndarray, ggo: np.ndarray, cons: np.ndarray) -> LesionMasks:
    return LesionMasks(ggo=ggo, consolidation=cons, lungs=lungs, spacing_mm=SPACING)


def _ball(center: tuple[int, int, int], radius_mm: float) -> np.ndarray:
    z, y, x = np.ogrid[:Z, :Y, :X]
    cz, cy, cx = center
    return ((z - cz) * SPACING[0]) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius_mm**2


@pytest.mark.parametrize(
    ("percent", "score"),
    [
        (0.0, 0),
        (0.09, 0),
        (0.1, 1),
        (24.99, 1),
        (25.0, 2),
        (49.99, 2),
        (50.0, 3),
        (75.0, 3),
        (75.01, 4),
        (100.0, 4),
    ],
)
def test_severity_bands(percent: float, score: int) -> None:
    assert lm.severity_band(percent) == score


def test_normal_lungs_measure_zero() -> None:
    lungs, ggo, cons, hu = _empty()
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["lung_volume_ml"] == pytest.approx(2 * 60 * 60 * 50 * 0.002)
    assert out["opacity_percent"] == 0.0 and out["lesion_volume_ml"] == 0.0
    assert out["severity_score"] == 0 and out["zones_involved"] == 0
    assert not out["bilateral"] and not out["mass"] and not out["cavitation"]
    assert out["slice_lesion_share"] == [0.0] * Z


def test_volumes_percentages_and_high_opacity() -> None:
    lungs, ggo, cons, hu = _empty()
    ggo[10:20, 30:40, 20:30] = True  # 1000 voxels = 2 mL
    hu[ggo] = -500
    cons[30:35, 30:40, 90:100] = True  # 500 voxels = 1 mL, half of it at -100 HU
    hu[30:35, 30:40, 90:100] = -250
    hu[30:35, 30:35, 90:100] = -100
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    lung_voxels = 2 * 60 * 60 * 50
    assert out["ggo_volume_ml"] == pytest.approx(2.0)
    assert out["consolidation_volume_ml"] == pytest.approx(1.0)
    assert out["lesion_volume_ml"] == pytest.approx(3.0)
    assert out["opacity_percent"] == pytest.approx(100 * 1500 / lung_voxels, abs=1e-3)
    assert out["high_opacity_percent"] == pytest.approx(100 * 250 / lung_voxels, abs=1e-3)
    assert out["ggo_fraction"] == pytest.approx(2 / 3, abs=1e-3)
    assert out["lesion_volume_ml_right"] == pytest.approx(2.0)
    assert out["lesion_volume_ml_left"] == pytest.approx(1.0)
    # Per-slice share is aligned with the slices: slice 10 holds 100 of 6000 lung pixels.
    assert len(out["slice_lesion_share"]) == Z
    assert out["slice_lesion_share"][10] == pytest.approx(100 / 6000, abs=1e-4)
    assert out["slice_lesion_share"][25] == 0.0
    # Plain JSON types only: the dict goes into a JSON column and to other rooms as is.
    assert json.loads(json.dumps(out)) == out
    assert all(type(v) in (int, float, bool, list, dict) for v in out.values())


def test_zones_are_thirds_of_each_lungs_own_extent_and_score_in_bands() -> None:
    lungs, ggo, cons, hu = _empty()
    # The left lung only spans slices 30..59: its thirds are 30-39 lower, 40-49, 50-59 upper.
    lungs[0:30][lungs[0:30] == 2] = 0
    # Right lung (slices 0-59): lower third = slices 0-19. Fill 30 % of it with GGO.
    ggo[0:20, 20:38, 10:60] = True  # 18 of 60 rows
    # Left lower third (slices 30-39): 80 % of it consolidated.
    cons[30:40, 20:68, 80:130] = True  # 48 of 60 rows
    # Left upper (slices 50-59): 10 % GGO.
    ggo[50:60, 20:26, 80:130] = True
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    zones = out["zone_opacity_percent"]
    assert zones["right_lower"] == pytest.approx(30.0)
    assert zones["right_middle"] == 0.0 and zones["right_upper"] == 0.0
    assert zones["left_lower"] == pytest.approx(80.0)
    assert zones["left_middle"] == 0.0
    assert zones["left_upper"] == pytest.approx(10.0)
    assert out["zone_severity"] == {
        "right_upper": 0,
        "right_middle": 0,
        "right_lower": 2,
        "left_upper": 1,
        "left_middle": 0,
        "left_lower": 4,
    }
    assert out["severity_score"] == 7
    assert out["zones_involved"] == 3 and out["bilateral"]
    lesion = 18 * 20 * 50 + 48 * 10 * 50 + 6 * 10 * 50
    assert out["lower_zone_fraction"] == pytest.approx(
        (18 * 20 * 50 + 48 * 10 * 50) / lesion, abs=1e-4
    )


def test_peripheral_lesions_read_peripheral_and_central_ones_do_not() -> None:
    lungs, ggo, cons, hu = _empty()
    # Against the lateral chest wall of each lung, all slices 10..50.
    ggo[10:50, 35:65, 10:15] = True
    ggo[10:50, 35:65, 125:130] = True
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["peripheral_fraction"] == 1.0
    assert out["peripheral_central_ratio"] > 1.0
    lungs, ggo, cons, hu = _empty()
    # Medial side of each lung (next to the mediastinum): deep from the chest wall.
    ggo[10:50, 40:60, 50:60] = True
    ggo[10:50, 40:60, 80:90] = True
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["peripheral_fraction"] == 0.0
    assert out["peripheral_central_ratio"] < 1.0
    assert out["central_fraction"] > 0.5 and out["central_opacity_ratio"] > 1.0


def test_central_component_beside_peripheral_disease_is_measured() -> None:
    lungs, ggo, cons, hu = _empty()
    ggo[10:50, 35:65, 10:15] = True
    ggo[10:50, 35:65, 125:130] = True
    only_peripheral = lm.measure(_masks(lungs, ggo, cons), hu)
    assert only_peripheral["central_fraction"] == 0.0
    assert only_peripheral["central_opacity_ratio"] < 0.1
    # The same plus a medial (perihilar) focus: "central and peripheral".
    ggo[10:50, 45:55, 55:60] = True
    ggo[10:50, 45:55, 80:85] = True
    both = lm.measure(_masks(lungs, ggo, cons), hu)
    assert 0.0 < both["central_fraction"] < 1.0
    assert both["central_opacity_ratio"] >= 1.0
    assert both["peripheral_central_ratio"] > 1.0  # still peripheral-predominant by v1's ratio


def test_foci_count_components_over_the_minimum_volume() -> None:
    lungs, ggo, cons, hu = _empty()
    ggo[5:10, 30:40, 20:30] = True  # 500 voxels = 1 mL
    ggo[20:25, 30:40, 20:30] = True
    ggo[40:45, 30:40, 90:100] = True
    ggo[50, 50, 50] = True  # 2 uL speck: below MIN_COMPONENT_ML
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["lesion_components"] == 3
    assert out["largest_component_ml"] == pytest.approx(1.0)


def test_large_solid_consolidation_without_ggo_is_lobar() -> None:
    lungs, ggo, cons, hu = _empty()
    cons[10:40, 25:75, 15:55] = True  # 60000 voxels = 120 mL, a block (not round)
    hu[cons] = 20
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["lobar_consolidation"] and out["lobar_consolidation_ml"] == pytest.approx(120.0)
    # With a thick ground-glass halo it is no longer "without ground glass".
    halo = np.zeros_like(ggo)
    halo[5:45, 20:80, 10:60] = True
    out = lm.measure(_masks(lungs, halo & ~cons, cons), hu)
    assert not out["lobar_consolidation"]


def test_a_round_solid_lesion_of_3_cm_is_a_mass_and_smaller_ones_nodules() -> None:
    lungs, ggo, cons, hu = _empty()
    cons |= _ball((30, 50, 35), 17.0) & (lungs == 1)  # 34 mm
    hu[cons] = 30
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["mass"] and out["mass_diameter_mm"] >= 30.0
    assert out["nodules"] == 0
    lungs, ggo, cons, hu = _empty()
    cons |= _ball((30, 50, 35), 6.0) & (lungs == 1)  # 12 mm: a nodule, not a mass
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert not out["mass"] and out["nodules"] == 1 and not out["centrilobular_nodules"]


def test_many_small_solid_nodules_are_centrilobular() -> None:
    lungs, ggo, cons, hu = _empty()
    for i in range(12):
        z, x = 6 + 4 * i, 20 + (i % 3) * 12 + (70 if i % 2 else 0)
        cons |= _ball((z, 30 + (i % 4) * 12, x), 3.0)
    cons &= lungs > 0
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["nodules"] == 12 and out["centrilobular_nodules"]
    assert not out["mass"]


def test_air_enclosed_by_consolidation_is_cavitation_ggo_blob_is_not() -> None:
    lungs, ggo, cons, hu = _empty()
    shell = _ball((30, 50, 35), 14.0) & ~_ball((30, 50, 35), 8.0)
    cons |= shell
    hu[shell] = 20
    hu[_ball((30, 50, 35), 8.0)] = -990  # a 16 mm air cavity
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["cavitation"]
    lungs, ggo, cons, hu = _empty()
    cons |= _ball((30, 50, 35), 14.0)  # solid throughout: no cavity
    hu[cons] = 20
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert not out["cavitation"]


def test_lesion_outside_the_lungs_is_not_counted() -> None:
    lungs, ggo, cons, hu = _empty()
    ggo[10:20, 0:10, 0:10] = True  # outside both lungs
    out = lm.measure(_masks(lungs, ggo, cons), hu)
    assert out["lesion_volume_ml"] == 0.0


def test_shapes_and_spacing_are_checked() -> None:
    lungs, ggo, cons, hu = _empty()
    with pytest.raises(ValueError, match="shape"):
        lm.measure(_masks(lungs, ggo, cons), hu[:-1])
    bad = LesionMasks(ggo=ggo, consolidation=cons, lungs=lungs, spacing_mm=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        lm.measure(bad, hu)


def test_slice_label_maps() -> None:
    lungs, ggo, cons, _ = _empty()
    ggo[1, 30, 20] = True
    cons[1, 31, 20] = True
    labels = lm.slice_label_maps(_masks(lungs, ggo, cons))
    assert labels.dtype == np.uint8
    assert labels[1, 30, 20] == 1 and labels[1, 31, 20] == 2
    assert labels[1, 40, 20] == 3 and labels[1, 0, 0] == 0
