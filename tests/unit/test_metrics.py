"""services.training.metrics against scikit-learn and bootstrap properties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from services.training.metrics import binary_metrics, bootstrap_ci, bootstrap_cis, roc_auc

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
P = np.array([0.1, 0.4, 0.5, 0.8, 0.9, 0.5, 0.3, 0.7, 0.7, 0.7])  # ties and p == threshold


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return roc_auc(y, p)


def test_binary_metrics_match_sklearn() -> None:
    m = binary_metrics(Y, P)
    pred = (P >= 0.5).astype(int)
    assert set(m) == {"accuracy", "sensitivity", "specificity", "f1", "auc", "n"}
    assert m["accuracy"] == pytest.approx(accuracy_score(Y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(Y, pred))
    assert m["specificity"] == pytest.approx(recall_score(Y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(Y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(Y, P))
    assert m["n"] == 10 and isinstance(m["n"], int)


def test_hand_counted_case() -> None:
    # TP=4 (0.9, 0.5, 0.7, 0.7), FN=1 (0.3), TN=2 (0.1, 0.4), FP=3 (0.5, 0.8, 0.7)
    m = binary_metrics(Y, P)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(0.4)
    assert m["f1"] == pytest.approx(8 / 12)


def test_threshold_is_inclusive_and_configurable() -> None:
    assert binary_metrics([1], [0.5])["sensitivity"] == 1.0
    assert binary_metrics([1], [0.5], threshold=0.6)["sensitivity"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 1)  # heavy ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_undefined_metrics_are_none() -> None:
    only_pos = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert only_pos["auc"] is None and only_pos["specificity"] is None
    assert only_pos["sensitivity"] == pytest.approx(2 / 3)
    only_neg = binary_metrics([0, 0], [0.1, 0.2])
    assert only_neg["auc"] is None and only_neg["sensitivity"] is None
    assert only_neg["f1"] is None and only_neg["specificity"] == 1.0


@pytest.mark.parametrize(
    ("y", "p", "msg"),
    [
        ([0, 1], [0.5], "differ in length"),
        ([], [], "empty"),
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_invalid_inputs(y: list, p: list, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        binary_metrics(y, p)


def _data(n: int = 120, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0, 1)
    return y, p


@pytest.mark.parametrize("key", ["accuracy", "sensitivity", "specificity", "f1", "auc"])
def test_bootstrap_ci_contains_point_estimate(key: str) -> None:
    y, p = _data()
    point = binary_metrics(y, p)[key]
    low, high = bootstrap_ci(y, p, lambda a, b: binary_metrics(a, b)[key], n_boot=500)
    assert low is not None and high is not None
    assert low <= point <= high
    assert high - low < 0.5


def test_bootstrap_is_seeded() -> None:
    y, p = _data()
    first = bootstrap_ci(y, p, _auc, n_boot=200, seed=3)
    assert bootstrap_ci(y, p, _auc, n_boot=200, seed=3) == first
    assert bootstrap_ci(y, p, _auc, n_boot=200, seed=4) != first


def test_bootstrap_cis_agrees_with_single_metric() -> None:
    y, p = _data()
    cis = bootstrap_cis(y, p, binary_metrics, n_boot=200, seed=7)
    assert set(cis) == {"accuracy", "sensitivity", "specificity", "f1", "auc", "n"}
    assert cis["auc"] == bootstrap_ci(y, p, _auc, n_boot=200, seed=7)


def test_grouped_bootstrap_keeps_groups_whole() -> None:
    # Each group holds two cases with a p value no other group uses: a resample that split a
    # group would contain some value an odd number of times.
    n_groups = 30
    groups = np.repeat(np.arange(n_groups), 2)
    p = np.repeat(np.linspace(0.01, 0.99, n_groups), 2)
    y = np.repeat(np.arange(n_groups) % 2, 2)

    def whole(yy: np.ndarray, pp: np.ndarray) -> float:
        _, counts = np.unique(pp, return_counts=True)
        return float(np.all(counts % 2 == 0))

    assert bootstrap_ci(y, p, whole, n_boot=100, groups=groups) == (1.0, 1.0)
    assert bootstrap_ci(y, p, whole, n_boot=100)[0] == 0.0  # plain bootstrap splits pairs


def test_grouped_bootstrap_varies_sample_size_with_unequal_groups() -> None:
    groups = np.array([0] * 5 + [1] + [2] * 3 + [3])
    y = np.array([1] * 5 + [0] + [1] * 3 + [0])
    p = np.full(10, 0.5)
    low, high = bootstrap_ci(y, p, lambda a, b: float(len(a)), n_boot=200, groups=groups)
    assert low is not None and high is not None and low < high


def test_bootstrap_undefined_resamples() -> None:
    y = np.array([1, 1, 1, 1, 1, 1, 1, 0])
    p = np.linspace(0.1, 0.9, 8)
    low, high = bootstrap_ci(y, p, _auc, n_boot=200)  # some draws hold no negative
    assert low is not None and high is not None and 0 <= low <= high <= 1
    assert bootstrap_ci([1, 1], [0.3, 0.9], _auc, n_boot=50) == (None, None)


def test_bootstrap_argument_errors() -> None:
    y, p = _data()
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(y, p, _auc, groups=np.arange(3))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(y, p, _auc, n_boot=0)
