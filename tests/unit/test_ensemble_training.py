"""Cross-fitting gives every training patient a probability from a CNN that never saw it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from services.inference.artifacts import load_slice_model, save_slice_model
from services.inference.model import SliceCNNConfig, build_model
from services.training.ensemble_cv import cross_fit_slice_probs
from services.training.slice_experiment import ucsd_items


def test_cross_fit_covers_every_item_once_and_is_cached(tmp_path: Path, data_dir: Path) -> None:
    items = [i for i in ucsd_items(data_dir) if i.split == "train"]
    # A small, two-class, multi-patient subset keeps this to seconds on two cores.
    items = items[:12] + items[-12:]
    torch.manual_seed(0)
    save_slice_model(
        tmp_path / "m", "m", [build_model(SliceCNNConfig(image_size=64), pretrained=True)], "none"
    )
    model = load_slice_model(tmp_path / "m")
    cache = tmp_path / "cache"
    oof = cross_fit_slice_probs(items, model, folds=2, epochs=1, cache_dir=cache)
    assert oof.shape == (24,) and np.isfinite(oof).all() and ((oof >= 0) & (oof <= 1)).all()
    assert len(list(cache.glob("oof-*.npy"))) == 1
    again = cross_fit_slice_probs(items, model, folds=2, epochs=1, cache_dir=cache)
    np.testing.assert_array_equal(oof, again)
