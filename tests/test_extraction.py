"""The six methods on synthetic Gaussian data with a planted direction."""

import numpy as np
import pytest

from inspect_em.errors import InspectEmError
from inspect_em.extraction import METHODS, extract, resolve_methods
from inspect_em.validation import (
    auroc_columns,
    best_threshold,
    cohens_d,
    cross_validate,
    fit_threshold,
    permutation_null,
    random_null,
    split_scores,
)

REAL_METHODS = ["mean_diff", "probe", "pca", "ica", "gradient"]


def _planted(seed: int, d: int = 48, n: int = 300, shift: float = 3.0):
    rng = np.random.default_rng(seed + 100)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    offset = 3.0 * rng.standard_normal(d)  # both sets far from the origin
    pos = rng.standard_normal((n, d)) + offset + shift * u
    neg = rng.standard_normal((n, d)) + offset
    return pos, neg, u


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", REAL_METHODS)
def test_real_methods_recover_the_planted_direction(method: str, seed: int):
    pos, neg, u = _planted(seed)
    direction = extract(pos, neg, method)
    assert direction.method == method
    assert np.linalg.norm(direction.vector) == pytest.approx(1.0, abs=1e-5)
    assert float(direction.vector @ u) >= 0.9  # sign convention included: pos projects higher


def test_every_method_projects_positives_higher():
    pos, neg, _ = _planted(2)
    for method in METHODS:
        v = extract(pos, neg, method).vector
        assert (pos @ v).mean() >= (neg @ v).mean(), method


def test_random_baseline_is_seeded_and_signed():
    pos, neg, u = _planted(3)
    a, b = extract(pos, neg, "random_baseline", seed=7), extract(pos, neg, "random_baseline", seed=7)
    assert np.array_equal(a.vector, b.vector)
    assert not np.array_equal(a.vector, extract(pos, neg, "random_baseline", seed=8).vector)
    assert (pos @ a.vector).mean() >= (neg @ a.vector).mean()
    assert abs(float(a.vector @ u)) < 0.5  # carries no fitted signal beyond chance alignment


def test_validation_numbers_on_known_projections():
    pos = np.array([2.0, 3.0, 4.0])
    neg = np.array([0.0, 1.0, 2.0])
    assert cohens_d(pos, neg) == pytest.approx(2.0)
    assert cohens_d(np.array([1.0, 1.0]), np.array([0.0, 0.0])) == np.inf  # separated exactly
    assert np.isnan(cohens_d(np.array([1.0, 1.0]), np.array([1.0, 1.0])))
    t = best_threshold(pos, neg)
    assert 2.0 <= t < 3.0 or 1.0 <= t < 2.0
    v = np.array([1.0, 0.0])
    fit_p, fit_n = np.array([[2.0, 5.0], [3.0, 5.0]]), np.array([[0.0, 1.0], [1.0, 9.0]])
    threshold = fit_threshold(v, fit_p, fit_n)
    assert threshold == pytest.approx(1.5)
    scores = split_scores(v, np.array([[5.0, 0.0], [0.5, 0.0]]), np.array([[-1.0, 0.0], [0.7, 0.0]]), threshold, "test")
    assert scores["test_accuracy"] == pytest.approx(0.75)
    assert scores["test_auroc"] == pytest.approx(0.75)
    assert scores["test_separation"] == pytest.approx(2.75 - (-0.15))


def test_auroc_columns_match_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.3, 1, (40, 5)), rng.normal(0, 1, (30, 5))
    pos[:3, 0] = neg[:3, 0]  # ties
    expected = [roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos[:, j], neg[:, j]]) for j in range(5)]
    assert np.allclose(auroc_columns(pos, neg), expected)


def test_cross_validation_matches_a_manual_k_fold():
    """mean_diff CV AUROC / d against folds computed here with plain numpy."""
    from sklearn.model_selection import StratifiedKFold

    pos, neg, _ = _planted(4, n=60, shift=1.0)
    got = cross_validate(lambda p, q: extract(p, q, "mean_diff").vector.astype(np.float64), pos, neg, folds=5)
    x, y = np.vstack([pos, neg]), np.r_[np.ones(60), np.zeros(60)]
    aurocs, ds = [], []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        v = x[train][y[train] == 1].mean(0) - x[train][y[train] == 0].mean(0)
        v /= np.linalg.norm(v)
        p, q = x[test][y[test] == 1] @ v, x[test][y[test] == 0] @ v
        aurocs.append(np.mean([(a > b) + 0.5 * (a == b) for a in p for b in q]))
        pooled = ((len(p) - 1) * p.var(ddof=1) + (len(q) - 1) * q.var(ddof=1)) / (len(p) + len(q) - 2)
        ds.append((p.mean() - q.mean()) / np.sqrt(pooled))
    assert got["cv_auroc"] == pytest.approx(np.mean(aurocs))
    assert got["cv_cohens_d"] == pytest.approx(np.mean(ds))


@pytest.mark.parametrize("method", ["mean_diff", "probe"])
def test_nulls_separate_signal_from_noise(method: str):
    """A planted direction beats both nulls; with no signal the permutation p-value is not small."""
    def fit(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return extract(p, q, method).vector.astype(np.float64)

    pos, neg, _ = _planted(5, d=32, n=160, shift=1.5)
    fp, fn, tp, tn = pos[:100], neg[:100], pos[100:], neg[100:]
    real = split_scores(fit(fp, fn), tp, tn, 0.0, "t")["t_auroc"]
    perm, perm_d = permutation_null(fit, fp, fn, tp, tn, k=50, seed=1)
    assert perm.shape == perm_d.shape == (50,) and real > np.quantile(perm, 0.95)
    assert (1 + np.sum(perm >= real)) / 51 < 0.05
    real_d = split_scores(fit(fp, fn), tp, tn, 0.0, "t")["t_cohens_d"]
    assert real_d > np.quantile(perm_d, 0.95)
    v = fit(fp, fn)  # the d column of the null is Cohen's d, computed here by hand for the real vector
    p, q = tp @ v, tn @ v
    pooled = ((len(p) - 1) * p.var(ddof=1) + (len(q) - 1) * q.var(ddof=1)) / (len(p) + len(q) - 2)
    assert real_d == pytest.approx((p.mean() - q.mean()) / np.sqrt(pooled))
    chance, chance_d = random_null(fp, fn, tp, tn, k=500, seed=1)
    assert real > np.quantile(chance, 0.95) and real_d > np.quantile(chance_d, 0.95)
    rng = np.random.default_rng(9)  # no signal: both sets from one distribution
    noise = rng.standard_normal((320, 32)) + 3.0
    fp, fn, tp, tn = noise[:100], noise[100:200], noise[200:260], noise[260:]
    real = split_scores(fit(fp, fn), tp, tn, 0.0, "t")["t_auroc"]
    perm, _ = permutation_null(fit, fp, fn, tp, tn, k=50, seed=1)
    assert (1 + np.sum(perm >= real)) / 51 > 0.05


def test_gradient_runs_under_no_grad_and_inference_mode():
    import torch

    pos, neg, _ = _planted(6)
    plain = extract(pos, neg, "gradient").vector
    with torch.no_grad():
        assert np.allclose(extract(pos, neg, "gradient").vector, plain)
    with torch.inference_mode():
        assert np.allclose(extract(pos, neg, "gradient").vector, plain)


def test_method_errors():
    with pytest.raises(InspectEmError, match="unknown method 'lda'"):
        resolve_methods("mean_diff,lda")
    assert resolve_methods("all") == list(METHODS)
    assert resolve_methods("probe,mean_diff") == ["mean_diff", "probe"]
    with pytest.raises(InspectEmError, match="at least 2"):
        extract(np.ones((1, 4)), np.ones((5, 4)))
    with pytest.raises(InspectEmError, match="same d"):
        extract(np.ones((3, 4)), np.ones((3, 5)))


def test_best_layer_without_cv_ranks_by_the_test_columns():
    """``--cv-folds 0`` leaves no CV columns: the layer with the highest test d wins, AUROC breaks ties."""
    import pandas as pd

    from inspect_em.validation import best_layers

    table = pd.DataFrame({"method": ["mean_diff"] * 3 + ["probe"] * 2, "layer": [1, 2, 3, 1, 2],
                          "test_cohens_d": [0.5, 2.0, 1.0, 1.5, 1.5], "test_auroc": [0.6, 0.9, 0.8, 0.7, 0.8]})
    assert best_layers(table) == {"mean_diff": 2, "probe": 2}
