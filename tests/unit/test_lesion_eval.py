"""lesion_eval's 2-D check: a slice read as a thin volume (slice_volume) by the 3-D segmenter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from services.preprocess.lesions import default_config, segment_lesions
from services.training.lesion_eval import (
    ACQUISITIONS,
    TISSUE_HU,
    acquisition_name,
    masks2d_config,
    run_phantoms,
    slice_volume,
    with_overrides,
)
from tests.unit.synthetic import chest_phantom

PX = 1.25


def _cropped_slice_with_ggo() -> tuple[NDArray[np.int16], NDArray[np.bool_]]:
    """One synthetic chest slice cropped so both lungs touch the image border (as the
    radiologist-masked screenshots are), with a 10 mm ground-glass disc in the right lung."""
    hu, _truth = chest_phantom(slices=1, size=256, seed=3)
    img = hu[0, 80:170, 50:206].copy()
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    ggo = (yy - 45) ** 2 + (xx - 15) ** 2 <= (10.0 / PX) ** 2
    img[ggo] = -550
    return img, ggo


def test_slice_volume_frames_and_repeats_the_slice() -> None:
    img = np.full((6, 7), -900, np.int16)
    outside = np.zeros(img.shape, bool)
    outside[0, 0] = True
    volume, spacing, crop = slice_volume(img, 0.7, outside, slices=3, slice_mm=2.0, ring_px=2)
    assert volume.shape == (3, 10, 11)
    assert spacing == (2.0, 0.7, 0.7)
    assert (volume[:, 0, :] == TISSUE_HU).all() and (volume[:, :, -1] == TISSUE_HU).all()
    inner = volume[1][crop]
    assert inner.shape == img.shape
    assert inner[0, 0] == TISSUE_HU  # the padding pixel became tissue
    assert (inner.ravel()[1:] == -900).all()
    assert (volume[0] == volume[2]).all()


def test_slice_volume_rejects_a_volume() -> None:
    with pytest.raises(ValueError, match="one slice"):
        slice_volume(np.zeros((2, 4, 4), np.int16), 1.0)


def test_cropped_lungs_are_found_only_in_the_thin_volume() -> None:
    img, ggo = _cropped_slice_with_ggo()
    cfg = masks2d_config(default_config())
    # As the slice is: the lungs touch the border and are taken for outside air.
    flat = segment_lesions(img[None], (10.0, PX, PX), config=cfg)
    assert not flat.lungs.any()
    volume, spacing, crop = slice_volume(img, PX)
    masks = segment_lesions(volume, spacing, config=cfg)
    mid = volume.shape[0] // 2
    assert set(np.unique(masks.lungs[mid][crop])) == {0, 1, 2}
    found = masks.lesion[mid][crop]
    dice = 2.0 * float((found & ggo).sum()) / float(found.sum() + ggo.sum())
    assert dice >= 0.7


def test_ablation_overrides_change_only_the_named_values() -> None:
    base = default_config()
    changed = with_overrides(base, ["cap_support=1.01", "tube_sigmas_mm=[1.5, 3.0]"])
    assert changed.cap_support == 1.01 and changed.tube_sigmas_mm == (1.5, 3.0)
    assert (
        changed.to_mapping()
        | {"cap_support": base.cap_support}
        | {"tube_sigmas_mm": list(base.tube_sigmas_mm)}
        == base.to_mapping()
    )
    with pytest.raises(ValueError, match="unknown"):
        with_overrides(base, ["no_such_key=1"])
    with pytest.raises(SystemExit):
        with_overrides(base, ["cap_support"])


def test_acquisitions_include_the_sparse_protocol_and_unknown_names_are_refused(
    tmp_path: Path,
) -> None:
    names = [acquisition_name(*a) for a in ACQUISITIONS]
    assert "2mm_every3_sharp" in names and "5mm_soft" in names and len(set(names)) == 8
    with pytest.raises(ValueError, match="unknown acquisition"):
        run_phantoms(tmp_path, tmp_path, default_config(), only={"6mm_sharp"})
