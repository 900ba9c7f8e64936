"""Sequence featurizer, soft-vote ensemble and patient-grouped CV (services.ensemble)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from imblearn.pipeline import Pipeline
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from services.ensemble import model as model_mod
from services.ensemble.features import STAT_NAMES, SequenceFeaturizer
from services.ensemble.model import AdaptiveSampler, SoftVoteEnsemble, load_ensemble
from services.training.ensemble import cross_validate_patients, fit_final

KINDS = ["linear", "nearest", "quadratic", "cubic"]
LENGTHS = [1, 2, 3, 4, 7, 500, 1000]
SMALL: dict[str, Any] = {"xgb_n_estimators": 30}  # keep the shared CPUs free


def _study(rng: np.random.Generator, covid: bool, n: int) -> np.ndarray:
    """NonCOVID: low noisy probabilities with rare spikes; COVID: plus 1-3 runs of high ones."""
    p = rng.beta(1.2, 8.0, n)
    spikes = rng.random(n) < 0.03
    p[spikes] = rng.uniform(0.5, 0.9, spikes.sum())
    if covid:
        for _ in range(rng.integers(1, 4)):
            start = int(rng.integers(0, n))
            stop = min(n, start + max(1, int(n * rng.uniform(0.05, 0.3))))
            p[start:stop] = rng.uniform(0.65, 1.0, stop - start)
    return p


@pytest.fixture(scope="module")
def cohort() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """~100 studies of 70 patients (some with 2-3 studies), lengths 1..300, ~35 % COVID."""
    rng = np.random.default_rng(42)
    seqs: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[int] = []
    for patient in range(70):
        covid = bool(rng.random() < 0.35)
        for _ in range(rng.integers(1, 4) if rng.random() < 0.3 else 1):
            seqs.append(_study(rng, covid, int(rng.integers(1, 301))))
            labels.append(int(covid))
            groups.append(patient)
    return seqs, np.array(labels), np.array(groups)


@pytest.fixture(scope="module")
def fitted(cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray]) -> SoftVoteEnsemble:
    seqs, y, _ = cohort
    return SoftVoteEnsemble(**SMALL).fit(seqs, y)


# --- featurizer -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", LENGTHS)
def test_featurizer_any_length_any_kind(kind: Any, n: int) -> None:
    rng = np.random.default_rng(n)
    feat = SequenceFeaturizer(kind=kind).fit([rng.random(5)])
    X = feat.transform([rng.random(n), rng.random((n, 2))])
    assert X.shape == (2, 2 * 32 + len(STAT_NAMES))
    assert np.isfinite(X).all()
    assert (X[:, : 2 * 32] >= 0).all() and (X[:, : 2 * 32] <= 1).all()


def test_feature_names_match_columns() -> None:
    feat = SequenceFeaturizer(length=8).fit([np.array([0.2, 0.4])])
    names = feat.get_feature_names_out()
    assert len(names) == feat.transform([np.array([0.3])]).shape[1] == 16 + len(STAT_NAMES)
    assert len(set(names)) == len(names)
    assert names[0] == "noncovid_r00" and names[8] == "covid_r00" and names[-1].startswith("covid_")


def test_one_dim_equals_two_class_input() -> None:
    p = np.random.default_rng(0).random(37)
    feat = SequenceFeaturizer(kind="cubic").fit([p])
    np.testing.assert_allclose(
        feat.transform([p]), feat.transform([np.column_stack([1 - p, p])]), atol=1e-12
    )


def test_single_slice_is_repeated_and_linear_ramp_is_exact() -> None:
    feat = SequenceFeaturizer(length=5).fit([np.array([0.3])])
    X = feat.transform([np.array([0.3]), np.linspace(0.0, 1.0, 9)])
    np.testing.assert_allclose(X[0, 5:10], 0.3)
    np.testing.assert_allclose(X[1, 5:10], np.linspace(0.0, 1.0, 5))


def test_order_invariant_stats() -> None:
    p = np.array([0.1, 0.6, 0.8, 0.2, 0.9, 0.95, 0.3])
    feat = SequenceFeaturizer(length=4).fit([p])
    stats = dict(zip(STAT_NAMES, feat.transform([p])[0, 8:], strict=True))
    assert stats["mean"] == pytest.approx(p.mean())
    assert stats["max"] == 0.95 and stats["min"] == 0.1
    assert stats["top3_mean"] == pytest.approx((0.95 + 0.9 + 0.8) / 3)
    assert stats["top10pct_mean"] == pytest.approx(0.95)  # ceil(0.7) = 1 slice
    assert stats["q50"] == pytest.approx(0.6)
    assert stats["frac_gt_0.5"] == pytest.approx(4 / 7)
    assert stats["frac_gt_0.9"] == pytest.approx(1 / 7)
    assert stats["longest_run_gt_0.5_frac"] == pytest.approx(2 / 7)
    assert stats["log1p_n_slices"] == pytest.approx(np.log1p(7))
    shuffled = feat.transform([p[::-1]])[0, 8:]
    np.testing.assert_allclose(shuffled[:-2], feat.transform([p])[0, 8:-2])


@pytest.mark.parametrize(
    ("X", "msg"),
    [
        ([np.array([])], "empty study"),
        ([np.zeros((0, 2))], "empty study"),
        ([np.array([0.2, np.nan])], "NaN"),
        ([np.array([0.2, np.inf])], "NaN"),
        ([np.array([0.2, 1.5])], r"\[0, 1\]"),
        ([np.array([-0.1, 0.5])], r"\[0, 1\]"),
        ([np.zeros((3, 2, 2))], "1-D or 2-D"),
        ([np.zeros((3, 1))], ">= 2 class columns"),
        (np.zeros((4, 2)), "list of per-study arrays"),
        ([], "no studies"),
        ([np.zeros(3), np.zeros((3, 3))], "different numbers of classes"),
    ],
)
def test_featurizer_rejects_invalid_input(X: Any, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        SequenceFeaturizer().fit(X)


def test_featurizer_params_and_fitting() -> None:
    with pytest.raises(ValueError, match="kind"):
        SequenceFeaturizer(kind="spline").fit([np.zeros(3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length"):
        SequenceFeaturizer(length=0).fit([np.zeros(3)])
    with pytest.raises(NotFittedError):
        SequenceFeaturizer().transform([np.zeros(3)])
    fitted = SequenceFeaturizer().fit([np.zeros(3)])
    with pytest.raises(ValueError, match="fitted on 2"):
        fitted.transform([np.zeros((3, 3))])
    assert clone(SequenceFeaturizer(length=7)).get_params()["length"] == 7


# --- ensemble -------------------------------------------------------------------------------


def test_grouped_cv_high_auc(cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray]) -> None:
    seqs, y, groups = cohort
    result = cross_validate_patients(seqs, y, groups, n_splits=5, n_boot=200, **SMALL)
    assert result["metrics"]["auc"] > 0.9
    assert np.isfinite(result["oof_proba"]).all()
    assert result["n_patients"] == 70 and len(result["folds"]) == 5
    low, high = result["ci95"]["auc"]
    assert low <= result["metrics"]["auc"] <= high
    assert set(result["ci95"]) == {"accuracy", "sensitivity", "specificity", "f1", "auc"}
    # Every patient's studies land in exactly one test fold.
    for patient in np.unique(groups):
        assert np.unique(result["fold"][groups == patient]).size == 1
    assert sum(f["n_test"] for f in result["folds"]) == len(seqs)


def test_cv_is_reproducible(cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray]) -> None:
    seqs, y, groups = cohort[0][:40], cohort[1][:40], cohort[2][:40]
    a = cross_validate_patients(seqs, y, groups, n_splits=3, n_boot=50, **SMALL)
    b = cross_validate_patients(seqs, y, groups, n_splits=3, n_boot=50, **SMALL)
    np.testing.assert_array_equal(a["oof_proba"], b["oof_proba"])
    assert a["ci95"] == b["ci95"]


def test_resampling_only_sees_training_folds(
    cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = AdaptiveSampler.fit_resample

    def spy(self: AdaptiveSampler, X: np.ndarray, y: np.ndarray) -> Any:
        seen.append(len(y))
        return original(self, X, y)

    monkeypatch.setattr(AdaptiveSampler, "fit_resample", spy)
    seqs, y, groups = cohort
    result = cross_validate_patients(seqs, y, groups, n_splits=3, n_boot=10, **SMALL)
    n_train = [f["n_train"] for f in result["folds"]]
    assert sorted(seen) == sorted(n_train * 2)  # once per member per fold, training rows only
    assert len(seqs) not in seen


def test_sampler_lives_in_imblearn_pipeline_and_skips_prediction(
    fitted: SoftVoteEnsemble, cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray]
) -> None:
    seqs = cohort[0]
    for pipe in fitted.members_.values():
        assert isinstance(pipe, Pipeline)
        assert list(pipe.named_steps) == ["features", "scale", "sample", "clf"]
        assert isinstance(pipe.named_steps["sample"], AdaptiveSampler)
    assert set(fitted.resample_strategy_.values()) <= {"smoteenn", "smote (smoteenn fallback)"}
    # SMOTE balanced the training set, but prediction returns one row per input study.
    assert fitted.predict_proba(seqs[:13]).shape == (13, 2)
    assert fitted.predict(seqs[:13]).shape == (13,)


def test_predict_proba_contract(fitted: SoftVoteEnsemble) -> None:
    rng = np.random.default_rng(5)
    studies = [rng.random(n) for n in (1, 2, 7, 500, 1000)] + [rng.random((3, 2))]
    proba = fitted.predict_proba(studies)
    assert proba.shape == (6, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(fitted.predict(studies), (proba[:, 1] >= 0.5).astype(int))
    np.testing.assert_array_equal(fitted.classes_, [0, 1])


def test_soft_vote_weights(
    fitted: SoftVoteEnsemble, cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray]
) -> None:
    seqs = cohort[0][:10]
    xgb = fitted.members_["xgb"].predict_proba(seqs)
    svm = fitted.members_["svm"].predict_proba(seqs)
    np.testing.assert_allclose(fitted.predict_proba(seqs), (xgb + svm) / 2)
    fitted.set_params(weights=(3.0, 1.0))  # weights apply at predict time
    try:
        np.testing.assert_allclose(fitted.predict_proba(seqs), 0.75 * xgb + 0.25 * svm)
    finally:
        fitted.set_params(weights=(1.0, 1.0))


def test_save_load_round_trip(
    fitted: SoftVoteEnsemble,
    cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    seqs = cohort[0]
    out = fitted.save(tmp_path / "ens")
    config = json.loads((out / "config.json").read_text())
    assert config["params"]["xgb_n_estimators"] == 30
    assert config["feature_names"] == list(fitted.feature_names_out_)
    assert {"numpy", "scikit-learn", "imbalanced-learn", "xgboost"} <= set(config["versions"])
    loaded = load_ensemble(out)
    np.testing.assert_array_equal(loaded.predict_proba(seqs), fitted.predict_proba(seqs))
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(seqs), fitted.predict_proba(seqs))


def test_load_rejects_tampered_model(fitted: SoftVoteEnsemble, tmp_path: Path) -> None:
    out = fitted.save(tmp_path)
    with (out / "ensemble.joblib").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="checksum"):
        SoftVoteEnsemble.load(out)


def test_load_warns_on_version_drift(
    fitted: SoftVoteEnsemble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = fitted.save(tmp_path)
    monkeypatch.setattr(model_mod, "library_versions", lambda: {"xgboost": "0.0"})
    with pytest.warns(UserWarning, match="other library versions"):
        SoftVoteEnsemble.load(out)


# --- degrade paths --------------------------------------------------------------------------


def _tiny(n_pos: int, n_neg: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    seqs = [_study(rng, True, 40) for _ in range(n_pos)]
    seqs += [_study(rng, False, 40) for _ in range(n_neg)]
    return seqs, np.array([1] * n_pos + [0] * n_neg)


@pytest.mark.parametrize(
    ("n_pos", "expected"), [(1, {"none"}), (2, {"smote", "smote (smoteenn fallback)"})]
)
def test_tiny_minority_degrades(n_pos: int, expected: set[str]) -> None:
    seqs, y = _tiny(n_pos, 15)
    model = SoftVoteEnsemble(resample="smote", **SMALL).fit(seqs, y)
    assert set(model.resample_strategy_.values()) <= expected
    proba = model.predict_proba(seqs)
    assert proba.shape == (len(seqs), 2) and np.isfinite(proba).all()
    model = SoftVoteEnsemble(**SMALL).fit(seqs, y)  # smoteenn default
    assert np.isfinite(model.predict_proba(seqs)).all()


def test_smoteenn_falls_back_to_smote_when_enn_empties_a_class() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 4))
    y = np.array([1, 1, 0, 0])
    sampler = AdaptiveSampler("smoteenn", random_state=0)
    X_res, y_res = sampler.fit_resample(X, y)
    assert sampler.strategy_ == "smote (smoteenn fallback)"
    assert set(y_res) == {0, 1} and len(X_res) == len(y_res)


def test_sampler_k_neighbors_shrinks_and_none_passes_through() -> None:
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(23, 3)), np.array([1] * 3 + [0] * 20)
    _, y_res = AdaptiveSampler("smote", k_neighbors=5, random_state=0).fit_resample(X, y)
    assert np.bincount(y_res).tolist() == [20, 20]
    sampler = AdaptiveSampler("none")
    X_same, y_same = sampler.fit_resample(X, y)
    assert X_same is X and y_same is y and sampler.strategy_ == "none"


def test_resample_none_ensemble(cohort: tuple[list[np.ndarray], np.ndarray, np.ndarray]) -> None:
    seqs, y, _ = cohort
    model = fit_final(seqs, y, resample="none", **SMALL)
    assert set(model.resample_strategy_.values()) == {"none"}
    assert model.predict_proba(seqs).shape == (len(seqs), 2)


@pytest.mark.parametrize(
    ("y", "params", "msg"),
    [
        ([0, 0, 0, 0], {}, "both classes"),
        ([0, 1, 2, 1], {}, "only 0"),
        ([0, 1, 1], {}, "one label per sequence"),
        ([0, 1, 0, 1], {"weights": (1.0, -1.0)}, "weights"),
        ([0, 1, 0, 1], {"weights": (1.0,)}, "weights"),
        ([0, 1, 0, 1], {"resample": "adasyn"}, "resample"),
    ],
)
def test_ensemble_rejects_bad_fit_arguments(y: list[int], params: dict, msg: str) -> None:
    seqs = [np.full(5, v) for v in (0.1, 0.9, 0.2, 0.8)]
    with pytest.raises(ValueError, match=msg):
        SoftVoteEnsemble(**SMALL, **params).fit(seqs, y)


def test_ensemble_estimator_conventions() -> None:
    model = SoftVoteEnsemble(svm_C=3.0, weights=(2.0, 1.0))
    assert clone(model).get_params() == model.get_params()
    assert not hasattr(model, "members_")
    with pytest.raises(NotFittedError):
        model.predict_proba([np.zeros(3)])


def test_slice_count_feature_can_be_left_out() -> None:
    from services.ensemble.features import SequenceFeaturizer

    seqs = [np.full(3, 0.2), np.full(40, 0.2)]
    with_count = SequenceFeaturizer().fit(seqs)
    without = SequenceFeaturizer(include_slice_count=False).fit(seqs)
    assert "covid_log1p_n_slices" in with_count.get_feature_names_out()
    assert "covid_log1p_n_slices" not in without.get_feature_names_out()
    x = without.transform(seqs)
    assert (
        x.shape[1]
        == len(without.get_feature_names_out())
        == with_count.transform(seqs).shape[1] - 1
    )
    # Without the count, a constant sequence looks the same whatever its length.
    np.testing.assert_allclose(x[0], x[1], atol=1e-12)
