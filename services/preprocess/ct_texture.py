"""Does an 8-bit image carry the texture of a CT scan? Features for the not_chest_ct gate.

A CT slice is a reconstruction from noisy projections of a body full of fine structure:
every pixel inside the body carries quantum noise, the lungs are crossed by vessels and
bronchi, and windowing clips only what lies outside the window (air black, bone white).
Drawings, charts, screenshots, smoothed noise and radiograph-like projections (a sum over
hundreds of voxels along each ray averages noise and small structures away) lack that
texture: their unclipped regions are exactly flat, or vary only smoothly, and what fine detail
they have lies along a few outlines. Measured on the pixels the window did not clip (strictly
between the image's darkest and brightest grey), at the gate's working scale:

* ``flat_share``: share whose 3x3 neighbourhood is one single grey level (a flat drawing ~1;
  real CT exports, even JPEG paper figures, at most ~0.5: the noise breaks every plateau);
* ``detail``: share where the 3x3 Laplacian (Immerkær's noise kernel: it cancels planes and
  ramps) is at least :data:`DETAIL_STEP` grey levels, i.e. noise or structure well above
  8-bit rounding (rounding alone gives |response| < 8 almost everywhere);
* ``interior_detail``: the same, only at pixels away from the image's coarse outlines (where a
  heavily blurred copy changes by more than 4 % of the grey range per pixel): a drawing with
  smoothed noise has detail only along its ellipses; CT has it inside the lungs and tissue;
* ``grey_range``: 5th to 95th percentile of the unclipped pixels (+1): a faint export (the
  whole body within ~20 grey levels) has little detail by the absolute step above.

* ``shading_share``: share of the textured 24-pixel blocks (half-overlapping, wholly
  unclipped, standard deviation >= 1 grey level after a light blur) that one tilted plane
  explains to >= 90 %: smooth shading, the light falling across a wall, a sky or a face in a
  photograph. CT has no such blocks: its smooth tissue is level (noise only, no trend) and
  its trends are organ outlines, which a plane explains far less well.

Text screenshots are refused before these features, by the gate's noise rule (1-pixel strokes
are high-frequency energy); a share of "ink and paper" pixels was tried and does not separate
text from lungs masked onto black (masked-normal up to 0.90, text 0.85-0.94).
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from services.preprocess.types import Gray8

CLIP_MARGIN = 2  # grey levels from the darkest / brightest value that count as clipped
DETAIL_STEP = 8.0  # |Laplacian response| that counts as detail (rounding noise: sd ~1.7)
OUTLINE_SLOPE = 0.04  # coarse slope, as a share of the grey range per pixel, of an outline
MIN_PIXELS = 64
SHADING_BLOCK = 24  # pixels at the working scale (~1/10 of the image side)
SHADING_R2 = 0.9  # share of a block's variance a plane explains for it to count as shading
SHADING_MIN_SD = 1.0  # grey levels: a level block (CT's smooth tissue) is no shading
_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def unclipped(image: Gray8) -> NDArray[np.bool_]:
    """Pixels the window did not clip, their 3x3 neighbourhood included."""
    low, high = int(image.min()), int(image.max())
    inside = ((image > low + CLIP_MARGIN) & (image < high - CLIP_MARGIN)).astype(np.uint8)
    return np.asarray(cv2.erode(inside, np.ones((3, 3), np.uint8)), dtype=bool)


def texture_features(work: Gray8) -> dict[str, float]:
    """The features of the module doc for one grey image (the gate's working scale)."""
    mask = unclipped(work)
    features = {"flat_share": 0.0, "grey_range": 0.0}
    features.update({"detail": 0.0, "interior_detail": 0.0, "shading_share": 0.0})
    if int(mask.sum()) < MIN_PIXELS:
        return features
    kernel = np.ones((3, 3), np.uint8)
    spread = cv2.dilate(work, kernel).astype(np.int16) - cv2.erode(work, kernel).astype(np.int16)
    f = work.astype(np.float32)
    detailed = np.abs(cv2.filter2D(f, -1, _LAPLACE)) >= DETAIL_STEP
    values = work[mask]
    grey_range = float(np.percentile(values, 95) - np.percentile(values, 5)) + 1.0
    coarse = cv2.GaussianBlur(f, (0, 0), 3.0)
    slope = np.hypot(cv2.Sobel(coarse, cv2.CV_32F, 1, 0), cv2.Sobel(coarse, cv2.CV_32F, 0, 1))
    outline = (slope / 8.0 > OUTLINE_SLOPE * grey_range).astype(np.uint8)  # Sobel gain 8
    interior = mask & (cv2.dilate(outline, np.ones((5, 5), np.uint8)) == 0)
    features["shading_share"] = round(shading_share(f, mask), 4)
    features["grey_range"] = round(grey_range, 1)
    features["flat_share"] = round(float(np.mean(spread[mask] == 0)), 4)
    features["detail"] = round(float(np.mean(detailed[mask])), 4)
    if int(interior.sum()) >= MIN_PIXELS:
        features["interior_detail"] = round(float(np.mean(detailed[interior])), 4)
    else:  # all outline (line art, text): judged by the other features
        features["interior_detail"] = features["detail"]
    return features


def _plane_projector(side: int) -> NDArray[np.float64]:
    yy, xx = np.mgrid[:side, :side].astype(np.float64) / side - 0.5
    basis = np.stack([np.ones(side * side), xx.ravel(), yy.ravel()], axis=1)
    return np.asarray(basis @ np.linalg.pinv(basis))


_PLANE = _plane_projector(SHADING_BLOCK)


def shading_share(f: NDArray[np.float32], mask: NDArray[np.bool_]) -> float:
    """Share of textured blocks that are a tilted plane (see the module doc)."""
    b, step = SHADING_BLOCK, SHADING_BLOCK // 2
    smooth = np.asarray(cv2.GaussianBlur(f, (0, 0), 1.5), np.float64)
    if min(smooth.shape) < b:
        return 0.0
    windows = np.lib.stride_tricks.sliding_window_view(smooth, (b, b))[::step, ::step]
    inside = np.lib.stride_tricks.sliding_window_view(mask, (b, b))[::step, ::step]
    blocks = windows.reshape(-1, b * b)[inside.reshape(-1, b * b).all(axis=1)]
    blocks = blocks - blocks.mean(axis=1, keepdims=True)
    total = (blocks**2).sum(axis=1)
    textured = total >= SHADING_MIN_SD**2 * b * b
    if not textured.any():
        return 0.0
    fitted = blocks[textured] @ _PLANE.T
    explained = (fitted**2).sum(axis=1) / total[textured]
    return float(np.mean(explained >= SHADING_R2))
