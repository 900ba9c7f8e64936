"""Binary diagnostic metrics and bootstrap confidence intervals.

Shared by the patient-level ensemble and the slice CNN evaluation. Metrics that are undefined
on the given data (AUC with one class, sensitivity without positives, ...) are ``None``, never
NaN, so results serialise to JSON and an undefined value cannot be mistaken for a number.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

MetricFn = Callable[[NDArray[np.int64], NDArray[np.float64]], float | None]
MultiMetricFn = Callable[[NDArray[np.int64], NDArray[np.float64]], Mapping[str, Any]]
Interval = tuple[float | None, float | None]


def _check_inputs(y_true: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(y_true)
    scores = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"y_true and p must be 1-D, got shapes {y.shape} and {scores.shape}")
    if y.shape != scores.shape:
        raise ValueError(f"y_true and p differ in length: {y.shape[0]} != {scores.shape[0]}")
    if y.size == 0:
        raise ValueError("y_true and p are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must contain only 0 and 1, got {np.unique(y)[:10]}")
    if not np.isfinite(scores).all():
        raise ValueError("p contains NaN or infinite values")
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError("p must be probabilities in [0, 1]")
    return y.astype(np.int64), scores


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def roc_auc(y_true: NDArray[np.int64], scores: NDArray[np.float64]) -> float | None:
    """ROC AUC via the Mann-Whitney U statistic (ties count 1/2); ``None`` with one class.

    Computed directly instead of with sklearn because the bootstrap calls it thousands of
    times and sklearn's per-call validation dominates the cost.
    """
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks handle ties exactly like sklearn
    u = ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(y_true: ArrayLike, p_covid: ArrayLike, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, F1 (positive = 1) and ROC AUC.

    A case is called positive when ``p_covid >= threshold``. Returns the keys ``accuracy``,
    ``sensitivity``, ``specificity``, ``f1``, ``auc`` (floats, ``None`` where undefined) and
    ``n`` (int, number of cases).
    """
    y, p = _check_inputs(y_true, p_covid)
    pred = p >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    tn = int(np.sum(~pred & ~pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    return {
        "accuracy": (tp + tn) / y.size,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auc": roc_auc(y, p),
        "n": int(y.size),
    }


def _resample_indices(
    n: int, groups: ArrayLike | None, n_boot: int, rng: np.random.Generator
) -> list[NDArray[np.intp]]:
    if groups is None:
        return list(rng.integers(0, n, size=(n_boot, n)))
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {g.shape}")
    # Cluster bootstrap: draw whole groups (patients) so correlated cases stay together.
    _, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
    draws = rng.integers(0, len(members), size=(n_boot, len(members)))
    return [np.concatenate([members[k] for k in row]) for row in draws]


def bootstrap_cis(
    y_true: ArrayLike,
    p: ArrayLike,
    metric_fn: MultiMetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
    alpha: float = 0.05,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals for every numeric value ``metric_fn`` returns.

    Resampling once for all metrics keeps them on the same resamples and costs one pass.
    Resamples where a metric is undefined (``None``/NaN, e.g. AUC on a one-class draw) are
    dropped for that metric; a metric undefined on every resample gets ``(None, None)``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y, scores = _check_inputs(y_true, p)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for idx in _resample_indices(y.size, groups, n_boot, rng):
        for key, value in metric_fn(y[idx], scores[idx]).items():
            bucket = values.setdefault(key, [])
            if value is not None and np.isfinite(value):
                bucket.append(float(value))
    out: dict[str, Interval] = {}
    for key, bucket in values.items():
        if not bucket:
            out[key] = (None, None)
            continue
        low, high = np.quantile(bucket, [alpha / 2.0, 1.0 - alpha / 2.0])
        out[key] = (float(low), float(high))
    return out


def bootstrap_ci(
    y_true: ArrayLike,
    p: ArrayLike,
    metric_fn: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
    alpha: float = 0.05,
) -> Interval:
    """Percentile bootstrap ``(low, high)`` for one metric ``metric_fn(y_true, p)``.

    With ``groups`` whole groups are resampled (e.g. patients); same ``seed`` → same result.
    """
    cis = bootstrap_cis(
        y_true,
        p,
        lambda yy, pp: {"m": metric_fn(yy, pp)},
        n_boot=n_boot,
        seed=seed,
        groups=groups,
        alpha=alpha,
    )
    return cis["m"]


def print_and_save(report: dict[str, Any], out: Path | None) -> None:
    """Print an evaluation report as JSON and, with ``out``, write it there too."""
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
