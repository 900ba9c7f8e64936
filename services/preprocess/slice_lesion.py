"""Physics-based lesion share of one 8-bit chest-CT slice (JPEG/PNG screenshot, no HU).

The HU volume path (:mod:`services.preprocess.lung_features`) counts ground glass
(−700…−300 HU) and consolidation (−300…+100 HU) in the lungs. A screenshot has no HU, but
every chest slice shows two tissues of known density, which fix the grey → HU line of the
(unknown) display window per image:

* **air**, −1000 HU: the air outside the body inside the field of view (median grey), or,
  when the image is cropped to the body and has none, the darkest lung parenchyma (the
  :data:`AIR_LUNG_PERCENTILE` percentile of the lung pixels, taken as
  :data:`LUNG_LOW_HU`; lesions raise the upper percentiles of the lung, not its darkest
  pixels);
* **soft tissue**, +40 HU (muscle, heart, great vessels): the mode of the grey histogram of
  the body outside the lungs, above the air/tissue threshold (fat, −100 HU, is less frequent
  than muscle + mediastinum on a chest slice; bone is rare).

A grey value ``g`` then reads ``-1000 + (g - air) * 1040 / (tissue - air)`` HU (linear
windows; a display gamma is not modelled). The image is rejected (``ok`` False) when the
anchors are not usable: the tissue is saturated (a window whose upper bound is below soft
tissue) or too close to air (a mediastinal window, where the lung is black).

Lung mask: :func:`lung_mask_2d`, the project's :func:`segment_lungs` after the padding
outside a round field of view (a constant value darker than air, which made Otsu split
padding from everything else) has been replaced by the air grey.

Counting follows the HU path with sizes in mm: lung mask eroded by :data:`ERODE_MM`, each
opacity mask opened with a disk of :data:`OPEN_MM` so vessels vanish. The pixel size is
unknown in a screenshot; it is derived from the body width, taken as :data:`BODY_WIDTH_MM`
(adult chest, axial width at the lung level ~ 300–360 mm).

Fixed constants come from physics/literature and were not fitted to any evaluation source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.preprocess.image_segmentation import (
    _disk,
    _gray,
    _u8,
    body_mask,
    lung_mask_2d,
    outside_air,
    padding_mask,
)

U8 = NDArray[np.uint8]
Bool2 = NDArray[np.bool_]

AIR_HU = -1000.0
TISSUE_HU = 40.0  # muscle / blood, unenhanced
GGO_HU = (-700.0, -300.0)  # low <= HU < high, as lung_features.GGO_HU
CONSOLIDATION_HU = (-300.0, 100.0)  # low <= HU <= high, as lung_features.CONSOLIDATION_HU
ERODE_MM = 1.5
OPEN_MM = 2.0
BODY_WIDTH_MM = 330.0
HILUM_MM = 4.0  # opacities this close to the mediastinum are hila / heart border
AIR_LUNG_PERCENTILE = 2.0
LUNG_LOW_HU = -950.0  # the darkest 2 % of a normal lung (parenchyma −850 ± ~60 HU)
MIN_OUTSIDE_AIR_FRACTION = 0.01  # of the image: enough outside air to anchor on
MIN_ANCHOR_GAP = 60  # tissue - air, grey levels; less: no usable lung window
MAX_TISSUE_GREY = 250  # a tissue mode at or above this is saturated
MIN_LUNG_FRACTION = 0.03  # of the image, after erosion
CLIP_TOL = 2  # grey levels above the image minimum that count as clipped
MAX_CLIPPED_LUNG = 0.3  # more of the lung clipped to black: a soft-tissue window


@dataclass(frozen=True)
class Anchors:
    """Grey values of air (−1000 HU) and soft tissue (+40 HU) in one image."""

    air: float
    tissue: float
    air_source: str  # "outside" (air around the body) or "lung" (darkest lung pixels)

    def ok(self) -> bool:
        return self.tissue - self.air >= MIN_ANCHOR_GAP and self.tissue < MAX_TISSUE_GREY


def estimate_anchors(image: U8, lung: Bool2) -> Anchors | None:
    """Grey values of air and soft tissue (see the module docstring); None without body."""
    pad = padding_mask(image)
    body, thr = body_mask(image, pad)
    if not body.any() or not lung.any():
        return None
    air = outside_air(image, pad, body, thr)
    side = min(image.shape)
    # Soft tissue: body minus lungs (grown a little: their partial-volume rim), above thr.
    near_lung = cv2.dilate(lung.astype(np.uint8), _disk(0.01 * side)).astype(np.bool_)
    smooth = _u8(cv2.GaussianBlur(image, (0, 0), sigmaX=max(0.7, side / 256)))
    soft = smooth[body & ~near_lung & (smooth > thr)]
    if soft.size < 50:
        return None
    hist = np.bincount(soft, minlength=256).astype(np.float64)
    hist = np.convolve(hist, np.ones(5) / 5.0, mode="same")
    tissue = float(np.argmax(hist))
    if air.mean() >= MIN_OUTSIDE_AIR_FRACTION:
        return Anchors(air=float(np.median(image[air])), tissue=tissue, air_source="outside")
    # No air around the body: the darkest lung pixels read LUNG_LOW_HU; extrapolate to air.
    low = float(np.percentile(image[lung], AIR_LUNG_PERCENTILE))
    frac = (LUNG_LOW_HU - AIR_HU) / (TISSUE_HU - AIR_HU)  # where `low` sits between anchors
    air_grey = (low - frac * tissue) / (1.0 - frac)
    return Anchors(air=air_grey, tissue=tissue, air_source="lung")


def pseudo_hu(image: U8, anchors: Anchors) -> NDArray[np.float32]:
    """Linear grey → HU map through the two anchors (air −1000, tissue +40)."""
    slope = (TISSUE_HU - AIR_HU) / max(1e-6, anchors.tissue - anchors.air)
    return np.asarray(AIR_HU + (image.astype(np.float32) - anchors.air) * slope, np.float32)


def pixel_mm(body: Bool2) -> float:
    """Pixel size from the body width (BODY_WIDTH_MM); columns the body occupies."""
    cols = np.flatnonzero(body.any(axis=0))
    width = int(cols[-1] - cols[0] + 1) if cols.size else body.shape[1]
    return BODY_WIDTH_MM / max(1, width)


def mediastinum_band(lung: Bool2, radius_px: float) -> Bool2:
    """The mediastinum (largest non-lung region inside the convex hull of both lungs), grown
    by ``radius_px``: opacities touching it are hila, heart border or great vessels."""
    lung_u8 = lung.astype(np.uint8)
    pts = cv2.findNonZero(lung_u8)
    if pts is None:
        return np.zeros_like(lung)
    hull = np.zeros_like(lung_u8)
    cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
    gap = (hull.astype(np.bool_) & ~lung).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(gap, connectivity=8)
    if n <= 1:
        return np.zeros_like(lung)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    med = (labels == best).astype(np.uint8)
    return cv2.dilate(med, _disk(radius_px)).astype(np.bool_)


def _components_off(mask: Bool2, band: Bool2) -> Bool2:
    """Connected components (8-conn) of ``mask`` that do not touch ``band``."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), np.int8))
    if n == 0:
        return mask
    touching = np.unique(labels[band & mask])
    keep = np.ones(n + 1, np.bool_)
    keep[touching] = False
    keep[0] = False
    return np.asarray(keep[labels], dtype=np.bool_)


def slice_lesion_share(image: NDArray[Any]) -> dict[str, Any]:
    """Ground-glass, consolidation and lesion share of the lung area of one 8-bit slice.

    Keys: ``ggo_share``, ``consolidation_share``, ``lesion_share`` (fractions of the counted
    lung pixels; 0.0 when not ``ok``), ``lung_px`` (counted lung pixels), ``ok`` (lung mask
    found and anchors usable), ``air_grey``, ``tissue_grey``, ``air_source``, ``mm_per_px``
    (None when unavailable), ``reason`` (why not ok, else "").
    """
    img = _gray(image)
    out: dict[str, Any] = {
        "ggo_share": 0.0,
        "consolidation_share": 0.0,
        "lesion_share": 0.0,
        "lung_px": 0,
        "ok": False,
        "air_grey": None,
        "tissue_grey": None,
        "air_source": None,
        "mm_per_px": None,
        "reason": "",
    }
    lung = lung_mask_2d(img)
    if lung.mean() < MIN_LUNG_FRACTION:
        out["reason"] = "no lung"
        return out
    anchors = estimate_anchors(img, lung)
    if anchors is None:
        out["reason"] = "no body"
        return out
    out.update(air_grey=anchors.air, tissue_grey=anchors.tissue, air_source=anchors.air_source)
    pad = padding_mask(img)
    body, _ = body_mask(img, pad)
    mm = pixel_mm(body | lung)
    out["mm_per_px"] = mm
    clipped = float(np.mean(img[lung] <= int(img.min()) + CLIP_TOL))
    if not anchors.ok() or clipped > MAX_CLIPPED_LUNG:
        out["reason"] = "window"  # tissue saturated, or lung clipped black (soft-tissue window)
        return out
    hu = pseudo_hu(img, anchors)
    counted = cv2.erode(lung.astype(np.uint8), _disk(ERODE_MM / mm)).astype(np.bool_)
    n = int(counted.sum())
    if n < MIN_LUNG_FRACTION * img.size:
        out["reason"] = "no lung"
        return out
    opener = _disk(OPEN_MM / mm)
    ggo = counted & (hu >= GGO_HU[0]) & (hu < GGO_HU[1])
    cons = counted & (hu >= CONSOLIDATION_HU[0]) & (hu <= CONSOLIDATION_HU[1])
    ggo = cv2.morphologyEx(ggo.astype(np.uint8), cv2.MORPH_OPEN, opener).astype(np.bool_)
    cons = cv2.morphologyEx(cons.astype(np.uint8), cv2.MORPH_OPEN, opener).astype(np.bool_)
    central = mediastinum_band(lung, HILUM_MM / mm)
    keep = _components_off(ggo | cons, central)
    ggo, cons = ggo & keep, cons & keep
    g, c = float(ggo.sum()) / n, float(cons.sum()) / n
    out.update(ggo_share=g, consolidation_share=c, lesion_share=g + c, lung_px=n, ok=True)
    return out
