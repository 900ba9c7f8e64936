"""The real-CT slice set for slice-CNN v2: sources, de-duplication, splits, band proxy, cache.

Sources (``../shared/data``, see its README):

* ``sarscov2-ct``   both classes, one hospital, no patient ids -> random split (train / sel)
* ``mosmed``        COVID only            -> images split train / sel
* ``masked-normal`` NonCOVID only, 9 pats -> patients split train / sel
  (mosmed and masked-normal form ONE sampling group "mosmed+masked-normal": each is the only
  evidence of its class in that group, so the group's share is capped and both classes get
  equal weight inside it)
* ``ucsd-covid-ct`` paper figures, official train / val split (val = selection)
* ``img512``        TEST ONLY: never trained on, never used to select anything
* COVID-CT-MD       TEST ONLY (read by ``realct_eval``), nothing is fitted on it

De-duplication runs BEFORE any split, over every image of every source (evaluation images
included): 32x32 DCT perceptual hashes (``services.preprocess.dedup``), all pairs compared,
Hamming distance <= ``MAX_DISTANCE`` (see there for how it was chosen). Each cluster of
near twins keeps one image; an
evaluation-only image (img512) always wins over a training candidate, so no training image
has a near twin in a test set.

Body-axis balance. 2-D images carry no slice position, so the band is estimated from lung
shape: ``lung_fill`` = share of the square lung crop covered by the segmented lung. Near the
apex and the base the lungs are small/crescent-shaped (low fill), mid-chest they fill the
crop (high fill). Terciles of ``lung_fill`` within each source give the bins ``low/mid/high``;
the sampler gives every (source group, class, bin) cell the same weight, so each class is
drawn from every bin in every source. It is a proxy (it cannot tell apex from base); the
position jitter of the augmentation does the rest. Measured effect: see the model card.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from services.preprocess.dedup import HASH_SIZE, hash_image
from services.preprocess.dedup import MAX_DISTANCE as SERIES_MAX_DISTANCE
from services.preprocess.enhance import enhance
from services.preprocess.pipeline import _plausible_crop
from services.preprocess.readers import load_gray_image
from services.preprocess.segmentation import crop_to_lungs, segment_lungs

LABELS = {"NonCOVID": 0, "COVID": 1}
TRAIN_SOURCES = ("sarscov2-ct", "mosmed", "masked-normal", "ucsd-covid-ct")
TEST_ONLY_SOURCES = ("img512",)
# Sampling groups: a single-class source is only ever sampled together with its counterpart.
GROUP_OF = {
    "sarscov2-ct": "sarscov2-ct",
    "mosmed": "mosmed+masked-normal",
    "masked-normal": "mosmed+masked-normal",
    "ucsd-covid-ct": "ucsd-covid-ct",
}
# 2-D images: screenshots of the same or an adjacent slice, re-cropped or re-windowed, differ
# by far more than the 20 bits (``SERIES_MAX_DISTANCE``) used within one DICOM series.
# Measured on sarscov2-ct (1024-bit hashes): median nearest-neighbour distance 342 bits,
# pairs <= 20: 2, <= 120: 9, <= 200: 65, <= 222: ~119 (the 119 near-duplicate pairs the data
# README mentions); pairs looked at up to ~220 bits are the same or adjacent slices of one
# patient. Images within MAX_DISTANCE are removed (one kept per cluster); images within
# GROUP_DISTANCE stay on the same side of the sarscov2-ct split (it has no patient ids).
MAX_DISTANCE = 220
GROUP_DISTANCE = 260
assert SERIES_MAX_DISTANCE < MAX_DISTANCE
PREP_VERSION = "realct-prep-1"  # bump when prepare_slice or the crop logic changes
BINS = ("low", "mid", "high")


@dataclass(frozen=True)
class Item:
    path: Path
    label: int  # 1 = COVID
    patient_id: str
    source: str
    split: str = ""  # train / sel / test ("" before assign_splits)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_items(data_dir: Path, include_ucsd: bool = True) -> list[Item]:
    """Every labelled 2-D real-CT image, in a fixed order (sources, then CSV order)."""
    items: list[Item] = []
    root = data_dir / "sarscov2-ct"
    for row in _rows(root / "labels.csv"):
        items.append(
            Item(root / row["file"], LABELS[row["label"]], f"sarscov2:{row['file']}", "sarscov2-ct")
        )
    root = data_dir / "real-ct-slices"
    for row in _rows(root / "labels.csv"):
        items.append(
            Item(root / row["file"], LABELS[row["label"]], row["patient_id"], row["source"])
        )
    if include_ucsd:
        root = data_dir / "ucsd-covid-ct"
        for row in _rows(root / "labels.csv"):
            split = "sel" if row["split"] == "val" else "train"
            items.append(
                Item(
                    root / row["file"],
                    LABELS[row["label"]],
                    row["patient_id"],
                    "ucsd-covid-ct",
                    split,
                )
            )
    return items


# --- perceptual-hash de-duplication -----------------------------------------------------


def hash_bits(images: list[NDArray[np.uint8]], hash_size: int = HASH_SIZE) -> NDArray[np.bool_]:
    """(N, hash_size**2) bits of the DCT perceptual hash of each image."""
    return np.stack([np.asarray(hash_image(im, hash_size).hash, bool).ravel() for im in images])


def near_duplicate_pairs(
    bits: NDArray[np.bool_], max_distance: int = MAX_DISTANCE
) -> list[tuple[int, int, int]]:
    """All pairs (i, j, distance), i < j, with Hamming distance <= max_distance."""
    signed = bits.astype(np.float32) * 2 - 1
    n_bits = bits.shape[1]
    pairs = []
    for start in range(0, len(bits), 512):
        dot = signed[start : start + 512] @ signed.T  # = n_bits - 2 * distance
        dist = np.rint((n_bits - dot) / 2).astype(np.int32)
        ii, jj = np.nonzero(dist <= max_distance)
        for i, j in zip(ii + start, jj, strict=True):
            if i < j:
                pairs.append((int(i), int(j), int(dist[i - start, j])))
    return pairs


def clusters_of(n: int, pairs: list[tuple[int, int, int]]) -> list[list[int]]:
    """Connected components (union-find) of n items linked by pairs."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[find(i)] = find(j)
    clusters: dict[int, list[int]] = {}
    for i in range(n):
        clusters.setdefault(find(i), []).append(i)
    return list(clusters.values())


def dedup_keep(items: list[Item], pairs: list[tuple[int, int, int]]) -> NDArray[np.bool_]:
    """Keep one image per cluster of near twins; test-only images win over training ones."""
    keep = np.zeros(len(items), bool)
    for members in clusters_of(len(items), pairs):
        best = min(members, key=lambda k: (items[k].source not in TEST_ONLY_SOURCES, k))
        keep[best] = True
    return keep


# --- splits -----------------------------------------------------------------------------


def assign_splits(items: list[Item], seed: int = 0, sel_share: float = 0.2) -> list[Item]:
    """train / sel / test. Splits are made on the de-duplicated list, by patient where known."""
    rng = np.random.default_rng(seed)
    out = list(items)

    def split_units(source: str, unit_of: dict[int, str], stratify: bool) -> None:
        idx = [i for i, it in enumerate(out) if it.source == source]
        by_label: dict[int, list[str]] = {}
        for i in idx:
            key = out[i].label if stratify else 0
            units = by_label.setdefault(key, [])
            if unit_of[i] not in units:
                units.append(unit_of[i])
        sel_units: set[str] = set()
        for units in by_label.values():
            order = rng.permutation(len(units))
            n_sel = max(1, round(sel_share * len(units)))
            sel_units.update(units[k] for k in order[:n_sel])
        for i in idx:
            out[i] = replace(out[i], split="sel" if unit_of[i] in sel_units else "train")

    units = {i: it.patient_id for i, it in enumerate(out)}
    split_units("sarscov2-ct", units, stratify=True)
    split_units("mosmed", units, stratify=False)
    split_units("masked-normal", units, stratify=False)
    for i, it in enumerate(out):
        if it.source in TEST_ONLY_SOURCES:
            out[i] = replace(it, split="test")
    return out


# --- prepared slices, cached --------------------------------------------------------------


def prepare_with_mask(
    image: NDArray[np.uint8], size: int, min_lung_fraction: float = 0.02
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """``prepare_slice`` WITHOUT the final enhancement, plus the lung mask cropped alike.

    ``enhance(crop, e)`` equals ``prepare_slice(image, size, e)`` exactly (a unit test checks
    it): training augments the crop and enhances afterwards, as serving enhances last.
    """
    mask = segment_lungs(image)
    if not _plausible_crop(mask):
        mask = np.zeros_like(mask)
    crop = crop_to_lungs(image, mask, size, min_lung_fraction=min_lung_fraction)
    mask_u8 = mask.astype(np.uint8) * 255
    mask_crop = crop_to_lungs(mask_u8, mask, size, min_lung_fraction=min_lung_fraction) > 127
    return crop, mask_crop


@dataclass
class PreparedSet:
    items: list[Item]
    raw_bits: NDArray[np.bool_]  # perceptual hash of the image as read
    crops: NDArray[np.uint8]  # (N, S, S) lung crops before enhancement
    masks: NDArray[np.bool_]  # (N, S, S) lung masks in crop coordinates
    lung_fill: NDArray[np.float32]  # share of the crop that is lung

    def prepared(
        self, enhancement: str, index: NDArray[np.intp] | None = None
    ) -> NDArray[np.uint8]:
        """Exactly what ``prepare_slice`` returns for these images."""
        idx = np.arange(len(self.items)) if index is None else index
        if len(idx) == 0:
            return np.zeros((0, *self.crops.shape[1:]), np.uint8)
        return np.stack([enhance(self.crops[i], enhancement) for i in idx])  # type: ignore[arg-type]


def prepare_items(items: list[Item], size: int, cache_dir: Path | None) -> PreparedSet:
    key = hashlib.sha256(
        json.dumps([PREP_VERSION, size, [str(i.path) for i in items]]).encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"realct-{key}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        z = np.load(cache)
        return PreparedSet(items, z["bits"], z["crops"], z["masks"], z["fill"])
    bits, crops, masks = [], [], []
    for item in items:
        image = load_gray_image(item.path)
        bits.append(hash_bits([image])[0])
        crop, mask = prepare_with_mask(image, size)
        crops.append(crop)
        masks.append(mask)
    out = PreparedSet(
        items,
        np.stack(bits),
        np.stack(crops),
        np.stack(masks),
        np.stack(masks).mean(axis=(1, 2)).astype(np.float32),
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # uint8/bool arrays only; cache/ is git-ignored (never commit derived images)
        np.savez(cache, bits=out.raw_bits, crops=out.crops, masks=out.masks, fill=out.lung_fill)
    return out


def band_bins(prepared: PreparedSet) -> NDArray[np.int64]:
    """0/1/2 = low/mid/high lung fill, terciles within each source (see module doc)."""
    bins = np.zeros(len(prepared.items), np.int64)
    sources = np.array([it.source for it in prepared.items])
    for source in np.unique(sources):
        idx = np.flatnonzero(sources == source)
        edges = np.quantile(prepared.lung_fill[idx], [1 / 3, 2 / 3])
        bins[idx] = np.digitize(prepared.lung_fill[idx], edges)
    return bins


@dataclass
class RealCTSet:
    """De-duplicated, split, prepared real-CT images plus what de-duplication removed."""

    data: PreparedSet
    bins: NDArray[np.int64]
    removed: list[dict[str, object]]

    def index(self, split: str, source: str | None = None) -> NDArray[np.intp]:
        return np.array(
            [
                i
                for i, it in enumerate(self.data.items)
                if it.split == split and (source is None or it.source == source)
            ],
            dtype=np.intp,
        )

    def labels(self, index: NDArray[np.intp] | None = None) -> NDArray[np.int64]:
        items = self.data.items
        idx = np.arange(len(items)) if index is None else index
        return np.array([items[i].label for i in idx], np.int64)

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for it in self.data.items:
            key = f"{it.source}/{it.split}"
            row = out.setdefault(key, {"COVID": 0, "NonCOVID": 0})
            row["COVID" if it.label else "NonCOVID"] += 1
        return dict(sorted(out.items()))


def build_realct_set(
    data_dir: Path,
    size: int,
    cache_dir: Path | None = None,
    include_ucsd: bool = True,
    seed: int = 0,
    max_distance: int = MAX_DISTANCE,
    group_distance: int = GROUP_DISTANCE,
) -> RealCTSet:
    """Load, hash, de-duplicate (before splitting), split and prepare every 2-D source."""
    items = load_items(data_dir, include_ucsd=include_ucsd)
    prepared = prepare_items(items, size, cache_dir)
    loose = near_duplicate_pairs(prepared.raw_bits, max(max_distance, group_distance))
    pairs = [p for p in loose if p[2] <= max_distance]
    keep = dedup_keep(items, pairs)
    removed = []
    for i, j, d in pairs:
        for drop, other in ((i, j), (j, i)):
            if not keep[drop] and keep[other]:
                removed.append(
                    {
                        "removed": str(items[drop].path.relative_to(data_dir)),
                        "twin": str(items[other].path.relative_to(data_dir)),
                        "distance": d,
                    }
                )
    kept_idx = np.flatnonzero(keep)
    kept_items = [items[i] for i in kept_idx]
    # sarscov2-ct has no patient ids: near neighbours (same patient, most likely) share a unit
    position = {int(k): n for n, k in enumerate(kept_idx)}
    kept_pairs = [(position[i], position[j], d) for i, j, d in loose if keep[i] and keep[j]]
    for cluster in clusters_of(len(kept_items), kept_pairs):
        sources = {kept_items[k].source for k in cluster}
        if len(cluster) > 1 and sources == {"sarscov2-ct"}:
            unit = f"sarscov2:cluster-{min(cluster)}"
            for k in cluster:
                kept_items[k] = replace(kept_items[k], patient_id=unit)
    kept_items = assign_splits(kept_items, seed=seed)
    data = PreparedSet(
        kept_items,
        prepared.raw_bits[kept_idx],
        prepared.crops[kept_idx],
        prepared.masks[kept_idx],
        prepared.lung_fill[kept_idx],
    )
    # unique by removed file (an image can twin several)
    seen, unique = set(), []
    for row in removed:
        if row["removed"] not in seen:
            seen.add(row["removed"])
            unique.append(row)
    return RealCTSet(data, band_bins(data), unique)
