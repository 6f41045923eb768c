"""Held-out validation of a trait direction: accuracy, AUROC, Cohen's d, separation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def cohens_d(pos: np.ndarray, neg: np.ndarray) -> float:
    """(mean(pos) − mean(neg)) / pooled standard deviation, for 1-D projections."""
    n1, n2 = len(pos), len(neg)
    pooled = ((n1 - 1) * pos.var(ddof=1) + (n2 - 1) * neg.var(ddof=1)) / max(n1 + n2 - 2, 1)
    return float((pos.mean() - neg.mean()) / np.sqrt(pooled)) if pooled > 0 else float("inf")


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """Threshold on projections that maximises accuracy (projection > t → positive)."""
    values = np.sort(np.concatenate([pos, neg]))
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    accuracy = [((pos > t).sum() + (neg <= t).sum()) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def validate(
    vector: np.ndarray, fit_pos: np.ndarray, fit_neg: np.ndarray, test_pos: np.ndarray, test_neg: np.ndarray
) -> dict[str, float]:
    """Score a unit ``vector`` ``[d]`` on held-out activations ``[n, d]``.

    The threshold is chosen on the fit split and applied to the held-out split.
    """
    proj = {k: a.astype(np.float64) @ vector.astype(np.float64)
            for k, a in (("fp", fit_pos), ("fn", fit_neg), ("tp", test_pos), ("tn", test_neg))}
    threshold = best_threshold(proj["fp"], proj["fn"])
    y = np.r_[np.ones(len(proj["tp"])), np.zeros(len(proj["tn"]))]
    scores = np.concatenate([proj["tp"], proj["tn"]])
    return {
        "heldout_accuracy": float(((proj["tp"] > threshold).sum() + (proj["tn"] <= threshold).sum()) / len(y)),
        "heldout_auroc": float(roc_auc_score(y, scores)),
        "heldout_cohens_d": cohens_d(proj["tp"], proj["tn"]),
        "heldout_separation": float(proj["tp"].mean() - proj["tn"].mean()),
        "heldout_mean_pos": float(proj["tp"].mean()),
        "heldout_mean_neg": float(proj["tn"].mean()),
        "fit_auroc": float(roc_auc_score(np.r_[np.ones(len(proj["fp"])), np.zeros(len(proj["fn"]))],
                                         np.concatenate([proj["fp"], proj["fn"]]))),
        "fit_cohens_d": cohens_d(proj["fp"], proj["fn"]),
        "threshold": threshold,
    }


def best_layers(metrics: pd.DataFrame) -> dict[str, int]:
    """Best layer per method: highest held-out Cohen's d, ties broken by held-out AUROC."""
    ranked = metrics.sort_values(["method", "heldout_cohens_d", "heldout_auroc"], ascending=[True, False, False])
    return {str(method): int(group.iloc[0]["layer"]) for method, group in ranked.groupby("method", sort=False)}
