"""Overlays of the model's input laid on the slice as read (issue 20.4): the crop that
preprocessing cut is recorded, and a map on the input (Grad-CAM, the lesion labels) mapped
back through it lands on the tissue it came from, also where the crop reached past the edge."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.common.native_slices import (
    GRADCAM_MIN,
    InputCrop,
    decode_label_map,
    gradcam_overlay_png,
    input_map_to_native,
    lesion_overlay_png,
    pack_native,
)
from services.preprocess.segmentation import crop_labels_to_lungs, crop_square, crop_to_lungs

SIZE = 224


def _slice(rows: int, columns: int, lung: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((rows, columns), 30, np.uint8)
    mask = np.zeros((rows, columns), bool)
    mask[lung] = True
    image[mask] = 200
    return image, mask


# A wide slice with the lungs in the middle, and one with the lungs against the left edge
# (the square reaches past it: the input is padded there).
CASES = [
    (300, 420, (slice(60, 240), slice(80, 340)), (150, 120)),
    (256, 256, (slice(40, 220), slice(0, 90)), (130, 20)),
]


@pytest.mark.parametrize(("rows", "columns", "lung", "spot"), CASES)
def test_a_spot_on_the_input_maps_back_to_where_it_was_cut(
    rows: int, columns: int, lung: tuple[slice, slice], spot: tuple[int, int]
) -> None:
    image, mask = _slice(rows, columns, lung)
    y, x = spot
    image[y - 3 : y + 4, x - 3 : x + 4] = 255  # a bright 7x7 spot inside the lung
    cut = crop_to_lungs(image, mask, SIZE)
    crop = InputCrop(*crop_square(mask), SIZE)
    hot = np.argwhere(cut >= 250).mean(axis=0)  # (v, u) of the spot on the input
    mapped_x, mapped_y = crop.to_native(hot[1], hot[0])
    assert abs(mapped_x - x) < 1.0 and abs(mapped_y - y) < 1.0


@pytest.mark.parametrize(("rows", "columns", "lung", "spot"), CASES)
def test_input_labels_mapped_back_cover_the_native_lesion(
    rows: int, columns: int, lung: tuple[slice, slice], spot: tuple[int, int]
) -> None:
    _, mask = _slice(rows, columns, lung)
    labels = np.zeros((rows, columns), np.uint8)
    cv2.circle(labels, (spot[1], spot[0]), 12, 1, -1)
    on_input = crop_labels_to_lungs(labels, mask, SIZE)
    crop = InputCrop(*crop_square(mask), SIZE)
    back = input_map_to_native((on_input == 1).astype(np.float32), crop, rows, columns) >= 0.5
    truth = labels == 1
    iou = (back & truth).sum() / (back | truth).sum()
    assert back.shape == (rows, columns) and iou > 0.85


def test_a_map_outside_the_crop_is_zero() -> None:
    crop = InputCrop(y0=-20, x0=10, side=100, size=SIZE)
    out = input_map_to_native(np.ones((SIZE, SIZE), np.float32), crop, 64, 200)
    assert out[:, 10:110].min() > 0.99  # rows 0..63 lie inside the square (y -20..80)
    assert out[:, :10].max() == 0 and out[:, 110:].max() == 0


def test_pack_native_keeps_lesion_labels_and_the_crop_per_slice() -> None:
    hu = [np.full((16, 20), -800, np.int16) for _ in range(3)]
    masks = [np.ones((16, 20), bool)] * 3
    labels = [np.zeros((16, 20), np.uint8) for _ in range(3)]
    labels[1][4:8, 5:9] = 2
    blob, entries = pack_native(hu, masks, labels, {1: (-2, 0, 20)}, SIZE)
    offset, length = entries[1]["lesions"]
    assert np.array_equal(decode_label_map(blob[offset : offset + length]), labels[1])
    assert entries[1]["crop"] == {"y0": -2, "x0": 0, "side": 20, "size": SIZE}
    assert entries[0]["crop"] is None and entries[2]["crop"] is None  # not kept
    assert InputCrop.of(entries[1]["crop"]) == InputCrop(-2, 0, 20, SIZE)
    assert InputCrop.of(None) is None


def test_lesion_and_gradcam_overlays_are_rgba_and_clear_elsewhere() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[2, 2], labels[7, 7], labels[5, 5] = 1, 2, 3
    rgba = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(lesion_overlay_png(labels), np.uint8), cv2.IMREAD_UNCHANGED),
        cv2.COLOR_BGRA2RGBA,
    )
    assert rgba[2, 2, 3] > 0 and rgba[7, 7, 3] > 0 and tuple(rgba[2, 2]) != tuple(rgba[7, 7])
    assert rgba[5, 5, 3] == 0 and rgba[0, 0, 3] == 0
    heat = np.zeros((10, 10), np.float32)
    heat[4, 4], heat[1, 1] = 1.0, GRADCAM_MIN / 2
    cam = cv2.imdecode(np.frombuffer(gradcam_overlay_png(heat), np.uint8), cv2.IMREAD_UNCHANGED)
    assert cam.shape == (10, 10, 4) and cam[4, 4, 3] == 200
    assert cam[1, 1, 3] == 0 and cam[0, 0, 3] == 0
