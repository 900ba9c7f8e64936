"""Slice-CNN v2 recipe: real-CT slices, rendering made label-free, source/class/band-balanced.

Why (measured on v1, see models/slice-cnn/v2/MODEL_CARD.md): every real-CT source is
(almost) single-class or single-site, so a CNN happily learns the rendering (JPEG screenshot
vs DICOM, masked vs unmasked lungs, window, resolution) or the slice position instead of
the disease. This recipe

* augments the lung crop BEFORE the serving enhancement (HE+CLAHE, applied last as in
  ``prepare_slice``): window/level and gamma shifts, Gaussian blur, down/up-sampling, JPEG
  re-encoding at random quality, noise, and, for any source, blanking everything outside
  the segmented lungs (the ``masked-normal`` look) so that no rendering trait carries a label;
  then position/scale/rotation jitter and flips (``services.training.augment``);
* samples every epoch with equal weight per (source group, class, lung-fill bin) cell,
  with capped group shares (``mosmed`` COVID is only ever drawn together with
  ``masked-normal`` NonCOVID, each half of that group);
* fine-tunes EfficientNet-Lite0 (ImageNet) with the stem and the first blocks frozen, at a
  small input size, one torch thread, under a wall-clock budget;
* selects the epoch on the selection splits only (sarscov2-ct held-out images,
  mosmed/masked-normal held-out patients, UCSD val); img512 and COVID-CT-MD are never seen.

Usage::

    python -m services.training.realct_train --out models/slice-cnn/v2 --version v2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from services.inference.artifacts import save_slice_model
from services.inference.model import SliceCNN, SliceCNNConfig, build_model
from services.inference.predict import predict_proba
from services.preprocess.enhance import Enhancement, enhance
from services.training.augment import AugmentConfig, augment_batch
from services.training.metrics import roc_auc
from services.training.realct_data import GROUP_OF, RealCTSet, build_realct_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderAugment:
    """Rendering jitter applied to the un-enhanced uint8 lung crop (numpy / OpenCV)."""

    p_window: float = 0.8
    contrast: tuple[float, float] = (0.7, 1.4)  # window width scale
    level: float = 25.0  # grey-level shift (window level), +-
    gamma: float = 0.35  # log-gamma range, +-
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.4)
    p_resample: float = 0.4
    resample_scale: tuple[float, float] = (0.35, 0.85)
    p_jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 95)
    p_noise: float = 0.3
    noise_sigma: float = 6.0
    p_mask_outside: float = 0.25  # blank all but the lungs (masked-normal look), any source


@dataclass
class RealCTConfig:
    image_size: int = 160
    enhancement: str = "he+clahe"
    epochs: int = 14
    samples_per_epoch: int = 1536
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    freeze_blocks: int = 5  # stem + this many of the 16 MBConv blocks stay ImageNet-frozen
    dropout: float = 0.3
    group_shares: dict[str, float] = field(
        default_factory=lambda: {
            "sarscov2-ct": 0.45,
            "mosmed+masked-normal": 0.25,
            "ucsd-covid-ct": 0.30,
        }
    )
    balance_bins: bool = True
    render: RenderAugment = field(default_factory=RenderAugment)
    geometry: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            max_rotation_deg=10.0,
            scale_range=(0.6, 1.2),  # < 1 zooms out: whole-image framing (img512, mosmed)
            max_shift=0.1,
            hflip=True,
            brightness=0.05,
            contrast=0.1,
            gamma=0.1,
        )
    )
    seed: int = 0
    threads: int = 1
    max_minutes: float = 50.0
    include_ucsd: bool = True
    tta: bool = True

    def model_config(self) -> SliceCNNConfig:
        return SliceCNNConfig(image_size=self.image_size, dropout=self.dropout)


# --- augmentation -------------------------------------------------------------------------


def render_augment(
    crop: NDArray[np.uint8], mask: NDArray[np.bool_], cfg: RenderAugment, rng: np.random.Generator
) -> NDArray[np.uint8]:
    """One rendering-jittered copy of an un-enhanced lung crop (uint8 in, uint8 out)."""
    x: NDArray[Any] = crop.astype(np.float32)
    if rng.random() < cfg.p_mask_outside and mask.mean() > 0.02:
        x = np.where(mask, x, 0.0)
    if rng.random() < cfg.p_window:
        k = rng.uniform(*cfg.contrast)
        centre = 128.0 + rng.uniform(-cfg.level, cfg.level)
        x = (x - 128.0) * k + centre
        x = np.clip(x, 0, 255)
        g = math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
        x = 255.0 * (x / 255.0) ** g
    if rng.random() < cfg.p_blur:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*cfg.blur_sigma))
    if rng.random() < cfg.p_resample:
        s = x.shape[0]
        small = max(24, round(s * rng.uniform(*cfg.resample_scale)))
        x = cv2.resize(x, (small, small), interpolation=cv2.INTER_AREA)
        x = cv2.resize(x, (s, s), interpolation=cv2.INTER_LINEAR)
    if rng.random() < cfg.p_noise:
        x = x + rng.normal(0, rng.uniform(0, cfg.noise_sigma), x.shape)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if rng.random() < cfg.p_jpeg:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), dtype=np.uint8)
    return out


def make_batch(
    data: RealCTSet,
    index: NDArray[np.intp],
    cfg: RealCTConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> torch.Tensor:
    """Augmented, enhanced (as served), geometry-jittered batch (N, 1, S, S) float [0, 255]."""
    slices = [
        enhance(
            render_augment(data.data.crops[i], data.data.masks[i], cfg.render, rng),
            cast(Enhancement, cfg.enhancement),
        )
        for i in index
    ]
    x = torch.from_numpy(np.stack(slices)).unsqueeze(1)
    return augment_batch(x, cfg.geometry, generator)


# --- sampling -----------------------------------------------------------------------------


def sampling_weights(
    data: RealCTSet, index: NDArray[np.intp], cfg: RealCTConfig
) -> NDArray[np.float64]:
    """Weight per item: group share split equally over classes, then over lung-fill bins."""
    items = data.data.items
    groups = np.array([GROUP_OF[items[i].source] for i in index])
    labels = np.array([items[i].label for i in index])
    bins = data.bins[index] if cfg.balance_bins else np.zeros(len(index), np.int64)
    w = np.zeros(len(index))
    for group, share in cfg.group_shares.items():
        in_group = groups == group
        if not in_group.any():
            continue
        classes = np.unique(labels[in_group])
        for c in classes:
            in_class = in_group & (labels == c)
            cell_bins = np.unique(bins[in_class])
            for b in cell_bins:
                cell = in_class & (bins == b)
                w[cell] = share / len(classes) / len(cell_bins) / cell.sum()
    total = w.sum()
    if total <= 0:
        raise ValueError("no training item falls in a sampled group")
    return w / total


def draw_epoch(weights: NDArray[np.float64], n: int, rng: np.random.Generator) -> NDArray[np.intp]:
    return rng.choice(len(weights), size=n, replace=True, p=weights)


# --- model --------------------------------------------------------------------------------


def freeze_early(model: SliceCNN, n_blocks: int) -> list[torch.nn.Parameter]:
    """Freeze the stem and the first n blocks; return the trainable parameters."""
    bb = model.backbone
    frozen = [bb._conv_stem, bb._bn0, *bb._blocks[:n_blocks]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad = False
    model._frozen_modules = frozen  # type: ignore[assignment]
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: SliceCNN) -> None:
    model.train()
    for module in getattr(model, "_frozen_modules", []):
        module.eval()  # frozen BatchNorm keeps its ImageNet statistics


def selection_sets(data: RealCTSet, cfg: RealCTConfig) -> dict[str, NDArray[np.intp]]:
    sets = {
        "sarscov2-ct/sel": data.index("sel", "sarscov2-ct"),
        "mosmed-vs-masked-normal/sel": np.concatenate(
            [data.index("sel", "mosmed"), data.index("sel", "masked-normal")]
        ),
    }
    if cfg.include_ucsd:
        sets["ucsd-covid-ct/val"] = data.index("sel", "ucsd-covid-ct")
    return sets


def score_sets(
    model: SliceCNN, data: RealCTSet, sets: dict[str, NDArray[np.intp]], cfg: RealCTConfig
) -> dict[str, float]:
    out = {}
    for name, idx in sets.items():
        probs = predict_proba(model, data.data.prepared(cfg.enhancement, idx), tta=cfg.tta)
        auc = roc_auc(data.labels(idx), probs[:, 1])
        out[name] = float("nan") if auc is None else round(auc, 4)
    return out


# --- training -----------------------------------------------------------------------------


def fit_realct(
    data: RealCTSet, cfg: RealCTConfig, max_steps: int | None = None, select: bool = True
) -> tuple[SliceCNN, list[dict[str, Any]], int]:
    """Train one model; keep the epoch with the best mean selection AUC (or the last)."""
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg.model_config(), pretrained=True)
    params = freeze_early(model, cfg.freeze_blocks)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx = data.index("train")
    weights = sampling_weights(data, train_idx, cfg)
    steps_per_epoch = math.ceil(cfg.samples_per_epoch / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    sets = selection_sets(data, cfg) if select else {}
    history: list[dict[str, Any]] = []
    best, best_epoch, best_state = -1.0, 0, None
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        set_train_mode(model)
        order = train_idx[draw_epoch(weights, cfg.samples_per_epoch, rng)]
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            if len(batch) < 2:
                continue
            xb = make_batch(data, batch, cfg, rng, generator)
            yb = torch.from_numpy(data.labels(batch))
            loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": round(float(np.mean(losses)), 4),
            "train_loss_first_batches": [round(v, 4) for v in losses[:3]],
            "lr": scheduler.get_last_lr()[0],
        }
        if sets:
            aucs = score_sets(model, data, sets, cfg)
            row["sel_auc"] = aucs
            row["sel_auc_mean"] = round(float(np.nanmean(list(aucs.values()))), 4)
            if row["sel_auc_mean"] > best:
                best, best_epoch = row["sel_auc_mean"], epoch
                best_state = copy.deepcopy(model.state_dict())
        row["seconds"] = round(time.perf_counter() - started, 1)
        history.append(row)
        log.info("epoch %s", json.dumps(row))
        print(json.dumps(row), flush=True)
        if max_steps is not None and step >= max_steps:
            break
        if row["seconds"] / 60 > cfg.max_minutes:
            log.warning("wall-clock budget reached after epoch %d", epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = history[-1]["epoch"]
    model.eval()
    return model, history, best_epoch


def choose_threshold(y: NDArray[np.int64], p: NDArray[np.float64]) -> float:
    """Youden-optimal threshold on the pooled selection sets (never on a test set)."""
    best_t, best_j = 0.5, -1.0
    for t in np.unique(np.round(p, 3)):
        pred = p >= t
        sens = pred[y == 1].mean()
        spec = (~pred[y == 0]).mean()
        if sens + spec - 1 > best_j:
            best_t, best_j = float(t), float(sens + spec - 1)
    return best_t


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def train_realct_slice_model(
    data_dir: Path,
    out_dir: Path,
    version: str,
    config: RealCTConfig | None = None,
    cache_dir: Path | None = Path("cache"),
    command: str = "",
) -> dict[str, Any]:
    """Build the data set, train, save ``out_dir/{config.json, member-0.pt, metrics.json}``."""
    cfg = config or RealCTConfig()
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    data = build_realct_set(data_dir, cfg.image_size, cache_dir, include_ucsd=cfg.include_ucsd)
    prep_seconds = time.perf_counter() - started
    model, history, best_epoch = fit_realct(data, cfg)
    sets = selection_sets(data, cfg)
    sel_idx = np.concatenate(list(sets.values()))
    sel_p = predict_proba(model, data.data.prepared(cfg.enhancement, sel_idx), tta=cfg.tta)[:, 1]
    threshold = choose_threshold(data.labels(sel_idx), sel_p)
    save_slice_model(
        out_dir,
        version,
        [model],
        cfg.enhancement,
        tta=cfg.tta,
        threshold=threshold,
        metadata={
            "trained_on": "real-CT slices (sarscov2-ct, mosmed, masked-normal, ucsd-covid-ct "
            "train); held out: img512, COVID-CT-MD",
            "threshold_chosen_on": "pooled selection splits (Youden)",
        },
    )
    report = {
        "version": version,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "machine": platform.machine(),
            "node": platform.node(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
            "threads": torch.get_num_threads(),
        },
        "train_config": _jsonable(cfg),
        "data": {
            "counts": data.summary(),
            "near_duplicates_removed": len(data.removed),
            "near_duplicates_examples": data.removed[:20],
            "lung_fill_bin_edges": "terciles of lung_fill within each source",
        },
        "best_epoch": best_epoch,
        "threshold": threshold,
        "history": history,
        "seconds": {
            "prepare": round(prep_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def merge_members(
    run_dirs: list[Path],
    out_dir: Path,
    version: str,
    data_dir: Path,
    cache_dir: Path | None = Path("cache"),
    command: str = "",
) -> dict[str, Any]:
    """One artefact averaging the members of several runs of the SAME recipe (seeds).

    The threshold is re-chosen on the pooled selection splits for the averaged model; the
    per-run reports (learning curves, configs) are kept under ``runs``.
    """
    from services.inference.artifacts import load_slice_model

    runs = [json.loads((d / "metrics.json").read_text()) for d in run_dirs]
    bundles = [load_slice_model(d) for d in run_dirs]
    sizes = {b.image_size for b in bundles}
    enhancements = {b.enhancement for b in bundles}
    if len(sizes) != 1 or len(enhancements) != 1:
        raise ValueError("members must share image size and enhancement")
    members = [m for b in bundles for m in b.members]
    size, enhancement = sizes.pop(), enhancements.pop()
    cfg_dict = runs[0]["train_config"]
    cfg = RealCTConfig(image_size=size, include_ucsd=cfg_dict.get("include_ucsd", True))
    data = build_realct_set(data_dir, size, cache_dir, include_ucsd=cfg.include_ucsd)
    sets = selection_sets(data, cfg)
    sel_idx = np.concatenate(list(sets.values()))
    x_sel = data.data.prepared(enhancement, sel_idx)
    p_sel = np.mean([predict_proba(m, x_sel, tta=bundles[0].tta)[:, 1] for m in members], axis=0)
    threshold = choose_threshold(data.labels(sel_idx), p_sel)
    save_slice_model(
        out_dir,
        version,
        members,
        enhancement,
        tta=bundles[0].tta,
        threshold=threshold,
        metadata={
            **{k: v for k, v in bundles[0].metadata.items()},
            "threshold_chosen_on": "pooled selection splits (Youden), averaged members",
        },
    )
    report = {
        "version": version,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "members_from": [str(d) for d in run_dirs],
        "threshold": threshold,
        "runs": runs,
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("models/slice-cnn/v2"))
    parser.add_argument("--version", default="v2")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--epochs", type=int, default=RealCTConfig.epochs)
    parser.add_argument("--samples-per-epoch", type=int, default=RealCTConfig.samples_per_epoch)
    parser.add_argument("--image-size", type=int, default=RealCTConfig.image_size)
    parser.add_argument("--freeze-blocks", type=int, default=RealCTConfig.freeze_blocks)
    parser.add_argument("--lr", type=float, default=RealCTConfig.lr)
    parser.add_argument("--max-minutes", type=float, default=RealCTConfig.max_minutes)
    parser.add_argument("--no-ucsd", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--group-shares",
        help="sampling shares per source group, e.g. 'sarscov2-ct=0.6,ucsd-covid-ct=0.4'",
    )
    parser.add_argument(
        "--merge", type=Path, nargs="+", help="merge these run artefacts into --out, no training"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    command = "python -m services.training.realct_train " + shlex.join(sys.argv[1:])
    if args.merge:
        torch.set_num_threads(1)
        report = merge_members(
            args.merge, args.out, args.version, args.data_dir, args.cache_dir, command
        )
        print(json.dumps({"threshold": report["threshold"], "members": args.merge}, default=str))
        return
    cfg = RealCTConfig(
        image_size=args.image_size,
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        freeze_blocks=args.freeze_blocks,
        lr=args.lr,
        max_minutes=args.max_minutes,
        include_ucsd=not args.no_ucsd,
        seed=args.seed,
    )
    if not cfg.include_ucsd:
        cfg.group_shares = {"sarscov2-ct": 0.6, "mosmed+masked-normal": 0.4}
    if args.group_shares:
        pairs = [part.split("=") for part in args.group_shares.split(",")]
        cfg.group_shares = {name.strip(): float(share) for name, share in pairs}
    report = train_realct_slice_model(
        args.data_dir, args.out, args.version, cfg, args.cache_dir, command=command
    )
    print(json.dumps({k: report[k] for k in ("best_epoch", "threshold", "seconds")}))


if __name__ == "__main__":
    main()
