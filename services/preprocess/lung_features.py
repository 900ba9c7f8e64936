"""Quantitative lung features from Hounsfield units: how much of each lung zone is opacified.

Input: the HU volume of a study (``Study.hu``, (N, H, W) int16, slices inferior → superior)
and the lung masks of :func:`services.preprocess.segmentation.segment_volume` (same shape).
Output: a plain JSON-able dict (:func:`compute_lung_features`) and a flat float32 vector for
models (:func:`feature_vector`, names in :data:`FEATURE_NAMES`).

Density ranges (HU), after Colombi et al., Radiology 2020;296:E86 and Lanza et al., Radiology
2020 (quantitative COVID-19 CT): well-aerated lung −950…−700, **ground glass (poorly
aerated) −700…−300**, **consolidation (non-aerated) −300…+100**. Both ranges are half-open
below: GGO is ``-700 <= HU < -300``, consolidation ``-300 <= HU <= 100``.

How the masks are used (measured on COVID-CT-MD P002 / cap002 / normal001, see the report in
the commit history):

* The lung mask of ``segment_volume`` closes each lung with a disk of ~4.5 % of the image
  side and fills enclosed holes, which keeps small pleura-based lesions inside it, but a
  dense lesion against the chest wall wider than that disk is cut out (a +30 HU blob of
  17 mm in ``tests/unit/test_lung_features.py`` was entirely outside the mask). So, per
  slice and lung, :func:`include_pleural_lesions` adds back the pockets between the lung and
  its convex hull that (a) have lesion density (−750…+150 HU), (b) open onto the chest wall
  (at least half of the pocket's hull edge is the edge of the hull of both lungs: the heart's
  notch and the hila open onto the mediastinum instead) and (c) are at most
  :data:`MAX_POCKET_SHARE` of that lung's area (the liver dome under a basal lung crescent is
  larger). This refinement is used for the features only; the CNN crop is unchanged. It
  recovers most, not all, of such a lesion (83 % of the test blob): the part bulging beyond
  the hull of what is left of the lung has chest-wall density and stays out.
* The mask is eroded by :data:`ERODE_MM` before counting: the rim of the mask is partial
  volume of lung and chest wall, which otherwise reads as ~6 % "ground glass" in a normal
  lung.
* Ground glass and consolidation are each opened (morphological opening, disk of radius
  :data:`OPEN_MM`) per slice: vessels, bronchial walls and the partial-volume rims of vessels
  are thinner than that and vanish; patches of opacity survive. This takes the GGO share of
  the normal series from 9.4 % to ~0.1 %.
* Consolidation components within :data:`HILUM_MM` of the mediastinum (non-lung inside the
  convex hull of both lungs) in the central zone are the hila (pulmonary arteries and veins
  swallowed by the mask's hole filling) and are not counted. Central vessels wider than
  2 x OPEN_MM further out remain: a normal lung still reads ~0.5 % "consolidation", almost
  all of it central (normal001: 0.65 %); compare against that baseline, not against 0.

Zones: ``left``/``right`` are the **patient's** sides. In the radiological convention
(DICOM ImageOrientationPatient row cosine +x, and every NIfTI read by ``read_nifti``) the
patient's left is on the image's right; a DICOM row cosine pointing to −x flips that
(:func:`patient_left_on_image_right`). The two lungs are split at one midline column for the
whole volume (median centre of the lung bounding box over the slices with the largest lung
area). ``upper``/``middle``/``lower`` are thirds of the lung-bearing slices along the body
axis. ``peripheral`` is the outer third of each lung in depth: per slice and side, lung pixels
whose distance to the border of the convex hull of both lungs (the chest wall, not the
mediastinum) is at most a third of that lung's largest such distance; the rest is
``central``.

Keys of the dict (stable; shares are fractions 0..1 of the counted lung voxels of the region):

* ``version`` (int), ``ggo_hu`` and ``consolidation_hu`` ([low, high] HU),
  ``patient_left_on_image_right`` (bool), ``lung_slices`` (slices holding lung),
  ``lung_volume_ml`` (float, or None without voxel spacing)
* ``ggo_share``, ``consolidation_share``, ``lesion_share`` (GGO + consolidation), whole lungs
* ``{kind}_share_{side}`` for kind in ``ggo``/``consolidation``/``lesion``, side
  ``left``/``right``
* ``{kind}_share_{side}_{level}``, level ``upper``/``middle``/``lower``: six zones per kind
* ``{kind}_share_peripheral`` and ``{kind}_share_central``
* ``left_right_balance``: (lesion_share_left − lesion_share_right) / their sum, −1..1 (0
  without lesion); positive means the left lung is more involved
* ``peripheral_central_ratio``: (lesion_share_peripheral + 0.001) /
  (lesion_share_central + 0.001)
* ``lower_zone_fraction``: lesion voxels in the lower third / all lesion voxels (0 without)
* ``zones_involved``: how many of the six side × level zones have a lesion share above
  :data:`INVOLVED_SHARE` (0..6); ``sides_involved``: how many lungs have such a zone (0..2)
* ``slice_ggo_share``, ``slice_consolidation_share``: one float per input slice, the share of
  that slice's counted lung area (0.0 where a slice has no lung); not in the vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.preprocess.types import Study

VERSION = 1
GGO_HU = (-700, -300)  # low <= HU < high
CONSOLIDATION_HU = (-300, 100)  # low <= HU <= high
ERODE_MM = 1.5  # partial-volume rim of the mask left out of every count
OPEN_MM = 2.0  # vessels and rims thinner than 2 * OPEN_MM are not opacities
INVOLVED_SHARE = 0.01  # a zone with over 1 % of its lung opacified counts as involved
MAX_POCKET_SHARE = 0.25  # pleural pockets added back: at most this share of the lung's area
MIN_SLICE_LUNG_PX = 50  # slices with fewer counted lung pixels are treated as lung-free
HILUM_MM = 4.0  # dense tissue this close to the mediastinum, centrally, is hilum
_EPS_RATIO = 1e-3

SIDES = ("left", "right")
LEVELS = ("upper", "middle", "lower")
KINDS = ("ggo", "consolidation", "lesion")


def _names() -> tuple[str, ...]:
    names = ["ggo_share", "consolidation_share", "lesion_share"]
    names += [f"{k}_share_{s}" for k in KINDS for s in SIDES]
    names += [f"{k}_share_{s}_{lv}" for k in KINDS for s in SIDES for lv in LEVELS]
    names += [f"{k}_share_{r}" for k in KINDS for r in ("peripheral", "central")]
    names += ["left_right_balance", "peripheral_central_ratio", "lower_zone_fraction"]
    names += ["zones_involved", "sides_involved"]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _names()
"""Order of :func:`feature_vector`; every name is a numeric key of the features dict."""


def patient_left_on_image_right(study: Study) -> bool:
    """True when the patient's left is on the image's right (the radiological convention).

    From the DICOM ImageOrientationPatient row cosine when the study has one (row direction
    towards +x, the patient's left, means columns grow towards the patient's left); NIfTI
    volumes are always shown that way by the reader, and so are DICOM files without
    orientation (assumed).
    """
    series = study.series or {}
    iop = series.get("image_orientation_patient")
    if iop and len(iop) == 6:
        row_x = float(iop[0])
        if abs(row_x) > 0.5:
            return row_x > 0
    return True


def _disk(radius_px: float) -> NDArray[np.uint8]:
    r = max(1, round(radius_px))
    return np.asarray(
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)), dtype=np.uint8
    )


def _midline(masks: NDArray[np.bool_]) -> float:
    """Column splitting the two lungs: median lung-bbox centre over the biggest slices."""
    areas = masks.sum(axis=(1, 2))
    big = np.flatnonzero(areas >= 0.5 * areas.max())
    centres = []
    for z in big:
        cols = np.flatnonzero(masks[z].any(axis=0))
        centres.append((cols[0] + cols[-1]) / 2.0)
    return float(np.median(centres))


def _hull(mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Filled convex hull of a 0/1 mask (from its outer contours: fast)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = np.zeros_like(mask)
    if contours:
        cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    return hull


def compute_lung_features(
    hu: NDArray[np.integer[Any]],
    masks: NDArray[np.bool_],
    spacing_mm: tuple[float, float, float] | None = None,
    left_on_image_right: bool = True,
) -> dict[str, Any]:
    """Opacity shares per lung, zone and depth (keys in the module docstring).

    ``hu`` and ``masks`` are (N, H, W), slices inferior → superior; ``spacing_mm`` is
    (slice, row, column) and sets the erosion/opening radii in pixels (0.7 mm pixels are
    assumed without it).
    """
    if hu.shape != masks.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and masks {masks.shape} must be equal (N, H, W)")
    n, h, w = hu.shape
    pixel_mm = float(np.mean(spacing_mm[1:])) if spacing_mm else 0.7
    erode_k = _disk(ERODE_MM / pixel_mm)
    open_k = _disk(OPEN_MM / pixel_mm)
    hilum_k = _disk(HILUM_MM / pixel_mm)

    # counts[side, level, region, what]: what = lung, ggo, consolidation; region 0 peripheral.
    counts = np.zeros((2, 3, 2, 3), np.int64)
    slice_ggo = [0.0] * n
    slice_cons = [0.0] * n
    lung_z = np.flatnonzero(masks.reshape(n, -1).any(axis=1))
    features: dict[str, Any] = {
        "version": VERSION,
        "ggo_hu": list(GGO_HU),
        "consolidation_hu": list(CONSOLIDATION_HU),
        "patient_left_on_image_right": bool(left_on_image_right),
        "lung_slices": int(lung_z.size),
        "lung_volume_ml": None,
    }
    if spacing_mm:
        voxel_ml = float(np.prod(spacing_mm)) / 1000.0
        features["lung_volume_ml"] = round(float(masks.sum()) * voxel_ml, 1)
    if lung_z.size:
        midline = _midline(masks)
        z0, z1 = int(lung_z[0]), int(lung_z[-1]) + 1
        # Level per slice: thirds of the lung extent, slice 0 inferior → "lower".
        level_of = {z: 2 - min(2, int(3 * (z - z0) / max(1, z1 - z0))) for z in range(z0, z1)}
        image_right = np.arange(w) >= midline
        # Side index per column: 0 left, 1 right (patient).
        side_col = np.where(image_right == left_on_image_right, 0, 1).astype(np.int64)
        for z in range(z0, z1):
            rows = np.flatnonzero(masks[z].any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(masks[z].any(axis=0))
            # Work on the lung's bounding box, with room for the morphology around it.
            pad = 2 * max(open_k.shape[0], hilum_k.shape[0]) + 4
            y0, y1 = max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)
            x0, x1 = max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)
            _count_slice(
                hu[z, y0:y1, x0:x1], masks[z, y0:y1, x0:x1], z, level_of[z], side_col[x0:x1],
                erode_k, open_k, hilum_k, counts, slice_ggo, slice_cons,
            )  # fmt: skip
    features.update(_shares(counts))
    features["slice_ggo_share"] = slice_ggo
    features["slice_consolidation_share"] = slice_cons
    return features


def include_pleural_lesions(
    hu: NDArray[np.integer[Any]], mask: NDArray[np.bool_], side: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """One slice's lung mask with dense pleura-based pockets added back (module docstring).

    ``side`` gives each pixel's lung (0/1, e.g. columns split at the midline).
    """
    full = mask.astype(np.uint8)
    if not full.any():
        return mask
    both = _hull(full)
    # Pixels within 2 px of the outside of the hull of both lungs: the chest wall side.
    exterior = cv2.dilate((1 - both).astype(np.uint8), _disk(2)).astype(bool)
    lesion_density = (hu >= -750) & (hu <= 150)
    out = mask.copy()
    for s in (0, 1):
        lung = (full > 0) & (side == s)
        area = int(lung.sum())
        if area < MIN_SLICE_LUNG_PX:
            continue
        hull = _hull(lung.astype(np.uint8))
        rim = hull.astype(bool) & ~cv2.erode(hull, _disk(2)).astype(bool)  # hull edge
        pockets = (hull.astype(bool) & (full == 0) & lesion_density).astype(np.uint8)
        # Opening drops the 1-2 px slivers between a smooth outline and its hull.
        pockets = np.asarray(cv2.morphologyEx(pockets, cv2.MORPH_OPEN, _disk(1)), np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(pockets, connectivity=4)
        if count <= 1:
            continue
        # Per pocket: pixels on the hull edge, and how many of those face the chest wall.
        edge_n = np.bincount(labels[rim], minlength=count)
        wall_n = np.bincount(labels[rim & exterior], minlength=count)
        keep = (stats[:, cv2.CC_STAT_AREA] <= MAX_POCKET_SHARE * area) & (edge_n > 0)
        keep &= wall_n >= 0.5 * edge_n
        keep[0] = False
        if keep.any():
            out |= keep[labels]
    return out


def _count_slice(
    hu: NDArray[np.integer[Any]],
    mask: NDArray[np.bool_],
    z: int,
    level: int,
    side_col: NDArray[np.int64],
    erode_k: NDArray[np.uint8],
    open_k: NDArray[np.uint8],
    hilum_k: NDArray[np.uint8],
    counts: NDArray[np.int64],
    slice_ggo: list[float],
    slice_cons: list[float],
) -> None:
    side = np.broadcast_to(side_col, mask.shape)
    mask = include_pleural_lesions(hu, mask, side)
    full = mask.astype(np.uint8)
    lung = np.asarray(cv2.erode(full, erode_k), dtype=np.uint8)
    total = int(lung.sum())
    if total < MIN_SLICE_LUNG_PX:
        return
    inside = lung.astype(bool)
    ggo = ((hu >= GGO_HU[0]) & (hu < GGO_HU[1]) & inside).astype(np.uint8)
    ggo = np.asarray(cv2.morphologyEx(ggo, cv2.MORPH_OPEN, open_k), dtype=np.uint8)
    dense = ((hu >= CONSOLIDATION_HU[0]) & (hu <= CONSOLIDATION_HU[1]) & inside).astype(np.uint8)
    dense = np.asarray(cv2.morphologyEx(dense, cv2.MORPH_OPEN, open_k), dtype=np.uint8)

    # Depth: distance to the border of the hull of both lungs (chest wall side only).
    hull = _hull(full)
    depth = cv2.distanceTransform(hull, cv2.DIST_L2, 3)
    peripheral = np.zeros(mask.shape, bool)
    for s in (0, 1):
        in_side = inside & (side == s)
        if in_side.any():
            peripheral |= in_side & (depth <= depth[in_side].max() / 3.0)

    if dense.any():
        # Hila: dense tissue reaching the mediastinum (non-lung inside the hull) centrally.
        mediastinum = (hull > 0) & ~mask
        near = cv2.dilate(mediastinum.astype(np.uint8), hilum_k).astype(bool)
        labels, count = ndimage.label(dense)
        if count:
            touching = np.unique(labels[near & ~peripheral & (labels > 0)])
            if touching.size:
                dense[np.isin(labels, touching)] = 0

    region = np.where(peripheral, 0, 1)
    index = (side * 2 + region)[inside]  # 0..3: side-major, region-minor
    lung_n = np.bincount(index, minlength=4)
    ggo_n = np.bincount(index, weights=ggo[inside], minlength=4)
    cons_n = np.bincount(index, weights=dense[inside], minlength=4)
    for s in (0, 1):
        for r in (0, 1):
            k = s * 2 + r
            counts[s, level, r] += (int(lung_n[k]), int(ggo_n[k]), int(cons_n[k]))
    slice_ggo[z] = float(ggo_n.sum()) / total
    slice_cons[z] = float(cons_n.sum()) / total


def _share(part: NDArray[np.int64]) -> dict[str, float]:
    """GGO/consolidation/lesion shares of a (..., 3) block of counts."""
    totals = part.reshape(-1, 3).sum(axis=0)
    lung = float(totals[0])
    if lung <= 0:
        return {"ggo": 0.0, "consolidation": 0.0, "lesion": 0.0}
    ggo, cons = float(totals[1]) / lung, float(totals[2]) / lung
    return {"ggo": ggo, "consolidation": cons, "lesion": ggo + cons}


def _shares(counts: NDArray[np.int64]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    whole = _share(counts)
    for k in KINDS:
        out[f"{k}_share"] = whole[k]
    per_side = [_share(counts[s]) for s in (0, 1)]
    for k in KINDS:
        for s, name in enumerate(SIDES):
            out[f"{k}_share_{name}"] = per_side[s][k]
    zones = {(s, lv): _share(counts[s, lv]) for s in (0, 1) for lv in range(3)}
    for k in KINDS:
        for s, name in enumerate(SIDES):
            for lv, level in enumerate(LEVELS):
                out[f"{k}_share_{name}_{level}"] = zones[(s, lv)][k]
    regions = [_share(counts[:, :, r]) for r in (0, 1)]
    for k in KINDS:
        out[f"{k}_share_peripheral"] = regions[0][k]
        out[f"{k}_share_central"] = regions[1][k]
    left, right = per_side[0]["lesion"], per_side[1]["lesion"]
    out["left_right_balance"] = (left - right) / (left + right) if left + right > 0 else 0.0
    out["peripheral_central_ratio"] = (regions[0]["lesion"] + _EPS_RATIO) / (
        regions[1]["lesion"] + _EPS_RATIO
    )
    lesion_voxels = counts[..., 1:].sum(axis=-1)  # (side, level, region)
    total_lesion = float(lesion_voxels.sum())
    lower = float(lesion_voxels[:, 2].sum())
    out["lower_zone_fraction"] = lower / total_lesion if total_lesion > 0 else 0.0
    out["zones_involved"] = sum(1 for z in zones.values() if z["lesion"] > INVOLVED_SHARE)
    out["sides_involved"] = sum(
        any(zones[(s, lv)]["lesion"] > INVOLVED_SHARE for lv in range(3)) for s in (0, 1)
    )
    return out


def feature_vector(features: Mapping[str, Any]) -> NDArray[np.float32]:
    """The numeric features in :data:`FEATURE_NAMES` order, as float32."""
    return np.array([float(features[name]) for name in FEATURE_NAMES], dtype=np.float32)


def study_lung_features(study: Study, masks: NDArray[np.bool_]) -> dict[str, Any] | None:
    """Features of a study with HU (volume inputs), None for PNG/JPEG studies."""
    if study.hu is None or study.hu.shape != masks.shape:
        return None
    return compute_lung_features(
        study.hu, masks, study.spacing_mm, patient_left_on_image_right(study)
    )
