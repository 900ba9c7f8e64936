"""Synthetic inputs for the unit tests: a chest-CT phantom in HU, and things that are not CT."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> NDArray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def chest_phantom(
    slices: int = 30, size: int = 256, seed: int = 0
) -> tuple[NDArray[np.int16], NDArray[np.bool_]]:
    """(N, size, size) HU volume, slices inferior → superior, patient's left on image right:
    air around a soft-tissue body, two lungs (-850 HU, with a few vessels) that shrink
    towards the apex, a mediastinum and a spine. Returns the HU and the true lung masks."""
    rng = np.random.default_rng(seed)
    s = size / 256
    hu = np.full((slices, size, size), -1000, np.int16)
    truth = np.zeros((slices, size, size), bool)
    body = _ellipse((size, size), 128 * s, 128 * s, 90 * s, 115 * s)
    for z in range(slices):
        t = z / max(1, slices - 1)
        scale = 1.0 - 0.5 * t**2  # lungs narrow towards the apex
        img = np.full((size, size), -1000.0)
        img[body] = 40
        right_lung = _ellipse((size, size), 125 * s, 80 * s, 60 * s * scale, 38 * s * scale)
        left_lung = _ellipse((size, size), 125 * s, 176 * s, 58 * s * scale, 35 * s * scale)
        lungs = right_lung | left_lung
        img[lungs] = -850
        for _ in range(12):  # vessels: small round dense dots
            y, x = rng.integers(int(70 * s), int(185 * s)), rng.integers(int(50 * s), int(206 * s))
            if lungs[y, x]:
                cv2.circle(img, (int(x), int(y)), max(1, int(2 * s)), 30, -1)
        img[_ellipse((size, size), 200 * s, 128 * s, 14 * s, 14 * s)] = 700  # spine
        img += rng.normal(0, 15, img.shape)
        hu[z] = np.clip(np.rint(img), -1024, 3000).astype(np.int16)
        truth[z] = lungs
    return hu, truth


def noise_image(size: int = 256, seed: int = 0) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def photo_image(size: int = 320) -> NDArray[np.uint8]:
    """RGB 'photograph': sky-to-ground colour gradients, a sun, a house, a tree."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    rgb = np.zeros((size, size, 3), np.float32)
    rgb[..., 0] = 90 + 120 * yy
    rgb[..., 1] = 150 + 60 * xx
    rgb[..., 2] = 250 - 180 * yy
    ground = yy > 0.65
    rgb[ground] = np.stack([60 + 40 * xx[ground], 140 - 30 * yy[ground], 50 + 0 * xx[ground]], -1)
    cv2.circle(rgb, (int(0.8 * size), int(0.2 * size)), int(0.08 * size), (255, 230, 80), -1)
    cv2.rectangle(rgb, (int(0.2 * size), int(0.45 * size)), (int(0.45 * size), int(0.7 * size)),
                  (180, 60, 40), -1)  # fmt: skip
    cv2.circle(rgb, (int(0.65 * size), int(0.5 * size)), int(0.1 * size), (30, 110, 30), -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def chest_radiograph(size: int = 512) -> NDArray[np.uint8]:
    """Frontal chest X-ray-like projection: the body fills the detector (no air around it),
    two dark lung fields, a bright mediastinum and spine, ribs crossing the lung fields."""
    s = size / 512
    img = np.full((size, size), 150.0)
    yy, _ = np.mgrid[:size, :size]
    img += 30 * (yy / size)  # denser towards the abdomen
    right = _ellipse((size, size), 240 * s, 160 * s, 170 * s, 95 * s)
    left = _ellipse((size, size), 240 * s, 352 * s, 165 * s, 90 * s)
    img[right | left] = 60
    img[:, int(228 * s) : int(284 * s)] = 215  # mediastinum and spine
    img[int(380 * s) :, :] = np.maximum(img[int(380 * s) :, :], 185)  # diaphragm, abdomen
    for k in range(9):  # ribs: bright arcs across both lung fields
        y = int((90 + 38 * k) * s)
        for cx, sign in ((160 * s, 1), (352 * s, -1)):
            cv2.ellipse(img, (int(cx), y), (int(120 * s), int(35 * s)), 0, 180 if sign > 0 else 0,
                        360 if sign > 0 else 180, 140, max(2, int(12 * s)))  # fmt: skip
    cv2.line(img, (int(60 * s), int(70 * s)), (int(250 * s), int(100 * s)), 200, int(14 * s))
    cv2.line(img, (int(452 * s), int(70 * s)), (int(262 * s), int(100 * s)), 200, int(14 * s))
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), 3 * s), np.float64)
    img += np.random.default_rng(0).normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
