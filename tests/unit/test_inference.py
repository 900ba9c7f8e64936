"""Slice CNN, augmentation, training loop, artefacts and Grad-CAM on small synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.inference.artifacts import load_slice_model, save_slice_model
from services.inference.gradcam import gradcam, heatmap_pngs
from services.inference.model import SliceCNNConfig, build_model
from services.inference.predict import predict_proba
from services.inference.scorer import ScoreBatch
from services.inference.stage import ModelVersionMismatch, explain_slices
from services.training.augment import AugmentConfig, augment_batch
from services.training.slice_cnn import TrainConfig, epoch_indices, fit_slice_cnn, focal_loss

SIZE = 64


def synthetic_slices(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark 'lungs' with bright blobs (class 1) or without (class 0)."""
    rng = np.random.default_rng(seed)
    x = np.full((n, SIZE, SIZE), 40, np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        x[i] += rng.integers(0, 20, (SIZE, SIZE), dtype=np.uint8)
        if y[i]:
            cy, cx = rng.integers(12, SIZE - 12, 2)
            x[i, cy - 6 : cy + 6, cx - 6 : cx + 6] = 200
    return x, y.astype(np.int64)


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SliceCNNConfig(image_size=SIZE), pretrained=True).eval()


def test_forward_takes_uint8_grey_and_returns_two_logits(small_model: torch.nn.Module) -> None:
    x = torch.randint(0, 256, (3, 1, SIZE, SIZE), dtype=torch.uint8)
    assert small_model(x).shape == (3, 2)
    assert small_model(x[:, 0]).shape == (3, 2)  # (N, S, S) works too


def test_normalise_maps_grey_range_to_unit_interval(small_model) -> None:
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    out = small_model.normalise(x)
    assert out.shape == (1, 3, 1, 2)
    assert out.min().item() == -1.0 and out.max().item() == 1.0


def test_pretrained_stem_is_kept() -> None:
    a = build_model(SliceCNNConfig(image_size=SIZE), pretrained=True)
    b = build_model(SliceCNNConfig(image_size=SIZE), pretrained=True)
    # ImageNet weights: identical across builds, and a 3-channel stem.
    assert torch.equal(a.backbone._conv_stem.weight, b.backbone._conv_stem.weight)
    assert a.backbone._conv_stem.weight.shape[1] == 3


def test_predict_proba_rows_sum_to_one_and_tta_uses_flip(small_model) -> None:
    x, _ = synthetic_slices(5)
    p = predict_proba(small_model, x, batch_size=2, tta=True)
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    p_plain = predict_proba(small_model, x, tta=False)
    p_flipped = predict_proba(small_model, x[:, :, ::-1].copy(), tta=False)
    np.testing.assert_allclose(p, (p_plain + p_flipped) / 2, atol=1e-5)
    assert predict_proba(small_model, x[:0]).shape == (0, 2)


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    x = torch.from_numpy(synthetic_slices(4)[0]).unsqueeze(1)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    c = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 255
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_identity_augment_is_identity() -> None:
    x = torch.from_numpy(synthetic_slices(2)[0]).unsqueeze(1)
    none = AugmentConfig(0.0, (1.0, 1.0), 0.0, False, 0.0, 0.0, 0.0)
    torch.testing.assert_close(augment_batch(x, none), x.float(), atol=1.0, rtol=0)


def test_focal_loss_with_gamma_zero_is_cross_entropy() -> None:
    logits, target = torch.randn(8, 2), torch.randint(0, 2, (8,))
    torch.testing.assert_close(
        focal_loss(logits, target, 0.0, None), F.cross_entropy(logits, target)
    )
    assert focal_loss(logits, target, 2.0, None) < F.cross_entropy(logits, target)


def test_epoch_indices_mixes_extra_source_class_balanced() -> None:
    y = np.array([0, 1] * 10 + [0] * 30 + [1] * 10)
    domain = np.array([0] * 20 + [1] * 40)
    idx = epoch_indices(y, domain, 1.0, np.random.default_rng(0))
    primary = idx[domain[idx] == 0]
    extra = idx[domain[idx] == 1]
    assert sorted(primary.tolist()) == list(range(20))
    assert len(extra) == 20 and (y[extra] == 1).sum() == 10
    assert len(epoch_indices(y, domain, 0.0, np.random.default_rng(0))) == 20


def test_training_learns_and_selects_best_val_epoch(tmp_path: Path) -> None:
    x, y = synthetic_slices(32)
    xv, yv = synthetic_slices(16, seed=1)
    config = TrainConfig(image_size=SIZE, epochs=3, batch_size=8, lr=2e-3, seed=0)
    result = fit_slice_cnn(x, y, config, val=(xv, yv))
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    best = max(result.history, key=lambda r: r["val_auc"])
    assert result.best_epoch == best["epoch"]
    assert best["val_auc"] > 0.8
    # The returned model is the selected epoch's: its val probabilities are reproduced.
    assert result.val_probs is not None
    np.testing.assert_allclose(predict_proba(result.model, xv), result.val_probs, atol=1e-5)


def test_artifacts_round_trip_gives_identical_probabilities(tmp_path: Path, small_model) -> None:
    save_slice_model(tmp_path / "v0", "v0", [small_model, small_model], enhancement="clahe")
    loaded = load_slice_model(tmp_path / "v0")
    assert loaded.version == "v0" and loaded.enhancement == "clahe"
    assert loaded.image_size == SIZE and len(loaded.members) == 2
    x, _ = synthetic_slices(3)
    np.testing.assert_allclose(loaded.predict_proba(x), predict_proba(small_model, x), atol=1e-6)
    with pytest.raises(ValueError):
        loaded.predict_proba(np.zeros((1, SIZE + 1, SIZE + 1), np.uint8))


def test_gradcam_heatmaps_and_overlays(tmp_path: Path, small_model) -> None:
    x, _ = synthetic_slices(4)
    maps = gradcam(small_model, x[:2])
    assert maps.shape == (2, SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    save_slice_model(tmp_path / "m", "m", [small_model], enhancement="none")
    model = load_slice_model(tmp_path / "m")
    pngs = heatmap_pngs(model, x, np.array([0.1, 0.9, 0.5, 0.2]), top_k=2)
    assert list(pngs) == [1, 2]  # stack positions, most suspicious first
    import cv2

    image = cv2.imdecode(np.frombuffer(pngs[1], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (SIZE, SIZE, 3)


def test_heatmaps_refuse_scores_from_another_model_version(
    small_model: torch.nn.Module, tmp_path: Path
) -> None:
    x, _ = synthetic_slices(4)
    save_slice_model(tmp_path / "m", "v7", [small_model], enhancement="none")
    model = load_slice_model(tmp_path / "m")
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.8, 0.2]])
    same = explain_slices(x, ScoreBatch(probabilities, "slice-cnn", "v7"), model, top_k=1)
    assert list(same) == [1]
    with pytest.raises(ModelVersionMismatch, match="v1"):
        explain_slices(x, ScoreBatch(probabilities, "slice-cnn", "v1"), model, top_k=1)


def test_torchserve_handler_uses_its_assigned_gpu_only_when_cuda_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.inference.handler import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device({"gpu_id": 1}) == "cpu"  # a GPU node image run on a CPU
    assert select_device({}) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device({"gpu_id": "1"}) == "cuda:1"
    assert select_device({}) == "cpu"  # TorchServe started without GPUs
