"""The six methods on synthetic Gaussian data with a planted direction."""

import numpy as np
import pytest

from inspect_em.errors import InspectEmError
from inspect_em.extraction import METHODS, extract, resolve_methods
from inspect_em.validation import best_threshold, cohens_d, validate

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


def test_random_baseline_is_orthogonal_to_the_mean_difference_and_seeded():
    pos, neg, u = _planted(3)
    a, b = extract(pos, neg, "random_baseline", seed=7), extract(pos, neg, "random_baseline", seed=7)
    assert np.array_equal(a.vector, b.vector)
    delta = pos.mean(0) - neg.mean(0)
    assert abs(float(a.vector @ delta)) / np.linalg.norm(delta) < 1e-6
    assert abs(float(a.vector @ u)) < 0.3
    scores = validate(a.vector, pos[:200], neg[:200], pos[200:], neg[200:])
    assert 0.35 <= scores["heldout_auroc"] <= 0.65


def test_validation_numbers_on_known_projections():
    pos = np.array([2.0, 3.0, 4.0])
    neg = np.array([0.0, 1.0, 2.0])
    assert cohens_d(pos, neg) == pytest.approx(2.0)
    t = best_threshold(pos, neg)
    assert 2.0 <= t < 3.0 or 1.0 <= t < 2.0
    v = np.array([1.0, 0.0])
    fit_p, fit_n = np.array([[2.0, 5.0], [3.0, 5.0]]), np.array([[0.0, 1.0], [1.0, 9.0]])
    scores = validate(v, fit_p, fit_n, np.array([[5.0, 0.0], [0.5, 0.0]]), np.array([[-1.0, 0.0], [0.7, 0.0]]))
    assert scores["threshold"] == pytest.approx(1.5)
    assert scores["heldout_accuracy"] == pytest.approx(0.75)
    assert scores["heldout_auroc"] == pytest.approx(0.75)
    assert scores["heldout_separation"] == pytest.approx(2.75 - (-0.15))


def test_method_errors():
    with pytest.raises(InspectEmError, match="unknown method 'lda'"):
        resolve_methods("mean_diff,lda")
    assert resolve_methods("all") == list(METHODS)
    assert resolve_methods("probe,mean_diff") == ["mean_diff", "probe"]
    with pytest.raises(InspectEmError, match="at least 2"):
        extract(np.ones((1, 4)), np.ones((5, 4)))
    with pytest.raises(InspectEmError, match="same d"):
        extract(np.ones((3, 4)), np.ones((3, 5)))
