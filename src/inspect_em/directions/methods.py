"""The six extraction methods by name, and one call to fit one of them once.

``pos`` is ``[n_pos, d_model]``, ``neg`` is ``[n_neg, d_model]``; the result is a unit vector
``[d_model]`` signed so that the positive set projects higher on average. The methods themselves
live in the batched engine (:mod:`inspect_em.directions.engine`), which extraction runs for every layer and
refit at once; :func:`extract` is that engine for one layer and no refits.

- ``mean_diff``: mean(pos) − mean(neg).
- ``probe``: L2 logistic regression (C = 1) on centred, unit-normalised rows; the weight vector.
- ``pca``: first principal component of paired differences pos_i − neg_i with random signs
  (RepE style, so the difference direction shows up as variance).
- ``ica``: FastICA on pos ∪ neg (8 components); the mixing column whose sources separate the
  sets best (largest |AUROC − 0.5|).
- ``gradient``: Adam on a differentiable Cohen's d, (mean(pos·v̂) − mean(neg·v̂)) / pooled std,
  with shrinkage of the within-class covariance and a small norm penalty; starts from mean_diff.
- ``random_baseline``: one seeded random unit vector, signed so that pos projects higher: what a
  direction carrying no fitted signal achieves on these sets (not chance when the sets differ
  along many dimensions). The nulls (label permutations and many random directions) are the floor
  real methods must beat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inspect_em.directions.engine import METHOD_NAMES, FitSettings, fit_direction
from inspect_em.errors import InspectEmError
from inspect_em.readout import METHODS, Method

__all__ = ["METHODS", "Direction", "Method", "extract", "resolve_methods"]
assert METHODS == METHOD_NAMES
# extract(..., seed=) sets the seed of the method that has one
_SEEDS = {"pca": "pca_seed", "ica": "ica_seed", "gradient": "gradient_seed", "random_baseline": "random_seed"}


@dataclass
class Direction:
    """A unit trait direction ``vector`` ``[d_model]`` from ``method``."""

    vector: np.ndarray
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)


def resolve_methods(methods: str | list[str] | tuple[str, ...] | None = "all") -> list[str]:
    """``"all"`` or ``"mean_diff,probe"`` → validated method names (registry order)."""
    if methods is None or methods == "all" or methods == ["all"]:
        return list(METHODS)
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [str(m) for m in methods]
    names = [n for n in names if n]
    if not names:
        raise InspectEmError("methods: empty selection")
    for name in names:
        if name not in METHODS:
            raise InspectEmError(f"unknown method '{name}'; choose from {', '.join(METHODS)} or all")
    return [m for m in METHODS if m in names]


def extract(pos: np.ndarray, neg: np.ndarray, method: str = "mean_diff", *, seed: int | None = None,
            **settings: Any) -> Direction:
    """Fit ``method`` once on ``pos`` ``[n_pos, d]`` vs ``neg`` ``[n_neg, d]``.

    Args:
        seed: the method's own seed (pca's signs, ica's init, gradient's start, the random direction).
        settings: other :class:`inspect_em.directions.engine.FitSettings` fields (``probe_c``, ``gradient_steps``, ...).
    """
    resolve_methods([method])
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise InspectEmError(f"pos and neg must be [n, d] with the same d, got {pos.shape} and {neg.shape}")
    if len(pos) < 2 or len(neg) < 2:
        raise InspectEmError(f"need at least 2 positive and 2 negative examples, got {len(pos)} and {len(neg)}")
    if seed is not None and method in _SEEDS:
        settings[_SEEDS[method]] = seed
    return Direction(fit_direction(pos, neg, method, FitSettings(**settings)), method, dict(settings))
