"""Finetuning replicates: the two-level (seed, question) bootstrap and the conditions table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inspect_em.analysis.compare import compare
from inspect_em.analysis.report import markdown
from inspect_em.analysis.stats import Clustered, replicate_diff
from inspect_em.directions.store import CardSummary

KEY = "proj:code/mean_diff/L12"


def _seeds(offsets: list[float], noise: float, rng: np.random.Generator, n_q: int = 8) -> list[Clustered]:
    """One Clustered per seed: ``n_q`` questions × 2 answers around the seed's offset."""
    out = []
    for offset in offsets:
        values = offset + noise * rng.standard_normal(2 * n_q)
        out.append(Clustered.of(values, [f"q{i // 2}" for i in range(2 * n_q)]))
    return out


def test_replicate_diff_estimate_and_seed_variance_inside_the_interval():
    rng = np.random.default_rng(1)
    a = _seeds([1.0, 2.0, 3.0], 0.5, rng)
    b = _seeds([0.0, 0.0, 0.0], 0.5, rng)
    result = replicate_diff(a, b)
    expected = np.mean([np.mean(np.concatenate(x.groups)) for x in a]) - \
        np.mean([np.mean(np.concatenate(x.groups)) for x in b])
    assert result.estimate == pytest.approx(expected)
    assert result.low < result.estimate < result.high
    # the same within-seed noise with the seeds spread 10x further apart: a wider interval
    rng = np.random.default_rng(1)
    wide = replicate_diff(_seeds([-8.0, 2.0, 12.0], 0.5, rng), _seeds([0.0, 0.0, 0.0], 0.5, rng))
    assert (wide.high - wide.low) > 3 * (result.high - result.low)
    # a condition against itself, paired by seed and question: exactly 0
    same = replicate_diff(a, a, pair_seeds=True)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    # a missing replicate set gives no number rather than a wrong one
    assert np.isnan(replicate_diff([], b).estimate)


def test_three_seeds_against_one_base_run_are_paired_by_question():
    """The old code resampled the base's questions apart from the condition's (3 seeds vs 1 run never
    paired); every seed is now paired by question with the same base run."""
    rng = np.random.default_rng(4)
    questions = 4.0 * rng.standard_normal(8)  # large question effects, shared by every model
    keys = [f"q{i // 2}" for i in range(16)]
    base = Clustered.of(np.repeat(questions, 2) + 0.3 * rng.standard_normal(16), keys)
    seeds = [Clustered.of(np.repeat(questions, 2) + 1.0 + 0.1 * s + 0.3 * rng.standard_normal(16), keys)
             for s in range(3)]
    paired = replicate_diff(seeds, [base])
    assert paired.paired and paired.n_paired == 8 and paired.method.startswith("two-level bootstrap, paired")
    renamed = Clustered(tuple("x" + k for k in base.keys), base.groups)  # no shared questions: unpaired
    unpaired = replicate_diff(seeds, [renamed])
    assert not unpaired.paired
    assert paired.low < paired.estimate < paired.high
    assert (paired.high - paired.low) < 0.25 * (unpaired.high - unpaired.low)


def _samples(conditions: dict[str, float], seeds: int = 3, first_seed: dict[str, int] | None = None) -> pd.DataFrame:
    """Synthetic em_freeform samples: base + each condition × seeds (shift + seed offset), and an
    organism-only task (numbers) that only the base and ``evil`` ran."""
    rows = []
    rng = np.random.default_rng(0)

    def add(label: str, condition: str, seed: int | None, task: str, centre: float) -> None:
        for q in range(6):
            for e in range(2):
                # sample_id is what samples_df gives: a per-run id, never shared between two runs
                rows.append({"label": label, "condition": condition, "seed": seed, "task": task, "group": f"q{q}",
                             "cluster": f"q{q}", "sample_id": f"{label}/{task}/{q}/{e}", "id": f"q{q}",
                             "epoch": e + 1,
                             "model": label, "log": label, "triggered": None,
                             KEY: centre + q + 0.3 * rng.standard_normal(),
                             "loaded_numbers": float(rng.random() < 0.1) if task.endswith("numbers") else np.nan})

    add("base", "base", None, "em_freeform", 0.0)
    add("base", "base", None, "em_freeform_numbers", 0.0)
    add("evil", "evil", None, "em_freeform_numbers", 1.0)
    add("evil", "evil", None, "em_freeform", 1.0)
    for condition, shift in conditions.items():
        start = (first_seed or {}).get(condition, 0)
        for s in range(start, start + seeds):
            add(f"{condition}-s{s}", condition, s, "em_freeform", shift + 0.5 * (s - start - 1))
    df = pd.DataFrame(rows)
    df.attrs["label_order"] = list(dict.fromkeys(df["label"]))
    return df


def test_conditions_table_differences_and_no_rows_for_tasks_a_condition_did_not_run():
    df = _samples({"insecure": 5.0, "secure": 2.0})
    c = compare(df, base="base", controls=["secure"], cards={"code": CardSummary(None, None, {"mean_diff": 12})})
    table = c.conditions
    assert table is not None
    assert ("em_freeform_numbers", "(all)", "loaded_numbers") in set(
        zip(c.summary["task"], c.summary["group"], c.summary["metric"], strict=True))  # a headline measure...
    assert set(table["task"]) == {"em_freeform"}  # ...that only base and evil ran: no empty condition rows
    assert (table["n_seeds"] == 3).all()
    row = table[(table["metric"] == KEY) & (table["condition"] == "insecure") & (table["reference"] == "secure")]
    by_seed = {cond: [df[(df["label"] == f"{cond}-s{s}")][KEY].mean() for s in range(3)]
               for cond in ("insecure", "secure")}
    assert row["diff"].item() == pytest.approx(np.mean(by_seed["insecure"]) - np.mean(by_seed["secure"]))
    assert row["ci_low"].item() < row["diff"].item() < row["ci_high"].item()
    assert row["seeds_paired"].item() is True and row["n_clusters_paired"].item() == 6
    assert "Seeds not matched" not in markdown(c, [])
    shift = table[(table["metric"] == KEY) & (table["condition"] == "insecure") & (table["reference"] == "base")]
    base_mean = df[(df["label"] == "base") & (df["task"] == "em_freeform")][KEY].mean()
    assert shift["seed_sd"].item() == pytest.approx(np.std([m - base_mean for m in by_seed["insecure"]], ddof=1))
    # one mismatch line per task, naming where it ran
    (line,) = [m for m in c.mismatches if m.startswith("task em_freeform_numbers")]
    assert "present for base, evil" in line


def test_conditions_with_other_seed_numbers_are_not_paired_by_seed_and_the_report_says_so():
    df = _samples({"insecure": 5.0, "secure": 2.0}, first_seed={"secure": 3})
    c = compare(df, base="base", controls=["secure"], cards={"code": CardSummary(None, None, {"mean_diff": 12})})
    table = c.conditions
    row = table[(table["metric"] == KEY) & (table["condition"] == "insecure") & (table["reference"] == "secure")]
    assert row["seeds_paired"].item() is False
    assert row["n_clusters_paired"].item() == 6  # still paired by question
    assert "Seeds not matched (resampled independently): insecure − secure." in markdown(c, [])
    vs_base = table[(table["reference"] == "base") & (table["metric"] == KEY)]
    assert (vs_base["n_clusters_paired"] == 6).all() and vs_base["ci_method"].str.contains("paired").all()
