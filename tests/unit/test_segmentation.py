"""Lung segmentation, lung crop and the Dice evaluation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from services.preprocess.segmentation import (
    crop_to_lungs,
    fill_holes,
    lung_bbox,
    segment_lungs,
    segment_volume,
)
from services.training.lung_eval import dice, evaluate_lungs
from tests.support.ctmd import load_lung_windowed


def phantom(size: int = 512, lesion: bool = True) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """Lung-window-like slice: dark air, bright body ellipse, two dark lungs (with a bright
    pleura-touching lesion in the right one). Returns the image and the true lung mask."""
    s = size / 512
    img = np.full((size, size), 10, np.uint8)
    cv2.ellipse(img, (size // 2, size // 2), (int(230 * s), int(170 * s)), 0, 0, 360, 220, -1)
    truth = np.zeros((size, size), np.uint8)
    for cx in (int(150 * s), int(362 * s)):
        cv2.ellipse(truth, (cx, size // 2), (int(80 * s), int(120 * s)), 0, 0, 360, 1, -1)
    img[truth == 1] = 40
    if lesion:  # consolidation against the lateral pleura: must end up inside the mask
        cv2.circle(img, (int(95 * s), size // 2), int(25 * s), 210, -1)
        img[truth == 0] = np.where(img[truth == 0] == 210, 220, img[truth == 0])
    return img, truth.astype(bool)


@pytest.mark.data
def test_dice_on_shared_lung_masks(data_dir: Path) -> None:
    root = data_dir / "lung-masks"
    result = evaluate_lungs(root / "images", root / "masks")
    assert result["n"] == 11
    assert result["dice_mean"] >= 0.95, result["per_image"]
    assert result["dice_min"] >= 0.8, result["per_image"]


@pytest.mark.parametrize("size", [96, 256, 512, 1024])
def test_phantom_any_size_with_lesion_inside(size: int) -> None:
    img, truth = phantom(size)
    mask = segment_lungs(img)
    assert mask.shape == img.shape and mask.dtype == np.bool_
    assert dice(mask, truth) > 0.95
    lesion_centre = (size // 2, int(95 * size / 512))
    assert mask[lesion_centre]


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((512, 512), np.uint8),
        np.full((512, 512), 255, np.uint8),
        np.zeros((5, 7), np.uint8),
        np.zeros((1, 1), np.uint8),
        np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8),
    ],
    ids=["black", "white", "tiny", "1x1", "noise"],
)
def test_empty_mask_without_lung(image: NDArray[np.uint8]) -> None:
    mask = segment_lungs(image)
    assert mask.shape == image.shape
    assert not mask.any()


def test_no_lung_in_soft_tissue_slice() -> None:
    img = np.full((512, 512), 10, np.uint8)  # abdomen: body without air inside
    cv2.ellipse(img, (256, 256), (230, 170), 0, 0, 360, 220, -1)
    cv2.circle(img, (300, 250), 40, 200, -1)  # an organ, slightly darker
    assert not segment_lungs(img).any()


def test_rgb_input_accepted() -> None:
    img, truth = phantom()
    mask = segment_lungs(np.dstack([img] * 3))
    assert dice(mask, truth) > 0.95


def test_fill_holes_respects_max_area() -> None:
    ring = np.zeros((50, 50), np.uint8)
    cv2.rectangle(ring, (5, 5), (44, 44), 1, 3)
    assert fill_holes(ring).all() == 0 and fill_holes(ring)[25, 25] == 1
    assert fill_holes(ring, max_area=100)[25, 25] == 0


def test_lung_bbox_margin_and_clip() -> None:
    mask = np.zeros((100, 200), bool)
    assert lung_bbox(mask) is None
    mask[40:60, 50:150] = True
    assert lung_bbox(mask, margin=0.1) == (30, 70, 30, 170)
    mask[0:5, 0:5] = True
    assert lung_bbox(mask, margin=0.1) == (0, 70, 0, 170)


def test_crop_to_lungs_square_and_deterministic() -> None:
    img, _ = phantom()
    mask = segment_lungs(img)
    crop = crop_to_lungs(img, mask, 224)
    assert crop.shape == (224, 224) and crop.dtype == np.uint8
    assert np.array_equal(crop, crop_to_lungs(img, segment_lungs(img), 224))
    # The crop is tighter than the whole image: its border is body, not outside air.
    assert crop[112, 0] > 100 or crop[0, 112] > 100


def test_crop_falls_back_to_whole_image() -> None:
    img = np.random.default_rng(1).integers(0, 256, (100, 200), dtype=np.uint8)
    tiny_mask = np.zeros(img.shape, bool)
    tiny_mask[50, 100] = True  # 1 pixel: far below min_lung_fraction
    expected = np.full((200, 200), 0, np.uint8)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    expected[:] = np.bincount(border, minlength=256).argmax()
    expected[50:150] = img
    want = cv2.resize(expected, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(crop_to_lungs(img, tiny_mask, 64), want)
    assert np.array_equal(crop_to_lungs(img, np.zeros(img.shape, bool), 64), want)


def test_segment_volume_removes_single_slice_specks() -> None:
    img, truth = phantom(256, lesion=False)
    vol = np.stack([img] * 8)
    speck = vol[4].copy()  # a dark blob in one slice only, large enough to survive 2-D
    cv2.ellipse(speck, (128, 128), (8, 40), 0, 0, 360, 40, -1)
    vol[4] = speck
    assert segment_lungs(vol[4])[128, 128]
    masks = segment_volume(vol)
    assert masks.shape == vol.shape and masks.dtype == np.bool_
    assert not masks[4, 128, 128]
    assert all(dice(m, truth) > 0.95 for m in masks)
    assert segment_volume(np.zeros((0, 64, 64), np.uint8)).shape == (0, 64, 64)
    with pytest.raises(ValueError):
        segment_volume(img)


@pytest.mark.data
def test_p002_lungs_on_mid_slices_and_none_outside(covid_series: Path) -> None:
    vol = load_lung_windowed(covid_series)
    masks = segment_volume(vol)
    fraction = masks.mean(axis=(1, 2))
    assert (fraction[40:100] > 0.15).all()  # mid chest: both lungs
    assert (fraction[125:] == 0).all()  # neck, above the apices
    assert (fraction[:8] == 0).all()  # upper abdomen: stomach gas removed in 3-D
    per_slice = np.array([segment_lungs(s).mean() for s in vol[:8]])
    assert (per_slice < 0.02).all()  # ...and too small for a lung crop even in 2-D


def test_segment_volume_z_median_bridges_a_missing_slice() -> None:
    img, truth = phantom(128, lesion=False)
    vol = np.stack([img] * 6)
    vol[3] = 10  # one blank slice inside the lungs (e.g. a corrupted frame)
    assert not segment_volume(vol)[3].any()
    smoothed = segment_volume(vol, z_median=True)
    assert dice(smoothed[3], truth) > 0.95
    assert np.array_equal(smoothed[0], segment_lungs(img))
