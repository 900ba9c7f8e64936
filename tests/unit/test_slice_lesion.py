"""The physics-based lesion share of 8-bit slices (services.preprocess.slice_lesion)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from services.preprocess.slice_lesion import (
    Anchors,
    lung_mask_2d,
    pseudo_hu,
    slice_lesion_share,
)


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> NDArray[np.bool_]:
    yy, xx = np.mgrid[:size, :size]
    return np.asarray(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)


def chest_hu(size: int = 256, lesion_hu: float | None = None, seed: int = 0) -> NDArray:
    """HU slice: air, soft-tissue body (+40), two lungs (-850, vessels), a spine; optionally
    a round ground-glass patch of ``lesion_hu`` in the right lung (~ 25 mm across)."""
    rng = np.random.default_rng(seed)
    s = size / 256
    hu = np.full((size, size), -1000.0)
    hu[_ellipse(size, 128 * s, 128 * s, 85 * s, 112 * s)] = 40
    lungs = _ellipse(size, 122 * s, 80 * s, 58 * s, 36 * s) | _ellipse(
        size, 122 * s, 176 * s, 56 * s, 34 * s
    )
    hu[lungs] = -850
    for _ in range(15):
        y, x = rng.integers(75 * s, 170 * s), rng.integers(50 * s, 206 * s)
        if lungs[y, x]:
            cv2.circle(hu, (int(x), int(y)), max(1, int(1.5 * s)), 30, -1)
    hu[_ellipse(size, 195 * s, 128 * s, 13 * s, 13 * s)] = 700
    if lesion_hu is not None:
        hu[_ellipse(size, 135 * s, 78 * s, 18 * s, 14 * s)] = lesion_hu
    return hu + rng.normal(0, 12, hu.shape)


def render(
    hu: NDArray, level: float = -600, width: float = 1500, gamma: float = 1.0, fov: bool = False
) -> NDArray[np.uint8]:
    """8-bit screenshot through a lung window; with ``fov`` black outside a round field."""
    g = np.clip((hu - (level - width / 2)) / width, 0, 1) ** gamma
    img = np.round(255 * g).astype(np.uint8)
    if fov:
        size = hu.shape[0]
        img[~_ellipse(size, size / 2, size / 2, size / 2 - 1, size / 2 - 1)] = 0
    return img


def test_pseudo_hu_inverts_a_linear_window() -> None:
    img = np.array([[0, 60, 128, 236, 255]], np.uint8)
    out = pseudo_hu(img, Anchors(air=60.0, tissue=236.0, air_source="outside"))
    assert out[0, 1] == pytest.approx(-1000) and out[0, 3] == pytest.approx(40)


@pytest.mark.parametrize("fov", [False, True])
def test_lung_mask_finds_both_lungs(fov: bool) -> None:
    hu = chest_hu()
    mask = lung_mask_2d(render(hu, fov=fov))
    truth = hu < -700
    truth &= _ellipse(256, 128, 128, 85, 112)  # lungs only, not the air around the body
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9


def test_clean_chest_is_near_zero_and_ground_glass_raises_it() -> None:
    clean = slice_lesion_share(render(chest_hu()))
    sick = slice_lesion_share(render(chest_hu(lesion_hu=-500)))
    assert clean["ok"] and sick["ok"]
    assert clean["lesion_share"] < 0.01
    # the patch covers ~ 6 % of the lung area
    assert sick["ggo_share"] > 0.03 and sick["lesion_share"] > clean["lesion_share"] + 0.03
    assert sick["consolidation_share"] < 0.01


def test_consolidation_is_counted_as_consolidation() -> None:
    out = slice_lesion_share(render(chest_hu(lesion_hu=-50)))
    assert out["ok"] and out["consolidation_share"] > 0.03 and out["ggo_share"] < 0.02


@pytest.mark.parametrize(
    ("level", "width", "gamma", "fov"),
    [(-500, 1400, 1.0, False), (-550, 1600, 1.0, True), (-600, 1500, 1.15, False)],
)
def test_other_renderings_give_a_similar_share(
    level: float, width: float, gamma: float, fov: bool
) -> None:
    hu = chest_hu(lesion_hu=-500)
    ref = slice_lesion_share(render(hu))
    other = slice_lesion_share(render(hu, level, width, gamma, fov))
    assert other["ok"]
    assert other["lesion_share"] == pytest.approx(ref["lesion_share"], abs=0.015)


def test_mediastinal_window_is_rejected() -> None:
    out = slice_lesion_share(render(chest_hu(lesion_hu=-500), level=40, width=400))
    assert not out["ok"] and out["lesion_share"] == 0.0


def test_blank_image_is_not_ok() -> None:
    out = slice_lesion_share(np.zeros((128, 128), np.uint8))
    assert not out["ok"] and out["reason"]


@pytest.mark.data
def test_lung_mask_on_shared_expert_masks(data_dir: Path) -> None:
    root = data_dir / "lung-masks"
    dices = []
    for path in sorted((root / "images").glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        truth = cv2.imread(str(root / "masks" / path.name), cv2.IMREAD_GRAYSCALE) > 127
        mask = lung_mask_2d(image)
        dices.append(2 * (mask & truth).sum() / max(1, mask.sum() + truth.sum()))
    assert len(dices) == 11
    assert float(np.mean(dices)) >= 0.9, dices
