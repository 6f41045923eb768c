"""The fitting engine: every method × layer × refit of trait extraction as batched tensor operations on
the activations' device.

A *refit* is one fit of a method on a labelled subset of the fit split: the fit itself, each
cross-validation fold's training part (``cv_folds``, StratifiedKFold as before, the same folds at every
layer) and each label permutation of the null (``null_k``, seeded per layer as before). For a chunk of
layers at once, each method produces the unit directions of every refit, ``[layers, refits, d]``; one
batched product with the activations of every split then scores them all:

- ``mean_diff``: class means as masked sums, ``[L, R, n] @ [L, n, d]``.
- ``probe``: L2 logistic regression (C = 1, intercept free, rows centred and unit-normalised per refit,
  as scikit-learn's ``LogisticRegression`` was used) solved exactly by batched Newton–CG in the
  samples' span: the refits' Gram matrices come from one ``[n, n]`` Gram per layer, the permutations
  share their row set's eigenbasis, nothing is ``d × d``.
- ``pca``: the first principal component of each refit's sign-randomised paired differences, from the
  ``m × m`` Gram of the differences (``torch.linalg.eigh``), never an SVD of ``[m, d]``.
- ``ica``: scikit-learn's FastICA once per distinct row set (the fit split and each CV fold; a label
  permutation only reorders rows, which leaves the decomposition unchanged); the refit's labels then
  choose the component (largest |AUROC − 0.5| over the sources) and its sign.
- ``gradient``: the same objective and optimiser as before (Adam on a shrinkage-regularised Cohen's d,
  100 steps from the mean difference), for every layer and refit in one loop, with the within-class
  spread computed as ``‖C v‖²`` from two batched products, never a ``d × d`` matrix.
- ``random_baseline``: one seeded random direction, signed per refit.

The random-direction null draws ``random_k`` directions once per run on the device, shared by layers
and methods, each signed by the fit split's mean difference. AUROC (average ranks, so ties count
half), Cohen's d, thresholds and accuracies are computed in torch for all layers and directions at once.
Layers are processed in chunks sized to a memory budget; nothing depends on the chunking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from inspect_em.errors import InspectEmError

METHOD_NAMES: tuple[str, ...] = ("mean_diff", "probe", "pca", "ica", "gradient", "random_baseline")
SPLIT_PREFIX = {"fit": "fit", "test": "test", "ood": "ood"}
ICA_NULL = ("label permutations reuse the fit split's decomposition (a permutation only reorders the rows, "
            "which leaves FastICA's result unchanged); the permuted labels choose and sign the component")


@dataclass(frozen=True)
class FitSettings:
    """The methods' and validation's settings (the defaults are the extraction's).

    Attributes:
        null_k: label permutations (refits per method and layer) in the permutation null.
        random_k: random directions in the random-direction null.
        cv_folds: folds of the fit split used to choose the layer (0: none).
        seed: seeds folds (StratifiedKFold), permutations (``seed + 1000 · layer``) and random directions.
        memory_bytes: budget for one chunk of layers (default: 512 MiB on a CPU, where smaller chunks
            stay in cache, 4 GiB on a GPU).
    """

    null_k: int = 50
    random_k: int = 1000
    cv_folds: int = 5
    seed: int = 0
    probe_c: float = 1.0
    pca_seed: int = 0
    ica_components: int = 8
    ica_seed: int = 0
    gradient_steps: int = 100
    gradient_lr: float = 0.01
    gradient_shrinkage: float = 1.0
    gradient_norm_penalty: float = 1e-3
    gradient_seed: int = 0
    random_seed: int = 0
    memory_bytes: int | None = None


@dataclass
class FitResult:
    """What :func:`fit_layers` returns.

    Attributes:
        vectors: method → unit directions fitted on the whole fit split, float32 ``[layers, d]``.
        metrics: one row per layer × method (layer-major, methods in the order given): ``cv_*``,
            ``fit_*``, ``test_*``, ``ood_*``, ``null_perm_*``, ``null_random_*``, ``threshold``,
            ``mean_diff_norm``.
        peak_bytes: the largest device memory any chunk held (CUDA), or None.
    """

    vectors: dict[str, np.ndarray]
    metrics: pd.DataFrame
    peak_bytes: int | None = None


# ---------------------------------------------------------------- scores, batched over leading dims


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AUROC of ``pos`` ``[..., a]`` scoring above ``neg`` ``[..., b]`` → ``[...]`` (float64), from
    average ranks (ties count half), as ``sklearn.metrics.roc_auc_score``."""
    pos, neg = pos.double(), neg.double()
    values = torch.cat([pos, neg], dim=-1)
    ordered, _ = torch.sort(values, dim=-1)
    lead = ordered.shape[:-1]
    flat_sorted = ordered.reshape(-1, ordered.shape[-1]).contiguous()
    flat_pos = pos.reshape(-1, pos.shape[-1]).contiguous()
    below = torch.searchsorted(flat_sorted, flat_pos, right=False)
    upto = torch.searchsorted(flat_sorted, flat_pos, right=True)
    ranks = (below + upto + 1).double() / 2  # average rank, 1-based
    a, b = pos.shape[-1], neg.shape[-1]
    return ((ranks.sum(-1) - a * (a + 1) / 2) / (a * b)).reshape(lead)


def cohens_d(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """(mean(pos) − mean(neg)) / pooled standard deviation over the last dim → ``[...]`` (float64);
    zero pooled variance gives ±inf (separated exactly) or NaN (equal constants)."""
    pos, neg = pos.double(), neg.double()
    a, b = pos.shape[-1], neg.shape[-1]
    pooled = ((a - 1) * pos.var(-1, correction=1) + (b - 1) * neg.var(-1, correction=1)) / max(a + b - 2, 1)
    diff = pos.mean(-1) - neg.mean(-1)
    out = diff / pooled.sqrt()
    exact = pooled <= 0
    return torch.where(exact, torch.where(diff == 0, torch.nan, torch.sign(diff) * torch.inf), out)


def best_threshold(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The threshold on projections that maximises accuracy (``> t`` → positive), ``[...]``: the first
    best of the midpoints between sorted values and one beyond each end."""
    pos, neg = pos.double(), neg.double()
    values, _ = torch.sort(torch.cat([pos, neg], dim=-1), dim=-1)
    candidates = torch.cat([values[..., :1] - 1.0, (values[..., :-1] + values[..., 1:]) / 2, values[..., -1:] + 1.0],
                           dim=-1)
    correct = (pos[..., None, :] > candidates[..., :, None]).sum(-1) + \
        (neg[..., None, :] <= candidates[..., :, None]).sum(-1)
    return torch.gather(candidates, -1, correct.argmax(-1, keepdim=True)).squeeze(-1)


def split_scores(pos: torch.Tensor, neg: torch.Tensor, threshold: torch.Tensor, prefix: str
                 ) -> dict[str, torch.Tensor]:
    """Accuracy at ``threshold``, AUROC, Cohen's d, separation and class means of projections."""
    pos, neg = pos.double(), neg.double()
    correct = (pos > threshold[..., None]).sum(-1) + (neg <= threshold[..., None]).sum(-1)
    return {
        f"{prefix}_accuracy": correct.double() / (pos.shape[-1] + neg.shape[-1]),
        f"{prefix}_auroc": auroc(pos, neg),
        f"{prefix}_cohens_d": cohens_d(pos, neg),
        f"{prefix}_separation": pos.mean(-1) - neg.mean(-1),
        f"{prefix}_mean_pos": pos.mean(-1),
        f"{prefix}_mean_neg": neg.mean(-1),
    }


def null_summary(real: np.ndarray, null: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Per row of ``null`` ``[rows, k]``: its 95th percentile and the one-sided p-value
    ``(1 + #null ≥ real) / (k + 1)`` (non-finite null values left out; NaN when none is left)."""
    rows = null.shape[0]
    p95, p = np.full(rows, np.nan), np.full(rows, np.nan)
    for i in range(rows):  # [rows, k] numbers, not refits: a cheap loop over a few dozen rows
        finite = null[i][np.isfinite(null[i])]
        if len(finite):
            p95[i] = np.quantile(finite, 0.95)
            p[i] = (1 + np.sum(finite >= real[i] - 1e-12)) / (len(finite) + 1)
    return {f"{prefix}_p95": p95, f"{prefix}_p": p}


# ---------------------------------------------------------------- refits


@dataclass
class _Refits:
    """Which fit rows each refit uses, per layer of a chunk. Refit 0 is the fit split, then the CV
    folds' training parts, then the label permutations. Indices are into the fit rows (positives
    first), in the order the method sees them (PCA pairs by position).

    Attributes:
        pos, neg: ``[layers, refits, max]`` long indices (padded with 0) and their counts per refit.
        folds: per fold, the held-back (positive, negative) row indices.
        n_cv: number of CV refits.
    """

    pos: torch.Tensor
    neg: torch.Tensor
    n_pos: torch.Tensor
    n_neg: torch.Tensor
    folds: list[tuple[np.ndarray, np.ndarray]]
    n_cv: int
    n_perm: int

    @property
    def count(self) -> int:
        return self.pos.shape[1]

    def masks(self, n: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """Membership of each fit row in each refit's positives / negatives, ``[layers, refits, n]``."""
        apos = torch.zeros((*self.pos.shape[:2], n), dtype=dtype, device=self.pos.device)
        aneg = torch.zeros_like(apos)
        width = torch.arange(self.pos.shape[2], device=self.pos.device)
        # padding points at row 0 with weight 0: add, never overwrite
        apos.scatter_add_(2, self.pos, (width < self.n_pos[:, None]).to(dtype).expand_as(self.pos).contiguous())
        width = torch.arange(self.neg.shape[2], device=self.neg.device)
        aneg.scatter_add_(2, self.neg, (width < self.n_neg[:, None]).to(dtype).expand_as(self.neg).contiguous())
        return apos, aneg


def _refits(n_pos: int, n_neg: int, layers: Sequence[int], settings: FitSettings, device: torch.device) -> _Refits:
    """The refits of one chunk of layers (see :class:`_Refits`)."""
    from sklearn.model_selection import StratifiedKFold

    n = n_pos + n_neg
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    shared: list[tuple[np.ndarray, np.ndarray]] = [(np.arange(n_pos), np.arange(n_pos, n))]
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    if settings.cv_folds:
        k = max(2, min(settings.cv_folds, n_pos, n_neg))
        for train, test in StratifiedKFold(k, shuffle=True, random_state=settings.seed).split(np.zeros(n), y):
            shared.append((train[y[train] == 1], train[y[train] == 0]))
            folds.append((test[y[test] == 1], test[y[test] == 0]))
    per_layer = []
    for layer in layers:
        rng = np.random.default_rng(settings.seed + 1000 * layer)  # the permutations of this layer
        perms = [rng.permutation(n) for _ in range(settings.null_k)]
        per_layer.append(shared + [(order[:n_pos], order[n_pos:]) for order in perms])
    width = max(max(len(p), len(q)) for p, q in per_layer[0])

    def pad(rows: np.ndarray) -> np.ndarray:
        return np.pad(rows, (0, width - len(rows)))

    pos = torch.tensor(np.array([[pad(p) for p, _ in refits] for refits in per_layer]), device=device)
    neg = torch.tensor(np.array([[pad(q) for _, q in refits] for refits in per_layer]), device=device)
    n_pos_t = torch.tensor([len(p) for p, _ in per_layer[0]], device=device)
    n_neg_t = torch.tensor([len(q) for _, q in per_layer[0]], device=device)
    return _Refits(pos, neg, n_pos_t, n_neg_t, folds, len(folds), settings.null_k)


# ---------------------------------------------------------------- methods: raw directions [L, R, d]


@dataclass
class _Chunk:
    """One chunk of layers on the device: fit rows centred on their per-layer mean (``x_fit``
    ``[L, n, d]`` float32), that mean (float64), the fit rows' Gram (float64) and the refits."""

    x_fit: torch.Tensor
    mean: torch.Tensor
    n_pos: int
    refits: _Refits
    gram: torch.Tensor | None = None
    raw_fit: torch.Tensor | None = None  # uncentred fit rows (for ICA and the gradient's data scale)

    @property
    def n(self) -> int:
        return self.x_fit.shape[1]

    def gram64(self) -> torch.Tensor:
        if self.gram is None:
            x = self.x_fit.double()
            self.gram = torch.bmm(x, x.transpose(1, 2))
        return self.gram

    def combine(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Directions as combinations of the fit rows: ``[L, R, n]`` → ``[L, R, d]`` (float32)."""
        return torch.bmm(coefficients.to(self.x_fit.dtype), self.x_fit)


def _mean_diff(chunk: _Chunk, settings: FitSettings) -> torch.Tensor:
    apos, aneg = chunk.refits.masks(chunk.n)
    coefficients = apos / chunk.refits.n_pos[None, :, None] - aneg / chunk.refits.n_neg[None, :, None]
    return chunk.combine(coefficients)


def _random_baseline(chunk: _Chunk, settings: FitSettings) -> torch.Tensor:
    d = chunk.x_fit.shape[2]
    v = torch.tensor(np.random.default_rng(settings.random_seed).standard_normal(d), dtype=torch.float32,
                     device=chunk.x_fit.device)
    return v.expand(chunk.x_fit.shape[0], chunk.refits.count, d).clone()


def _pca(chunk: _Chunk, settings: FitSettings) -> torch.Tensor:
    """First principal component of each refit's paired differences ``σ_i (pos_i − neg_i)`` (random
    signs σ seeded by ``pca_seed`` for the pair count), centred, from their Gram matrix."""
    refits, gram = chunk.refits, chunk.gram64()
    n_pairs = torch.minimum(refits.n_pos, refits.n_neg)
    m = int(n_pairs.max())
    p, q = refits.pos[:, :, :m], refits.neg[:, :, :m]
    signs = torch.zeros((refits.count, m), dtype=torch.float64, device=gram.device)
    for count in n_pairs.unique().tolist():  # the sign vector depends only on the pair count
        drawn = np.random.default_rng(settings.pca_seed).choice([-1.0, 1.0], size=(count, 1))[:, 0]
        signs[n_pairs == count, :count] = torch.tensor(drawn, device=gram.device)
    layer = torch.arange(gram.shape[0], device=gram.device)[:, None, None, None]
    pairs = gram[layer, p[..., :, None], p[..., None, :]] - gram[layer, p[..., :, None], q[..., None, :]] \
        - gram[layer, q[..., :, None], p[..., None, :]] + gram[layer, q[..., :, None], q[..., None, :]]
    pairs = pairs * (signs[:, :, None] * signs[:, None, :])  # [L, R, m, m]; padded pairs have sign 0
    valid = (signs != 0).double()
    centring = torch.diag_embed(valid) - valid[:, :, None] * valid[:, None, :] / n_pairs[:, None, None].double()
    centred = centring @ pairs @ centring
    _, vectors = torch.linalg.eigh(centred)
    top = centring @ vectors[..., -1:]  # [L, R, m, 1]: the component's weights on the centred differences
    weights = (top[..., 0] * signs)  # on x_p − x_q
    coefficients = torch.zeros((*weights.shape[:2], chunk.n), dtype=torch.float64, device=gram.device)
    coefficients.scatter_add_(2, p, weights)
    coefficients.scatter_add_(2, q, -weights)
    return chunk.combine(coefficients)


def _ica(chunk: _Chunk, settings: FitSettings) -> torch.Tensor:
    """scikit-learn's FastICA (``whiten="unit-variance"``, logcosh, parallel, ``tol`` 1e-3, 400
    iterations, ``w_init`` from ``RandomState(ica_seed)``), reproduced in torch for every layer and
    distinct row set at once: whitening by the top components of the set's centred Gram (signed as
    scikit-learn signs them: positive on the first feature), the fixed-point iterations batched, the
    mixing matrix as combinations of the set's rows. Each refit's labels then pick the source that
    separates them best (largest |AUROC − 0.5|, first on ties) and its mixing column; a label
    permutation reuses the fit split's decomposition (it only reorders rows)."""
    refits, n = chunk.refits, chunk.n
    assert chunk.raw_fit is not None
    rows, centred = _set_gram(chunk)  # [L, S, n], [L, S, n, n]
    n_layers, sets = rows.shape[:2]
    size = rows.sum(-1)  # [L, S]
    m_min, d = int(size.min()), chunk.x_fit.shape[2]
    k = max(1, min(settings.ica_components, m_min - 1, d))
    _, eigenvectors = torch.linalg.eigh(centred)
    top = eigenvectors[..., -k:].flip(-1)  # [L, S, n, k], largest first
    first = chunk.raw_fit[..., 0].double()[:, None] * rows  # the first feature, centred per set
    first = (first - first.sum(-1, keepdim=True) / size[..., None]) * rows
    sign = torch.sign((first[..., None] * top).sum(-2))
    top = top * torch.where(sign == 0, 1.0, sign)[..., None, :]
    white = (top * size[..., None, None].sqrt()).transpose(-1, -2)  # X1 [L, S, k, n], unit variance
    w_init = torch.tensor(np.random.RandomState(settings.ica_seed).normal(size=(k, k)), dtype=torch.float64,
                          device=rows.device)
    unmixing = _fastica(white, rows, _sym_decorrelation(w_init).expand(n_layers, sets, k, k).clone())
    sources = unmixing @ white / size[..., None, None].sqrt()  # Sᵀ [L, S, k, n]
    spread = ((sources**2 * rows[..., None, :]).sum(-1) / size[..., None]
              - ((sources * rows[..., None, :]).sum(-1) / size[..., None]) ** 2).clamp_min(1e-300).sqrt()
    unmixing = unmixing / spread[..., None]
    sources = sources / spread[..., None]
    # mixing = pinv(W K) = U_k diag(s) W⁻¹ = Xcᵀ V_k W⁻¹: weights of the set's centred rows per component
    mixing = _from_set((top @ torch.linalg.inv(unmixing)).reshape(n_layers * sets, n, k),
                       rows.reshape(n_layers * sets, n)).reshape(n_layers, sets, n, k)
    ranks = _average_ranks(torch.where(rows[..., None, :] > 0, sources, torch.inf))  # [L, S, k, n]
    labels, _ = refits.masks(n)
    set_of = [0, *range(1, sets), *([0] * refits.n_perm)]  # refit → its row set
    set_rows = rows[:, set_of]  # [L, R, n]
    a = labels.sum(-1)[..., None]  # [L, R, 1]
    b = set_rows.sum(-1)[..., None] - a
    auc = ((ranks[:, set_of] * labels[:, :, None, :]).sum(-1) - a * (a + 1) / 2) / (a * b)  # [L, R, k]
    best = (auc - 0.5).abs().argmax(-1)  # [L, R]
    chosen = torch.gather(mixing[:, set_of], 3, best[:, :, None, None].expand(n_layers, refits.count, n, 1))
    return chunk.combine(chosen[..., 0])


def _sym_decorrelation(w: torch.Tensor) -> torch.Tensor:
    """``(W Wᵀ)^{-1/2} W`` (scikit-learn's symmetric decorrelation), batched over leading dims."""
    values, vectors = torch.linalg.eigh(w @ w.transpose(-1, -2))
    values = values.clamp_min(torch.finfo(w.dtype).tiny)
    return (vectors / values.sqrt()[..., None, :]) @ vectors.transpose(-1, -2) @ w


def _fastica(white: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, tol: float = 1e-3, max_iter: int = 400
             ) -> torch.Tensor:
    """Parallel FastICA with logcosh on whitened data ``[..., k, n]`` (columns outside ``rows`` are
    zero); each problem stops where scikit-learn's would (its first iterate within ``tol``)."""
    size = rows.sum(-1)[..., None]  # [.., 1]
    done = torch.zeros(w.shape[:-2], dtype=torch.bool, device=w.device)
    for _ in range(max_iter):
        g = torch.tanh(w @ white)  # [.., k, n]; zero where the data is padding
        g_prime = ((1 - g**2) * rows[..., None, :]).sum(-1) / size  # mean over the set's rows
        w_next = _sym_decorrelation(g @ white.transpose(-1, -2) / size[..., None] - g_prime[..., None] * w)
        limit = ((w_next * w).sum(-1).abs() - 1).abs().amax(-1)
        w = torch.where(done[..., None, None], w, w_next)
        done = done | (limit < tol)
        if bool(done.all()):
            break
    return w


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based average ranks along the last dim (ties share the mean rank; +inf ranks last)."""
    ordered, _ = torch.sort(values, dim=-1)
    flat_sorted = ordered.reshape(-1, ordered.shape[-1]).contiguous()
    flat = values.reshape(-1, values.shape[-1]).contiguous()
    below = torch.searchsorted(flat_sorted, flat, right=False)
    upto = torch.searchsorted(flat_sorted, flat, right=True)
    return ((below + upto + 1).double() / 2).reshape(values.shape)


def _set_gram(chunk: _Chunk) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct row sets (the fit split, then each fold's training rows) and their Gram matrices
    after centring on the set's own mean: membership ``[L, S, n]`` and ``[L, S, n, n]`` (float64, zero
    outside the set), from the one Gram of the fit rows."""
    refits, gram = chunk.refits, chunk.gram64()
    apos, aneg = refits.masks(chunk.n)
    rows = (apos + aneg)[:, :1 + refits.n_cv]
    size = rows.sum(-1, keepdim=True)
    within = gram[:, None] * rows[..., :, None] * rows[..., None, :]
    to_mean = within.sum(-1) / size  # x_i · μ_S
    mean_sq = (to_mean * rows).sum(-1, keepdim=True) / size  # μ_S · μ_S
    centred = within - (to_mean[..., :, None] + to_mean[..., None, :] - mean_sq[..., None]) * rows[..., :, None] \
        * rows[..., None, :]
    return rows, centred


def _from_set(coefficients: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Weights on a set's rows centred on the set mean → weights on the raw fit rows (``[B, n, P]``,
    ``rows`` ``[B, n]``)."""
    weights = coefficients * rows[..., None]
    return weights - weights.sum(1, keepdim=True) / rows.sum(1)[:, None, None] * rows[..., None]


def _probe(chunk: _Chunk, settings: FitSettings) -> torch.Tensor:
    """L2 logistic regression per refit on rows centred by the refit's own mean and scaled to unit
    norm, solved in the span of those rows: the weight vector is ``Σ α_i x̃_i``."""
    refits, gram = chunk.refits, chunk.gram64()
    n_layers, n = gram.shape[0], chunk.n
    labels, _ = refits.masks(n)
    sets = 1 + refits.n_cv  # refits 0 and the permutations share the fit split's rows
    rows, centred = _set_gram(chunk)
    norms = centred.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().clamp_min(1e-12)
    kernel = centred / (norms[..., :, None] * norms[..., None, :])
    eigenvalues, eigenvectors = torch.linalg.eigh(kernel)
    keep = eigenvalues > 1e-10 * eigenvalues[..., -1:].clamp_min(1e-300)
    root = torch.where(keep, eigenvalues.clamp_min(0), 0).sqrt()
    features = eigenvectors * root[..., None, :]  # Z: x̃_i · w = Z_i · β
    groups = [(torch.tensor([0, *range(sets, refits.count)], device=gram.device), 0)] + \
        [(torch.tensor([s], device=gram.device), s) for s in range(1, sets)]
    coefficients = torch.zeros((n_layers, refits.count, n), dtype=torch.float64, device=gram.device)
    for refit_ids, s in groups:  # the fit split's rows (refit 0 and every permutation), then each fold
        z = features[:, s]  # [L, n, n]
        t = labels[:, refit_ids].transpose(1, 2)  # [L, n, P]
        mask = rows[:, s][..., None]  # [L, n, 1]
        beta = _logistic_newton(z, t, mask, settings.probe_c)
        inverse_root = torch.where(keep[:, s], 1 / root[:, s].clamp_min(1e-300), 0)
        alpha = eigenvectors[:, s] @ (inverse_root[..., None] * beta)  # [L, n, P], on the unit rows
        coefficients[:, refit_ids] = _from_set(alpha / norms[:, s][..., None], rows[:, s]).transpose(1, 2)
    return chunk.combine(coefficients)


def _logistic_newton(z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, c: float, iters: int = 50,
                     tol: float = 1e-9) -> torch.Tensor:
    """Minimise ``½‖β‖² + c Σ_i mask_i [log(1 + e^{z_i}) − t_i z_i]``, ``z = Zβ + b`` (b unpenalised),
    for every column of ``t`` at once: ``z`` ``[B, n, r]`` shared by the ``P`` problems of a batch,
    ``t`` ``[B, n, P]``. Newton steps solved by conjugate gradients (Hessian-vector products are two
    batched products), halved while the objective does not decrease. Returns ``β`` ``[B, r, P]``."""
    batch, _, r = z.shape
    problems = t.shape[2]
    beta = torch.zeros((batch, r, problems), dtype=z.dtype, device=z.device)
    bias = torch.zeros((batch, 1, problems), dtype=z.dtype, device=z.device)

    def objective(beta: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        logits = z @ beta + bias
        loss = (torch.nn.functional.softplus(logits) - t * logits) * mask
        return 0.5 * (beta**2).sum(1) + c * loss.sum(1)  # [B, P]

    value = objective(beta, bias)
    for _ in range(iters):
        logits = z @ beta + bias
        p = torch.sigmoid(logits)
        residual = (p - t) * mask
        g_beta = beta + c * z.transpose(1, 2) @ residual
        g_bias = c * residual.sum(1, keepdim=True)
        if max(g_beta.abs().max().item(), g_bias.abs().max().item()) < tol:
            break
        curvature = p * (1 - p) * mask

        def hvp(s_beta: torch.Tensor, s_bias: torch.Tensor, curvature: torch.Tensor = curvature
                ) -> tuple[torch.Tensor, torch.Tensor]:
            u = curvature * (z @ s_beta + s_bias)
            return s_beta + c * z.transpose(1, 2) @ u, c * u.sum(1, keepdim=True)

        step_beta, step_bias = _conjugate_gradient(hvp, -g_beta, -g_bias)
        scale = torch.ones((batch, 1, problems), dtype=z.dtype, device=z.device)
        for _ in range(30):  # backtracking, per problem
            trial = objective(beta + scale * step_beta, bias + scale * step_bias)
            worse = (trial > value + 1e-12 * value.abs())[:, None, :]
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
        beta, bias = beta + scale * step_beta, bias + scale * step_bias
        value = objective(beta, bias)
    return beta


def _conjugate_gradient(hvp: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                        b_beta: torch.Tensor, b_bias: torch.Tensor, iters: int = 200, tol: float = 1e-12
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``H x = b`` for every problem (columns) at once; ``H`` positive definite (``hvp``)."""
    x_beta, x_bias = torch.zeros_like(b_beta), torch.zeros_like(b_bias)
    r_beta, r_bias = b_beta.clone(), b_bias.clone()
    d_beta, d_bias = r_beta.clone(), r_bias.clone()
    rr = (r_beta**2).sum(1, keepdim=True) + (r_bias**2).sum(1, keepdim=True)
    start = rr.clamp_min(1e-300)
    for _ in range(iters):
        if (rr <= tol * start).all():
            break
        h_beta, h_bias = hvp(d_beta, d_bias)
        dhd = (d_beta * h_beta).sum(1, keepdim=True) + (d_bias * h_bias).sum(1, keepdim=True)
        step = torch.where(rr > tol * start, rr / dhd.clamp_min(1e-300), 0)
        x_beta, x_bias = x_beta + step * d_beta, x_bias + step * d_bias
        r_beta, r_bias = r_beta - step * h_beta, r_bias - step * h_bias
        new = (r_beta**2).sum(1, keepdim=True) + (r_bias**2).sum(1, keepdim=True)
        ratio = torch.where(rr > 0, new / rr.clamp_min(1e-300), 0)
        d_beta, d_bias = r_beta + ratio * d_beta, r_bias + ratio * d_bias
        rr = new
    return x_beta, x_bias


def _gradient(chunk: _Chunk, settings: FitSettings) -> torch.Tensor:
    """Adam on ``−d(v) + λ (‖v‖ − 1)²`` with ``d(v) = δ·v / √(vᵀWv + ρ‖v‖²)`` (data scaled by its own
    standard deviation, W the within-class covariance, ρ = shrinkage · tr(W)/d), from the mean
    difference plus 1e-3 of a seeded normal vector; all layers and refits in one loop. ``Wv`` is
    ``Xᵀe/(n−2)`` with ``e`` the projections' deviations from their class means."""
    refits, x = chunk.refits, chunk.x_fit
    n_layers, n, d = x.shape
    apos, aneg = refits.masks(n)
    npos, nneg = refits.n_pos.double()[None, :, None], refits.n_neg.double()[None, :, None]
    rows = npos + nneg
    denominator = (rows - 2).clamp_min(1)
    mean_pos = torch.bmm((apos / npos).float(), x).double()  # [L, R, d]
    mean_neg = torch.bmm((aneg / nneg).float(), x).double()
    delta = mean_pos - mean_neg
    # the data's scale: std of every element of the refit's (uncentred) rows, as before
    assert chunk.raw_fit is not None
    raw = chunk.raw_fit.double()
    sums, squares = raw.sum(-1), (raw**2).sum(-1)  # [L, n]
    member = apos + aneg
    count = rows[..., 0] * d
    mean = (member * sums[:, None]).sum(-1) / count
    scale = ((member * squares[:, None]).sum(-1) / count - mean**2).clamp_min(0).sqrt()
    scale = torch.where(scale > 0, scale, 1.0)[..., None]  # [L, R, 1]
    norms2 = (x.double() ** 2).sum(-1)  # [L, n]
    trace = ((member * norms2[:, None]).sum(-1, keepdim=True) - npos * (mean_pos**2).sum(-1, keepdim=True)
             - nneg * (mean_neg**2).sum(-1, keepdim=True)) / denominator
    ridge = settings.gradient_shrinkage * trace / d
    generator = torch.Generator().manual_seed(settings.gradient_seed)
    noise = torch.randn(d, generator=generator, dtype=torch.float64).to(x.device)
    start = delta / delta.norm(dim=-1, keepdim=True).clamp_min(1e-300) + 1e-3 * noise
    v = start.clone()
    adam = _Adam(v, settings.gradient_lr)
    with torch.no_grad():
        for _ in range(settings.gradient_steps):
            proj = torch.bmm(x, v.detach().float().transpose(1, 2)).double().transpose(1, 2)  # [L, R, n]
            class_mean_p = (apos * proj).sum(-1, keepdim=True) / npos
            class_mean_n = (aneg * proj).sum(-1, keepdim=True) / nneg
            deviation = apos * (proj - class_mean_p) + aneg * (proj - class_mean_n)
            w_v = torch.bmm(deviation.float(), x).double()  # (n − 2) W v, [L, R, d]
            squared = (v * v).sum(-1, keepdim=True)
            total = ((deviation**2).sum(-1, keepdim=True) / denominator + ridge * squared) / scale**2 + 1e-12
            along = (delta * v).sum(-1, keepdim=True) / scale
            length = squared.sqrt()
            # d/dv of −d + λ(‖v‖ − 1)², d = δ_s·v / √total: a combination of δ, Wv and v (scalars per refit)
            bend = along / (total**1.5 * scale**2)
            on_delta = -1 / (scale * total.sqrt())
            on_v = bend * ridge + 2 * settings.gradient_norm_penalty * (length - 1) / length.clamp_min(1e-300)
            adam.step(torch.addcmul(torch.addcmul(on_delta * delta, bend / denominator, w_v), on_v, v))
    return v.float()


class _Adam:
    """``torch.optim.Adam``'s update (default betas and eps, no weight decay), written out so it runs on
    plain tensors under ``no_grad`` or ``inference_mode``; elementwise, so one tensor holds every
    layer's and refit's problem."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.param, self.lr, self.betas, self.eps, self.steps = param, lr, betas, eps, 0
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)

    def step(self, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1**self.steps)
        denominator = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2**self.steps)).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denominator, value=-step_size)


METHOD_FITS: dict[str, Callable[[_Chunk, FitSettings], torch.Tensor]] = {
    "mean_diff": _mean_diff, "probe": _probe, "pca": _pca, "ica": _ica, "gradient": _gradient,
    "random_baseline": _random_baseline,
}


# ---------------------------------------------------------------- the engine


def _to_device(value: Any, device: torch.device) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    return tensor.to(device=device, dtype=torch.float32)


def default_device(splits: Mapping[str, Any]) -> torch.device:
    """Where the activations are: the engine computes there."""
    first = next(iter(splits.values()))
    return first.device if isinstance(first, torch.Tensor) else torch.device("cpu")


def _chunk_size(n_rows: int, n_refits: int, d: int, budget: int, random_k: int) -> int:
    """Layers per chunk so one chunk's tensors stay within ``budget`` bytes (rough, generous)."""
    per_layer = 4 * n_rows * d * 3 + 8 * n_refits * d * 6 + 8 * n_refits * n_rows * n_rows // 8 + 4 * n_rows * random_k
    return max(1, budget // max(per_layer, 1))


def fit_layers(
    splits: Mapping[str, Any],
    layers: Sequence[int],
    methods: Sequence[str] = METHOD_NAMES,
    settings: FitSettings | None = None,
    *,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> FitResult:
    """Fit every method at every layer with cross-validation, held-out and OOD tests and both nulls.

    Args:
        splits: ``fit_pos``, ``fit_neg``, ``test_pos``, ``test_neg`` and optionally ``ood_pos``,
            ``ood_neg``: activations ``[n, layers, d]`` (torch or numpy).
        layers: the model layer of each slot (seeds each layer's permutations).
        methods: method names (see :data:`METHOD_NAMES`).
        settings: the methods' and validation's settings.
        device: where to compute (default: where the activations are).
        progress: called with the number of layers done after each chunk.

    Raises:
        InspectEmError: fewer than two positive or negative fit rows, or a method that gives no
            direction on the whole fit split (e.g. identical class means).
    """
    settings = settings or FitSettings()
    unknown = [m for m in methods if m not in METHOD_FITS]
    if unknown:
        raise InspectEmError(f"unknown method '{unknown[0]}'; choose from {', '.join(METHOD_NAMES)} or all")
    target: torch.device = torch.device(device) if device is not None else default_device(splits)
    n_pos, n_neg = len(splits["fit_pos"]), len(splits["fit_neg"])
    if n_pos < 2 or n_neg < 2:
        raise InspectEmError(f"need at least 2 positive and 2 negative examples, got {n_pos} and {n_neg}")
    names = [name for name in ("fit_pos", "fit_neg", "test_pos", "test_neg", "ood_pos", "ood_neg") if name in splits]
    n_rows = sum(len(splits[name]) for name in names)
    d = int(splits["fit_pos"].shape[-1])
    n_refits = 1 + settings.cv_folds + settings.null_k
    budget = settings.memory_bytes or ((4 << 30) if target.type == "cuda" else (512 << 20))
    chunk = _chunk_size(n_rows, n_refits, d, budget, settings.random_k)
    generator = torch.Generator(device=target).manual_seed(settings.seed)
    directions = torch.randn((d, settings.random_k), generator=generator, device=target, dtype=torch.float32) \
        if settings.random_k else None
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    vectors = {m: np.zeros((len(layers), d), dtype=np.float32) for m in methods}
    frames = []
    for start in range(0, len(layers), chunk):
        slots = list(range(start, min(start + chunk, len(layers))))
        with torch.no_grad():
            frame, fitted = _fit_chunk(splits, names, slots, [layers[s] for s in slots], methods, settings, target,
                                       directions)
        frames.append(frame)
        for m, v in fitted.items():
            vectors[m][slots] = v
        if progress is not None:
            progress(len(slots))
    peak = torch.cuda.max_memory_allocated(target) if target.type == "cuda" else None
    return FitResult(vectors, pd.concat(frames, ignore_index=True), peak)


def _fit_chunk(splits: Mapping[str, Any], names: list[str], slots: list[int], layers: list[int],
               methods: Sequence[str], settings: FitSettings, device: torch.device,
               directions: torch.Tensor | None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One chunk of layers: every method's refits, scored on every split; a metrics frame and the
    fit split's unit directions."""
    data = {name: _to_device(splits[name][:, slots], device).transpose(0, 1).contiguous() for name in names}
    raw_fit = torch.cat([data["fit_pos"], data["fit_neg"]], dim=1)  # [L, n, d]
    mean = raw_fit.double().mean(1)  # [L, d]
    centre = mean.float()[:, None, :]
    n_pos = data["fit_pos"].shape[1]
    refits = _refits(n_pos, data["fit_neg"].shape[1], layers, settings, device)
    chunk = _Chunk(raw_fit - centre, mean, n_pos, refits, raw_fit=raw_fit)
    # every split, centred: fit rows first, then test, then ood
    evaluation = torch.cat([chunk.x_fit] + [data[name] - centre for name in names[2:]], dim=1)
    bounds = np.cumsum([0, len(splits["fit_pos"]) + len(splits["fit_neg"])] + [len(splits[n]) for n in names[2:]])
    rows: dict[str, dict[str, np.ndarray]] = {}
    fitted: dict[str, np.ndarray] = {}
    mean_diff_norm = (data["fit_pos"].double().mean(1) - data["fit_neg"].double().mean(1)).norm(dim=-1)
    random_scores = _random_null(chunk, evaluation, bounds, names, directions) if directions is not None else None
    apos, aneg = refits.masks(chunk.n)
    for method in methods:
        raw = METHOD_FITS[method](chunk, settings).float()  # [L, R, d]
        # sign (positives project higher on the refit's own rows) and unit length
        projected_fit = torch.bmm(raw, chunk.x_fit.transpose(1, 2)).double()  # [L, R, n]
        side = ((apos / refits.n_pos[None, :, None] - aneg / refits.n_neg[None, :, None]) * projected_fit).sum(-1)
        length = raw.double().norm(dim=-1)
        factor = torch.where(length > 0, torch.where(side < 0, -1.0, 1.0) / length.clamp_min(1e-300), 0.0)
        unit = raw.double() * factor[..., None]
        if bool((length[:, 0] == 0).any()):
            layer = layers[int(torch.nonzero(length[:, 0] == 0)[0, 0])]
            raise InspectEmError(f"{method} at layer {layer}: extraction produced a zero or non-finite direction")
        projections = torch.bmm(evaluation, unit.float().transpose(1, 2)).double()  # [L, N, R], centred rows
        projections = projections + torch.einsum("ld,lrd->lr", mean, unit)[:, None, :]  # back to raw rows
        fitted[method] = unit[:, 0].float().cpu().numpy()
        rows[method] = _score(projections, bounds, names, refits, n_pos, settings, random_scores)
    return _frame(rows, methods, layers, mean_diff_norm.cpu().numpy(), settings), fitted


def _random_null(chunk: _Chunk, evaluation: torch.Tensor, bounds: np.ndarray, names: list[str],
                 directions: torch.Tensor) -> dict[str, torch.Tensor]:
    """AUROC and d on the test split of the shared random directions, each signed by the fit split's
    mean difference at the layer. ``directions`` ``[d, k]``; returns ``[L, k]`` each."""
    delta = chunk.x_fit[:, :chunk.n_pos].double().mean(1) - chunk.x_fit[:, chunk.n_pos:].double().mean(1)
    sign = torch.sign(delta.float() @ directions)  # [L, k]
    sign = torch.where(sign == 0, 1.0, sign)
    test_pos = evaluation[:, bounds[1]:bounds[2]]
    test_neg = evaluation[:, bounds[2]:bounds[3]]
    pos = (test_pos @ directions).transpose(1, 2) * sign[..., None]  # [L, k, a]
    neg = (test_neg @ directions).transpose(1, 2) * sign[..., None]
    return {"auroc": auroc(pos, neg), "d": cohens_d(pos, neg)}


def _score(projections: torch.Tensor, bounds: np.ndarray, names: list[str], refits: _Refits, n_pos: int,
           settings: FitSettings, random_scores: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
    """The metrics of one method for every layer of the chunk, from the projections ``[L, N, R]``."""
    fit = projections[:, bounds[0]:bounds[1], 0]
    threshold = best_threshold(fit[:, :n_pos], fit[:, n_pos:])
    out: dict[str, torch.Tensor] = {}
    if refits.n_cv:
        aurocs, ds = [], []
        for f, (held_pos, held_neg) in enumerate(refits.folds):  # a fold's held-back rows, all layers at once
            column = projections[:, :, 1 + f]
            aurocs.append(auroc(column[:, held_pos], column[:, held_neg]))
            ds.append(cohens_d(column[:, held_pos], column[:, held_neg]))
        out["cv_auroc"] = torch.stack(aurocs).mean(0)
        out["cv_cohens_d"] = torch.stack(ds).mean(0)
    out.update(split_scores(fit[:, :n_pos], fit[:, n_pos:], threshold, "fit"))
    for i, split in ((2, "test"), (4, "ood")):
        if len(names) > i:
            block = projections[:, bounds[i - 1]:bounds[i + 1], 0]
            size = bounds[i] - bounds[i - 1]
            out.update(split_scores(block[:, :size], block[:, size:], threshold, split))
    result = {k: v.cpu().numpy() for k, v in out.items()}
    k = refits.n_perm
    if k:
        perm = projections[:, bounds[1]:bounds[3], -k:].transpose(1, 2)  # [L, k, test rows]
        size = bounds[2] - bounds[1]
        perm_auroc = auroc(perm[..., :size], perm[..., size:]).cpu().numpy()
        perm_d = cohens_d(perm[..., :size], perm[..., size:]).cpu().numpy()
    else:
        perm_auroc = perm_d = np.zeros((projections.shape[0], 0))
    result.update(null_summary(result["test_auroc"], perm_auroc, "null_perm"))
    result.update(null_summary(result["test_cohens_d"], perm_d, "null_perm_d"))
    random_auroc = random_scores["auroc"].cpu().numpy() if random_scores else np.zeros((projections.shape[0], 0))
    random_d = random_scores["d"].cpu().numpy() if random_scores else np.zeros((projections.shape[0], 0))
    result.update(null_summary(result["test_auroc"], random_auroc, "null_random"))
    result.update(null_summary(result["test_cohens_d"], random_d, "null_random_d"))
    result["threshold"] = threshold.cpu().numpy()
    return result


def _frame(rows: dict[str, dict[str, np.ndarray]], methods: Sequence[str], layers: list[int],
           mean_diff_norm: np.ndarray, settings: FitSettings) -> pd.DataFrame:
    """Layer-major rows (each layer: every method in order), columns in the extraction's order."""
    records = []
    for i, layer in enumerate(layers):
        for method in methods:
            values = rows[method]
            record: dict[str, Any] = {"method": method, "layer": int(layer)}
            record.update({k: float(v[i]) for k, v in values.items() if k != "threshold"})
            record["threshold"] = float(values["threshold"][i])
            record["mean_diff_norm"] = float(mean_diff_norm[i])
            records.append(record)
    frame = pd.DataFrame(records)
    order = ["method", "layer"] + [c for c in COLUMN_ORDER if c in frame.columns]
    return frame[order + [c for c in frame.columns if c not in order]]


COLUMN_ORDER = (
    ["cv_auroc", "cv_cohens_d"]
    + [f"{s}_{k}" for s in ("fit", "test", "ood") for k in ("accuracy", "auroc", "cohens_d", "separation", "mean_pos",
                                                            "mean_neg")]
    + ["null_perm_p95", "null_perm_p", "null_perm_d_p95", "null_perm_d_p", "null_random_p95", "null_random_p",
       "null_random_d_p95", "null_random_d_p", "threshold", "mean_diff_norm"]
)


def fit_direction(pos: np.ndarray, neg: np.ndarray, method: str, settings: FitSettings | None = None) -> np.ndarray:
    """One method fitted once on ``pos`` ``[n, d]`` vs ``neg`` ``[m, d]`` (no refits): the unit
    direction ``[d]``, signed so the positives project higher."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise InspectEmError(f"pos and neg must be [n, d] with the same d, got {pos.shape} and {neg.shape}")
    base = settings or FitSettings()
    quiet = FitSettings(**{**base.__dict__, "null_k": 0, "random_k": 0, "cv_folds": 0})
    splits = {"fit_pos": pos[:, None], "fit_neg": neg[:, None], "test_pos": pos[:, None], "test_neg": neg[:, None]}
    return fit_layers(splits, [0], [method], quiet).vectors[method][0]

