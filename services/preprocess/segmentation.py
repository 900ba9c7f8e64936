"""Classical lung segmentation of 8-bit grey CT slices, and the lung crop fed to the CNN.

The input is either a lung-windowed DICOM slice (air/lung dark, soft tissue bright) or an
arbitrary pre-windowed figure. In both the lungs are the large dark regions enclosed by the
bright body, which is what this module finds:

1. work on a copy downscaled to at most ``WORK_SIZE`` pixels (speed; radii scale with it),
2. Otsu threshold on a smoothed image -> dark (air, lung) vs bright (tissue, bone),
3. body = largest bright component, closed and hole-filled; lung candidates = dark inside body,
4. drop small components and the trachea (small, round, central), keep the largest ones,
5. per lung: closing + hole filling so vessels, ground glass and consolidation touching the
   pleura end up inside the mask, then upsample to the input size.

:func:`segment_volume` adds 3-D consistency for volumes (see its docstring).

Everything is deterministic (no randomness, fixed OpenCV ops), so the same crop is produced at
training and at inference time.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.preprocess.types import Gray8

BoolMask = NDArray[np.bool_]

WORK_SIZE = 256  # longest side of the working copy; masks are upsampled back
MIN_SIZE = 32  # below this there is nothing meaningful to segment
MIN_CONTRAST = 16  # grey levels between dark and bright classes; flat images have no lung
MIN_COMPONENT_FRACTION = 0.002  # of the image area; smaller dark blobs are gas/noise
MIN_RELATIVE_AREA = 0.08  # extra components (split lobes) must be this large vs. the biggest
MAX_COMPONENTS = 4  # two lungs, each possibly split in two by the diaphragm dome
MAX_FILL_FRACTION = 0.8  # a "lung" covering most of the image is background, not lung
OPEN_FRACTION = 0.004  # opening radius / image side: cuts thin dark bridges between regions
THRESHOLD_SHIFT = 0.2  # fraction of the way from Otsu to the bright median: keeps lung rims
MAX_HOLE_FRACTION = 0.02  # holes larger than this (of the image) are mediastinum, not lesion
CLOSE_FRACTION = 0.045  # closing radius / image side: pulls pleural lesions into the lung


def _u8(array: object) -> NDArray[np.uint8]:
    """OpenCV results as uint8 arrays (no copy when they already are; keeps mypy exact)."""
    return np.asarray(array, dtype=np.uint8)


def _disk(radius: int) -> NDArray[np.uint8]:
    r = max(1, radius)
    return _u8(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))


def fill_holes(mask: NDArray[np.uint8], max_area: int | None = None) -> NDArray[np.uint8]:
    """Fill enclosed holes of a 0/1 mask; with ``max_area`` only holes up to that size.

    The limit matters when both lungs touch in front of and behind the heart: the mediastinum
    is then an enclosed hole, and it must stay out of the lung mask.
    """
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    if max_area is None:
        flood = np.zeros((h + 4, w + 4), np.uint8)
        cv2.floodFill(padded, flood, (0, 0), 2)
        return (padded[1:-1, 1:-1] != 2).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(1 - padded, connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0 is the mask itself
    small[labels[0, 0]] = False  # the outside (the padding ring is one component)
    return (padded[1:-1, 1:-1] | small[labels[1:-1, 1:-1]]).astype(np.uint8)


def _largest_component(mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8)


def _to_work(image: Gray8) -> Gray8:
    """Downscale so the longest side is at most WORK_SIZE (never upscale)."""
    h, w = image.shape
    scale = WORK_SIZE / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return _u8(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


def _is_trachea(stats: NDArray[np.int32], body_cx: float, body_w: float, area_img: int) -> bool:
    """Small, compact, dark blob on the body midline: trachea/oesophagus, not lung."""
    x, _, w, h, area = (int(v) for v in stats)
    cx = x + w / 2
    compact = area > 0.5 * w * h and max(w, h) < 2 * min(w, h)
    return compact and abs(cx - body_cx) < 0.12 * body_w and area < 0.01 * area_img


def _split_at_midline(cand: NDArray[np.uint8], body_cx: float, body_w: float) -> None:
    """Cut, in place, dark components that straddle the body midline (lungs touching at the
    anterior/posterior junction lines) at their narrowest column near the midline, so that
    each lung is closed and hole-filled on its own and the mediastinum stays outside."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
    lo, hi = max(0, round(body_cx - 0.15 * body_w)), round(body_cx + 0.15 * body_w)
    min_area = MIN_COMPONENT_FRACTION * cand.size
    for lab in range(1, n):
        x, _, w, _, area = (int(v) for v in stats[lab])
        if area < min_area or x >= lo or x + w <= hi:
            continue
        comp = labels == lab
        cols = comp.sum(axis=0)
        left, right = int(cols[: round(body_cx)].sum()), int(cols[round(body_cx) :].sum())
        if min(left, right) < 0.2 * area:
            continue  # one lung plus a bit across the midline: nothing to split
        cut = lo + int(np.argmin(cols[lo:hi]))
        cand[:, max(0, cut - 1) : cut + 2][comp[:, max(0, cut - 1) : cut + 2]] = 0


def segment_lungs(image: Gray8) -> BoolMask:
    """Boolean lung mask of one 8-bit grey slice (same shape); empty when no lung is found."""
    if image.ndim == 3:  # tolerate RGB/RGBA inputs
        code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
        image = _u8(cv2.cvtColor(image, code))
    image = np.ascontiguousarray(image, dtype=np.uint8)
    out_h, out_w = image.shape
    empty = np.zeros((out_h, out_w), np.bool_)
    if min(out_h, out_w) < MIN_SIZE:
        return empty

    work = _to_work(image)
    h, w = work.shape
    side = min(h, w)
    area_img = h * w
    smooth = cv2.GaussianBlur(work, (0, 0), sigmaX=max(0.7, side / 256))
    thr, otsu = cv2.threshold(smooth, 0, 1, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    dark = _u8(otsu)
    lo, hi = smooth[dark == 1], smooth[dark == 0]
    if lo.size == 0 or hi.size == 0 or float(hi.mean()) - float(lo.mean()) < MIN_CONTRAST:
        return empty
    if THRESHOLD_SHIFT:
        # Otsu sits low between air and tissue; partial-volume lung edges lie above it.
        thr = thr + THRESHOLD_SHIFT * (float(np.median(hi)) - thr)
        dark = (smooth <= thr).astype(np.uint8)

    # Body: the biggest bright region, opened to detach the table, closed to seal the thin
    # chest wall, hole-filled so that the lungs lie inside it.
    bright = _u8(cv2.morphologyEx(1 - dark, cv2.MORPH_OPEN, _disk(round(0.008 * side))))
    body = _largest_component(bright)
    body = fill_holes(_u8(cv2.morphologyEx(body, cv2.MORPH_CLOSE, _disk(round(0.015 * side)))))
    if not body.any():
        return empty

    cand = _u8(cv2.morphologyEx(dark & body, cv2.MORPH_OPEN, _disk(round(OPEN_FRACTION * side))))
    xs = np.flatnonzero(body.any(axis=0))
    body_cx, body_w = float((xs[0] + xs[-1]) / 2), float(xs[-1] - xs[0] + 1)
    _split_at_midline(cand, body_cx, body_w)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=4)
    if n <= 1:
        return empty

    order = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")
    largest = int(stats[order[0], cv2.CC_STAT_AREA])
    kept: list[int] = []
    for lab in order:
        area = int(stats[lab, cv2.CC_STAT_AREA])
        if area < MIN_COMPONENT_FRACTION * area_img or len(kept) >= MAX_COMPONENTS:
            break
        if len(kept) >= 2 and area < MIN_RELATIVE_AREA * largest:
            break
        if _is_trachea(stats[lab], body_cx, body_w, area_img):
            continue
        kept.append(int(lab))
    if not kept:
        return empty

    # Per lung: close (pleura-touching lesions, vessels) and fill holes, on a padded bbox crop
    # so the closing neither bridges the two lungs nor costs a full-image pass.
    r = max(2, round(CLOSE_FRACTION * side))
    max_hole = round(MAX_HOLE_FRACTION * area_img)
    lung = np.zeros((h, w), np.uint8)
    for lab in kept:
        x, y, bw, bh = (int(v) for v in stats[lab, :4])
        comp = np.zeros((bh + 4 * r, bw + 4 * r), np.uint8)
        comp[2 * r : 2 * r + bh, 2 * r : 2 * r + bw] = labels[y : y + bh, x : x + bw] == lab
        comp = fill_holes(_u8(cv2.morphologyEx(comp, cv2.MORPH_CLOSE, _disk(r))), max_hole)
        y0, x0 = y - 2 * r, x - 2 * r
        sy0, sx0 = max(0, -y0), max(0, -x0)
        ty0, tx0 = max(0, y0), max(0, x0)
        ty1, tx1 = min(h, y0 + comp.shape[0]), min(w, x0 + comp.shape[1])
        lung[ty0:ty1, tx0:tx1] |= comp[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
    lung &= body  # the closing must not leak outside the body
    if lung.mean() > MAX_FILL_FRACTION:
        return empty  # dark background inside a frame, not lungs

    if (h, w) != (out_h, out_w):
        up = cv2.resize(lung.astype(np.float32), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        return up >= 0.5
    return lung.astype(np.bool_)


def lung_bbox(mask: BoolMask, margin: float = 0.05) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), end-exclusive, of the mask grown by ``margin`` x image size, clipped."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    my, mx = round(margin * h), round(margin * w)
    return (
        max(0, int(rows[0]) - my),
        min(h, int(rows[-1]) + 1 + my),
        max(0, int(cols[0]) - mx),
        min(w, int(cols[-1]) + 1 + mx),
    )


def _border_value(image: Gray8) -> int:
    """Most common value on the image border: the background to pad with."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return int(np.bincount(border, minlength=256).argmax())


def crop_square(mask: BoolMask, min_lung_fraction: float = 0.02) -> tuple[int, int, int]:
    """(y0, x0, side) of the square that :func:`crop_to_lungs` cuts from a slice with this
    lung mask (the lung box grown to a square around its centre; it may reach past the
    image, where the crop is padded). The mapping between the CNN input and the slice as
    read: input pixel (u, v) of an ``S`` x ``S`` input is slice pixel
    (x0 + (u + 0.5) * side / S - 0.5, y0 + (v + 0.5) * side / S - 0.5)."""
    h, w = mask.shape
    box = lung_bbox(mask) if mask.mean() >= min_lung_fraction else None
    y0, y1, x0, x1 = box if box is not None else (0, h, 0, w)
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    return cy - side // 2, cx - side // 2, side


def _square(image: Gray8, square: tuple[int, int, int], fill: int | None = None) -> Gray8:
    """The ``(y0, x0, side)`` square of the image; parts outside the image are padded (with
    the image's border value unless ``fill`` is given)."""
    sy0, sx0, side = square
    h, w = image.shape
    out = np.full((side, side), _border_value(image) if fill is None else fill, np.uint8)
    iy0, ix0 = max(0, sy0), max(0, sx0)
    iy1, ix1 = min(h, sy0 + side), min(w, sx0 + side)
    out[iy0 - sy0 : iy1 - sy0, ix0 - sx0 : ix1 - sx0] = image[iy0:iy1, ix0:ix1]
    return out


def crop_to_lungs(
    image: Gray8, mask: BoolMask, size: int, min_lung_fraction: float = 0.02
) -> Gray8:
    """Square lung crop resized to ``size`` x ``size`` (INTER_AREA), aspect ratio kept.

    Falls back to the whole image (made square) when the lung covers less than
    ``min_lung_fraction`` of it, i.e. when segmentation failed or there is no lung.
    """
    square = _square(image, crop_square(mask, min_lung_fraction))
    return _u8(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA))


def crop_labels_to_lungs(
    labels: Gray8, mask: BoolMask, size: int, min_lung_fraction: float = 0.02
) -> Gray8:
    """A label map (e.g. lesion classes) cut and resized exactly as :func:`crop_to_lungs` cuts
    the image of the same slice, nearest neighbour so labels stay labels, padded with 0."""
    square = _square(labels, crop_square(mask, min_lung_fraction), fill=0)
    return _u8(cv2.resize(square, (size, size), interpolation=cv2.INTER_NEAREST))


MIN_SLICES = 3  # a 3-D lung component spans at least this many slices (2 mm: 6 mm)
MIN_VOLUME_FRACTION = 0.1  # of the largest 3-D component; lungs are each far above this


def segment_volume(images: NDArray[np.uint8], z_median: bool = False) -> BoolMask:
    """Lung masks (N, H, W) for a stack of slices (N, H, W) in anatomical order.

    Each slice is segmented with :func:`segment_lungs`; then the stacked masks are labelled
    as 3-D connected components (6-connectivity) and only components that span at least
    ``MIN_SLICES`` slices (fewer when the stack is shorter) and hold at least
    ``MIN_VOLUME_FRACTION`` of the largest component's voxels are kept. The two lungs are one
    or two such components; stomach/bowel gas below the diaphragm, the trachea and one-slice
    specks are small or short and are removed. With ``z_median`` a 3-slice majority vote along
    z is applied first (bridges a slice where segmentation flickered out, drops one-slice
    specks; the first and last slices are left as they are).
    """
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) slices, got shape {images.shape}")
    masks = np.stack([segment_lungs(s) for s in images]) if len(images) else images.astype(bool)
    if z_median and len(masks) >= 3:
        # Before the 3-D labelling, so a slice that flickered out does not cut a lung in two.
        votes = masks.astype(np.uint8)
        votes[1:-1] = votes[:-2] + votes[1:-1] + votes[2:]
        masks = np.concatenate([masks[:1], votes[1:-1] >= 2, masks[-1:]])
    if not masks.any():
        return masks
    labels, n = ndimage.label(masks)
    objects = ndimage.find_objects(labels)
    # Voxel counts inside each bounding box: cheaper than a bincount over the whole stack.
    volumes = np.array(
        [
            0 if sl is None else int(np.count_nonzero(labels[sl] == lab))
            for lab, sl in enumerate(objects, 1)
        ]
    )
    span_needed = min(MIN_SLICES, len(images))
    keep = np.zeros(n + 1, np.bool_)
    for lab, sl in enumerate(objects, start=1):
        if sl is not None:
            span = sl[0].stop - sl[0].start
            big = volumes[lab - 1] >= MIN_VOLUME_FRACTION * volumes.max()
            keep[lab] = span >= span_needed and big
    masks = keep[labels]
    return masks
