"""Statistics for comparisons: question-clustered bootstrap CIs paired on shared clusters, a
two-level (seed × question) bootstrap for finetuning replicates, exact and score intervals for rates.

Answers to one question are not independent (the same question, its variants, many samples), and
two models usually answered the same questions. So a difference of means is bootstrapped by
*cluster* (a question or prompt, keyed by the dataset's own ids: :func:`inspect_em.readout.cluster_keys`):

- **Paired on the shared clusters.** A difference is computed on the clusters both sides have (a
  cluster only one side has is dropped and counted), and each resample draws the same clusters for
  both sides, so a question's own level cancels in the difference.
- **One shared cluster** (one prompt, several answers): the prompt's level cancels; the answers of
  each side are the units, resampled on their own (two models' answers to a prompt are independent
  draws, not pairs).
- **No shared cluster**: each side's clusters are resampled independently (unpaired).
- **Seeds × questions** (finetuning replicates, :func:`replicate_diff`): each resample draws seeds
  and, once for all of them and for the reference, questions (Owen's pigeonhole bootstrap for a
  crossed design: slightly conservative). Every seed of a condition is paired by question with the
  same base run; two conditions' seeds are paired by seed only when the caller says they match.
- **Resampling within a drawn cluster** is not done: it would count the within-question noise
  twice (Davison & Hinkley 1997, sec. 3.8), making the interval too wide.

Intervals are 95% percentile intervals of seeded resamples (``seed``), so they are reproducible
and do not depend on row order. Rates with no variation get exact (Clopper–Pearson) intervals, and a
difference of two such rates Newcombe's score interval: the paired form (Newcombe 1998, method 10)
when both sides answered the same prompts, the unpaired hybrid (method 10 of Newcombe 1998b)
otherwise; so no interval is a point. ``tests/test_stats.py`` checks coverage by simulation.
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
    """Values grouped by cluster: ``groups[c]`` holds the values of cluster ``keys[c]`` (keys sorted)."""

    keys: tuple[str, ...]
    groups: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, clusters: Sequence[object] | None = None) -> Clustered:
        """Group ``values`` by ``clusters`` (each value its own cluster when None); NaNs dropped.
        Within a cluster the values keep their order (epochs of one sample stay together)."""
        values = np.asarray(values, dtype=float)
        labels = [str(i) for i in range(len(values))] if clusters is None else [str(c) for c in clusters]
        out: dict[str, list[float]] = {}
        for v, c in zip(values, labels, strict=True):
            if not math.isnan(v):
                out.setdefault(c, []).append(float(v))
        keys = tuple(sorted(out))
        return cls(keys, tuple(np.array(out[k]) for k in keys))

    @property
    def n(self) -> int:
        return int(sum(len(g) for g in self.groups))

    def mean(self) -> float:
        return float(np.concatenate(self.groups).mean()) if self.groups else math.nan

    def values(self) -> np.ndarray:
        return np.concatenate(self.groups) if self.groups else np.array([])

    def restrict(self, keys: Sequence[str]) -> Clustered:
        """The clusters named in ``keys`` (sorted), dropping the others."""
        index = {k: i for i, k in enumerate(self.keys)}
        kept = sorted(k for k in keys if k in index)
        return Clustered(tuple(kept), tuple(self.groups[index[k]] for k in kept))

    def sums_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-cluster sums and answer counts, ``[n_clusters]`` each."""
        return (np.array([g.sum() for g in self.groups], dtype=float),
                np.array([len(g) for g in self.groups], dtype=float))

    def as_answers(self) -> Clustered:
        """Every answer its own cluster (for a group of one cluster: the answers are the units)."""
        values = self.values()
        return Clustered(tuple(f"{i:08d}" for i in range(len(values))), tuple(np.array([v]) for v in values))


@dataclass(frozen=True)
class DiffCI:
    """A difference ``other − reference`` with its 95% interval and how it was paired.

    Attributes:
        estimate: the difference of pooled means on the clusters compared.
        low, high: the interval.
        paired: both sides were restricted to the clusters they share and those were drawn
            together (a one-cluster comparison is paired on that prompt; see the module docstring).
        n_paired: clusters shared (compared) by both sides; 0 when unpaired.
        n_dropped: clusters only one side has, left out of a paired difference.
        method: how the interval was computed (written into reports).
    """

    estimate: float
    low: float
    high: float
    paired: bool
    n_paired: int
    n_dropped: int
    method: str


def _draw_counts(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """How often each of ``n`` units is drawn in each resample: ``[n_resamples, n]``."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(float)


def _resample_means(counts: np.ndarray, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Pooled means of resampled clusters: ``counts`` ``[B, n]`` × per-cluster ``sums``/``sizes``
    (``[n]``, or ``[n, k]`` for ``k`` sets sharing the draws) → ``[B]`` (or ``[B, k]``).

    Answers within a drawn cluster are all kept (see the module docstring)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ sums) / (counts @ sizes)


def _t_factor(scale: float, df: float) -> float:
    """``scale · t_df(α/2) / z(α/2)``: how far a normal-based interval's halves are stretched for a
    variance estimated from ``df + 1`` units (``scale`` = √(n/(n−1)) undoes the bootstrap's 1/n)."""
    from scipy.stats import norm, t

    alpha = (1 - CONFIDENCE) / 2
    return scale * float(t.ppf(alpha, df) / norm.ppf(alpha)) if math.isfinite(df) else scale


def _stretched(samples: np.ndarray, factor: float = 1.0) -> tuple[float, float]:
    """The 95% percentile interval of ``samples``, both halves stretched about the median by ``factor``."""
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return math.nan, math.nan
    alpha = (1 - CONFIDENCE) / 2
    low, centre, high = np.quantile(samples, [alpha, 0.5, 1 - alpha])
    return float(centre - factor * (centre - low)), float(centre + factor * (high - centre))


def _percentile(samples: np.ndarray, n_units: int) -> tuple[float, float]:
    """An expanded percentile interval for ``n_units`` resampled units (after Hesterberg 2015): the
    plain percentile interval is too narrow for few clusters (its variance divides by n, not n − 1,
    and it uses normal, not t, quantiles), so its halves are stretched by
    ``√(n/(n−1)) · t_{n−1}(α/2) / z(α/2)``, which tends to 1 as n grows."""
    if n_units < 2:
        return math.nan, math.nan
    return _stretched(samples, _t_factor(math.sqrt(n_units / (n_units - 1)), n_units - 1))


def _units(data: Clustered) -> Clustered:
    """The resampling units of one side: its clusters, or its answers when it has one cluster."""
    return data.as_answers() if len(data.keys) == 1 else data


def bootstrap_mean(data: Clustered, seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95% CI of the pooled mean, resampling clusters (answers when there is a single cluster)."""
    if data.n < 2:
        return math.nan, math.nan
    units = _units(data)
    counts = _draw_counts(np.random.default_rng(seed), len(units.keys), n_resamples)
    return _percentile(_resample_means(counts, *units.sums_sizes()), len(units.keys))


def bootstrap_diff(other: Clustered, base: Clustered, seed: int = 0, n_resamples: int = N_RESAMPLES) -> DiffCI:
    """95% CI of mean(other) − mean(base), paired on the clusters both share (see the module docstring)."""
    shared = sorted(set(other.keys) & set(base.keys))
    dropped = len(set(other.keys) ^ set(base.keys)) if shared else 0
    if shared:
        other, base = other.restrict(shared), base.restrict(shared)
    estimate = other.mean() - base.mean() if other.n and base.n else math.nan
    if other.n < 2 or base.n < 2:
        return DiffCI(estimate, math.nan, math.nan, bool(shared), len(shared), dropped, "too few answers")
    rng = np.random.default_rng(seed)
    if len(shared) >= 2:
        counts = _draw_counts(rng, len(shared), n_resamples)
        diffs = _resample_means(counts, *other.sums_sizes()) - _resample_means(counts, *base.sums_sizes())
        low, high = _percentile(diffs, len(shared))
        return DiffCI(estimate, low, high, True, len(shared), dropped, "paired cluster bootstrap")
    a, b = _units(other), _units(base)
    diffs = (_resample_means(_draw_counts(rng, len(a.keys), n_resamples), *a.sums_sizes())
             - _resample_means(_draw_counts(rng, len(b.keys), n_resamples), *b.sums_sizes()))
    method = "bootstrap of answers to one shared prompt" if shared else "cluster bootstrap (unpaired)"
    return DiffCI(estimate, *_percentile(diffs, min(len(a.keys), len(b.keys))), bool(shared), len(shared), dropped,
                  method)


def replicate_diff(
    other: Sequence[Clustered], base: Sequence[Clustered], *, pair_seeds: bool = False, seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> DiffCI:
    """Two-level (seeds × questions) bootstrap of the difference between two conditions.

    ``other[i]`` is replicate ``i`` (a finetuning seed) of one condition and ``base[j]`` of the
    reference (a single run for the base model, which has no finetuning seed). The estimate is the
    mean over replicates of other minus the mean over replicates of the reference, on the questions
    every replicate answered (others are dropped and counted).

    Each resample draws those questions once for every replicate of both sides (each seed is paired
    by question with the reference) and, independently, each side's replicates (the same indices
    on both sides when ``pair_seeds``: the caller checked that replicate ``i`` of both used the
    same seed and data). Seeds are crossed with questions, so drawing both counts the
    seed × question noise twice (Owen 2007, the pigeonhole bootstrap); the replicate draws are
    therefore rescaled to the seed variance a two-way ANOVA estimates (mean squares of the
    replicates' means minus the residual's share; Carpenter, Goldstein & Rasbash 2003 rescale
    multilevel bootstrap draws the same way), and the question draws by √(Q/(Q−1)). The interval's
    quantiles are widened by a t with Welch–Satterthwaite degrees of freedom from the two levels,
    so three seeds give an honestly wide interval when the seeds differ. Without two shared
    questions, clusters are resampled per replicate (unpaired).
    """
    if not other or not base or any(o.n == 0 for o in other) or any(b.n == 0 for b in base):
        return DiffCI(math.nan, math.nan, math.nan, False, 0, 0, "missing replicates")
    if pair_seeds and len(other) != len(base):
        raise ValueError(f"pair_seeds needs as many replicates on both sides, got {len(other)} and {len(base)}")
    every = [set(x.keys) for x in (*other, *base)]
    shared = sorted(set.intersection(*every))
    rng = np.random.default_rng(seed)
    if len(shared) < 2:
        return _unpaired_replicates(other, base, rng, n_resamples)
    other = [o.restrict(shared) for o in other]
    base = [b.restrict(shared) for b in base]
    estimate = float(np.mean([o.mean() for o in other]) - np.mean([b.mean() for b in base]))
    n_q = len(shared)
    counts = _draw_counts(rng, n_q, n_resamples)
    cells_other, cells_base = _cells(other), _cells(base)
    draws_other = _resample_means(counts, cells_other[0].T, cells_other[1].T)  # [B, n_replicates]
    draws_base = _resample_means(counts, cells_base[0].T, cells_base[1].T)
    questions = draws_other.mean(axis=1) - draws_base.mean(axis=1)  # every replicate, questions drawn
    centre = float(np.nanmedian(questions))
    # each level's deviations stretched by its own small-sample factor (variance bias and t quantile)
    total = centre + _t_factor(math.sqrt(n_q / (n_q - 1)), n_q - 1) * (questions - centre)
    means_other, means_base = cells_other[0] / cells_other[1], cells_base[0] / cells_base[1]
    # replicate level: normal draws with the ANOVA seed variance of each side (or of the paired
    # differences), stretched for its degrees of freedom (Welch–Satterthwaite over the sides)
    levels = [(seed_variance(m) / len(m), len(m) - 1)
              for m in ([means_other - means_base] if pair_seeds else [means_other, means_base]) if len(m) > 1]
    variance = sum(v for v, _ in levels)
    if variance > 0:
        df = variance**2 / sum(v**2 / d for v, d in levels)
        total = total + _t_factor(1.0, df) * math.sqrt(variance) * rng.standard_normal(n_resamples)
    method = "two-level bootstrap, paired by question" + (" and seed" if pair_seeds else "")
    dropped = len(set.union(*every)) - n_q
    return DiffCI(estimate, *_stretched(total), True, n_q, dropped, method)


def _cells(reps: Sequence[Clustered]) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate and cluster: sums and answer counts, ``[n_replicates, n_clusters]`` each."""
    sums, sizes = zip(*(r.sums_sizes() for r in reps), strict=True)
    return np.stack(sums), np.stack(sizes)


def seed_variance(cell_means: np.ndarray) -> float:
    """Variance between replicates, from a replicate × question table of cell means ``[S, Q]``
    (two-way ANOVA without replication: the variance of the replicates' means minus the residual
    mean square's share, 1/Q of it; floored at 0)."""
    n_s, n_q = cell_means.shape
    if n_s < 2 or n_q < 2:
        return 0.0
    resid = cell_means - cell_means.mean(axis=1, keepdims=True) - cell_means.mean(axis=0, keepdims=True) \
        + cell_means.mean()
    ms_resid = float((resid**2).sum()) / ((n_s - 1) * (n_q - 1))
    return max(float(cell_means.mean(axis=1).var(ddof=1)) - ms_resid / n_q, 0.0)


def _unpaired_replicates(other: Sequence[Clustered], base: Sequence[Clustered], rng: np.random.Generator,
                         n_resamples: int) -> DiffCI:
    """Replicates that share fewer than two questions: each replicate's clusters resampled on their
    own, then the replicates (expanded percentile over the fewest units)."""
    def draws(reps: Sequence[Clustered]) -> np.ndarray:
        out = np.empty((n_resamples, len(reps)))
        for i, r in enumerate(reps):
            units = _units(r)
            out[:, i] = _resample_means(_draw_counts(rng, len(units.keys), n_resamples), *units.sums_sizes())
        return out

    def seed_means(d: np.ndarray) -> np.ndarray:
        reps = rng.integers(0, d.shape[1], size=d.shape)
        return np.take_along_axis(d, reps, axis=1).mean(axis=1)

    estimate = float(np.mean([o.mean() for o in other]) - np.mean([b.mean() for b in base]))
    diffs = seed_means(draws(other)) - seed_means(draws(base))
    units = min(len(_units(r).keys) for r in (*other, *base))
    return DiffCI(estimate, *_percentile(diffs, units), False, 0, 0, "two-level bootstrap (unpaired questions)")


def binomial_ci(successes: int, n: int) -> tuple[float, float]:
    """Exact (Clopper–Pearson) 95% interval of a rate; never a point for 0/n or n/n."""
    from scipy.stats import binomtest

    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return float(ci.low), float(ci.high)


def _wilson(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe_diff_ci(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score 95% interval of p1 − p2 for **unpaired** rates (from Wilson intervals).

    Used for a difference of rates when the bootstrap is degenerate (e.g. 0/16 vs 0/16) and the
    two sides did not answer the same prompts, so a difference is never reported as a point.
    """
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    (l1, u1), (l2, u2) = _wilson(k1, n1), _wilson(k2, n2)
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return float(d - math.hypot(p1 - l1, u2 - p2)), float(d + math.hypot(u1 - p1, p2 - l2))


def newcombe_paired_ci(both: int, only_first: int, only_second: int, neither: int) -> tuple[float, float]:
    """Newcombe's score 95% interval of p1 − p2 for **paired** rates (Newcombe 1998, Stat Med
    17:2635, method 10), from the 2×2 table of pairs: ``both`` (1, 1), ``only_first`` (1, 0),
    ``only_second`` (0, 1), ``neither`` (0, 0). The Wilson limits of each margin are combined with
    the correlation of the pairs (phi, continuity-corrected when positive, 0 when undefined)."""
    a, b, c, d = both, only_first, only_second, neither
    n = a + b + c + d
    if n == 0:
        return math.nan, math.nan
    (l1, u1), (l2, u2) = _wilson(a + b, n), _wilson(a + c, n)
    p1, p2 = (a + b) / n, (a + c) / n
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        phi = 0.0
    else:
        cross = a * d - b * c
        phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(margins)
    theta = p1 - p2
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    epsilon = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return float(max(theta - delta, -1.0)), float(min(theta + epsilon, 1.0))


def paired_table(other: Clustered, base: Clustered) -> tuple[int, int, int, int]:
    """The 2×2 table of paired binary answers: answers of each shared cluster paired in order
    (epoch order), a cluster's surplus answers on one side left out."""
    a = b = c = d = 0
    for key in set(other.keys) & set(base.keys):
        x, y = other.groups[other.keys.index(key)], base.groups[base.keys.index(key)]
        for u, v in zip(x, y, strict=False):
            a += int(u == 1 and v == 1)
            b += int(u == 1 and v == 0)
            c += int(u == 0 and v == 1)
            d += int(u == 0 and v == 0)
    return a, b, c, d


def is_binary(values: np.ndarray) -> bool:
    """True when every finite value is 0 or 1 (a rate)."""
    finite = values[np.isfinite(values)]
    return len(finite) > 0 and bool(np.isin(finite, (0.0, 1.0)).all())
