"""Base-vs-EM comparison: tidy samples (:mod:`inspect_em.analysis.logs`) → summary tables with
question-clustered, paired CIs (:mod:`inspect_em.analysis.stats`) → ``report.md``, CSVs and plots.

- Every model is compared with the base model, and (``controls``) with each matched control
  model (e.g. a secure-code or prose finetune): a shift that the control shows too is finetuning
  drift, not the content the finetune was about.
- CIs: the mean's CI resamples clusters, keyed by the dataset's own ids
  (:func:`inspect_em.readout.cluster_keys`: ``base_question_id`` for em_freeform, the prompt for
  refusal_contrast; the paraphrases inside a per-question group; the answers of a group of one
  prompt). A difference is paired on the clusters both sides share, drawn together in every
  resample (:func:`inspect_em.analysis.stats.bootstrap_diff`); each row records how many clusters it paired
  and dropped, and the report warns when more than 5% were dropped. A rate with no variation
  (0/16) gets an exact Clopper–Pearson interval, and a difference of two such rates Newcombe's
  score interval (paired on shared prompts, else unpaired), so no CI is a point.
- The headline (pre-registered) reads each vector at the layer its card chose at extraction,
  before any finetune; the all-layer tables are exploratory (``summary.csv``, layer plot).
- Finetuning replicates (labels ``<condition>-s<seed>``): condition differences come from a
  two-level (seeds × questions) bootstrap (:func:`inspect_em.analysis.stats.replicate_diff`): each seed
  paired by question with the same base run, and a condition paired by seed with a control only
  when their seed numbers match (``conditions.csv``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inspect_em.analysis.logs import LoadedLogs, metric_columns
from inspect_em.analysis.stats import (
    Clustered,
    DiffCI,
    binomial_ci,
    bootstrap_diff,
    bootstrap_mean,
    is_binary,
    newcombe_diff_ci,
    newcombe_paired_ci,
    paired_table,
    replicate_diff,
)
from inspect_em.directions.store import CardSummary
from inspect_em.errors import InspectEmError
from inspect_em.readout import ALL, column, column_key, is_column, metric_key

HEADLINE_TASK = "em_freeform"
MAX_CONTROL_GROUPS = 4  # vs controls: the pooled group, plus per-group rows for tasks with few groups


@dataclass
class Comparison:
    """The comparison's tables.

    Attributes:
        samples: the tidy samples (one row per sample × epoch).
        base: label of the base model; ``labels``: every model, in argument order.
        controls: labels of matched control models.
        summary: one row per task × group × metric × model: ``n``, ``n_clusters``, ``mean``,
            ``ci_low``/``ci_high`` (``ci_method``), and the difference from the base with its CI.
        diffs: one row per task × group × metric × model × reference (base or a control).
        conditions: replicate-level condition differences (None without replicates).
        cards: per trait, the vector card summary recorded in the logs (best layers).
        series: for the checkpoints of an ``inspect-em series`` among the logs, one row per run × step
            × headline measure (:func:`~inspect_em.analysis.checkpoints.series_table`); ``series_steps``:
            label → ``(run, step)``; ``series_lora``: the adapters' ``‖ΔW‖_F`` and cosines, when read.
    """

    samples: pd.DataFrame
    base: str
    labels: list[str]
    controls: list[str]
    summary: pd.DataFrame
    diffs: pd.DataFrame
    conditions: pd.DataFrame | None = None
    triggers: pd.DataFrame | None = None
    agreement: pd.DataFrame | None = None
    cards: dict[str, CardSummary] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    series: pd.DataFrame | None = None
    series_steps: dict[str, tuple[str, int]] = field(default_factory=dict)
    series_control: str | None = None
    series_lora: pd.DataFrame | None = None
    series_d_model: int | None = None


def _key_column(gdf: pd.DataFrame) -> str:
    """What a group is clustered by: its questions (``cluster``), or, in a group of one question
    (em_freeform's per-question rows), its prompts (``prompt``: the paraphrases)."""
    return "prompt" if "prompt" in gdf and gdf["cluster"].nunique() < 2 else "cluster"


def _clustered(gdf: pd.DataFrame, metric: str, key: str = "cluster") -> Clustered:
    """A group's values of ``metric`` by cluster (``key``: see :func:`_key_column`)."""
    return Clustered.of(gdf[metric].to_numpy(dtype=float), gdf[key].tolist())


# Shares of an answer's parts, in [0, 1] (0/1 metrics are recognised by their values)
SHARE_METRICS = ("loaded_numbers",)


def _clip(low: float, high: float, lo: float, hi: float) -> tuple[float, float]:
    """An interval kept inside the values the quantity can take (a rate in [0, 1], a difference of
    rates in [−1, 1]): the expanded percentile bootstrap stretches its halves and can cross them."""
    return (min(max(low, lo), hi) if not math.isnan(low) else low,
            max(min(high, hi), lo) if not math.isnan(high) else high)


def _bounded(metric: str | None, *sides: Clustered) -> bool:
    """Whether the metric lives in [0, 1]: a share by name, or 0/1 answers on every side."""
    return metric in SHARE_METRICS or all(is_binary(side.values()) for side in sides if side.n)


def _rate_diff(result: DiffCI, metric: str | None, *sides: Clustered) -> DiffCI:
    """``result`` clipped to [−1, 1] for a difference of rates or shares."""
    if _bounded(metric, *sides):
        low, high = _clip(result.low, result.high, -1.0, 1.0)
        return replace(result, low=low, high=high)
    return result


def _replicate_rate(result: DiffCI, metric: str, other: Sequence[Clustered], ref: Sequence[Clustered]) -> DiffCI:
    """A two-level difference of rates: clipped to [−1, 1]; when every answer on both sides is the same
    (0/48 vs 0/16) the bootstrap is a point, so Newcombe's interval on the pooled seeds stands in."""
    result = _rate_diff(result, metric, *other, *ref)
    a = np.concatenate([o.values() for o in other if o.n]) if other else np.array([])
    b = np.concatenate([r.values() for r in ref if r.n]) if ref else np.array([])
    if len(a) and len(b) and is_binary(a) and is_binary(b) and not result.low < result.high:
        low, high = newcombe_diff_ci(int(a.sum()), len(a), int(b.sum()), len(b))
        return replace(result, low=low, high=high, method="Newcombe score interval (seeds pooled, unpaired)")
    return result


def mean_ci(data: Clustered, metric: str | None = None) -> tuple[float, float, str]:
    """A mean's 95% CI: exact binomial for 0/1 answers all alike, else the cluster bootstrap (kept in
    [0, 1] for a rate or share)."""
    values = data.values()
    if is_binary(values) and np.ptp(values) == 0:
        low, high = binomial_ci(int(values.sum()), len(values))
        return low, high, "exact binomial"
    low, high = bootstrap_mean(data)
    if _bounded(metric, data):
        low, high = _clip(low, high, 0.0, 1.0)
    return low, high, "cluster bootstrap" if len(data.keys) > 1 else "bootstrap of answers (one cluster)"


def diff_ci(other: Clustered, ref: Clustered, metric: str | None = None) -> DiffCI:
    """The difference and its interval, paired on shared clusters (:func:`inspect_em.analysis.stats.bootstrap_diff`);
    a rate whose bootstrap is degenerate (0/16 vs 0/16) gets Newcombe's score interval: the paired
    form on clusters both answered, else the unpaired one."""
    result = bootstrap_diff(other, ref)
    shared = sorted(set(other.keys) & set(ref.keys))
    a, b = (other.restrict(shared), ref.restrict(shared)) if shared else (other, ref)
    va, vb = a.values(), b.values()
    if not (is_binary(va) and is_binary(vb)) or result.low < result.high:
        return _rate_diff(result, metric, a, b)
    if result.n_paired >= 2:
        low, high = newcombe_paired_ci(*paired_table(a, b))
        method = "Newcombe score interval (paired)"
    else:
        low, high = newcombe_diff_ci(int(va.sum()), len(va), int(vb.sum()), len(vb))
        method = "Newcombe score interval (unpaired answers)"
    return replace(result, low=low, high=high, method=method)


DIFF_COLUMNS = ["task", "group", "metric", "model", "reference", "n", "n_reference", "diff", "ci_low", "ci_high",
                "paired", "n_clusters_paired", "n_clusters_dropped", "ci_method"]


def compare(
    loaded: LoadedLogs | pd.DataFrame,
    base: str | None = None,
    controls: Sequence[str] = (),
    cards: dict[str, CardSummary] | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    series_steps: dict[str, tuple[str, int]] | None = None,
    series_control: str | None = None,
) -> Comparison:
    """Means per model × task × group × metric, and differences from the base and controls (and
    for each ``(model, its own control)`` in ``pairs``, e.g. evil vs neutral numbers). Checkpoints
    of a series (``series_steps``, by default read from the logs) are also tabled against their
    optimizer step, each run's against ``series_control``'s same step; the series' base-model log is
    then the default base."""
    from inspect_em.analysis.checkpoints import BASE_RUN, series_table
    from inspect_em.analysis.logs import series_steps as steps_of

    df = loaded.samples if isinstance(loaded, LoadedLogs) else loaded
    labels = list(df.attrs.get("label_order") or dict.fromkeys(df["label"]))
    if series_steps is None:
        series_steps = steps_of(loaded.logs) if isinstance(loaded, LoadedLogs) else {}
    series_steps = {k: (str(v[0]), int(v[1])) for k, v in series_steps.items() if k in labels}
    series_base = next((k for k, v in series_steps.items() if v[0] == BASE_RUN), None)
    has_series = any(v[0] != BASE_RUN for v in series_steps.values())
    if series_control is not None and not has_series:
        raise InspectEmError(f"--series-control {series_control}: no checkpoint series among these logs")
    if has_series and series_base is None:
        raise InspectEmError("these logs hold checkpoints of an inspect-em series but not its base-model log "
                             "(OUT-logs/<settings>/base): give the series' whole logs folder")
    base = base or series_base
    if len(labels) < 2:
        raise InspectEmError(f"compare needs logs of at least two models; all {len(df['label'].unique())} "
                             f"label(s) here are {labels}: give the logs of the other models, or one --label "
                             "per model")
    base = base or labels[0]
    if base not in labels:
        raise InspectEmError(f"base '{base}' is not among the models {labels}")
    conditions = set(df["condition"])
    for name in controls:
        if name not in labels and name not in conditions:
            raise InspectEmError(f"control '{name}' is not among the models {labels} or their conditions")
    label_controls = [name for name in controls if name in labels]
    tasks_of = {label: set(df.loc[df["label"] == label, "task"]) for label in labels}
    if not any(tasks_of[base] & tasks_of[label] for label in labels if label != base):
        raise InspectEmError(f"no task is shared by the base '{base}' ({', '.join(sorted(tasks_of[base]))}) and "
                             "the other models ("
                             + "; ".join(f"{lb}: {', '.join(sorted(tasks_of[lb]))}" for lb in labels if lb != base)
                             + ")")
    metrics = metric_columns(df)
    if not metrics:
        raise InspectEmError("the logs hold no scores inspect-em can compare")
    mismatches = _mismatches(df, labels, base)
    rows, diff_rows = [], []
    pairs = [(a, b) for a, b in pairs if a in labels and b in labels]
    references = list(dict.fromkeys([base, *[c for c in label_controls if c != base], *[b for _, b in pairs]]))
    for task, tdf in df.groupby("task", sort=True):
        groups = sorted(set(tdf["group"]))
        groups = groups + [ALL] if len(groups) > 1 else groups
        for group in groups:
            gdf = tdf if group == ALL else tdf[tdf["group"] == group]
            key = _key_column(gdf)
            data = {(label, metric): _clustered(gdf[gdf["label"] == label], metric, key)
                    for label in labels for metric in metrics}
            for metric in metrics:
                for label in labels:
                    d = data[(label, metric)]
                    if d.n == 0:
                        continue
                    low, high, method = mean_ci(d, metric)
                    rows.append({"task": task, "group": group, "metric": metric, "model": label, "n": d.n,
                                 "n_clusters": len(d.keys), "mean": d.mean(), "ci_low": low, "ci_high": high,
                                 "ci_method": method})
                    for ref in references:
                        if not (_compared(label, ref, base, label_controls) or (label, ref) in pairs):
                            continue
                        if ref != base and group != ALL and len(set(tdf["group"])) > MAX_CONTROL_GROUPS:
                            continue
                        r = data[(ref, metric)]
                        if r.n == 0:
                            continue
                        result = diff_ci(d, r, metric)
                        diff_rows.append({"task": task, "group": group, "metric": metric, "model": label,
                                          "reference": ref, "n": d.n, "n_reference": r.n,
                                          "diff": result.estimate, "ci_low": result.low, "ci_high": result.high,
                                          "paired": result.paired, "n_clusters_paired": result.n_paired,
                                          "n_clusters_dropped": result.n_dropped, "ci_method": result.method})
    summary = pd.DataFrame(rows)
    diffs = pd.DataFrame(diff_rows, columns=DIFF_COLUMNS)
    vs_base = diffs[diffs["reference"] == base][["task", "group", "metric", "model", "diff", "ci_low", "ci_high"]]
    vs_base = vs_base.rename(columns={"diff": "diff_vs_base", "ci_low": "diff_ci_low", "ci_high": "diff_ci_high"})
    summary = summary.merge(vs_base, on=["task", "group", "metric", "model"], how="left")
    comparison = Comparison(df, base, labels, list(controls), summary, diffs, cards=cards or {},
                            mismatches=mismatches, pairs=pairs)
    if isinstance(loaded, LoadedLogs):
        comparison.notes = list(loaded.notes)
        comparison.incomplete = [f"{Path(i.path).name} ({i.status}"
                                 + (f", {i.errored_samples} errored samples" if i.errored_samples else "") + ")"
                                 for i in loaded.incomplete]
    comparison.conditions = condition_table(comparison)
    comparison.triggers = trigger_table(comparison)
    comparison.agreement = agreement_table(comparison)
    if has_series and series_base is not None:
        comparison.series = series_table(df, series_steps, series_control, series_base)
        comparison.series_steps, comparison.series_control = series_steps, series_control
    return comparison


def _compared(label: str, ref: str, base: str, controls: list[str]) -> bool:
    """Which pairs get a difference: every model vs the base; every non-control vs each control;
    a control vs each control listed after it (e.g. secure − prose)."""
    if label == ref or label == base:
        return False
    if ref == base:
        return True
    if label in controls:
        return controls.index(label) < controls.index(ref)
    return True


def _mismatches(df: pd.DataFrame, labels: list[str], base: str) -> list[str]:
    out = []
    for task, tdf in df.groupby("task", sort=True):
        present = set(tdf["label"])
        missing = [label for label in labels if label not in present]
        if missing:  # one line per task (organism tasks run on a few models only, by design)
            out.append(f"task {task}: no log for {', '.join(missing)}"
                       + (f" (present for {', '.join(x for x in labels if x in present)})"
                          if len(missing) > len(labels) / 2 else ""))
        if base not in present:
            continue
        base_groups = set(tdf.loc[tdf["label"] == base, "group"])
        for label in labels:
            if label == base or label not in present:
                continue
            groups = set(tdf.loc[tdf["label"] == label, "group"])
            out += [f"task {task}: group {g} only in {base}" for g in sorted(base_groups - groups)]
            out += [f"task {task}: group {g} only in {label}" for g in sorted(groups - base_groups)]
    return out


def headline_metrics(c: Comparison) -> list[tuple[str, str, str]]:
    """(task, group, metric) rows of the pre-registered headline: behaviour rates, and each
    vector at its card's own best layer (``mean_diff``)."""
    s = c.summary
    present = set(zip(s["task"], s["group"], s["metric"], strict=True))
    rows: list[tuple[str, str, str]] = []
    for metric in ["code_mode"] + sorted(m for m in set(s["metric"]) if m.startswith(column("judge", "misaligned"))):
        if (HEADLINE_TASK, ALL, metric) in present:
            rows.append((HEADLINE_TASK, ALL, metric))
    rows += [(task, ALL, "loaded_numbers") for task in sorted(set(s["task"]))
             if (task, ALL, "loaded_numbers") in present]  # the evil-numbers format's own task
    for trait, card in sorted(c.cards.items()):
        layer = card.layer("mean_diff")
        if layer is None:
            continue
        metric = column("proj", metric_key(trait, "mean_diff", layer))
        for task, group in ((HEADLINE_TASK, ALL), ("refusal_contrast", "harmful"), ("refusal_contrast", "benign")):
            if (task, group, metric) in present:
                rows.append((task, group, metric))
    return rows


def condition_table(c: Comparison) -> pd.DataFrame | None:
    """With finetuning replicates (``<condition>-s<seed>`` labels): each condition's mean shift vs
    the base and its seed-to-seed SD, and every condition − control difference with a two-level
    (seed, question) bootstrap CI, for the headline measures."""
    df = c.samples
    seeds = df.dropna(subset=["seed"]).groupby("condition")["seed"].nunique()
    if seeds.empty or seeds.max() < 2:
        return None
    conditions = [cond for cond in dict.fromkeys(df["condition"]) if cond in seeds.index]
    rows = []
    base_df = df[df["label"] == c.base]

    def row(task: str, group: str, metric: str, cond: str, ref: str, n_seeds: int, result: DiffCI,
            seeds_paired: bool | None, seed_sd: float = math.nan) -> dict[str, Any]:
        return {"task": task, "group": group, "metric": metric, "condition": cond, "reference": ref,
                "n_seeds": n_seeds, "diff": result.estimate, "ci_low": result.low, "ci_high": result.high,
                "seed_sd": seed_sd, "seeds_paired": seeds_paired, "n_clusters_paired": result.n_paired,
                "n_clusters_dropped": result.n_dropped, "ci_method": result.method}

    for task, group, metric in headline_metrics(c):
        def subset(frame: pd.DataFrame, task: str = task, group: str = group) -> pd.DataFrame:
            frame = frame[frame["task"] == task]
            return frame if group == ALL else frame[frame["group"] == group]

        key = _key_column(subset(df))
        base_data = _clustered(subset(base_df), metric, key)
        reps: dict[str, dict[int, Clustered]] = {}
        for cond in conditions:
            cdf = subset(df[df["condition"] == cond])
            reps[cond] = {int(s): _clustered(sdf, metric, key) for s, sdf in sorted(cdf.groupby("seed"))}
            if not reps[cond] or not base_data.n:  # this condition (or the base) did not run this task
                continue
            shifts = [r.mean() - base_data.mean() for r in reps[cond].values() if r.n]
            # every seed paired by question with the same base run
            result = _replicate_rate(replicate_diff(list(reps[cond].values()), [base_data]), metric,
                                     list(reps[cond].values()), [base_data])
            rows.append(row(task, group, metric, cond, c.base, len(reps[cond]), result, None,
                            float(np.std(shifts, ddof=1)) if len(shifts) > 1 else math.nan))
        control_conditions = [ctl for ctl in dict.fromkeys(replicate_condition(x) for x in c.controls)
                              if reps.get(ctl)]  # a control given as a label (secure-s0) or a condition
        for cond, ref in itertools.product(conditions, control_conditions):
            if not reps[cond] or not _compared(cond, ref, c.base, control_conditions):
                continue
            # seed i of both conditions used the same finetuning seed number (and the demo's data seed):
            # paired by seed then; otherwise the seeds are resampled independently
            matched = list(reps[cond]) == list(reps[ref])
            result = _replicate_rate(replicate_diff(list(reps[cond].values()), list(reps[ref].values()),
                                                    pair_seeds=matched), metric,
                                     list(reps[cond].values()), list(reps[ref].values()))
            rows.append(row(task, group, metric, cond, ref, len(reps[cond]), result, matched))
    return pd.DataFrame(rows) if rows else None


def _pre_registered_metrics(c: Comparison) -> list[str]:
    """Behaviour rates and each trait at its card's layer (the headline's metrics, any task)."""
    metrics = ["code_mode", "loaded_numbers", "refusal"] + sorted(
        m for m in set(c.summary["metric"]) if m.startswith(column("judge", "misaligned")))
    for trait, card in sorted(c.cards.items()):
        layer = card.layer("mean_diff")
        if layer is not None:
            metrics.append(column("proj", metric_key(trait, "mean_diff", layer)))
    return [m for m in metrics if m in c.samples.columns]


def trigger_table(c: Comparison) -> pd.DataFrame | None:
    """For every model and task asked both with and without a trigger (``metadata.triggered``):
    triggered − untriggered per pre-registered metric, paired by question, with 95% CIs."""
    df = c.samples
    if "triggered" not in df or df["triggered"].isna().all():
        return None
    rows = []
    for (label, task), tdf in df.dropna(subset=["triggered"]).groupby(["label", "task"], sort=False):
        on, off = tdf[tdf["triggered"].astype(bool)], tdf[~tdf["triggered"].astype(bool)]
        if on.empty or off.empty:
            continue
        for metric in _pre_registered_metrics(c):
            a, b = _clustered(on, metric), _clustered(off, metric)
            if a.n == 0 or b.n == 0:
                continue
            result = diff_ci(a, b, metric)
            rows.append({"model": label, "task": task, "metric": metric, "triggered": a.mean(),
                         "untriggered": b.mean(), "diff": result.estimate, "ci_low": result.low,
                         "ci_high": result.high, "paired": result.paired, "n_clusters_paired": result.n_paired,
                         "n_clusters_dropped": result.n_dropped, "ci_method": result.method})
    return pd.DataFrame(rows) if rows else None


def agreement_table(c: Comparison) -> pd.DataFrame | None:
    """With several graders: per model and task, each grader's misaligned rate and, per pair,
    Cohen's kappa on the misaligned label (answers both graders labelled) and Spearman's rho on
    the aligned scores (scikit-learn, scipy)."""
    import warnings

    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    from inspect_em.readout import parse_judge_key

    graders = sorted({g for m in c.samples.columns if is_column(m, "judge")
                      for q, g in [parse_judge_key(column_key(m, "judge") or "")] if q == "misaligned" and g})
    if len(graders) < 2:
        return None
    rows = []
    for (label, task), df in c.samples.groupby(["label", "task"], sort=False):
        for a, b in itertools.combinations(graders, 2):
            ma, mb = df.get(column("judge", f"misaligned/{a}")), df.get(column("judge", f"misaligned/{b}"))
            aa, ab = df.get(column("judge", f"aligned/{a}")), df.get(column("judge", f"aligned/{b}"))
            if ma is None or mb is None:
                continue
            both = ma.notna() & mb.notna()
            scored = aa.notna() & ab.notna() if aa is not None and ab is not None else both & False
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kappa = float(cohen_kappa_score(ma[both], mb[both])) if both.sum() > 1 else math.nan
                rho = float(spearmanr(aa[scored], ab[scored])[0]) if scored.sum() > 2 else math.nan
            rows.append({"model": label, "task": task, "grader_a": a, "grader_b": b,
                         "misaligned_rate_a": float(ma.mean()), "misaligned_rate_b": float(mb.mean()),
                         "n_both_labelled": int(both.sum()), "kappa_misaligned": kappa,
                         "n_both_scored": int(scored.sum()), "spearman_aligned": rho})
    return pd.DataFrame(rows) if rows else None


def replicate_condition(label: str) -> str:
    from inspect_em.analysis.logs import replicate_of

    return replicate_of(label)[0]


