"""Six ways to turn positive/negative activations at one layer into a trait direction.

Every method is a small class with one call, ``extract(pos, neg) -> Direction``:
``pos`` is ``[n_pos, d_model]``, ``neg`` is ``[n_neg, d_model]`` (float32 numpy), and the
result is a unit vector ``[d_model]`` signed so that the positive set projects higher on average.

- ``mean_diff``: mean(pos) − mean(neg).
- ``probe``: L2 logistic regression (C=1) on centred, unit-normalised rows; the weight vector.
- ``pca``: first principal component of paired differences pos_i − neg_i with random signs
  (RepE style, so the difference direction shows up as variance).
- ``ica``: FastICA on pos ∪ neg (k components); the mixing column whose sources separate the
  sets best (largest |AUROC − 0.5|).
- ``gradient``: Adam on a differentiable Cohen's d, (mean(pos·v̂) − mean(neg·v̂)) / pooled std,
  with shrinkage of the within-class covariance and a small norm penalty; starts from mean_diff.
- ``random_baseline``: one seeded random unit vector, signed so that pos projects higher: what a
  direction carrying no fitted signal achieves on these sets (not chance when the sets differ
  along many dimensions). The nulls of :mod:`inspect_em.validation` (label permutations and many
  random directions) are the floor real methods must beat.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from sklearn.metrics import roc_auc_score

from .errors import InspectEmError


@dataclass
class Direction:
    """A unit trait direction ``vector`` ``[d_model]`` with what the method knows about it."""

    vector: np.ndarray
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise InspectEmError("extraction produced a zero or non-finite direction")
    return (v / norm).astype(np.float32)


def _signed(v: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Flip ``v`` so that mean(pos·v) ≥ mean(neg·v)."""
    return v if float(pos.mean(0) @ v) >= float(neg.mean(0) @ v) else -v


def _check(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise InspectEmError(f"pos and neg must be [n, d] with the same d, got {pos.shape} and {neg.shape}")
    if len(pos) < 2 or len(neg) < 2:
        raise InspectEmError(f"need at least 2 positive and 2 negative examples, got {len(pos)} and {len(neg)}")
    return pos, neg


class MeanDiff:
    name: ClassVar[str] = "mean_diff"

    def extract(self, pos: np.ndarray, neg: np.ndarray) -> Direction:
        pos, neg = _check(pos, neg)
        diff = pos.mean(0) - neg.mean(0)
        return Direction(_unit(diff), self.name, {"raw_norm": float(np.linalg.norm(diff))})


class Probe:
    name: ClassVar[str] = "probe"

    def __init__(self, C: float = 1.0, max_iter: int = 2000) -> None:
        self.C, self.max_iter = C, max_iter

    def extract(self, pos: np.ndarray, neg: np.ndarray) -> Direction:
        from sklearn.linear_model import LogisticRegression

        pos, neg = _check(pos, neg)
        x = np.vstack([pos, neg])
        # centred, then unit rows: comparable coefficients across models, and the variation between
        # prompts survives even where all rows share a large common component (early layers)
        x = x - x.mean(0)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
        clf.fit(x, y)
        w = clf.coef_[0]
        metadata = {"C": self.C, "train_accuracy": float(clf.score(x, y))}
        return Direction(_unit(_signed(w, pos, neg)), self.name, metadata)


class PCA:
    """First principal component of paired differences ``pos[i] − neg[i]`` with random signs.

    Rows are paired by index (the built-in prompt files mirror each other line by line);
    surplus rows on the longer side are dropped.
    """

    name: ClassVar[str] = "pca"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def extract(self, pos: np.ndarray, neg: np.ndarray) -> Direction:
        pos, neg = _check(pos, neg)
        rng = np.random.default_rng(self.seed)
        n = min(len(pos), len(neg))
        diffs = (pos[:n] - neg[:n]) * rng.choice([-1.0, 1.0], size=(n, 1))
        centred = diffs - diffs.mean(0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        v = vt[0]
        metadata = {"explained_variance_ratio": float(singular[0] ** 2 / max(float((singular**2).sum()), 1e-300))}
        return Direction(_unit(_signed(v, pos, neg)), self.name, metadata)


class ICA:
    name: ClassVar[str] = "ica"

    def __init__(self, n_components: int = 8, seed: int = 0) -> None:
        self.n_components, self.seed = n_components, seed

    def extract(self, pos: np.ndarray, neg: np.ndarray) -> Direction:
        from sklearn.decomposition import FastICA

        pos, neg = _check(pos, neg)
        x = np.vstack([pos, neg])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        k = max(1, min(self.n_components, x.shape[0] - 1, x.shape[1]))
        ica = FastICA(n_components=k, random_state=self.seed, whiten="unit-variance", max_iter=400, tol=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: we pick by separation anyway
            sources = ica.fit_transform(x)
        separation = np.array([abs(roc_auc_score(y, sources[:, j]) - 0.5) for j in range(k)])
        best = int(np.argmax(separation))
        v = ica.mixing_[:, best]
        return Direction(
            _unit(_signed(v, pos, neg)),
            self.name,
            {"n_components": k, "component": best, "component_auroc_margin": float(separation[best])},
        )


class Gradient:
    name: ClassVar[str] = "gradient"

    def __init__(self, steps: int = 100, lr: float = 0.01, shrinkage: float = 1.0, norm_penalty: float = 1e-3,
                 seed: int = 0) -> None:
        self.steps, self.lr, self.shrinkage, self.norm_penalty, self.seed = steps, lr, shrinkage, norm_penalty, seed

    def extract(self, pos: np.ndarray, neg: np.ndarray) -> Direction:
        import torch

        pos, neg = _check(pos, neg)
        # autograd even under a caller's torch.no_grad() / inference_mode() (notebooks)
        with torch.inference_mode(False), torch.enable_grad():
            scale = float(np.concatenate([pos, neg]).std()) or 1.0
            p = torch.tensor(pos / scale, dtype=torch.float64)
            q = torch.tensor(neg / scale, dtype=torch.float64)
            delta = p.mean(0) - q.mean(0)
            centred = torch.cat([p - p.mean(0), q - q.mean(0)])
            within = centred.T @ centred / max(len(centred) - 2, 1)
            # shrink the within-class covariance toward a multiple of the identity (n << d here)
            ridge = self.shrinkage * torch.trace(within) / within.shape[0]
            generator = torch.Generator().manual_seed(self.seed)
            start = delta / delta.norm() + 1e-3 * torch.randn(delta.shape, generator=generator, dtype=torch.float64)
            v = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([v], lr=self.lr)
            for _ in range(self.steps):
                opt.zero_grad()
                spread = v @ within @ v + ridge * (v @ v)
                d = (delta @ v) / torch.sqrt(spread + 1e-12)
                loss = -d + self.norm_penalty * (v.norm() - 1.0) ** 2
                loss.backward()
                opt.step()
        w = v.detach().numpy()
        return Direction(_unit(_signed(w, pos, neg)), self.name, {"steps": self.steps, "lr": self.lr,
                                                                  "objective_d": float(d.item())})


class RandomBaseline:
    """A seeded random unit direction, signed so that the positive set projects higher.

    Nothing is projected out: a random direction is not at chance when two prompt sets differ
    along most dimensions (on the embedded model a sign-fixed random direction reaches held-out
    AUROC 0.86 for refusal), which is exactly what a floor should show. Its vectors also serve as
    a negative control for projections. The honest comparison for a real method is the null
    distribution of :func:`inspect_em.validation.permutation_null` / ``random_null``.
    """

    name: ClassVar[str] = "random_baseline"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def extract(self, pos: np.ndarray, neg: np.ndarray) -> Direction:
        pos, neg = _check(pos, neg)
        v = np.random.default_rng(self.seed).standard_normal(pos.shape[1])
        delta = pos.mean(0) - neg.mean(0)
        norm = float(np.linalg.norm(delta))
        cosine = float(v @ delta / (np.linalg.norm(v) * norm)) if norm > 0 else 0.0
        return Direction(_unit(_signed(v, pos, neg)), self.name, {"seed": self.seed,
                                                                  "abs_cosine_with_mean_diff": abs(cosine)})


METHODS: dict[str, type] = {cls.name: cls for cls in (MeanDiff, Probe, PCA, ICA, Gradient, RandomBaseline)}


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


def make_method(name: str, **kwargs: Any) -> Any:
    """An extraction method instance by name."""
    if name not in METHODS:
        raise InspectEmError(f"unknown method '{name}'; choose from {', '.join(METHODS)} or all")
    return METHODS[name](**kwargs)


def extract(pos: np.ndarray, neg: np.ndarray, method: str = "mean_diff", **kwargs: Any) -> Direction:
    """One call: fit ``method`` on ``pos`` ``[n_pos, d]`` vs ``neg`` ``[n_neg, d]``."""
    return make_method(method, **kwargs).extract(pos, neg)
