"""The report's key images tint the verdict's lesion masks (issue 20.7), not HU ranges."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from services.gateway.report import (
    CONSOLIDATION_RGB,
    GGO_RGB,
    _lesion_share,
    _overlay,
)


def _slice() -> tuple[SimpleNamespace, np.ndarray, np.ndarray]:
    hu = np.full((64, 64), -850.0, np.float32)  # aerated lung everywhere
    hu[10:20, 10:20] = -500.0  # ground-glass HU that the masks do not call a lesion
    mask = np.zeros((64, 64), bool)
    mask[4:60, 4:60] = True
    labels = np.zeros((64, 64), np.uint8)
    labels[30:40, 30:40] = 1  # ground glass
    labels[45:50, 45:50] = 2  # consolidation
    return SimpleNamespace(kind="hu", pixels=hu), mask, labels


def test_lesion_masks_are_tinted_and_hu_ranges_are_not() -> None:
    native, mask, labels = _slice()
    rgb = np.asarray(_overlay(native, mask, (-700, -300), labels), np.int32)
    grey = rgb[25, 25]  # untouched lung: grey
    assert grey[0] == grey[1] == grey[2]
    ggo, consolidation, hu_only = rgb[35, 35], rgb[47, 47], rgb[15, 15]
    assert ggo[0] > ggo[2] + 40 and np.argmax(GGO_RGB) == 0  # orange-ish
    assert consolidation[0] > consolidation[1] + 40 and np.argmax(CONSOLIDATION_RGB) == 0
    assert abs(int(ggo[1]) - int(consolidation[1])) > 20  # two colours
    assert hu_only[0] == hu_only[1] == hu_only[2]  # the HU range is not the verdict's


def test_without_masks_the_ground_glass_hu_range_is_tinted() -> None:
    native, mask, _labels = _slice()
    rgb = np.asarray(_overlay(native, mask, (-700, -300)), np.int32)
    assert rgb[15, 15][0] > rgb[15, 15][2] + 40


def test_lesion_share_is_of_the_lung() -> None:
    _native, mask, labels = _slice()
    assert _lesion_share(labels, mask) == (100 + 25) / mask.sum()
    assert _lesion_share(labels, np.zeros_like(mask)) == 0.0
