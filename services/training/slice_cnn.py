"""Fine-tune the slice CNN; select the epoch on a validation split only.

Runs on CPU (2 cores: ~15 min for EfficientNet-Lite0 at 224 px, 15 epochs on the UCSD train
split) and uses a GPU when torch sees one. Seeds are fixed; a run is repeatable on one device.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from services.inference.model import Backbone, SliceCNN, SliceCNNConfig, build_model
from services.inference.predict import predict_proba
from services.training.augment import AugmentConfig, augment_batch

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    backbone: Backbone = "efficientnet-lite0"
    image_size: int = 224
    enhancement: str = "he+clahe"
    epochs: int = 15
    batch_size: int = 24
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.05
    loss: Literal["ce", "focal"] = "ce"
    focal_gamma: float = 2.0
    # Share of each epoch drawn from extra sources (e.g. sarscov2-ct), class-balanced within
    # them; 0 trains on the primary source only. Mixing sources naively hurt UCSD val.
    extra_share: float = 0.0
    balance_classes: bool = True
    seed: int = 0
    tta: bool = True
    device: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def model_config(self) -> SliceCNNConfig:
        return SliceCNNConfig(backbone=self.backbone, image_size=self.image_size)


@dataclass
class TrainResult:
    model: SliceCNN
    history: list[dict[str, Any]]
    best_epoch: int
    val_probs: NDArray[np.float64] | None
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, weight: torch.Tensor | None
) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if weight is not None:
        loss = loss * weight[target]
    return loss.mean()


def epoch_indices(
    y: NDArray[np.int64], domain: NDArray[np.int64], extra_share: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """All primary-source items once, plus a class-balanced draw from the extra sources."""
    primary = np.flatnonzero(domain == 0)
    chosen = [primary]
    extra = np.flatnonzero(domain != 0)
    n_extra = round(extra_share * len(primary))
    if n_extra and len(extra):
        per_class = []
        for label in (0, 1):
            pool = extra[y[extra] == label]
            if len(pool):
                per_class.append(rng.choice(pool, size=n_extra // 2, replace=len(pool) < n_extra))
        chosen.extend(per_class)
    order = np.concatenate(chosen)
    rng.shuffle(order)
    return order


def fit_slice_cnn(
    x: NDArray[np.uint8],
    y: NDArray[np.int64],
    config: TrainConfig,
    domain: NDArray[np.int64] | None = None,
    val: tuple[NDArray[np.uint8], NDArray[np.int64]] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train on (x, y); with ``val`` keep the epoch with the best val ROC AUC, else the last."""
    started = time.perf_counter()
    generator = seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    domain = np.zeros_like(y) if domain is None else domain

    model = build_model(config.model_config(), pretrained=True).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(
        len(epoch_indices(y, domain, config.extra_share, rng)) / config.batch_size
    )
    total_steps = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    class_weight = None
    if config.balance_classes:
        counts = np.bincount(y[domain == 0], minlength=2).astype(np.float64)
        class_weight = torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32)
        class_weight = class_weight.to(device)

    history: list[dict[str, Any]] = []
    best_auc, best_epoch, best_state, best_probs = -1.0, config.epochs, None, None
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = epoch_indices(y, domain, config.extra_share, rng)
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch_idx = order[start : start + config.batch_size]
            if len(batch_idx) < 2:  # BatchNorm needs two samples
                continue
            xb = torch.from_numpy(x[batch_idx]).unsqueeze(1).to(device)
            yb = torch.from_numpy(y[batch_idx]).long().to(device)
            xb = augment_batch(xb.cpu(), config.augment, generator).to(device)
            logits = model(xb)
            if config.loss == "focal":
                loss = focal_loss(logits, yb, config.focal_gamma, class_weight)
            else:
                loss = F.cross_entropy(
                    logits, yb, weight=class_weight, label_smoothing=config.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 1),
        }
        if val is not None:
            probs = predict_proba(model, val[0], tta=config.tta, device=device)
            row["val_auc"] = float(roc_auc_score(val[1], probs[:, 1]))
            row["val_acc"] = float(((probs[:, 1] >= 0.5) == val[1]).mean())
            if row["val_auc"] > best_auc:
                best_auc, best_epoch, best_probs = row["val_auc"], epoch, probs
                best_state = copy.deepcopy(model.state_dict())
        history.append(row)
        log.info("epoch", extra=row)
        if on_epoch is not None:
            on_epoch(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(
        model=model.cpu(),
        history=history,
        best_epoch=best_epoch,
        val_probs=best_probs,
        seconds=time.perf_counter() - started,
    )
