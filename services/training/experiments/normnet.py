"""NormNet-style label-free lesion segmenter (issue 16 §1): an experiment, not shipped.

After Yao et al., "Label-free segmentation of COVID-19 lesions in lung CT", IEEE TMI 2021: a
small network learns what *normal* lung tissue (vessels, airways, fissures included) looks
like by telling it apart from synthetic lesions inserted into normal lungs; on real scans,
what it does not call normal is lesion. No human lesion label is used.

* **Normal tissue**: COVID-CT-MD ``cap002`` only, its slices at least :data:`MARGIN` away from
  every slice listed as infected in ``infected_slices.csv`` (indices into the series sorted by
  SliceLocation). Not normal001 (the phantom source) nor P002 (evaluation). Lung mask: the
  shipped segmenter's ``lungs``. Every 5th slice position is held out for a synthetic
  validation set.
* **Synthetic lesions** (:func:`insert_synthetic`; written for this experiment, independent of
  :mod:`services.training.lesion_phantoms`, which is used only to *evaluate*): a random 3-D
  field (a union of rotated ellipsoids with a rough surface, or Gaussian-smoothed noise under
  an ellipsoid envelope) thresholded at the quantile that gives the requested volume inside
  the lung; a soft border (Gaussian, 0.5–2 mm); a target HU uniform in −750…+50 plus smooth
  texture noise (SD 10–60 HU), blended in with the border weight, in half of the cases keeping
  what is denser than the blend (vessels stay visible through ground glass). Only lung voxels
  change. Label = the thresholded shape inside the lung. Slice thickness: 1–3 adjacent 2 mm
  slices averaged (2/4/6 mm) and the three channels taken that far apart; in-plane noise and
  blur vary (kernels).
* **Net** (:class:`NormNet`): a 3-level 2-D U-Net (BatchNorm, ReLU; 16/32/64 channels) on 3
  adjacent slices as channels (HU window −1000…+200 → 0…1), in-plane 2× block-averaged
  (~1.25 mm), 64×64 patches centred in lung; one output (lesion probability); loss BCE + soft
  Dice over lung pixels only. CPU, one thread.
* **Inference** (:func:`predict_volume`): all slices with lung, the lung's bounding box,
  probabilities bilinearly upsampled to the input grid; lesion = p ≥ 0.5 inside the lung,
  3-D components ≥ :data:`MIN_COMPONENT_ML` (the classical segmenter's seed minimum).
* **Checks** (same functions as :mod:`services.training.lesion_eval`): ``phantoms`` (normal001
  with :func:`insert_lesions` seed 0, :func:`acquire` in memory — no DICOM round trip — scored
  with :func:`score_phantom`), ``real`` (per-slice lesion share, :func:`ctmd_report`); each for
  NormNet, the classical segmenter and two combinations (:func:`combine`).

Run (from the repository root)::

    nice -n 10 python -m services.training.experiments.normnet train --data-dir ../shared/data
    nice -n 10 python -m services.training.experiments.normnet phantoms --data-dir ../shared/data \\
        --out cache/normnet/phantoms.json
    nice -n 10 python -m services.training.experiments.normnet real --data-dir ../shared/data \\
        --out cache/normnet/real.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy import ndimage
from torch import nn

WINDOW = (-1000.0, 200.0)
DOWN = 2  # in-plane block average: ~0.63 mm pixels -> ~1.26 mm
PATCH = 64
MARGIN = 3  # normal slices keep this many slices away from any infected one
MIN_COMPONENT_ML = 0.5
THRESHOLD = 0.5
HU_RANGE = (-750.0, 50.0)
CACHE = Path("cache/normnet")
WEIGHTS = Path(__file__).resolve().parent / "normnet_weights.pt"


# --- data ------------------------------------------------------------------------------------


def downsample(a: NDArray[Any], factor: int = DOWN) -> NDArray[np.float32]:
    """(Z, Y, X) block mean in-plane (Y, X cropped to a multiple of ``factor``)."""
    z, y, x = a.shape
    y2, x2 = y - y % factor, x - x % factor
    b = a[:, :y2, :x2].astype(np.float32)
    return np.asarray(b.reshape(z, y2 // factor, factor, x2 // factor, factor).mean(axis=(2, 4)))


def to_input(hu: NDArray[Any]) -> NDArray[np.float32]:
    lo, hi = WINDOW
    return np.asarray(np.clip((hu - lo) / (hi - lo), 0.0, 1.0), np.float32)


def load_series(data_dir: Path, name: str) -> dict[str, Any]:
    """HU, classical masks, spacing, SliceLocation rank of one COVID-CT-MD series (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"series_{name}.npz"
    if path.exists():
        with np.load(path) as f:
            out = {k: f[k] for k in f.files}
        out["spacing"] = tuple(float(v) for v in out["spacing"])
        out["left"] = bool(out["left"])
        return out
    from services.common.config import get_settings
    from services.preprocess.lesions import default_config, segment_lesions
    from services.preprocess.lung_features import patient_left_on_image_right
    from services.preprocess.readers import read_study
    from services.training.lesion_eval import _rank

    study = read_study(data_dir / "covid-ct-md" / name, get_settings())
    assert study.hu is not None and study.spacing_mm is not None
    left = patient_left_on_image_right(study)
    t0 = time.perf_counter()
    masks = segment_lesions(
        study.hu, study.spacing_mm, patient_left_on_image_right=left, config=default_config()
    )
    seconds = time.perf_counter() - t0
    out = {
        "hu": study.hu,
        "lungs": masks.lungs,
        "ggo": masks.ggo,
        "consolidation": masks.consolidation,
        "spacing": np.array(study.spacing_mm),
        "rank": _rank(study),
        "left": np.array(left),
        "classical_seconds": np.array(seconds),
    }
    np.savez_compressed(path, **out)
    out["spacing"] = tuple(float(v) for v in study.spacing_mm)
    out["left"] = left
    return out


def infected_ranks(data_dir: Path) -> dict[str, set[int]]:
    """COVID-CT-MD's infected slice ranks per series (the project's reader of the CSV)."""
    from services.training.realct_eval import _infected

    return _infected(data_dir / "covid-ct-md")


def normal_slices(
    rank: NDArray[np.int64], infected: set[int], margin: int = MARGIN
) -> NDArray[np.bool_]:
    """Per array slice: True when its SliceLocation rank is > ``margin`` from every infected."""
    if not infected:
        return np.ones(len(rank), bool)
    inf = np.array(sorted(infected))
    dist = np.abs(rank[:, None] - inf[None, :]).min(axis=1)
    return np.asarray(dist > margin)


# --- synthetic lesions (independent of lesion_phantoms) ----------------------------------------


def _coords(
    shape: tuple[int, ...], spacing: tuple[float, float, float]
) -> list[NDArray[np.float32]]:
    return [
        (np.arange(n, dtype=np.float32) * s)[
            tuple(slice(None) if i == a else None for i in range(3))
        ]
        for a, (n, s) in enumerate(zip(shape, spacing, strict=True))
    ]


def _smooth_noise(
    shape: tuple[int, ...],
    sigma_mm: float,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    n = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32),
        [sigma_mm / s for s in spacing],
        mode="reflect",
    )
    return np.asarray((n - n.mean()) / (n.std() + 1e-6), np.float32)


def shape_field(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """A random field, highest around ``centre_mm``; its upper level sets are lesion shapes."""
    zz, yy, xx = _coords(shape, spacing)
    cz, cy, cx = centre_mm
    if rng.random() < 0.5:  # union of rotated ellipsoids with a rough surface
        field = np.full(shape, -np.inf, np.float32)
        for i in range(int(rng.integers(1, 5))):
            r = rng.uniform(3.0, 20.0, 3).astype(np.float32)
            off = np.zeros(3, np.float32) if i == 0 else rng.normal(0.0, 6.0, 3).astype(np.float32)
            th = rng.uniform(0.0, np.pi)
            dy, dx = yy - (cy + off[1]), xx - (cx + off[2])
            u, v = np.cos(th) * dy + np.sin(th) * dx, -np.sin(th) * dy + np.cos(th) * dx
            q = ((zz - (cz + off[0])) / r[0]) ** 2 + (u / r[1]) ** 2 + (v / r[2]) ** 2
            field = np.maximum(field, 1.0 - np.sqrt(q))
        rough = _smooth_noise(shape, float(rng.uniform(1.0, 3.0)), spacing, rng)
        return np.asarray(field + float(rng.uniform(0.0, 0.3)) * rough, np.float32)
    # smoothed noise under an ellipsoid envelope: lobulated, patchy, sometimes several pieces
    r = rng.uniform(6.0, 25.0, 3).astype(np.float32)
    q = ((zz - cz) / r[0]) ** 2 + ((yy - cy) / r[1]) ** 2 + ((xx - cx) / r[2]) ** 2
    noise = _smooth_noise(shape, float(rng.uniform(2.0, 6.0)), spacing, rng)
    return np.asarray(noise - float(rng.uniform(1.0, 3.0)) * np.sqrt(q), np.float32)


def insert_synthetic(
    hu: NDArray[Any],
    lung: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    volume_ml: float,
    rng: np.random.Generator,
    centre_mm: tuple[float, float, float] | None = None,
    target_hu: float | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """``hu`` (Z, Y, X) with one synthetic lesion of ``volume_ml`` inside ``lung``; its label.

    The label is the lung voxels of the field's upper level set holding ``volume_ml`` (or all
    lung voxels when the lung is smaller). Only lung voxels change.
    """
    out = hu.astype(np.float32, copy=True)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_lung = int(lung.sum())
    n = min(n_lung, round(volume_ml / voxel_ml))
    if n <= 0:
        return out, np.zeros(hu.shape, bool)
    if centre_mm is None:
        idx = np.argwhere(lung)[int(rng.integers(0, n_lung))]
        centre_mm = (
            float(idx[0] * spacing[0]),
            float(idx[1] * spacing[1]),
            float(idx[2] * spacing[2]),
        )
    field = shape_field(hu.shape, spacing, centre_mm, rng)
    values = field[lung]
    thr = np.partition(values, len(values) - n)[len(values) - n]
    shape = field >= thr
    label = shape & lung
    if int(label.sum()) > n:  # ties at the threshold
        extra = np.argwhere(label & (field == thr))[: int(label.sum()) - n]
        label[tuple(extra.T)] = False
        shape = shape & ~(~label & lung)
    border_mm = float(rng.uniform(0.5, 2.0))
    alpha = ndimage.gaussian_filter(
        shape.astype(np.float32),
        [min(border_mm / spacing[0], 0.5), border_mm / spacing[1], border_mm / spacing[2]],
    )
    alpha[~lung] = 0.0
    t = float(rng.uniform(*HU_RANGE)) if target_hu is None else float(target_hu)
    texture = float(rng.uniform(10.0, 60.0)) * _smooth_noise(
        hu.shape,
        float(rng.uniform(0.5, 2.0)),
        spacing,
        rng,
    )
    blended = out + alpha * (t + texture - out)
    if rng.random() < 0.5:
        blended = np.maximum(blended, out)
    out[lung] = blended[lung]
    return out, label


# --- net --------------------------------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class NormNet(nn.Module):
    """3-level 2-D U-Net: (B, 3, H, W) slices z-1, z, z+1 in 0..1 -> (B, 1, H, W) logits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c = width
        self.e1, self.e2, self.e3 = _block(3, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.bottom = _block(4 * c, 4 * c)
        self.d3, self.d2, self.d1 = _block(8 * c, 2 * c), _block(4 * c, c), _block(2 * c, c)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        b = self.bottom(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([F.interpolate(b, scale_factor=2.0), e3], 1))
        d2 = self.d2(torch.cat([F.interpolate(d3, scale_factor=2.0), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)[..., :h, :w]

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))


def masked_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the lung pixels (``mask``) only."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * mask).sum() / mask.sum().clamp(min=1.0)
    p = torch.sigmoid(logits) * mask
    dice = 1.0 - (2.0 * (p * target).sum() + 1.0) / (p.sum() + (target * mask).sum() + 1.0)
    return bce + dice


# --- training ---------------------------------------------------------------------------------


class PatchSource:
    """Synthetic training patches from the normal slices of one series (module docstring)."""

    def __init__(self, series: dict[str, Any], normal: NDArray[np.bool_]) -> None:
        self.hu = downsample(series["hu"])
        self.lung = downsample(series["lungs"] > 0) >= 0.5
        s = series["spacing"]
        self.spacing = (float(s[0]), float(s[1]) * DOWN, float(s[2]) * DOWN)
        self.normal = normal & (self.lung.sum(axis=(1, 2)) >= 200)
        self.order = np.argsort(series["rank"])  # array index of each rank: anatomical order

    def centres(self, stride: int, held_out: bool) -> NDArray[np.int64]:
        """Positions (in rank order) whose whole 3-channel slab is normal."""
        ok = self.normal[self.order]
        reach = stride + stride // 2 + 1
        pos = [
            i
            for i in range(reach, len(ok) - reach)
            if ok[i - reach : i + reach + 1].all() and (i % 5 == 0) == held_out
        ]
        return np.array(pos, np.int64)

    def patch(
        self, rng: np.random.Generator, held_out: bool = False
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        stride = int(rng.integers(1, 4))
        slab = bool(rng.random() < 0.7)
        pos = self.centres(stride, held_out)
        c = int(pos[rng.integers(0, len(pos))])
        lo = c - stride - stride // 2
        hi = c + stride + stride // 2 + 1
        zs = self.order[lo:hi]
        lung_c = self.lung[self.order[c]]
        ys, xs = np.nonzero(lung_c)
        k = int(rng.integers(0, len(ys)))
        y0 = int(np.clip(ys[k] - PATCH // 2, 0, lung_c.shape[0] - PATCH))
        x0 = int(np.clip(xs[k] - PATCH // 2, 0, lung_c.shape[1] - PATCH))
        hu = self.hu[zs, y0 : y0 + PATCH, x0 : x0 + PATCH].copy()
        lung = self.lung[zs, y0 : y0 + PATCH, x0 : x0 + PATCH].copy()
        label = np.zeros(hu.shape, bool)
        n_les = 0 if rng.random() < 0.25 else int(rng.integers(1, 3))
        for _ in range(n_les):
            lung_ml = float(lung.sum()) * float(np.prod(self.spacing)) / 1000.0
            frac = float(np.exp(rng.uniform(np.log(0.01), np.log(0.6))))
            at: tuple[float, float, float] | None = None
            ly, lx = np.nonzero(lung[stride + stride // 2])
            if len(ly) and rng.random() < 0.8:  # mostly on the labelled (middle) slab
                j = int(rng.integers(0, len(ly)))
                zc = (stride + stride // 2 + rng.uniform(-1.0, 1.0) * stride) * self.spacing[0]
                at = (float(zc), float(ly[j] * self.spacing[1]), float(lx[j] * self.spacing[2]))
            hu, lab = insert_synthetic(hu, lung, self.spacing, frac * lung_ml, rng, at)
            label |= lab
        # channels: slabs of `stride` slices (or single slices) `stride` apart
        mid = stride + stride // 2
        chans, labs = [], []
        for k in (-1, 0, 1):
            centre = mid + k * stride
            sl = (
                slice(centre - (stride - 1) // 2, centre + stride // 2 + 1)
                if slab
                else slice(centre, centre + 1)
            )
            chans.append(hu[sl].mean(axis=0))
            labs.append(label[sl].mean(axis=0))
        x = np.stack(chans)
        noise_sd = float(rng.uniform(0.0, 40.0))
        x = x + noise_sd * rng.standard_normal(x.shape).astype(np.float32)
        blur = float(rng.uniform(0.0, 0.8))
        if blur > 0.1:
            x = ndimage.gaussian_filter(x, (0, blur, blur))
        if rng.random() < 0.5:
            x, labs, lung = x[:, :, ::-1], [a[:, ::-1] for a in labs], lung[:, :, ::-1]
        y = (labs[1] >= 0.5).astype(np.float32)
        m = lung[mid].astype(np.float32)
        return to_input(x), y[None].copy(), m[None].copy()


def _batch(
    src: PatchSource, rng: np.random.Generator, n: int, held_out: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [src.patch(rng, held_out) for _ in range(n)]
    return tuple(torch.from_numpy(np.stack([it[i] for it in items])) for i in range(3))  # type: ignore[return-value]


def _dice_np(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def train(
    data_dir: Path, minutes: float, out: Path, seed: int = 0, batch: int = 16
) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    series = load_series(data_dir, "cap002")
    normal = normal_slices(series["rank"], infected_ranks(data_dir).get("cap002", set()))
    src = PatchSource(series, normal)
    val_rng = np.random.default_rng(seed + 1000)
    val = [_batch(src, val_rng, 32, held_out=True) for _ in range(4)]
    model = NormNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    budget = minutes * 60.0
    started = time.perf_counter()
    it, log, losses = 0, [], []
    lowered = False
    while time.perf_counter() - started < budget:
        if not lowered and time.perf_counter() - started > 0.75 * budget:
            for g in opt.param_groups:
                g["lr"] = 4e-4
            lowered = True
        model.train()
        x, y, m = _batch(src, rng, batch)
        loss = masked_loss(model(x), y, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        it += 1
        if it % 100 == 0:
            entry = {
                "it": it,
                "s": round(time.perf_counter() - started, 1),
                "loss": round(float(np.mean(losses[-100:])), 4),
            }
            if it % 300 == 0:
                entry["val_dice"] = round(_validate(model, val), 4)
            log.append(entry)
            print(entry, flush=True)
    seconds = time.perf_counter() - started
    val_dice = _validate(model, val)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    report = {
        "weights": str(out),
        "series": "cap002 normal slices",
        "normal_slices": int(src.normal.sum()),
        "iterations": it,
        "batch": batch,
        "train_seconds": round(seconds, 1),
        "val_synthetic_dice": round(val_dice, 4),
        "params": sum(p.numel() for p in model.parameters()),
        "log": log,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _validate(model: NormNet, val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    """Dice of p >= 0.5 vs the synthetic label over the lung pixels of held-out patches."""
    model.eval()
    a, b = [], []
    with torch.no_grad():
        for x, y, m in val:
            p = model.proba(x) >= THRESHOLD
            a.append((p & (m > 0)).numpy())
            b.append(((y > 0) & (m > 0)).numpy())
    return _dice_np(np.concatenate(a), np.concatenate(b))


# --- inference --------------------------------------------------------------------------------


def load_model(path: Path = WEIGHTS) -> NormNet:
    torch.set_num_threads(1)
    model = NormNet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    return model


def predict_volume(
    model: NormNet, hu: NDArray[Any], lungs: NDArray[Any], batch: int = 8
) -> NDArray[np.float32]:
    """(Z, Y, X) HU and lung mask -> lesion probability at the input grid (0 outside the lung)."""
    lung = lungs > 0
    x = to_input(downsample(hu))
    lung_ds = downsample(lung) > 0
    z_has = np.nonzero(lung_ds.any(axis=(1, 2)))[0]
    prob = np.zeros(hu.shape, np.float32)
    if len(z_has) == 0:
        return prob
    ys, xs = np.nonzero(lung_ds.any(axis=0))
    y0, y1 = max(0, ys.min() - 4), min(x.shape[1], ys.max() + 5)
    x0, x1 = max(0, xs.min() - 4), min(x.shape[2], xs.max() + 5)
    zmax = len(x) - 1
    with torch.no_grad():
        for i in range(0, len(z_has), batch):
            zs = z_has[i : i + batch]
            stack = np.stack([x[[max(z - 1, 0), z, min(z + 1, zmax)], y0:y1, x0:x1] for z in zs])
            p = model.proba(torch.from_numpy(stack))
            up = F.interpolate(p, scale_factor=float(DOWN), mode="bilinear", align_corners=False)
            prob[zs, y0 * DOWN : y1 * DOWN, x0 * DOWN : x1 * DOWN] = up[:, 0].numpy()
    prob[~lung] = 0.0
    return prob


def lesion_from_proba(
    prob: NDArray[np.float32],
    spacing: tuple[float, float, float],
    threshold: float = THRESHOLD,
    min_ml: float = MIN_COMPONENT_ML,
) -> NDArray[np.bool_]:
    mask = prob >= threshold
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.asarray(mask)
    sizes = np.bincount(lab.ravel()) * float(np.prod(spacing)) / 1000.0
    keep = sizes >= min_ml
    keep[0] = False
    return np.asarray(keep[lab])


def combine(
    classical: NDArray[np.bool_], prob: NDArray[np.float32], normnet: NDArray[np.bool_]
) -> dict[str, NDArray[np.bool_]]:
    """``filter``: classical components whose mean NormNet probability is ≥ 0.5; ``union``."""
    lab, n = ndimage.label(classical)
    if n:
        means = ndimage.mean(prob, lab, index=np.arange(1, n + 1))
        keep = np.concatenate([[False], np.asarray(means) >= THRESHOLD])
        filt = np.asarray(keep[lab])
    else:
        filt = np.zeros(classical.shape, bool)
    return {"filter": filt, "union": np.asarray(classical | normnet)}


def all_masks(
    model: NormNet, hu: NDArray[Any], lungs: NDArray[Any], classical: NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> tuple[dict[str, NDArray[np.bool_]], float]:  # fmt: skip
    t0 = time.perf_counter()
    prob = predict_volume(model, hu, lungs)
    net = lesion_from_proba(prob, spacing)
    seconds = time.perf_counter() - t0
    comb = combine(classical, prob, net)
    return {
        "normnet": net,
        "classical": classical,
        "combined_filter": comb["filter"],
        "combined_union": comb["union"],
    }, seconds


# --- evaluation -------------------------------------------------------------------------------


def run_phantoms(
    data_dir: Path, weights: Path, thicknesses: list[float], seed: int = 0
) -> dict[str, Any]:
    from services.preprocess.lesions import default_config, segment_lesions
    from services.training.lesion_eval import score_phantom
    from services.training.lesion_phantoms import acquire, insert_lesions

    model = load_model(weights)
    src = load_series(data_dir, "normal001")
    spacing, left = src["spacing"], src["left"]
    lungs = src["lungs"]
    classical = np.asarray(src["ggo"] | src["consolidation"])
    masks, net_s = all_masks(model, src["hu"], lungs, classical, spacing)
    lung_n = max(1, int((lungs > 0).sum()))
    report: dict[str, Any] = {
        "weights": str(weights),
        "seed": seed,
        "dicom_round_trip": False,
        "normal001_untouched": {
            k: round(100.0 * float(v.sum()) / lung_n, 3) for k, v in masks.items()
        }
        | {"normnet_seconds": round(net_s, 2), "slices": int(src["hu"].shape[0])},
        "phantoms": {},
    }
    print("normal001", report["normal001_untouched"], flush=True)
    phantom = insert_lesions(src["hu"], lungs, spacing, seed=seed)
    cfg = default_config()
    for thickness in thicknesses:
        for kernel in ("sharp", "soft"):
            name = f"{thickness:g}mm_{kernel}"
            seen = acquire(phantom, thickness, kernel, seed=seed)
            t0 = time.perf_counter()
            cm = segment_lesions(
                seen.hu, seen.spacing_mm, patient_left_on_image_right=left, config=cfg
            )
            classical_s = time.perf_counter() - t0
            ms, net_s = all_masks(model, seen.hu, cm.lungs, cm.lesion, seen.spacing_mm)
            entry: dict[str, Any] = {
                "classical_seconds": round(classical_s, 2),
                "normnet_seconds": round(net_s, 2),
            }
            for key, lesion in ms.items():
                ggo = (
                    cm.ggo
                    if key == "classical"
                    else (cm.ggo & lesion if key == "combined_filter" else None)
                )
                entry[key] = score_phantom(
                    lesion, ggo, seen.labels, seen.classes, seen.kinds, cm.lungs, seen.spacing_mm
                )
            report["phantoms"][name] = entry
            print(
                name,
                {k: (entry[k]["dice"], entry[k]["false_positive_percent_of_lung"]) for k in ms},
                flush=True,
            )
    report["summary"] = {}
    for key in ("normnet", "classical", "combined_filter", "combined_union"):
        errs = [
            abs(v["error_percent"])
            for p in report["phantoms"].values()
            for v in p[key]["lesions"].values()
            if v["inserted_ml"] >= 1.0 and v["error_percent"] is not None
        ]
        dices = [p[key]["dice"] for p in report["phantoms"].values() if p[key]["dice"] is not None]
        report["summary"][key] = {
            "dice_mean": round(float(np.mean(dices)), 4) if dices else None,
            "dice_min": min(dices) if dices else None,
            "volume_error_abs_percent_median": round(float(np.median(errs)), 1) if errs else None,
            "volume_error_abs_percent_max": round(float(np.max(errs)), 1) if errs else None,
            "share_within_15_percent": round(float(np.mean(np.array(errs) <= 15.0)), 3)
            if errs
            else None,
        }
    return report


def run_real(data_dir: Path, weights: Path) -> dict[str, Any]:
    from services.training.realct_eval import ctmd_report, metrics_with_ci

    model = load_model(weights)
    infected = infected_ranks(data_dir)
    with (data_dir / "covid-ct-md" / "studies.csv").open(newline="") as handle:
        studies = [(r["study"], r["diagnosis"]) for r in csv.DictReader(handle)]
    keys = ("normnet", "classical", "combined_filter", "combined_union")
    scores: dict[str, dict[str, list[Any]]] = {k: {} for k in keys}
    per_series: dict[str, Any] = {}
    for name, diagnosis in studies:
        s = load_series(data_dir, name)
        classical = np.asarray(s["ggo"] | s["consolidation"])
        masks, net_s = all_masks(model, s["hu"], s["lungs"], classical, s["spacing"])
        lung = s["lungs"] > 0
        lung_n = max(1, int(lung.sum()))
        rank = s["rank"]
        order = np.argsort(rank)
        flags = [int(r) in infected.get(name, set()) for r in rank[order]]
        per_slice_lung = lung.sum(axis=(1, 2)).astype(np.float64)
        trained = (
            ~normal_slices(rank, infected.get(name, set()))
            if name == "cap002"
            else np.ones(len(rank), bool)
        )  # True = not a training slice
        per_series[name] = {
            "diagnosis": diagnosis,
            "normnet_seconds": round(net_s, 2),
            "classical_seconds": round(float(s["classical_seconds"]), 2),
            "slices": len(rank),
        } | {
            f"{k}_opacity_percent": round(100.0 * float(v.sum()) / lung_n, 3)
            for k, v in masks.items()
        }
        for key in keys:
            share = masks[key].sum(axis=(1, 2)) / np.maximum(per_slice_lung, 1.0)
            share[per_slice_lung < 50] = 0.0
            scores[key][name] = [
                diagnosis, share[order].tolist(), rank[order].tolist(), flags,
                trained[order].tolist(),
            ]  # fmt: skip
        print(name, per_series[name], flush=True)
    out: dict[str, Any] = {
        "per_series": per_series,
        "infected_slice_auc": {},
        "excluding_training_slices": {},
    }
    for key in keys:
        # lesion detection (as lesion_eval real): P002's infected slices vs normal001 only
        out.setdefault("infected_vs_normal_slice_auc", {})[key] = ctmd_report(
            {n: v[:4] for n, v in scores[key].items() if v[0] != "CAP"}, 0.01
        )
        out["infected_slice_auc"][key] = ctmd_report(
            {n: v[:4] for n, v in scores[key].items()}, 0.01
        )
        # the same AUC without cap002's slices that NormNet was trained on as normal
        ps, ys = [], []
        for _n, (diagnosis, share, _r, flags, untrained) in scores[key].items():
            p, inf, keep = np.asarray(share), np.asarray(flags, bool), np.asarray(untrained, bool)
            if diagnosis == "COVID":
                ps.append(p[inf])
                ys.append(np.ones(int(inf.sum()), np.int64))
            else:
                ps.append(p[keep])
                ys.append(np.zeros(int(keep.sum()), np.int64))
        out["excluding_training_slices"][key] = metrics_with_ci(
            np.concatenate(ys), np.concatenate(ps), 0.01
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("train", "phantoms", "real"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="train: written (default cache/normnet/normnet.pt); phantoms/real: read "
        "(default: the committed services/training/experiments/normnet_weights.pt)",
    )
    parser.add_argument("--minutes", type=float, default=14.0)
    parser.add_argument("--thicknesses", type=float, nargs="+", default=[2.5, 5.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from services.training.metrics import print_and_save

    started = time.perf_counter()
    if args.weights is None:
        args.weights = CACHE / "normnet.pt" if args.what == "train" else WEIGHTS
    if args.what == "train":
        report = train(args.data_dir, args.minutes, args.weights, args.seed)
    elif args.what == "phantoms":
        report = run_phantoms(args.data_dir, args.weights, args.thicknesses, args.seed)
    else:
        report = run_real(args.data_dir, args.weights)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_and_save(report, args.out)


if __name__ == "__main__":
    main()
