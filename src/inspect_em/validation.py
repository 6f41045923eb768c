"""Validation of trait directions: held-out and out-of-distribution scores, a null that can fail,
and a layer choice without selection bias.

- Scores of a unit direction on a split: accuracy of the fit split's best threshold, AUROC,
  Cohen's d, raw separation (projection units).
- Layer choice: ``k``-fold cross-validation on the *fit* split (refit on k−1 folds, score the
  held-back fold); the best layer per method is the one with the highest mean CV Cohen's d (ties:
  CV AUROC). Held-out (in-distribution) and out-of-distribution test metrics are then read at that
  layer, never used to choose it.
- Nulls: (a) label permutation: the method refitted on the fit split with shuffled labels
  (``k`` seeded shuffles), scored on the real held-out labels; (b) random unit directions (no
  projection removed), each sign-fixed on the fit split. Both are summarised on AUROC and on
  Cohen's d: a real value means something when it is above the null's 95th percentile; the
  p-value is ``(1 + #null ≥ real) / (k + 1)``. When the two sets differ along the data's main
  direction of variance (code vs prose answers), directions fitted to random groupings separate
  them too and AUROC saturates at 1 for real and null alike; d still tells them apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from .errors import InspectEmError

Fit = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (pos [n, d], neg [m, d]) -> unit vector [d]


def cohens_d(pos: np.ndarray, neg: np.ndarray) -> float:
    """(mean(pos) − mean(neg)) / pooled standard deviation, for 1-D projections.

    Zero pooled variance gives ±inf (the sets are separated exactly) or NaN (identical
    constants); vector cards write those as null.
    """
    n1, n2 = len(pos), len(neg)
    pooled = ((n1 - 1) * pos.var(ddof=1) + (n2 - 1) * neg.var(ddof=1)) / max(n1 + n2 - 2, 1)
    diff = float(pos.mean() - neg.mean())
    if pooled > 0:
        return diff / math.sqrt(pooled)
    return math.nan if diff == 0 else math.copysign(math.inf, diff)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of ``pos`` scoring above ``neg`` (1-D projections)."""
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.concatenate([pos, neg])))


def auroc_columns(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of every column at once: ``pos`` ``[n, k]``, ``neg`` ``[m, k]`` → ``[k]`` (Mann–Whitney)."""
    ranks = rankdata(np.vstack([pos, neg]), axis=0)
    n, m = len(pos), len(neg)
    return (ranks[:n].sum(axis=0) - n * (n + 1) / 2) / (n * m)


def cohens_d_columns(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Cohen's d of every column at once: ``pos`` ``[n, k]``, ``neg`` ``[m, k]`` → ``[k]``."""
    n, m = len(pos), len(neg)
    pooled = ((n - 1) * pos.var(axis=0, ddof=1) + (m - 1) * neg.var(axis=0, ddof=1)) / max(n + m - 2, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (pos.mean(axis=0) - neg.mean(axis=0)) / np.sqrt(pooled)


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """Threshold on projections that maximises accuracy (projection > t → positive)."""
    values = np.sort(np.concatenate([pos, neg]))
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    accuracy = [((pos > t).sum() + (neg <= t).sum()) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def split_scores(vector: np.ndarray, pos: np.ndarray, neg: np.ndarray, threshold: float, prefix: str
                 ) -> dict[str, float]:
    """Scores of a unit ``vector`` ``[d]`` on a split (``pos`` ``[n, d]``, ``neg`` ``[m, d]``)."""
    p, q = pos.astype(np.float64) @ vector.astype(np.float64), neg.astype(np.float64) @ vector.astype(np.float64)
    return {
        f"{prefix}_accuracy": float(((p > threshold).sum() + (q <= threshold).sum()) / (len(p) + len(q))),
        f"{prefix}_auroc": auroc(p, q),
        f"{prefix}_cohens_d": cohens_d(p, q),
        f"{prefix}_separation": float(p.mean() - q.mean()),
        f"{prefix}_mean_pos": float(p.mean()),
        f"{prefix}_mean_neg": float(q.mean()),
    }


def fit_threshold(vector: np.ndarray, fit_pos: np.ndarray, fit_neg: np.ndarray) -> float:
    return best_threshold(fit_pos.astype(np.float64) @ vector, fit_neg.astype(np.float64) @ vector)


def cross_validate(fit: Fit, pos: np.ndarray, neg: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Mean held-back-fold AUROC and Cohen's d of ``fit`` over stratified ``folds`` of the fit split."""
    x = np.vstack([pos, neg])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    folds = max(2, min(folds, len(pos), len(neg)))
    aurocs, ds = [], []
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y):
        v = fit(x[train][y[train] == 1], x[train][y[train] == 0])
        p, q = x[test][y[test] == 1] @ v, x[test][y[test] == 0] @ v
        aurocs.append(auroc(p, q))
        ds.append(cohens_d(p, q))
    return {"cv_auroc": float(np.mean(aurocs)), "cv_cohens_d": float(np.mean(ds))}


def permutation_null(fit: Fit, fit_pos: np.ndarray, fit_neg: np.ndarray, test_pos: np.ndarray,
                     test_neg: np.ndarray, k: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out AUROCs and Cohen's d (``[k]`` each) of ``fit`` refitted on label-shuffled fit splits."""
    rng = np.random.default_rng(seed)
    x = np.vstack([fit_pos, fit_neg])
    n = len(fit_pos)
    vectors = []
    for _ in range(k):
        order = rng.permutation(len(x))
        vectors.append(fit(x[order[:n]], x[order[n:]]))
    v = np.stack(vectors, axis=1)
    p, q = test_pos @ v, test_neg @ v
    return auroc_columns(p, q), cohens_d_columns(p, q)


def random_null(fit_pos: np.ndarray, fit_neg: np.ndarray, test_pos: np.ndarray, test_neg: np.ndarray,
                k: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out AUROCs and Cohen's d (``[k]`` each) of seeded random unit directions, each signed so
    that the fit positives project higher (nothing projected out: what chance directions achieve)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((fit_pos.shape[1], k))
    v /= np.linalg.norm(v, axis=0, keepdims=True)
    sign = np.sign((fit_pos.mean(0) - fit_neg.mean(0)) @ v)
    v *= np.where(sign == 0, 1.0, sign)
    p, q = test_pos @ v, test_neg @ v
    return auroc_columns(p, q), cohens_d_columns(p, q)


def null_summary(real: float, null: np.ndarray, prefix: str) -> dict[str, float]:
    """The null's 95th percentile and the one-sided p-value ``(1 + #null ≥ real) / (k + 1)``."""
    null = null[np.isfinite(null)]
    if len(null) == 0:
        return {f"{prefix}_p95": math.nan, f"{prefix}_p": math.nan}
    return {f"{prefix}_p95": float(np.quantile(null, 0.95)),
            f"{prefix}_p": float((1 + np.sum(null >= real - 1e-12)) / (len(null) + 1))}


def best_layers(metrics: pd.DataFrame) -> dict[str, int]:
    """Best layer per method: highest CV Cohen's d on the fit split, ties broken by CV AUROC.

    Without CV columns (``--cv-folds 0``) it ranks by the held-out test columns (biased: the layer
    is then chosen on the data it is reported on), or by older tables' ``heldout_*`` columns.
    """
    d, a = next((pair for pair in (("cv_cohens_d", "cv_auroc"), ("test_cohens_d", "test_auroc"),
                                   ("heldout_cohens_d", "heldout_auroc")) if pair[0] in metrics), (None, None))
    if d is None:
        raise InspectEmError("metrics table has no cv_*, test_* or heldout_* Cohen's d column to choose layers by")
    ranked = metrics.assign(_d=metrics[d].fillna(-np.inf), _a=metrics[a].fillna(-np.inf))
    ranked = ranked.sort_values(["method", "_d", "_a"], ascending=[True, False, False])
    return {str(method): int(group.iloc[0]["layer"]) for method, group in ranked.groupby("method", sort=False)}
