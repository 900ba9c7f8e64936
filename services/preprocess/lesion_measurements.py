"""What radiologists and CT pneumonia tools report, measured on the lesion masks of one series.

Input: :class:`~services.preprocess.lesions.LesionMasks` (ground glass, consolidation and the
two lungs as 3-D masks, slices inferior → superior as every HU volume here) and the HU volume.
Output: a plain JSON-able dict (:func:`measure`) that the verdict (``services/ensemble``)
reads without importing this room. The opacity scores follow the CT pneumonia analysis
products (Chaganti et al., Radiology: AI 2020;2:e200048): percent of opacity, percent of high
opacity, and a severity score over six zones.

Keys (stable; percentages are 0..100 of lung volume, volumes in mL):

* ``version`` (int), ``lung_slices`` (slices holding lung), ``spacing_mm`` ([slice, row, col])
* ``lung_volume_ml``, ``lesion_volume_ml``, ``ggo_volume_ml``, ``consolidation_volume_ml``
* ``opacity_percent``: lesion (ground glass + consolidation) share of lung volume
* ``high_opacity_percent``: lesion voxels at or above :data:`HIGH_OPACITY_HU` (−200 HU), share
  of lung volume
* ``ggo_fraction``: ground glass / lesion volume (0 without lesion)
* ``opacity_percent_{side}``, ``lesion_volume_ml_{side}``: side ``right``/``left`` (the
  **patient's** sides, from ``LesionMasks.lungs`` 1 = right, 2 = left)
* ``zone_opacity_percent``: {"right_upper": %, ... "left_lower": %}: each lung is cut into
  thirds of **its own** craniocaudal extent (the slices that hold that lung), superior third
  ``upper``, then ``middle``, inferior third ``lower``
* ``zone_severity``: the same six zones scored 0–4; ``severity_score``: their sum 0–24.
  A zone scores 0 below :data:`NONE_BELOW_PERCENT` (segmentation noise, not disease),
  1 below 25 %, 2 from 25 % below 50 %, 3 from 50 % up to 75 %, 4 above 75 %
* ``slice_lesion_share``: one fraction 0..1 per slice of the study (lesion / lung pixels of
  that slice; 0.0 on slices without lung), aligned with the study's slices
* distribution: ``sides_involved`` (lungs with an involved zone), ``zones_involved``
  (zones with opacity ≥ :data:`INVOLVED_PERCENT`), ``bilateral``;
  ``peripheral_fraction`` (share of lesion voxels in the outer third of the lung) and
  ``peripheral_central_ratio`` (opacity % of the outer third / opacity % of the inner two
  thirds, + 0.001 each; > 1 means peripheral predominance); ``central_fraction`` (share of
  lesion voxels in the inner third, the lung's core around the hilum) and
  ``central_opacity_ratio`` (opacity % of the inner third / opacity % of the whole lung,
  + 0.001 each; ≥ 1 means a central component as dense as the disease overall: "central and
  peripheral" or perihilar, which the typical COVID-19 pattern spares); ``lower_zone_fraction``
  (share of lesion voxels in the lower zones)
* components (3-D, 26-connected lesion regions of at least :data:`MIN_COMPONENT_ML`):
  ``lesion_components`` (how many), ``largest_component_ml``
* structures read by the verdict as atypical for COVID-19 (RSNA consensus, Simpson et al.
  2020): ``lobar_consolidation`` (a component of at least :data:`LOBAR_MIN_ML` consolidation
  with at most :data:`LOBAR_MAX_GGO_FRACTION` of it ground glass) with
  ``lobar_consolidation_ml``; ``nodules`` (compact round solid components of
  :data:`NODULE_MM` equivalent diameter) and ``centrilobular_nodules`` (at least
  :data:`MIN_CENTRILOBULAR_NODULES` small ones); ``mass`` (one such component of at least
  :data:`MASS_MM`) with ``mass_diameter_mm``; ``cavitation`` (air of at least
  :data:`CAVITY_MM` equivalent diameter enclosed by consolidation on its slices)

"Outer third": per slice, the distance of each lung pixel to the border of the convex hull of
both lungs (the chest wall, not the mediastinum); a lung pixel is peripheral when that
distance is at most a third of the largest such distance in its lung on that slice.
Lesion voxels outside ``lungs`` are not counted (the segmenter keeps lesions inside the lungs).
Every constant below was set in advance from the literature or anatomy, not fitted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

if TYPE_CHECKING:
    from services.preprocess.lesions import LesionMasks

VERSION = 2  # 2: central_fraction, central_opacity_ratio
HIGH_OPACITY_HU = -200  # "high opacity" (consolidation-like density), as Chaganti et al.
NONE_BELOW_PERCENT = 0.1  # a zone with less opacity than this scores 0 (noise floor)
INVOLVED_PERCENT = 1.0  # a zone counts as involved from 1 % opacity (as verdict v2)
MIN_COMPONENT_ML = 0.1  # smaller lesion specks are not counted as foci
LOBAR_MIN_ML = 20.0  # a segment is ~5 % of a 4 L lung = 200 mL; 20 mL of solid lung is segmental
LOBAR_MAX_GGO_FRACTION = 0.25  # "without ground glass": at most a quarter of it is ground glass
SOLID_MIN_FRACTION = 0.7  # a nodule or mass is mostly consolidation density
ROUND_MIN = 0.6  # equivalent diameter / longest extent (1 for a sphere, less when elongated)
NODULE_MM = (3.0, 30.0)  # pulmonary nodule: 3 mm to < 3 cm (Fleischner glossary)
MASS_MM = 30.0  # mass: 3 cm and over (Fleischner glossary)
CENTRILOBULAR_MAX_MM = 10.0  # centrilobular nodules are small (a few mm)
MIN_CENTRILOBULAR_NODULES = 10  # "multiple small nodules", not a stray vessel cross-section
CAVITY_MM = 10.0  # air bronchograms are narrower; a cavity is a gas-filled space of ≥ 1 cm
CAVITY_AIR_HU = -700  # enclosed voxels this dark are air
MIN_SLICE_LUNG_PX = 50  # slices with fewer lung pixels count as lung-free

SIDES = (("right", 1), ("left", 2))
LEVELS = ("upper", "middle", "lower")
ZONES = tuple(f"{side}_{level}" for side, _ in SIDES for level in LEVELS)
_EPS = 1e-3


def _count(mask: NDArray[np.bool_]) -> int:
    return int(np.count_nonzero(mask))


def severity_band(percent: float) -> int:
    """0–4 score of one zone's opacity percent (bands in the module docstring)."""
    if percent < NONE_BELOW_PERCENT:
        return 0
    if percent < 25.0:
        return 1
    if percent < 50.0:
        return 2
    if percent <= 75.0:
        return 3
    return 4


def _level_map(lungs: NDArray[np.uint8]) -> NDArray[np.int8]:
    """Per voxel 0/1/2 = upper/middle/lower third of its own lung's extent, −1 outside."""
    levels = np.full(lungs.shape, -1, np.int8)
    for _, label in SIDES:
        present = np.flatnonzero((lungs == label).reshape(lungs.shape[0], -1).any(axis=1))
        if present.size == 0:
            continue
        z0, z1 = int(present[0]), int(present[-1]) + 1
        for z in range(z0, z1):
            # Slice 0 is inferior: the lowest third of the extent is "lower" (2).
            level = 2 - min(2, int(3 * (z - z0) / (z1 - z0)))
            levels[z][lungs[z] == label] = level
    return levels


def _hull(mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = np.zeros_like(mask)
    if contours:
        cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    return hull


def _relative_depth(lungs: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Per lung voxel its depth from the chest wall as a fraction 0..1 of its lung's deepest
    point on that slice (0 at the wall, 1 at the hilum/mediastinal side); −1 outside the lungs.
    """
    out = np.full(lungs.shape, -1.0, np.float32)
    for z in np.flatnonzero(lungs.reshape(lungs.shape[0], -1).any(axis=1)):
        lung = (lungs[z] > 0).astype(np.uint8)
        # Pad so a lung touching the image edge still has a wall to measure from.
        hull = np.pad(_hull(lung), 1)
        depth = cv2.distanceTransform(hull, cv2.DIST_L2, 5)[1:-1, 1:-1]
        for _, label in SIDES:
            side = lungs[z] == label
            if side.any():
                out[z][side] = depth[side] / max(float(depth[side].max()), 1e-6)
    return out


def _equivalent_diameter_mm(voxels: int, voxel_ml: float) -> float:
    return float((6.0 * voxels * voxel_ml * 1000.0 / math.pi) ** (1.0 / 3.0))


def _components(
    lesion: NDArray[np.bool_],
    consolidation: NDArray[np.bool_],
    hu: NDArray[np.integer[Any]],
    spacing: tuple[float, float, float],
) -> dict[str, Any]:
    """Foci, lobar consolidation, nodules, mass and cavitation from the 3-D lesion regions."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, count = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    out: dict[str, Any] = {
        "lesion_components": 0,
        "largest_component_ml": 0.0,
        "lobar_consolidation": False,
        "lobar_consolidation_ml": 0.0,
        "nodules": 0,
        "centrilobular_nodules": False,
        "mass": False,
        "mass_diameter_mm": 0.0,
        "cavitation": False,
    }
    if count == 0:
        return out
    # Counting over the lesion voxels only (~1 % of the volume) keeps this fast.
    sizes = np.bincount(labels[lesion], minlength=count + 1)
    solid = np.bincount(labels[consolidation & lesion], minlength=count + 1)
    min_voxels = MIN_COMPONENT_ML / voxel_ml
    out["lesion_components"] = _count(sizes[1:] >= min_voxels)
    out["largest_component_ml"] = round(float(sizes[1:].max()) * voxel_ml, 2)
    small_nodules = 0
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or sizes[index] < min_voxels:
            continue
        solid_fraction = float(solid[index]) / float(sizes[index])
        solid_ml = float(solid[index]) * voxel_ml
        if solid_ml >= LOBAR_MIN_ML and 1.0 - solid_fraction <= LOBAR_MAX_GGO_FRACTION:
            out["lobar_consolidation"] = True
            out["lobar_consolidation_ml"] = max(out["lobar_consolidation_ml"], round(solid_ml, 1))
        extent_mm = max((s.stop - s.start) * mm for s, mm in zip(box, spacing, strict=True))
        diameter = _equivalent_diameter_mm(int(sizes[index]), voxel_ml)
        # A thin slab makes a short extent along z; the longest extent is what elongation shows.
        round_ = diameter / max(extent_mm, diameter) >= ROUND_MIN
        if solid_fraction >= SOLID_MIN_FRACTION and round_:
            if diameter >= MASS_MM:
                out["mass"] = True
                out["mass_diameter_mm"] = max(out["mass_diameter_mm"], round(diameter, 1))
            elif diameter >= NODULE_MM[0]:
                out["nodules"] += 1
                small_nodules += diameter <= CENTRILOBULAR_MAX_MM
        if solid_ml >= 1.0 and _has_cavity(
            labels[box] == index, consolidation[box], hu[box], spacing, voxel_ml
        ):
            out["cavitation"] = True
    out["centrilobular_nodules"] = small_nodules >= MIN_CENTRILOBULAR_NODULES
    return out


def _has_cavity(
    component: NDArray[np.bool_],
    consolidation: NDArray[np.bool_],
    hu: NDArray[np.integer[Any]],
    spacing: tuple[float, float, float],
    voxel_ml: float,
) -> bool:
    """Air enclosed by the component's consolidation on its slices, ≥ CAVITY_MM across."""
    solid = component & consolidation
    enclosed = np.stack([ndimage.binary_fill_holes(s) & ~s for s in solid])
    air = enclosed & (hu < CAVITY_AIR_HU)
    if not air.any():
        return False
    labels, count = ndimage.label(air, structure=np.ones((3, 3, 3), bool))
    biggest = int(np.bincount(labels.ravel())[1:].max()) if count else 0
    return _equivalent_diameter_mm(biggest, voxel_ml) >= CAVITY_MM


def measure(masks: LesionMasks, hu: NDArray[np.integer[Any]]) -> dict[str, Any]:
    """The measurements of one series (keys in the module docstring)."""
    lungs = np.asarray(masks.lungs, np.uint8)
    if not (lungs.shape == masks.ggo.shape == masks.consolidation.shape == hu.shape):
        raise ValueError("lesion masks, lungs and HU must share one (Z, Y, X) shape")
    spacing = tuple(float(s) for s in masks.spacing_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_mm must be three positive numbers, got {masks.spacing_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n = lungs.shape[0]
    # Everything below is measured inside the lungs' in-plane bounding box (same numbers,
    # a third of the voxels of a 512 x 512 series).
    rows = np.flatnonzero(lungs.any(axis=(0, 2)))
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    if rows.size:
        box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        lungs, hu = lungs[box], hu[box]
        ggo_in, cons_in = masks.ggo[box], masks.consolidation[box]
    else:
        ggo_in, cons_in = masks.ggo, masks.consolidation
    in_lung = lungs > 0
    ggo = ggo_in & in_lung
    consolidation = cons_in & in_lung & ~ggo
    lesion = ggo | consolidation

    lung_n = _count(in_lung)
    lesion_n = _count(lesion)

    def percent(part: int, whole: int) -> float:
        return round(100.0 * part / whole, 3) if whole else 0.0

    def ml(voxels: int) -> float:
        return round(voxels * voxel_ml, 2)

    out: dict[str, Any] = {
        "version": VERSION,
        "spacing_mm": [round(s, 4) for s in spacing],
        "lung_slices": int(in_lung.reshape(n, -1).any(axis=1).sum()),
        "lung_volume_ml": ml(lung_n),
        "lesion_volume_ml": ml(lesion_n),
        "ggo_volume_ml": ml(_count(ggo)),
        "consolidation_volume_ml": ml(_count(consolidation)),
        "opacity_percent": percent(lesion_n, lung_n),
        "high_opacity_percent": percent(_count(lesion & (hu >= HIGH_OPACITY_HU)), lung_n),
        "ggo_fraction": round(float(_count(ggo)) / lesion_n, 4) if lesion_n else 0.0,
    }
    levels = _level_map(lungs)
    zone_percent: dict[str, float] = {}
    for side, label in SIDES:
        side_lung = lungs == label
        side_lung_n = _count(side_lung)
        side_lesion_n = _count(lesion & side_lung)
        out[f"opacity_percent_{side}"] = percent(side_lesion_n, side_lung_n)
        out[f"lesion_volume_ml_{side}"] = ml(side_lesion_n)
        for level_index, level in enumerate(LEVELS):
            zone = side_lung & (levels == level_index)
            zone_percent[f"{side}_{level}"] = percent(_count(lesion & zone), _count(zone))
    zone_severity = {zone: severity_band(p) for zone, p in zone_percent.items()}
    out["zone_opacity_percent"] = zone_percent
    out["zone_severity"] = zone_severity
    out["severity_score"] = int(sum(zone_severity.values()))

    involved = [zone for zone, p in zone_percent.items() if p >= INVOLVED_PERCENT]
    out["zones_involved"] = len(involved)
    out["sides_involved"] = len({zone.split("_")[0] for zone in involved})
    out["bilateral"] = out["sides_involved"] == 2

    depth = _relative_depth(lungs)
    peripheral = (depth >= 0) & (depth <= 1.0 / 3.0)
    lesion_peripheral = _count(lesion & peripheral)
    lesion_central = lesion_n - lesion_peripheral
    lung_peripheral = _count(peripheral)
    out["peripheral_fraction"] = round(lesion_peripheral / lesion_n, 4) if lesion_n else 0.0
    share_p = lesion_peripheral / lung_peripheral if lung_peripheral else 0.0
    share_c = lesion_central / (lung_n - lung_peripheral) if lung_n > lung_peripheral else 0.0
    out["peripheral_central_ratio"] = round((share_p + _EPS) / (share_c + _EPS), 3)
    # The core of the lung (inner third: hilum, central bronchi and vessels): its opacity
    # relative to the whole lung's. >= 1 = a central (perihilar / peribronchovascular)
    # component as dense as the disease overall, which the typical COVID-19 pattern spares.
    core = depth > 2.0 / 3.0
    lesion_core = _count(lesion & core)
    out["central_fraction"] = round(lesion_core / lesion_n, 4) if lesion_n else 0.0
    share_core = lesion_core / _count(core) if _count(core) else 0.0
    share_all = lesion_n / lung_n if lung_n else 0.0
    out["central_opacity_ratio"] = round((share_core + _EPS) / (share_all + _EPS), 3)
    lower = _count(lesion & (levels == 2))
    out["lower_zone_fraction"] = round(lower / lesion_n, 4) if lesion_n else 0.0

    out |= _components(lesion, consolidation, hu, spacing)

    lung_px = in_lung.reshape(n, -1).sum(axis=1)
    lesion_px = lesion.reshape(n, -1).sum(axis=1)
    out["slice_lesion_share"] = [
        round(float(les) / float(lu), 4) if lu >= MIN_SLICE_LUNG_PX else 0.0
        for les, lu in zip(lesion_px, lung_px, strict=True)
    ]
    return out


def slice_label_maps(masks: LesionMasks) -> NDArray[np.uint8]:
    """(Z, Y, X) uint8: 0 elsewhere, 1 ground glass, 2 consolidation, 3 other lung (overlay)."""
    labels = np.where(masks.lungs > 0, 3, 0).astype(np.uint8)
    labels[masks.ggo] = 1
    labels[masks.consolidation] = 2
    return labels
