"""NormNet experiment (issue 16 §1): the synthetic-lesion generator and the net's shapes."""

from __future__ import annotations

import numpy as np
import torch

from services.training.experiments.normnet import (
    NormNet,
    insert_synthetic,
    lesion_from_proba,
    masked_loss,
    normal_slices,
)


def _lung_volume() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    spacing = (2.0, 1.25, 1.25)
    hu = np.full((12, 64, 64), 40, np.int16)  # soft tissue
    zz, yy, xx = np.mgrid[:12, :64, :64]
    lung = ((yy - 32) / 24.0) ** 2 + ((xx - 20) / 14.0) ** 2 < 1.0
    lung &= (zz >= 2) & (zz < 10)
    hu[lung] = -860
    return hu, lung, spacing


def test_synthetic_lesion_has_the_requested_volume_inside_the_lung_only() -> None:
    hu, lung, spacing = _lung_volume()
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for seed, volume_ml in ((0, 2.0), (1, 5.0), (2, 0.5)):
        rng = np.random.default_rng(seed)
        out, label = insert_synthetic(hu, lung, spacing, volume_ml, rng, target_hu=-400.0)
        assert label.sum() == round(volume_ml / voxel_ml)
        assert not (label & ~lung).any()
        assert np.array_equal(out[~lung], hu[~lung].astype(np.float32))  # nothing outside changed
        # the lesion is denser than the lung it replaced
        assert out[label].mean() > hu[label].mean() + 200
        changed = np.abs(out - hu) > 1.0
        assert not (changed & ~lung).any()


def test_requested_volume_larger_than_the_lung_fills_the_lung() -> None:
    hu, lung, spacing = _lung_volume()
    lung_ml = float(lung.sum()) * float(np.prod(spacing)) / 1000.0
    _, label = insert_synthetic(hu, lung, spacing, lung_ml * 2, np.random.default_rng(3))
    assert np.array_equal(label, lung)


def test_untrained_net_gives_probabilities_of_the_input_shape() -> None:
    torch.manual_seed(0)
    model = NormNet().eval()
    x = torch.rand(2, 3, 50, 70)  # not a multiple of 8: padded inside and cut back
    with torch.no_grad():
        p = model.proba(x)
    assert p.shape == (2, 1, 50, 70)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    y = (torch.rand(2, 1, 50, 70) > 0.8).float()
    m = torch.ones_like(y)
    m[..., :10] = 0.0
    assert float(masked_loss(model(x), y, m).detach()) > 0.0


def test_min_component_and_normal_slices() -> None:
    prob = np.zeros((4, 20, 20), np.float32)
    prob[1:3, 2:12, 2:12] = 0.9  # 200 voxels of 1 mm3 = 0.2 mL
    prob[1, 15, 15] = 0.9
    assert lesion_from_proba(prob, (1.0, 1.0, 1.0), min_ml=0.1).sum() == 200
    rank = np.array([3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10])
    ok = normal_slices(rank, {5}, margin=3)
    assert ok.tolist() == [False, True, True, False, False, False, False, False, False, True, True]


def test_committed_weights_load_and_predict_a_volume() -> None:
    from services.training.experiments.normnet import WEIGHTS, load_model, predict_volume

    assert WEIGHTS.stat().st_size < 2_000_000
    model = load_model(WEIGHTS)
    hu, lung, _ = _lung_volume()
    prob = predict_volume(model, hu, lung)
    assert prob.shape == hu.shape
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0
    assert not prob[~lung].any()
