"""Fast checks of the v2 real-CT training code (services/training/realct_*).

Run: PYTHONPATH=. .venv/bin/python -m pytest -q tests/unit/test_realct_training.py
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.inference.artifacts import load_slice_model, save_slice_model
from services.inference.model import build_model
from services.preprocess.pipeline import prepare_slice
from services.preprocess.readers import load_gray_image
from services.training.augment import AugmentConfig
from services.training.realct_data import (
    GROUP_OF,
    Item,
    PreparedSet,
    RealCTSet,
    band_bins,
    hash_bits,
    load_items,
    near_duplicate_pairs,
    prepare_items,
    prepare_with_mask,
)
from services.training.realct_train import (
    RealCTConfig,
    RenderAugment,
    fit_realct,
    freeze_early,
    make_batch,
    render_augment,
    sampling_weights,
    set_train_mode,
)

NO_RENDER = RenderAugment(p_window=0, p_blur=0, p_resample=0, p_jpeg=0, p_noise=0, p_mask_outside=0)
NO_GEOMETRY = AugmentConfig(
    max_rotation_deg=0,
    scale_range=(1, 1),
    max_shift=0,
    hflip=False,
    brightness=0,
    contrast=0,
    gamma=0,
)


def _synthetic_set(n_per_cell: int = 6, size: int = 32) -> RealCTSet:
    rng = np.random.default_rng(0)
    items = []
    for source, labels in (
        ("sarscov2-ct", (0, 1)),
        ("mosmed", (1,)),
        ("masked-normal", (0,)),
        ("ucsd-covid-ct", (0, 1)),
        ("img512", (0, 1)),
    ):
        for label in labels:
            for k in range(n_per_cell):
                split = "test" if source == "img512" else "train"
                items.append(
                    Item(Path(f"{source}/{label}/{k}.png"), label, f"{source}-{k}", source, split)
                )
    n = len(items)
    crops = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    masks = rng.random((n, size, size)) < 0.3
    data = PreparedSet(
        items, np.zeros((n, 64), bool), crops, masks, rng.random(n).astype(np.float32)
    )
    return RealCTSet(data, band_bins(data), [])


def test_balanced_sampler_gives_each_source_group_both_classes() -> None:
    data = _synthetic_set()
    cfg = RealCTConfig()
    train = data.index("train")
    assert not any(data.data.items[i].source == "img512" for i in train)
    w = sampling_weights(data, train, cfg)
    rng = np.random.default_rng(1)
    drawn = train[rng.choice(len(train), size=20000, p=w)]
    for group, share in cfg.group_shares.items():
        in_group = [i for i in drawn if GROUP_OF[data.data.items[i].source] == group]
        assert abs(len(in_group) / len(drawn) - share) < 0.02
        covid = np.mean([data.data.items[i].label for i in in_group])
        assert abs(covid - 0.5) < 0.03, (group, covid)  # both classes, equal shares
    # the single-class sources only ever share their group with the other class
    mosmed = sum(data.data.items[i].source == "mosmed" for i in drawn) / len(drawn)
    masked = sum(data.data.items[i].source == "masked-normal" for i in drawn) / len(drawn)
    assert abs(mosmed - masked) < 0.02
    # every lung-fill bin of every (source, class) cell is drawn
    cells = {
        (data.data.items[i].source, data.data.items[i].label, int(data.bins[i])) for i in drawn
    }
    expected = {
        (data.data.items[i].source, data.data.items[i].label, int(data.bins[i])) for i in train
    }
    assert cells == expected


def test_render_augment_keeps_shape_and_dtype() -> None:
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:50, 10:50] = True
    for _ in range(20):
        out = render_augment(crop, mask, RenderAugment(p_mask_outside=1.0), rng)
        assert out.shape == crop.shape and out.dtype == np.uint8
    out = render_augment(crop, mask, NO_RENDER, rng)
    assert np.array_equal(out, crop)


def test_dedup_pairs_catch_reencoded_copy() -> None:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (128, 128), dtype=np.uint8), (0, 0), 3)
    other = cv2.GaussianBlur(rng.integers(0, 255, (128, 128), dtype=np.uint8), (0, 0), 3)
    _, buf = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_QUALITY, 60])
    copy = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    images = [np.asarray(im, dtype=np.uint8) for im in (base, other, copy)]
    pairs = near_duplicate_pairs(hash_bits(images))
    assert [(i, j) for i, j, _ in pairs] == [(0, 2)]


@pytest.mark.data
def test_dedup_finds_known_sarscov2_twins(data_dir: Path) -> None:
    root = data_dir / "sarscov2-ct" / "images" / "COVID"
    names = [
        "covid-0128.jpg",
        "covid-0129.jpg",
        "covid-0020.jpg",
        "covid-0021.jpg",
        "covid-0500.jpg",
    ]
    bits = hash_bits([load_gray_image(root / n) for n in names])
    found = {(i, j) for i, j, _ in near_duplicate_pairs(bits)}
    assert (0, 1) in found  # byte-level twin (distance 0)
    assert (2, 3) in found  # adjacent slice of the same patient (~200 of 1024 bits)
    assert not any(4 in pair for pair in found)


def _tiny_real_set(data_dir: Path, size: int) -> RealCTSet:
    items = load_items(data_dir, include_ucsd=False)
    chosen = []
    for source in ("sarscov2-ct", "mosmed", "masked-normal"):
        for label in (0, 1):
            pool = [it for it in items if it.source == source and it.label == label]
            chosen += [replace(it, split="train") for it in pool[:: max(1, len(pool) // 4)][:4]]
    data = prepare_items(chosen, size, cache_dir=None)
    return RealCTSet(data, band_bins(data), [])


@pytest.mark.data
def test_prepared_crop_matches_prepare_slice(data_dir: Path) -> None:
    items = load_items(data_dir, include_ucsd=False)
    for item in (items[0], items[1500], items[-1]):
        image = load_gray_image(item.path)
        crop, mask = prepare_with_mask(image, 96)
        assert mask.shape == crop.shape
        from services.preprocess.enhance import enhance

        assert np.array_equal(enhance(crop, "he+clahe"), prepare_slice(image, 96, "he+clahe"))


@pytest.mark.data
def test_training_loss_falls_on_tiny_real_subset(data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    size = 64
    data = _tiny_real_set(data_dir, size)
    cfg = RealCTConfig(
        image_size=size, render=NO_RENDER, geometry=NO_GEOMETRY, lr=2e-3, dropout=0.0
    )
    torch.manual_seed(0)
    model = build_model(cfg.model_config(), pretrained=True)
    params = freeze_early(model, cfg.freeze_blocks)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    idx = data.index("train")
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    x = make_batch(data, idx, cfg, rng, gen)
    y = torch.from_numpy(data.labels(idx))

    losses = []
    for _ in range(8):
        set_train_mode(model)  # frozen blocks keep ImageNet BatchNorm statistics
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    before, after = losses[0], losses[-1]
    assert after < before * 0.8, (before, after)

    # the full loop runs a couple of steps and the artefact round-trips through the loader
    small = RealCTConfig(image_size=size, epochs=1, samples_per_epoch=8, batch_size=4)
    member, history, _ = fit_realct(data, small, max_steps=2, select=False)
    assert history and np.isfinite(history[0]["train_loss"])
    out = save_slice_model(tmp_path / "v-test", "v-test", [member], small.enhancement)
    loaded = load_slice_model(out)
    p = loaded.predict_proba(data.data.prepared(small.enhancement)[:3])
    assert p.shape == (3, 2) and np.allclose(p.sum(axis=1), 1)
