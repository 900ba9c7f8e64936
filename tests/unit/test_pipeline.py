"""Study -> CNN-ready slices: drops recorded with reasons, order kept, errors typed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.common.config import get_settings
from services.common.errors import ErrorCode, StudyError
from services.preprocess.pipeline import PreprocessOptions, prepare_slice, preprocess_study
from services.preprocess.readers import read_study
from services.preprocess.types import DropReason, Study


@pytest.fixture(scope="module")
def p002(covid_series: Path) -> Study:
    return read_study(covid_series, get_settings())


def test_real_series_keeps_lung_slices_and_drops_the_rest(p002: Study) -> None:
    prepared = preprocess_study(p002, PreprocessOptions(size=224, enhancement="clahe"))
    assert prepared.slices_total == 133
    assert prepared.inputs.shape == (len(prepared.kept), 224, 224)
    assert prepared.inputs.dtype == np.uint8
    assert prepared.kept == sorted(prepared.kept)
    accounted = set(prepared.kept) | {d.index for d in prepared.dropped}
    assert accounted == set(range(133)) and not set(prepared.kept) & {
        d.index for d in prepared.dropped
    }
    # Most of a chest CT shows lung; the neck and upper abdomen ends do not.
    assert 90 <= len(prepared.kept) <= 130
    no_lung = [d.index for d in prepared.dropped if d.reason is DropReason.NO_LUNG]
    assert no_lung and all(i < 20 or i > 110 for i in no_lung)
    assert len(prepared.high_contrast) == len(prepared.lung_fraction) == 133
    # HU with spacing: lesion measurements over the study and an overlay per kept slice.
    findings = prepared.lesion_findings
    assert findings is not None and len(findings["slice_lesion_share"]) == 133
    assert findings["lung_volume_ml"] > 1000 and findings["opacity_percent"] > 0
    assert 0 <= findings["severity_score"] <= 24
    maps = prepared.lesion_maps
    assert maps is not None and maps.shape == prepared.inputs.shape and maps.dtype == np.uint8
    assert set(np.unique(maps)) <= {0, 1, 2, 3} and (maps == 1).any()


def test_inserted_copy_is_dropped_as_near_duplicate(p002: Study) -> None:
    images = list(p002.images[60:66])
    images.insert(3, images[2].copy())
    study = Study(images=images, source_format="dicom", is_volume=True)
    prepared = preprocess_study(study)
    duplicates = [d for d in prepared.dropped if d.reason is DropReason.NEAR_DUPLICATE]
    assert [d.index for d in duplicates] == [3]
    assert "slice 2" in duplicates[0].detail
    assert prepared.lesion_findings is None and prepared.lesion_maps is None  # no HU


def test_lesion_maps_are_cut_like_the_cnn_input() -> None:
    """The overlay of a slice is cut and resized exactly as its CNN input (crop_to_lungs)."""
    from services.preprocess.segmentation import crop_labels_to_lungs, crop_to_lungs

    mask = np.zeros((300, 400), bool)
    mask[60:240, 40:180] = True
    mask[60:240, 220:360] = True
    marker = np.zeros((300, 400), np.uint8)
    marker[100:140, 60:120] = 255  # a lesion-sized square inside the right lung
    image_crop = crop_to_lungs(marker, mask, 224) > 127
    labels_crop = crop_labels_to_lungs((marker > 0).astype(np.uint8) * 2, mask, 224) == 2
    overlap = (image_crop & labels_crop).sum() / (image_crop | labels_crop).sum()
    assert overlap > 0.95
    # Padding is 0 (no label), not the image's border value.
    edge = np.full((300, 400), 3, np.uint8)
    assert crop_labels_to_lungs(edge, np.zeros_like(mask), 224)[0, 0] == 0


def test_contrast_gate_is_recorded_and_routes_only_on_request() -> None:
    # Lung-windowed DICOM saturates bone, so real CT slices are mostly "high contrast" by this
    # rule (it was made for pre-windowed images); use a soft image and a saturated one.
    soft = (np.random.default_rng(0).random((256, 256)) * 200).astype(np.uint8)
    saturated = soft.copy()
    saturated[:64, :64] = 255  # 4096 pixels at the maximum grey value
    study = Study(images=[soft, saturated], source_format="image_set", is_volume=False)
    kept_all = preprocess_study(study)
    assert kept_all.high_contrast == [False, True] and kept_all.kept == [0, 1]
    routed = preprocess_study(study, PreprocessOptions(drop_high_contrast=True))
    assert routed.kept == [0]
    assert routed.dropped[0].reason is DropReason.HIGH_CONTRAST


def test_single_images_are_kept_even_without_detected_lung() -> None:
    blank = np.full((300, 200), 128, np.uint8)
    prepared = preprocess_study(Study(images=[blank], source_format="image", is_volume=False))
    assert prepared.kept == [0] and prepared.inputs.shape == (1, 224, 224)


def test_single_dicom_slice_is_scored_even_without_detected_lung() -> None:
    flat = np.full((128, 128), 200, np.uint8)
    prepared = preprocess_study(Study(images=[flat], source_format="dicom", is_volume=False))
    assert prepared.kept == [0] and prepared.lung_fraction == [0.0]


def test_volume_without_lung_is_a_no_lung_error() -> None:
    flat = [np.full((128, 128), 200, np.uint8) for _ in range(4)]
    with pytest.raises(StudyError) as info:
        preprocess_study(Study(images=flat, source_format="dicom", is_volume=True))
    assert info.value.code is ErrorCode.NO_LUNG


def test_empty_study_is_an_error() -> None:
    with pytest.raises(StudyError) as info:
        preprocess_study(Study(images=[], source_format="dicom", is_volume=True))
    assert info.value.code is ErrorCode.EMPTY_STUDY


def test_prepare_slice_keeps_whole_image_when_only_a_fragment_is_found() -> None:
    image = np.full((200, 200), 180, np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[90:110, 90:110] = True  # a 20 px "lung": implausible crop
    out = prepare_slice(image, 64, "none", mask=mask)
    assert out.shape == (64, 64)
    whole = prepare_slice(image, 64, "none", mask=np.zeros_like(mask))
    np.testing.assert_array_equal(out, whole)
