"""Fixed-length features from a study's per-slice class probabilities.

A study is an array of shape ``(n_slices,)`` (P(COVID) per slice) or ``(n_slices, n_classes)``
(class probabilities, class order ``[NonCOVID, COVID, ...]``), in slice order. Studies have 1
to ~1000 slices, so each one is turned into the same number of features:

* every class channel resampled to ``length`` points over the normalised slice position
  [0, 1] with ``scipy.interpolate.interp1d`` (the original project's features), and
* order-invariant statistics of P(COVID) that do not depend on where the lesions are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.interpolate import interp1d
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

Kind = Literal["linear", "nearest", "quadratic", "cubic"]

# Points interp1d needs for each kind; shorter studies use the highest order they allow.
_MIN_POINTS: dict[str, int] = {"nearest": 2, "linear": 2, "quadratic": 3, "cubic": 4}
_FALLBACK_ORDER: tuple[Kind, ...] = ("cubic", "quadratic", "linear")
COVID_INDEX = 1
QUANTILES = (0.5, 0.75, 0.9)
THRESHOLDS = (0.5, 0.7, 0.9)
RUN_THRESHOLD = 0.5

STAT_NAMES: tuple[str, ...] = (
    "mean",
    "std",
    "max",
    "min",
    "top3_mean",
    "top10pct_mean",
    *(f"q{round(q * 100)}" for q in QUANTILES),
    *(f"frac_gt_{t:g}" for t in THRESHOLDS),
    "longest_run_gt_0.5_frac",
    "log1p_n_slices",
)


def as_class_probs(study: ArrayLike, index: int | None = None) -> NDArray[np.float64]:
    """Validate one study and return it as ``(n_slices, n_classes)`` float64.

    A 1-D array is P(COVID) and becomes ``[1 - p, p]``. Rows need not sum to 1 (the slice
    model may use independent sigmoids), but every value must be a probability.
    """
    where = "" if index is None else f" (study {index})"
    arr = np.asarray(study, dtype=np.float64)
    if arr.ndim == 1:
        arr = np.column_stack([1.0 - arr, arr])
    elif arr.ndim != 2:
        raise ValueError(f"a study must be 1-D or 2-D, got shape {arr.shape}{where}")
    if arr.shape[0] == 0:
        raise ValueError(f"empty study: no slice probabilities{where}")
    if arr.shape[1] < 2:
        raise ValueError(
            f"a 2-D study needs >= 2 class columns [NonCOVID, COVID], got {arr.shape[1]}{where}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"study contains NaN or infinite probabilities{where}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"probabilities must lie in [0, 1], got [{arr.min()}, {arr.max()}]{where}")
    return arr


def _as_study_list(X: Any) -> list[Any]:
    # A numeric 2-D array is ambiguous (one study of (n_slices, n_classes) or many equal-length
    # studies), so only explicit collections of studies are accepted.
    if isinstance(X, np.ndarray) and X.dtype != object:
        raise ValueError(
            "X must be a list of per-study arrays, not one numeric array; "
            "wrap a single study as [study]"
        )
    if not isinstance(X, Sequence | np.ndarray):
        raise ValueError(f"X must be a list of per-study arrays, got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError("X contains no studies")
    return list(X)


def resample_channel(values: NDArray[np.float64], length: int, kind: Kind) -> NDArray[np.float64]:
    """Resample one channel to ``length`` points over normalised slice position [0, 1]."""
    n = values.shape[0]
    if n == 1:
        return np.full(length, values[0])
    if n < _MIN_POINTS[kind]:
        kind = next(k for k in _FALLBACK_ORDER if _MIN_POINTS[k] <= n)
    f = interp1d(np.linspace(0.0, 1.0, n), values, kind=kind, assume_sorted=True)
    # Spline kinds overshoot between noisy slices; keep the features probabilities.
    return np.clip(f(np.linspace(0.0, 1.0, length)), 0.0, 1.0)


def _longest_run(mask: NDArray[np.bool_]) -> int:
    if not mask.any():
        return 0
    # Run lengths from the positions where the mask switches on/off.
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max())


def sequence_stats(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """Order-invariant statistics of P(COVID), in ``STAT_NAMES`` order."""
    n = p.shape[0]
    desc = np.sort(p)[::-1]
    k10 = max(1, int(np.ceil(0.1 * n)))
    return np.array(
        [
            p.mean(),
            p.std(),
            desc[0],
            desc[-1],
            desc[:3].mean(),
            desc[:k10].mean(),
            *np.quantile(p, QUANTILES),
            *((p > t).mean() for t in THRESHOLDS),
            _longest_run(p > RUN_THRESHOLD) / n,
            np.log1p(n),
        ],
        dtype=np.float64,
    )


class SequenceFeaturizer(TransformerMixin, BaseEstimator):
    """Turn variable-length per-slice probability sequences into fixed-length features.

    Parameters
    ----------
    length : int
        Number of points each class channel is resampled to.
    kind : {"linear", "nearest", "quadratic", "cubic"}
        ``interp1d`` kind. Studies too short for it use the highest order they allow
        (cubic → quadratic → linear); a single slice is repeated.
    include_slice_count : bool
        Whether ``log1p(n_slices)`` is a feature. Turn it off when slice counts differ by
        label in the training data for reasons unrelated to disease (UCSD: figures per paper).
    """

    def __init__(
        self, length: int = 32, kind: Kind = "linear", include_slice_count: bool = True
    ) -> None:
        self.length = length
        self.kind = kind
        self.include_slice_count = include_slice_count

    def _check_params(self) -> None:
        if self.kind not in _MIN_POINTS:
            raise ValueError(f"kind must be one of {sorted(_MIN_POINTS)}, got {self.kind!r}")
        if not isinstance(self.length, int | np.integer) or self.length < 1:
            raise ValueError(f"length must be a positive integer, got {self.length!r}")

    def fit(self, X: Sequence[ArrayLike], y: ArrayLike | None = None) -> SequenceFeaturizer:
        self._check_params()
        studies = _as_study_list(X)
        n_classes = {as_class_probs(s, i).shape[1] for i, s in enumerate(studies)}
        if len(n_classes) != 1:
            raise ValueError(f"studies have different numbers of classes: {sorted(n_classes)}")
        self.n_classes_ = n_classes.pop()
        return self

    def transform(self, X: Sequence[ArrayLike]) -> NDArray[np.float64]:
        check_is_fitted(self, "n_classes_")
        self._check_params()
        rows = [self._featurize(as_class_probs(s, i), i) for i, s in enumerate(_as_study_list(X))]
        return np.vstack(rows)

    def _featurize(self, probs: NDArray[np.float64], index: int) -> NDArray[np.float64]:
        if probs.shape[1] != self.n_classes_:
            raise ValueError(
                f"study {index} has {probs.shape[1]} classes, fitted on {self.n_classes_}"
            )
        curves = [
            resample_channel(probs[:, c], self.length, self.kind) for c in range(self.n_classes_)
        ]
        stats = sequence_stats(probs[:, COVID_INDEX])
        if not self.include_slice_count:
            stats = stats[:-1]  # log1p_n_slices is last in STAT_NAMES
        return np.concatenate([*curves, stats])

    def _class_names(self) -> list[str]:
        names = ["noncovid", "covid"]
        return names + [f"class{c}" for c in range(2, self.n_classes_)]

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.object_]:
        check_is_fitted(self, "n_classes_")
        curves = [f"{c}_r{i:02d}" for c in self._class_names() for i in range(self.length)]
        stats = STAT_NAMES if self.include_slice_count else STAT_NAMES[:-1]
        return np.asarray(curves + [f"covid_{s}" for s in stats], dtype=object)
