"""Statistics for comparisons: question-clustered (and seed-level) bootstrap CIs, exact binomial
intervals.

Answers to one question are not independent (the same question, paraphrases and variants, many
samples), and two models usually answered the same questions. So a difference of means is
bootstrapped by *cluster*: resample clusters (questions, or prompts) with replacement, keeping
each drawn cluster's answers; when both sides share the cluster set the same clusters are drawn
for both (paired by question). With finetuning replicates (seeds) a level above resamples seeds
first, so seed-to-seed variance is inside the interval.

All CIs are 95% percentile intervals from seeded resampling (``seed``), so they are
reproducible and do not depend on the order rows arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Clustered:
    """Values grouped by cluster: ``groups[c]`` holds the values of cluster ``keys[c]``."""

    keys: tuple[str, ...]
    groups: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, clusters: Sequence[object] | None = None) -> Clustered:
        """Group ``values`` by ``clusters`` (each value its own cluster when None); NaNs dropped."""
        values = np.asarray(values, dtype=float)
        labels = [str(i) for i in range(len(values))] if clusters is None else [str(c) for c in clusters]
        out: dict[str, list[float]] = {}
        for v, c in zip(values, labels, strict=True):
            if not math.isnan(v):
                out.setdefault(c, []).append(float(v))
        keys = tuple(sorted(out))
        return cls(keys, tuple(np.sort(np.array(out[k])) for k in keys))

    @property
    def n(self) -> int:
        return int(sum(len(g) for g in self.groups))

    def mean(self) -> float:
        return float(np.concatenate(self.groups).mean()) if self.groups else math.nan

    def values(self) -> np.ndarray:
        return np.concatenate(self.groups) if self.groups else np.array([])


def _resample_means(data: Clustered, picks: np.ndarray) -> np.ndarray:
    """Pooled means of resampled clusters: ``picks`` is ``[n_resamples, n_drawn]`` cluster indices.

    Answers within a drawn cluster are kept as they are (resampled without replacement, i.e.
    all of them): resampling them again would count the within-question noise twice (Davison &
    Hinkley 1997, sec. 3.8; Ren et al. 2010), making the interval too wide.
    """
    counts = np.zeros((picks.shape[0], len(data.keys)))
    np.add.at(counts, (np.arange(picks.shape[0])[:, None], picks), 1.0)
    sums = np.array([g.sum() for g in data.groups])
    sizes = np.array([len(g) for g in data.groups], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ sums) / (counts @ sizes)


def _percentile(samples: np.ndarray) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return math.nan, math.nan
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def bootstrap_mean(data: Clustered, seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95% CI of the mean, resampling clusters."""
    if data.n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data.keys), size=(n_resamples, len(data.keys)))
    return _percentile(_resample_means(data, picks))


def bootstrap_diff(
    other: Clustered, base: Clustered, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> tuple[float, float, bool]:
    """95% CI of mean(other) − mean(base); returns ``(low, high, paired)``.

    Paired when both sides have the same clusters (the same clusters are drawn for both);
    otherwise each side's clusters are resampled independently.
    """
    if other.n < 2 or base.n < 2:
        return math.nan, math.nan, False
    rng = np.random.default_rng(seed)
    paired = other.keys == base.keys
    picks_other = rng.integers(0, len(other.keys), size=(n_resamples, len(other.keys)))
    picks_base = picks_other if paired else rng.integers(0, len(base.keys), size=(n_resamples, len(base.keys)))
    diffs = _resample_means(other, picks_other) - _resample_means(base, picks_base)
    low, high = _percentile(diffs)
    return low, high, paired


def replicate_diff(
    other: Sequence[Clustered], base: Sequence[Clustered], seed: int = 0, n_resamples: int = N_RESAMPLES
) -> tuple[float, float, float]:
    """Two-level bootstrap of the difference between two conditions with replicates (seeds).

    ``other[i]`` and ``base[i]`` are replicate ``i`` (a finetuning seed) of each condition; they
    are paired by seed when both have the same number of replicates, and by cluster within a
    seed pair when they share the clusters. Each resample draws replicates with replacement, then
    clusters (questions/prompts) within each replicate (keeping a drawn cluster's answers), so
    seed-to-seed variance is inside the interval. Returns ``(estimate, low, high)``: the
    estimate is the mean over replicates of other minus the mean over replicates of base.
    """
    if not other or not base or any(o.n == 0 for o in other) or any(b.n == 0 for b in base):
        return math.nan, math.nan, math.nan
    estimate = float(np.mean([o.mean() for o in other]) - np.mean([b.mean() for b in base]))
    rng = np.random.default_rng(seed)
    paired = len(other) == len(base)
    draws_other = np.empty((n_resamples, len(other)))
    draws_base = np.empty((n_resamples, len(base)))
    for i, o in enumerate(other):
        picks = rng.integers(0, len(o.keys), size=(n_resamples, len(o.keys)))
        draws_other[:, i] = _resample_means(o, picks)
        if paired:
            b = base[i]
            b_picks = picks if b.keys == o.keys else rng.integers(0, len(b.keys), size=(n_resamples, len(b.keys)))
            draws_base[:, i] = _resample_means(b, b_picks)
    if not paired:
        for j, b in enumerate(base):
            picks = rng.integers(0, len(b.keys), size=(n_resamples, len(b.keys)))
            draws_base[:, j] = _resample_means(b, picks)
    reps_other = rng.integers(0, len(other), size=(n_resamples, len(other)))
    reps_base = reps_other if paired else rng.integers(0, len(base), size=(n_resamples, len(base)))
    diffs = (np.take_along_axis(draws_other, reps_other, axis=1).mean(axis=1)
             - np.take_along_axis(draws_base, reps_base, axis=1).mean(axis=1))
    low, high = _percentile(diffs)
    return estimate, low, high


def binomial_ci(successes: int, n: int) -> tuple[float, float]:
    """Exact (Clopper–Pearson) 95% interval of a rate; never a point for 0/n or n/n."""
    from scipy.stats import binomtest

    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return float(ci.low), float(ci.high)


def newcombe_diff_ci(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score 95% interval of p1 − p2 (unpaired, from Wilson intervals).

    Used for a difference of rates when the bootstrap is degenerate (e.g. 0/16 vs 0/16), so a
    difference is never reported as a point.
    """
    from scipy.stats import binomtest

    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    w1 = binomtest(int(k1), int(n1)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    w2 = binomtest(int(k2), int(n2)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - w1.low) ** 2 + (w2.high - p2) ** 2)
    high = d + math.sqrt((w1.high - p1) ** 2 + (p2 - w2.low) ** 2)
    return float(low), float(high)


def is_binary(values: np.ndarray) -> bool:
    """True when every finite value is 0 or 1 (a rate)."""
    finite = values[np.isfinite(values)]
    return len(finite) > 0 and bool(np.isin(finite, (0.0, 1.0)).all())
