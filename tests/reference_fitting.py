"""The per-layer loop implementation extraction used before the batched engine (inspect_em
0.1.0, commit b4de01a): six single-fit method classes, and validation fitted one layer, fold and
refit at a time. Kept here, unchanged but for imports, only as the independent reference the engine
(:mod:`inspect_em.directions.engine`) must agree with; too slow for real models (see issue #25)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold


@dataclass
class Direction:
    """A unit trait direction ``vector`` ``[d_model]`` with what the method knows about it."""

    vector: np.ndarray
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("extraction produced a zero or non-finite direction")
    return (v / norm).astype(np.float32)


def _signed(v: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Flip ``v`` so that mean(pos·v) ≥ mean(neg·v)."""
    return v if float(pos.mean(0) @ v) >= float(neg.mean(0) @ v) else -v


def _check(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise ValueError(f"pos and neg must be [n, d] with the same d, got {pos.shape} and {neg.shape}")
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"need at least 2 positive and 2 negative examples, got {len(pos)} and {len(neg)}")
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
    distribution of :func:`inspect_em.directions.validation.permutation_null` / ``random_null``.
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




def make_method(name: str, **kwargs: Any) -> Any:
    return METHODS[name](**kwargs)


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



def _layer_rows(
    layer: int, slot: int, acts: dict[str, np.ndarray], methods: Sequence[str], *, null_k: int, random_k: int,
    cv_folds: int, seed: int,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Fit, cross-validate, test and null every method at one layer."""
    split = {k: v[:, slot].astype(np.float64) for k, v in acts.items()}
    fit_pos, fit_neg = split["fit_pos"], split["fit_neg"]
    rows, vectors = [], {}
    mean_diff_norm = float(np.linalg.norm(fit_pos.mean(0) - fit_neg.mean(0)))
    random_auroc, random_d = random_null(fit_pos, fit_neg, split["test_pos"], split["test_neg"], k=random_k,
                                         seed=seed + layer) if random_k else (np.array([]), np.array([]))
    for name in methods:
        def fit(p: np.ndarray, n: np.ndarray, name: str = name) -> np.ndarray:
            """A refit on a fold or a shuffle: no direction at all scores as chance (zeros)."""
            try:
                return make_method(name).extract(p, n).vector.astype(np.float64)
            except ValueError:
                return np.zeros(p.shape[1])

        try:
            v = make_method(name).extract(fit_pos, fit_neg).vector.astype(np.float64)
        except ValueError as e:
            raise ValueError(f"{name} at layer {layer}: {e}") from None
        vectors[name] = v.astype(np.float32)
        threshold = fit_threshold(v, fit_pos, fit_neg)
        row: dict[str, Any] = {"method": name, "layer": layer}
        row.update(cross_validate(fit, fit_pos, fit_neg, folds=cv_folds, seed=seed) if cv_folds else {})
        row.update(split_scores(v, fit_pos, fit_neg, threshold, "fit"))
        row.update(split_scores(v, split["test_pos"], split["test_neg"], threshold, "test"))
        if "ood_pos" in split:
            row.update(split_scores(v, split["ood_pos"], split["ood_neg"], threshold, "ood"))
        perm_auroc, perm_d = permutation_null(fit, fit_pos, fit_neg, split["test_pos"], split["test_neg"], k=null_k,
                                              seed=seed + 1000 * layer) if null_k else (np.array([]), np.array([]))
        row.update(null_summary(row["test_auroc"], perm_auroc, "null_perm"))
        row.update(null_summary(row["test_cohens_d"], perm_d, "null_perm_d"))
        row.update(null_summary(row["test_auroc"], random_auroc, "null_random"))
        row.update(null_summary(row["test_cohens_d"], random_d, "null_random_d"))
        row.update({"threshold": threshold, "mean_diff_norm": mean_diff_norm})
        rows.append(row)
    return rows, vectors


