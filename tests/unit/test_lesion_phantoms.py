"""Phantom generator (services.training.lesion_phantoms): known volumes, resampling, DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from services.common.config import get_settings
from services.preprocess.readers import read_study
from services.training.lesion_phantoms import (
    acquire,
    insert_lesions,
    reference_lungs,
    resample_slices,
    write_dicom_series,
)
from tests.unit.synthetic import chest_phantom

SPACING = (2.0, 1.25, 1.25)


def _phantom():  # type: ignore[no-untyped-def]
    hu, truth = chest_phantom(slices=40, size=256, seed=0)
    lungs = np.where(truth, np.where(np.arange(256)[None, None, :] < 128, 1, 2), 0)
    return hu, insert_lesions(
        hu, lungs.astype(np.uint8), SPACING, kinds=("peripheral_ggo", "subpleural_consolidation")
    )


def test_lesions_change_hu_only_inside_and_keep_texture() -> None:
    hu, ph = _phantom()
    assert set(np.unique(ph.labels)) == {0, 1, 2}
    changed = np.abs(ph.hu.astype(int) - hu) > 40
    near = ph.labels > 0
    # What changed lies in the lesions (plus their soft ~1 mm border and bronchograms).
    assert (changed & ~near).sum() <= 0.25 * changed.sum()
    ggo = ph.hu[ph.labels == 1]
    assert -720 < np.median(ggo) < -450
    cons = ph.hu[ph.labels == 2]
    assert -150 < np.median(cons) < 80
    assert ggo.std() > 20  # texture, not a flat fill
    assert set(np.unique(ph.classes)) == {0, 1, 2}


def test_slab_resampling_keeps_volume_and_mean() -> None:
    vol = np.random.default_rng(0).normal(size=(40, 8, 8)).astype(np.float32)
    thick = resample_slices(vol, 2.0, 5.0)
    assert thick.shape[0] == 16
    assert np.isclose(thick.mean(), vol.mean(), atol=1e-3)
    block = np.zeros((40, 4, 4), np.float32)
    block[10:20] = 1.0  # 20 mm
    for t in (1.0, 2.5, 5.0):
        assert np.isclose(resample_slices(block, 2.0, t).sum() * t, 20.0 * 16, rtol=0.01)


def test_acquired_phantom_keeps_lesion_volume() -> None:
    _, ph = _phantom()
    v0 = (ph.labels > 0).sum() * np.prod(ph.spacing_mm)
    for t, kernel in ((1.0, "sharp"), (5.0, "soft")):
        seen = acquire(ph, t, kernel)
        v = (seen.labels > 0).sum() * np.prod(seen.spacing_mm)
        assert abs(v - v0) / v0 < 0.15
        assert seen.spacing_mm[0] == t


def test_dicom_round_trip_through_the_reader(tmp_path: Path) -> None:
    _, ph = _phantom()
    seen = acquire(ph, 5.0, "none")
    folder = write_dicom_series(seen, tmp_path / "series")
    assert (tmp_path / "series_truth.npz").is_file()
    study = read_study(folder, get_settings(), check_plausibility=False)
    assert study.hu is not None and study.spacing_mm is not None
    assert np.array_equal(study.hu, seen.hu)
    assert np.allclose(study.spacing_mm, seen.spacing_mm)


def test_reference_lungs_leave_out_the_trachea_and_fill_vessels() -> None:
    """The placement's lung mask: lungs with their vessels, not the trachea joined to them."""
    hu, truth = chest_phantom(slices=40, size=256, seed=1)
    rows, cols = np.ogrid[:256, :256]
    trachea = (rows - 100) ** 2 + (cols - 128) ** 2 <= 7**2  # 1.5 cm2 at 1.25 mm pixels
    hu[25:, trachea] = -1000
    hu[25, 97:104, 80:177] = -1000  # main bronchi: the trachea's air joins both lungs'
    ref = reference_lungs(hu, SPACING) > 0
    assert not ref[27:, trachea].any()
    for z in (5, 20, 35):  # the lungs, their vessels (dense dots) included
        dice = 2 * (ref[z] & truth[z]).sum() / (ref[z].sum() + truth[z].sum())
        assert dice > 0.98, (z, dice)
        vessels = ndimage.binary_erosion(truth[z], iterations=6) & (hu[z] > -500)  # enclosed
        assert vessels.any() and ref[z][vessels].all()
    phantom = insert_lesions(hu, ref.astype(np.uint8), SPACING, kinds=("hilar_ggo",))
    assert not (phantom.labels[:, trachea] > 0)[27:].any()


def test_sparse_acquisition_keeps_thin_slices_with_gaps(tmp_path: Path) -> None:
    """Every third 2 mm slice: 6 mm apart, 2 mm thick (in DICOM too), the truth those slices'."""
    _, ph = _phantom()
    full = acquire(ph, 2.0, "none")
    sparse = acquire(ph, 2.0, "none", every=3)
    assert sparse.spacing_mm[0] == 6.0 and sparse.thickness_mm == 2.0
    assert np.array_equal(sparse.hu, full.hu[::3])
    assert np.array_equal(sparse.labels, full.labels[::3])
    v0 = (full.labels > 0).sum() * np.prod(full.spacing_mm)
    v = (sparse.labels > 0).sum() * np.prod(sparse.spacing_mm)
    assert abs(v - v0) / v0 < 0.15  # the sampled slices still estimate the volume
    folder = write_dicom_series(sparse, tmp_path / "sparse")
    study = read_study(folder, get_settings(), check_plausibility=False)
    assert study.spacing_mm is not None and np.isclose(study.spacing_mm[0], 6.0)
    assert pydicom.dcmread(next(folder.glob("*.dcm"))).SliceThickness == 2.0
