"""Single-image lung segmentation by method, as a slice model's config.json names it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.common.modelinfo import slice_model_info
from services.preprocess.pipeline import PreprocessOptions, preprocess_study, segment_image
from services.preprocess.types import Study
from services.training.slice_data import load_gray_image
from tests.unit.test_slice_lesion import chest_hu, render


def _img512(data_dir: Path, n: int) -> list[np.ndarray]:
    folder = data_dir / "real-ct-slices" / "images" / "img512"
    files = sorted(folder.glob("*/*.jpg"))[:: max(1, len(list(folder.glob("*/*.jpg"))) // n)]
    return [load_gray_image(f) for f in files[:n]]


def test_fov_aware_finds_the_lungs_that_otsu_misses_in_a_round_field_of_view(
    data_dir: Path,
) -> None:
    # img512: 512-px scanner exports, black outside a round field of view.
    images = _img512(data_dir, 12)
    otsu = [segment_image(i, "otsu").mean() >= 0.02 for i in images]
    fov = [segment_image(i, "fov-aware").mean() >= 0.02 for i in images]
    assert sum(otsu) <= 1 and sum(fov) >= 11


def test_both_methods_agree_without_padding() -> None:
    image = render(chest_hu())
    otsu, fov = segment_image(image, "otsu"), segment_image(image, "fov-aware")
    assert (otsu & fov).sum() / max(int((otsu | fov).sum()), 1) > 0.95


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown image segmentation"):
        segment_image(render(chest_hu()), "magic")  # type: ignore[arg-type]


def test_preprocess_follows_the_option_for_images(data_dir: Path) -> None:
    image = _img512(data_dir, 1)[0]
    study = Study(images=[image], source_format="image", is_volume=False)
    otsu = preprocess_study(study, PreprocessOptions(size=64, image_segmentation="otsu"))
    fov = preprocess_study(study, PreprocessOptions(size=64, image_segmentation="fov-aware"))
    assert otsu.lung_fraction[0] < 0.02 < fov.lung_fraction[0]
    assert not np.array_equal(otsu.inputs, fov.inputs)  # the crop zooms onto the lungs


def test_model_config_names_the_method(tmp_path: Path) -> None:
    config = {"version": "t", "preprocess": {"size": 64, "enhancement": "none"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert slice_model_info(tmp_path).image_segmentation == "otsu"  # v1's, by default
    config["preprocess"]["image_segmentation"] = "fov-aware"  # type: ignore[index]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert slice_model_info(tmp_path).image_segmentation == "fov-aware"
    config["preprocess"]["image_segmentation"] = "magic"  # type: ignore[index]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="image_segmentation"):
        slice_model_info(tmp_path)
