"""Quantitative lung features: zones and sides on synthetic lungs, GGO on the shared series."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from services.common.config import get_settings
from services.preprocess.lung_features import (
    FEATURE_NAMES,
    compute_lung_features,
    feature_vector,
    include_pleural_lesions,
    patient_left_on_image_right,
)
from services.preprocess.pipeline import preprocess_study
from services.preprocess.readers import read_study
from services.preprocess.segmentation import segment_volume
from services.preprocess.types import Study
from services.preprocess.windowing import window_to_uint8
from tests.unit.synthetic import chest_phantom

SPACING = (2.0, 0.7, 0.7)

# COVID-CT-MD writes UUIDs where DICOM wants numeric UIDs; pydicom warns on every access.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


def _blob(
    hu: NDArray[np.int16], slices: range, centre: tuple[int, int], radius: int, value: int
) -> None:
    for z in slices:
        disc = np.zeros(hu.shape[1:], np.uint8)
        cv2.circle(disc, (centre[1], centre[0]), radius, 1, -1)
        noise = np.random.default_rng(z).normal(0, 15, hu.shape[1:])
        hu[z][disc > 0] = np.clip(value + noise[disc > 0], -1024, 3000).astype(np.int16)


def _masks(hu: NDArray[np.int16]) -> NDArray[np.bool_]:
    return segment_volume(np.stack([window_to_uint8(s) for s in hu]))


def _ggo_lower_right() -> tuple[NDArray[np.int16], NDArray[np.bool_]]:
    """Phantom with ground glass (-500 HU) against the lateral pleura of the patient's right
    lung (image left), in the lowest third of the slices."""
    hu, truth = chest_phantom(slices=30)
    # Right lung: centre (125, 80), half-axes (60, 38) at the base; lateral wall at x ~ 42.
    _blob(hu, range(0, 8), (140, 52), 14, -500)
    hu[~truth & (hu == -500)] = 40  # only inside the lung
    return hu, truth


def test_ggo_blob_lower_right_periphery_lands_in_its_zone() -> None:
    hu, _ = _ggo_lower_right()
    features = compute_lung_features(hu, _masks(hu), SPACING)
    zones = {
        name: features[f"ggo_share_{name}"]
        for name in (f"{s}_{lv}" for s in ("left", "right") for lv in ("upper", "middle", "lower"))
    }
    assert max(zones, key=zones.__getitem__) == "right_lower", zones
    assert features["ggo_share_right_lower"] > 0.03
    assert features["ggo_share_left"] < 0.002
    assert features["ggo_share_right_upper"] < 0.002
    assert features["ggo_share_peripheral"] > 5 * features["ggo_share_central"]
    assert features["left_right_balance"] < -0.9  # the right lung carries the lesion
    assert features["lower_zone_fraction"] > 0.9
    assert features["peripheral_central_ratio"] > 3
    assert features["zones_involved"] == 1
    assert features["consolidation_share"] < 0.002
    per_slice = features["slice_ggo_share"]
    assert len(per_slice) == 30 and min(per_slice[:8]) > 0.01 and max(per_slice[12:]) < 0.002


def test_patient_side_follows_the_image_orientation() -> None:
    hu, _ = _ggo_lower_right()
    masks = _masks(hu)
    flipped = compute_lung_features(hu, masks, SPACING, left_on_image_right=False)
    assert flipped["ggo_share_left_lower"] > 0.03 and flipped["ggo_share_right"] < 0.002
    study = Study(images=[], source_format="dicom", is_volume=True)
    assert patient_left_on_image_right(study)  # no orientation: radiological convention
    study.series = {"image_orientation_patient": [1, 0, 0, 0, 1, 0]}
    assert patient_left_on_image_right(study)
    study.series = {"image_orientation_patient": [-1, 0, 0, 0, 1, 0]}  # e.g. prone
    assert not patient_left_on_image_right(study)


def test_dense_pleural_lesion_is_added_back_and_counts_as_consolidation() -> None:
    hu, truth = chest_phantom(slices=30)
    _blob(hu, range(10, 20), (125, 45), 12, 30)  # +30 HU against the right lateral pleura
    hu[~truth & (hu > -100) & (hu < 100)] = 40
    masks = _masks(hu)
    lesion = np.zeros(hu.shape[1:], np.uint8)
    cv2.circle(lesion, (45, 125), 10, 1, -1)
    inside = lesion.astype(bool) & truth[15]
    # segment_volume's closing is narrower than this lesion: it is cut out of the mask ...
    assert masks[15][inside].mean() < 0.5
    # ... and the features' pleural-pocket step puts most of it back (83 %: the cap outside
    # the hull of what is left of the lung looks like chest wall by density).
    side = np.broadcast_to(np.where(np.arange(256) >= 128, 0, 1), (256, 256))
    refined = include_pleural_lesions(hu[15], masks[15], side)
    assert refined[inside].mean() > 0.75
    assert not refined[~truth[15] & ~lesion.astype(bool)].any()  # nothing else added
    features = compute_lung_features(hu, masks, SPACING)
    assert features["consolidation_share_right_middle"] > 0.008  # measured 0.012
    assert features["consolidation_share_left"] < 0.002
    assert features["ggo_share"] < 0.01  # the lesion's rim is not ground glass


def test_healthy_phantom_has_no_lesion_and_vector_matches_names() -> None:
    hu, _ = chest_phantom(slices=24)
    features = compute_lung_features(hu, _masks(hu), SPACING)
    assert features["lesion_share"] < 0.003 and features["zones_involved"] == 0
    assert features["lung_slices"] == 24 and features["lung_volume_ml"] > 0
    vector = feature_vector(features)
    assert vector.shape == (len(FEATURE_NAMES),) and vector.dtype == np.float32
    assert np.isfinite(vector).all()
    json.dumps(features)  # plain JSON types only


def test_no_lung_gives_zero_shares() -> None:
    hu = np.full((4, 64, 64), 40, np.int16)
    features = compute_lung_features(hu, np.zeros(hu.shape, bool))
    assert features["lung_slices"] == 0 and features["lesion_share"] == 0.0
    assert features["lung_volume_ml"] is None and features["slice_ggo_share"] == [0.0] * 4
    assert np.isfinite(feature_vector(features)).all()


def test_preprocess_study_adds_features_only_with_hu() -> None:
    hu, _ = _ggo_lower_right()
    images = [window_to_uint8(s) for s in hu]
    with_hu = Study(images=images, source_format="nifti", is_volume=True, hu=hu)
    with_hu.spacing_mm = SPACING
    prepared = preprocess_study(with_hu)
    assert prepared.lung_features is not None
    assert prepared.lung_features["ggo_share_right_lower"] > 0.03
    without = preprocess_study(Study(images=images, source_format="image_set", is_volume=False))
    assert without.lung_features is None


@pytest.mark.data
def test_covid_series_shows_more_ground_glass_than_normal(ctmd_dir: Path) -> None:
    features = {}
    for name in ("P002", "normal001"):
        prepared = preprocess_study(read_study(ctmd_dir / name, get_settings()))
        assert prepared.lung_features is not None
        features[name] = prepared.lung_features
    covid, normal = features["P002"], features["normal001"]
    # Measured: P002 0.0255, normal001 0.0014.
    assert covid["ggo_share"] > 0.015 and normal["ggo_share"] < 0.005
    assert covid["ggo_share"] > 5 * normal["ggo_share"]
    assert covid["zones_involved"] > normal["zones_involved"]
    # P002's ground glass is mostly peripheral and in the lower left lung.
    assert covid["ggo_share_peripheral"] > covid["ggo_share_central"]
    assert covid["ggo_share_left_lower"] == max(
        covid[f"ggo_share_{s}_{lv}"]
        for s in ("left", "right")
        for lv in ("upper", "middle", "lower")
    )
