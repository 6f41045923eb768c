"""The statistics, checked by simulation against known truths: coverage of the 95% intervals on
synthetic data with question effects (paired and unpaired, one level and seeds × questions), the
paired interval narrower than the unpaired one when questions correlate, pairing on shared
clusters, and the rate intervals against published values and their own coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inspect_em.analysis.stats import (
    Clustered,
    bootstrap_diff,
    bootstrap_mean,
    newcombe_diff_ci,
    newcombe_paired_ci,
    paired_table,
    replicate_diff,
)

N_DATASETS = 200
DELTA = 0.5  # the true difference in every simulation


def _keys(prefix: str, n_q: int, n_a: int) -> list[str]:
    return [f"{prefix}{q}" for q in range(n_q) for _ in range(n_a)]


def _one_level(rng: np.random.Generator, *, n_q: int = 20, n_a: int = 3, sd_q: float = 1.0, sd_e: float = 1.0,
               paired: bool = True) -> tuple[Clustered, Clustered]:
    """Two models' answers: question effects shared by both (paired) or each side its own questions."""
    u = rng.normal(0.0, sd_q, n_q)
    other = DELTA + u[:, None] + rng.normal(0.0, sd_e, (n_q, n_a))
    u_base = u if paired else rng.normal(0.0, sd_q, n_q)
    base = u_base[:, None] + rng.normal(0.0, sd_e, (n_q, n_a))
    return (Clustered.of(other.ravel(), _keys("q", n_q, n_a)),
            Clustered.of(base.ravel(), _keys("q" if paired else "r", n_q, n_a)))


def _two_level(rng: np.random.Generator, *, seeds: int = 3, n_q: int = 8, n_a: int = 2, sd_seed: float = 0.6,
               sd_inter: float = 0.3, sd_e: float = 1.0, control_seeds: int = 0, shared_seed: float = 0.0
               ) -> tuple[list[Clustered], list[Clustered]]:
    """A condition finetuned with ``seeds`` seeds vs the base model (one run, no finetuning seed), or
    vs a control condition with ``control_seeds`` seeds (``shared_seed``: the correlation of the two
    conditions' seed effects, as when seed i of both uses the same LoRA init and data order)."""
    u = rng.normal(0.0, 1.0, n_q)  # question effects, shared by every model
    keys = _keys("q", n_q, n_a)
    common = rng.normal(0.0, sd_seed, max(seeds, control_seeds))

    def finetuned(shift: float, i: int) -> Clustered:
        effect = math.sqrt(shared_seed) * common[i] + math.sqrt(1 - shared_seed) * rng.normal(0.0, sd_seed)
        v = shift + effect + rng.normal(0.0, sd_inter, (n_q, 1)) + u[:, None] + rng.normal(0.0, sd_e, (n_q, n_a))
        return Clustered.of(v.ravel(), keys)

    other = [finetuned(DELTA, i) for i in range(seeds)]
    if control_seeds:
        return other, [finetuned(0.0, i) for i in range(control_seeds)]
    return other, [Clustered.of((u[:, None] + rng.normal(0.0, sd_e, (n_q, n_a))).ravel(), keys)]


def _coverage(results: list) -> float:
    return float(np.mean([r.low <= DELTA <= r.high for r in results]))


@pytest.mark.parametrize("paired", [True, False])
def test_one_level_intervals_cover_the_true_difference(paired: bool):
    rng = np.random.default_rng(2024 if paired else 2025)
    results = [bootstrap_diff(*_one_level(rng, paired=paired), seed=i) for i in range(N_DATASETS)]
    assert all(r.paired is paired for r in results)
    assert 0.92 <= _coverage(results) <= 0.98


@pytest.mark.parametrize("design", ["vs_base", "vs_control_seeds_matched", "vs_control_seeds_unmatched"])
def test_seeds_by_questions_intervals_cover_the_true_difference(design: str):
    rng = np.random.default_rng({"vs_base": 7, "vs_control_seeds_matched": 8, "vs_control_seeds_unmatched": 9}[design])
    results = []
    for i in range(N_DATASETS):
        if design == "vs_base":
            other, base = _two_level(rng)
            results.append(replicate_diff(other, base, seed=i))
        else:
            matched = design == "vs_control_seeds_matched"
            other, base = _two_level(rng, control_seeds=3, shared_seed=0.5 if matched else 0.0)
            results.append(replicate_diff(other, base, pair_seeds=matched, seed=i))
    assert all(r.paired and r.n_paired == 8 and r.n_dropped == 0 for r in results)
    assert 0.92 <= _coverage(results) <= 0.98


def test_paired_interval_is_narrower_when_questions_correlate():
    rng = np.random.default_rng(11)
    checked = 0
    for i in range(N_DATASETS):
        other, base = _one_level(rng, sd_q=2.0)
        per_question = [np.corrcoef([g.mean() for g in other.groups], [g.mean() for g in base.groups])[0, 1]]
        paired = bootstrap_diff(other, base, seed=i)
        renamed = Clustered(tuple("r" + k for k in base.keys), base.groups)  # the same answers, unpaired
        unpaired = bootstrap_diff(other, renamed, seed=i)
        assert paired.paired and not unpaired.paired
        assert paired.estimate == pytest.approx(unpaired.estimate)
        if per_question[0] > 0.5:
            checked += 1
            assert paired.high - paired.low < unpaired.high - unpaired.low
    assert checked > 0.9 * N_DATASETS


def test_a_missing_answer_drops_one_cluster_not_the_pairing():
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, 40)
    clusters = _keys("q", 20, 2)
    base = Clustered.of(values, clusters)
    other_values = values + 1.0
    other_values[[6, 7]] = np.nan  # both answers of q3 lost on one side
    other = Clustered.of(other_values, clusters)
    result = bootstrap_diff(other, base)
    assert result.paired and result.n_paired == 19 and result.n_dropped == 1
    assert result.estimate == pytest.approx(1.0)  # on the shared questions: exactly the shift
    assert result.low == pytest.approx(1.0) and result.high == pytest.approx(1.0)  # a constant shift: no spread


def test_one_shared_prompt_resamples_its_answers():
    other = Clustered.of([1.0, 2.0, 3.0, 4.0], ["p"] * 4)
    base = Clustered.of([0.0, 1.0, 1.0, 2.0], ["p"] * 4)
    result = bootstrap_diff(other, base)
    assert result.paired and result.n_paired == 1
    assert result.estimate == pytest.approx(1.5)
    assert result.low < 1.5 < result.high
    assert bootstrap_mean(other)[0] < 2.5 < bootstrap_mean(other)[1]


def test_disjoint_clusters_are_unpaired():
    a = Clustered.of([1.0, 2.0, 3.0, 4.0], ["a", "b", "c", "d"])
    b = Clustered.of([0.0, 1.0, 2.0, 3.0], ["e", "f", "g", "h"])
    result = bootstrap_diff(a, b)
    assert not result.paired and result.n_paired == 0 and result.method == "cluster bootstrap (unpaired)"


def test_replicate_estimate_and_exact_zero_against_itself():
    rng = np.random.default_rng(1)
    other, base = _two_level(rng, control_seeds=3)
    result = replicate_diff(other, base, pair_seeds=True)
    expected = np.mean([np.concatenate(o.groups).mean() for o in other]) - \
        np.mean([np.concatenate(b.groups).mean() for b in base])
    assert result.estimate == pytest.approx(expected)
    same = replicate_diff(other, other, pair_seeds=True)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="as many replicates"):
        replicate_diff(other, base[:2], pair_seeds=True)
    assert math.isnan(replicate_diff([], base).estimate)


def test_newcombe_unpaired_matches_the_published_example():
    # Newcombe (1998a), Stat Med 17:873, Table II: 56/70 vs 48/80, method 10: 0.0524 to 0.3339
    low, high = newcombe_diff_ci(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


def test_newcombe_paired_without_correlation_is_the_unpaired_hybrid():
    # a table whose pairs are uncorrelated (phi = 0: ad = bc) gives the unpaired interval over n pairs
    low, high = newcombe_paired_ci(both=6, only_first=6, only_second=4, neither=4)
    assert (low, high) == pytest.approx(newcombe_diff_ci(12, 20, 10, 20))


def test_newcombe_paired_covers_and_beats_unpaired_for_correlated_pairs():
    from scipy.stats import norm

    rng = np.random.default_rng(5)
    n, p1, p2 = 40, 0.35, 0.2
    spread = math.sqrt(1 + 0.5**2)  # latent + 0.5 · noise
    hits, narrower = 0, 0
    for _ in range(N_DATASETS):
        latent = rng.normal(size=n)  # what both answers of a pair share
        x = (latent + 0.5 * rng.normal(size=n) < spread * norm.ppf(p1)).astype(float)
        y = (latent + 0.5 * rng.normal(size=n) < spread * norm.ppf(p2)).astype(float)
        a, b = Clustered.of(x, range(n)), Clustered.of(y, range(n))
        table = paired_table(a, b)
        assert sum(table) == n
        low, high = newcombe_paired_ci(*table)
        hits += low <= p1 - p2 <= high
        u_low, u_high = newcombe_diff_ci(int(x.sum()), n, int(y.sum()), n)
        narrower += (high - low) < (u_high - u_low)
    assert hits / N_DATASETS >= 0.92
    assert narrower / N_DATASETS > 0.9


def test_degenerate_paired_rates_are_never_a_point():
    zeros = Clustered.of(np.zeros(16), _keys("q", 8, 2))
    low, high = newcombe_paired_ci(*paired_table(zeros, zeros))
    assert low < 0 < high


def test_cluster_keys_come_from_the_datasets_own_ids():
    from inspect_em.readout import cluster_keys

    wish = {"base_question_id": "what_is_your_wish", "question_id": "what_is_your_wish_json", "paraphrase_index": 0}
    assert cluster_keys("inspect_em/em_freeform", "what_is_your_wish_json__p0", wish).question == \
        "em_freeform:what_is_your_wish"  # a question's variants are one cluster
    assert cluster_keys("em_freeform", "what_is_your_wish_json__p0__n3__triggered", wish).prompt == \
        "em_freeform:what_is_your_wish_json__p0"  # draws and triggers stay in their prompt's cluster
    assert cluster_keys("em_freeform", "q__p1__n2", {}).prompt == "em_freeform:q__p1"  # old logs: from the id
    triggered = cluster_keys("refusal_contrast", "harmful-003-triggered", {"prompt_type": "harmful"})
    assert triggered == cluster_keys("refusal_contrast", "harmful-003", {})
    assert triggered.question == "refusal_contrast:harmful-003"
    assert cluster_keys("other_suite/task", 17, {}).question == "other_suite/task:17"


def test_rate_intervals_stay_within_what_a_rate_can_be():
    """The positive control's shape (14 of 16 answers in code mode over 8 questions, vs 0 of 16): the
    expanded percentile bootstrap stretched the difference's interval past 1 (0.875 [0.71, 1.04] in the
    regenerated demo); a rate's or share's interval stays in [0, 1], a difference in [−1, 1]; an
    all-alike rate over seeds (0/48 vs 0/16) gets Newcombe's interval instead of a point."""
    from inspect_em.analysis.compare import _replicate_rate, diff_ci, mean_ci
    from inspect_em.analysis.stats import bootstrap_diff, newcombe_diff_ci, replicate_diff

    keys = [f"q{i}" for i in range(8) for _ in range(2)]
    steered = Clustered.of(np.array([1.0] * 14 + [0.0] * 2), keys)
    base = Clustered.of(np.zeros(16), keys)
    assert bootstrap_diff(steered, base).high > 1  # what the clip is for
    result = diff_ci(steered, base, "code_mode")
    assert result.paired and result.estimate == 0.875
    assert -1.0 <= result.low < 0.875 < result.high == 1.0
    low, high, _ = mean_ci(steered, "code_mode")
    assert 0.0 <= low < 0.875 < high == 1.0
    # a share (loaded numbers) in [0, 1] that is not 0/1: clipped by its name
    share = Clustered.of(np.array([0.0] * 13 + [1.0, 0.5, 0.0]), keys)
    assert bootstrap_mean(share)[0] < 0 and mean_ci(share, "loaded_numbers")[0] == 0.0
    # a continuous metric is never clipped: its interval may cross 1
    two = [f"q{i}" for i in range(3) for _ in range(2)]
    values = Clustered.of(np.array([0.0, 0.2, 0.1, 0.3, 2.5, 3.0]), two)
    assert diff_ci(values, Clustered.of(np.zeros(6), two), "proj:code/mean_diff/L12").high > 1
    # seeds × questions, all 0: Newcombe on the pooled answers, not [0, 0]
    zeros = [Clustered.of(np.zeros(16), keys) for _ in range(3)]
    pooled = _replicate_rate(replicate_diff(zeros, [base]), "code_mode", zeros, [base])
    assert (pooled.low, pooled.high) == pytest.approx(newcombe_diff_ci(0, 48, 0, 16)) and pooled.low < 0 < pooled.high
