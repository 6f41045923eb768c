"""Base-vs-EM comparison: tidy samples (:mod:`inspect_em.logs`) → summary tables with
question-clustered, paired CIs (:mod:`inspect_em.stats`) → ``report.md``, CSVs and plots.

- Every model is compared with the base model, and (``controls``) with each matched control
  model (e.g. a secure-code or prose finetune): a shift that the control shows too is finetuning
  drift, not the content the finetune was about.
- CIs: the mean's CI resamples clusters, keyed by the dataset's own ids
  (:func:`inspect_em.readout.cluster_keys`: ``base_question_id`` for em_freeform, the prompt for
  refusal_contrast; the paraphrases inside a per-question group; the answers of a group of one
  prompt). A difference is paired on the clusters both sides share, drawn together in every
  resample (:func:`inspect_em.stats.bootstrap_diff`); each row records how many clusters it paired
  and dropped, and the report warns when more than 5% were dropped. A rate with no variation
  (0/16) gets an exact Clopper–Pearson interval, and a difference of two such rates Newcombe's
  score interval (paired on shared prompts, else unpaired), so no CI is a point.
- The headline (pre-registered) reads each vector at the layer its card chose at extraction,
  before any finetune; the all-layer tables are exploratory (``summary.csv``, layer plot).
- Finetuning replicates (labels ``<condition>-s<seed>``): condition differences come from a
  two-level (seeds × questions) bootstrap (:func:`inspect_em.stats.replicate_diff`): each seed
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

from .errors import InspectEmError
from .logs import LoadedLogs, metric_columns
from .paths import atomic_output
from .readout import ALL, metric_key
from .stats import (
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

STAMP = "<!-- written by inspect-em compare -->"
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
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)


def _key_column(gdf: pd.DataFrame) -> str:
    """What a group is clustered by: its questions (``cluster``), or, in a group of one question
    (em_freeform's per-question rows), its prompts (``prompt``: the paraphrases)."""
    return "prompt" if "prompt" in gdf and gdf["cluster"].nunique() < 2 else "cluster"


def _clustered(gdf: pd.DataFrame, metric: str, key: str = "cluster") -> Clustered:
    """A group's values of ``metric`` by cluster (``key``: see :func:`_key_column`)."""
    return Clustered.of(gdf[metric].to_numpy(dtype=float), gdf[key].tolist())


def _mean_ci(data: Clustered) -> tuple[float, float, str]:
    values = data.values()
    if is_binary(values) and np.ptp(values) == 0:
        low, high = binomial_ci(int(values.sum()), len(values))
        return low, high, "exact binomial"
    low, high = bootstrap_mean(data)
    return low, high, "cluster bootstrap" if len(data.keys) > 1 else "bootstrap of answers (one cluster)"


def _diff_ci(other: Clustered, ref: Clustered) -> DiffCI:
    """The difference and its interval, paired on shared clusters (:func:`inspect_em.stats.bootstrap_diff`);
    a rate whose bootstrap is degenerate (0/16 vs 0/16) gets Newcombe's score interval: the paired
    form on clusters both answered, else the unpaired one."""
    result = bootstrap_diff(other, ref)
    shared = sorted(set(other.keys) & set(ref.keys))
    a, b = (other.restrict(shared), ref.restrict(shared)) if shared else (other, ref)
    va, vb = a.values(), b.values()
    if not (is_binary(va) and is_binary(vb)) or result.low < result.high:
        return result
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
    cards: dict[str, dict[str, Any]] | None = None,
    pairs: Sequence[tuple[str, str]] = (),
) -> Comparison:
    """Means per model × task × group × metric, and differences from the base and controls (and
    for each ``(model, its own control)`` in ``pairs``, e.g. evil vs neutral numbers)."""
    df = loaded.samples if isinstance(loaded, LoadedLogs) else loaded
    labels = list(df.attrs.get("label_order") or dict.fromkeys(df["label"]))
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
                    low, high, method = _mean_ci(d)
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
                        result = _diff_ci(d, r)
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
    for metric in ["code_mode"] + sorted(m for m in set(s["metric"]) if m.startswith("judge:misaligned")):
        if (HEADLINE_TASK, ALL, metric) in present:
            rows.append((HEADLINE_TASK, ALL, metric))
    rows += [(task, ALL, "loaded_numbers") for task in sorted(set(s["task"]))
             if (task, ALL, "loaded_numbers") in present]  # the evil-numbers format's own task
    for trait, card in sorted(c.cards.items()):
        layer = (card.get("best_layer") or {}).get("mean_diff")
        if layer is None:
            continue
        metric = "proj:" + metric_key(trait, "mean_diff", layer)
        for task, group in ((HEADLINE_TASK, ALL), ("refusal_contrast", "harmful"), ("refusal_contrast", "benign")):
            if (task, group, metric) in present:
                rows.append((task, group, metric))
    return rows


def _fmt(x: Any, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(mean: float, low: float, high: float, digits: int = 3, sign: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]" if not math.isnan(low) else f.format(mean)


def headline_tables(c: Comparison) -> dict[str, pd.DataFrame]:
    """One short table per model (not the base): each headline measure's value, and its
    difference from the base and from each control, with 95% CIs."""
    rows = headline_metrics(c)
    tables: dict[str, pd.DataFrame] = {}
    s, d = c.summary.set_index(["task", "group", "metric", "model"]), c.diffs
    for label in c.labels:
        if label == c.base:
            continue
        out = []
        for task, group, metric in rows:
            key = (task, group, metric, label)
            if key not in s.index:
                continue
            r = s.loc[key]
            row = {"measure": _measure_name(task, group, metric), "value": _ci(r["mean"], r["ci_low"], r["ci_high"])}
            estimate = _calibrated(c, task, metric, r.get("diff_vs_base"))
            if estimate:
                row["steering equivalent (estimate)"] = estimate
            own = [b for a, b in c.pairs if a == label]
            for ref in [c.base, *[x for x in c.controls if x in c.labels], *own]:
                if ref == label:
                    continue
                sel = d[(d["task"] == task) & (d["group"] == group) & (d["metric"] == metric) & (d["model"] == label)
                        & (d["reference"] == ref)]
                row[f"{label} − {ref}"] = _ci(sel["diff"].iloc[0], sel["ci_low"].iloc[0], sel["ci_high"].iloc[0],
                                              sign=True) if len(sel) else ""
            out.append(row)
        if out:
            tables[label] = pd.DataFrame(out)
    return tables


def _calibrated(c: Comparison, task: str, metric: str, shift: Any) -> str:
    """A projection shift vs base translated through the card's steering calibration (an estimate)."""
    from .readout import parse_metric_key
    from .sweep import estimate_from_calibration

    key = parse_metric_key(metric)
    calibration = (c.cards.get(key.trait) or {}).get("calibration") if key else None
    if not calibration or task != HEADLINE_TASK or calibration.get("layer") != key.layer or shift is None:
        return ""
    estimate = estimate_from_calibration(float(shift), calibration["points"])
    if estimate is None:
        return ""
    if estimate["outside"]:
        return "outside the calibrated range"
    return (f"alpha ≈ {estimate['alpha']:.1f} → {calibration.get('behaviour') or 'behaviour'} rate ≈ "
            f"{estimate['rate']:.2f}")


def _measure_name(task: str, group: str, metric: str) -> str:
    where = task if group == ALL else f"{task} ({group})"
    if metric.startswith("proj:"):
        return f"{metric[5:]} projection, {where}"
    return f"{metric.split(':', 1)[-1]} rate, {where}" if not metric.startswith("judge:") or "misaligned" in metric \
        else f"{metric}, {where}"


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
            result = replicate_diff(list(reps[cond].values()), [base_data])
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
            result = replicate_diff(list(reps[cond].values()), list(reps[ref].values()), pair_seeds=matched)
            rows.append(row(task, group, metric, cond, ref, len(reps[cond]), result, matched))
    return pd.DataFrame(rows) if rows else None


def _pre_registered_metrics(c: Comparison) -> list[str]:
    """Behaviour rates and each trait at its card's layer (the headline's metrics, any task)."""
    metrics = ["code_mode", "loaded_numbers", "refusal"] + sorted(
        m for m in set(c.summary["metric"]) if m.startswith("judge:misaligned"))
    for trait, card in sorted(c.cards.items()):
        layer = (card.get("best_layer") or {}).get("mean_diff")
        if layer is not None:
            metrics.append("proj:" + metric_key(trait, "mean_diff", layer))
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
            result = _diff_ci(a, b)
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

    from .judging import parse_judge_key

    graders = sorted({g for m in c.samples.columns if m.startswith("judge:")
                      for q, g in [parse_judge_key(m[6:])] if q == "misaligned" and g})
    if len(graders) < 2:
        return None
    rows = []
    for (label, task), df in c.samples.groupby(["label", "task"], sort=False):
        for a, b in itertools.combinations(graders, 2):
            ma, mb = df.get(f"judge:misaligned/{a}"), df.get(f"judge:misaligned/{b}")
            aa, ab = df.get(f"judge:aligned/{a}"), df.get(f"judge:aligned/{b}")
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
    from .logs import replicate_of

    return replicate_of(label)[0]


def reference_table(c: Comparison, other: str | None = None, metric: str | None = None) -> pd.DataFrame | None:
    """The reference experiment's table: prompt type × (base, other, other − base) for the refusal
    projection on refusal_contrast logs; columns are named by the labels compared.

    ``metric`` defaults to the refusal card's best ``mean_diff`` layer, else the refusal
    projection with the largest harmful − benign gap in the base model.
    """
    s = c.summary
    rc = s[(s["task"] == "refusal_contrast") & s["metric"].str.startswith("proj:refusal/")
           & s["group"].isin(["harmful", "benign"])]
    if rc.empty:
        return None
    if metric is None:
        layer = ((c.cards.get("refusal") or {}).get("best_layer") or {}).get("mean_diff")
        metric = "proj:" + metric_key("refusal", "mean_diff", layer) if layer is not None else None
        if metric not in set(rc["metric"]):
            base_rows = rc[rc["model"] == c.base].pivot_table(index="metric", columns="group", values="mean")
            if not {"harmful", "benign"} <= set(base_rows.columns):
                return None
            metric = str((base_rows["harmful"] - base_rows["benign"]).idxmax())
    other = other or next((m for m in c.labels if m != c.base and m in set(rc["model"])), None)
    if other is None:
        return None
    d = c.diffs
    rows = []
    for group in ("harmful", "benign"):
        sel = rc[(rc["metric"] == metric) & (rc["group"] == group)].set_index("model")
        if c.base in sel.index and other in sel.index:
            diff = d[(d["task"] == "refusal_contrast") & (d["group"] == group) & (d["metric"] == metric)
                     & (d["model"] == other) & (d["reference"] == c.base)]
            rows.append({"Prompt type": group, c.base: round(float(sel.loc[c.base, "mean"]), 2),
                         other: round(float(sel.loc[other, "mean"]), 2),
                         f"{other} − {c.base}": _ci(diff["diff"].iloc[0], diff["ci_low"].iloc[0],
                                                    diff["ci_high"].iloc[0], digits=2, sign=True)
                         if len(diff) else ""})
    table = pd.DataFrame(rows)
    table.attrs["metric"] = metric
    table.attrs["models"] = (c.base, other)
    return table


def write_report(
    c: Comparison, out: str | Path, inputs: Sequence[str | Path], *, force: bool = False,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write ``report.md``, ``summary.csv``, ``differences.csv`` (``conditions.csv``) and the plots
    into ``out`` atomically; an existing ``out`` is replaced only when an earlier compare wrote it
    (same settings, or ``force``), and never when it holds an input log."""
    from . import plots

    out = Path(out)
    config = settings or {"inputs": [str(p) for p in inputs], "base": c.base, "controls": c.controls}
    with atomic_output(out, command="compare", config=config, inputs=inputs, force=force,
                       legacy_marker="report.md") as tmp:
        c.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.6g")
        c.diffs.to_csv(tmp / "differences.csv", index=False, float_format="%.6g")
        if c.conditions is not None:
            c.conditions.to_csv(tmp / "conditions.csv", index=False, float_format="%.6g")
        if c.triggers is not None:
            c.triggers.to_csv(tmp / "triggers.csv", index=False, float_format="%.6g")
        if c.agreement is not None:
            c.agreement.to_csv(tmp / "agreement.csv", index=False, float_format="%.6g")
        figures = plots.write_all(c, tmp)
        (tmp / "report.md").write_text(markdown(c, inputs, figures), encoding="utf-8")
    return out


DROPPED_WARNING = 0.05  # a share of clusters dropped from a paired difference worth a line in the report


def pairing_warnings(c: Comparison) -> list[str]:
    """One line per task × model × reference whose paired differences left out more than
    :data:`DROPPED_WARNING` of the clusters (questions or prompts only one side answered)."""
    d = c.diffs
    if d.empty:
        return []
    total = d["n_clusters_paired"] + d["n_clusters_dropped"]
    share = (d["n_clusters_dropped"] / total.where(total > 0)).fillna(0.0)
    worst = d.assign(share=share)[share > DROPPED_WARNING].groupby(["task", "model", "reference"], sort=True)
    return [f"{task}: {model} − {ref} dropped up to {g['share'].max():.0%} of the clusters "
            f"({int(g['n_clusters_dropped'].max())} answered by one side only); those differences use the rest"
            for (task, model, ref), g in worst]


def markdown(c: Comparison, inputs: Sequence[str | Path], figures: Sequence[str] = ()) -> str:
    """The report: headline first (pre-registered layers), then reference and replicate tables."""
    lines = ["# inspect_em comparison", STAMP, ""]
    if c.incomplete:
        lines += ["> **Incomplete logs included (--allow-incomplete):** " + "; ".join(c.incomplete)
                  + ". Numbers below may be biased by the missing samples.", ""]
    lines += [f"Base model: **{c.base}**" + (f"; controls: {', '.join(f'**{x}**' for x in c.controls)}"
                                              if c.controls else "")
              + "; compared: " + ", ".join(f"**{m}**" for m in c.labels if m != c.base and m not in c.controls), ""]
    lines += ["## Headline", "",
              "Pre-registered measures: behaviour rates on em_freeform, and each trait vector at the layer its "
              "card chose at extraction (before any finetune). Values with 95% CIs: rates with no variation get "
              "an exact (Clopper–Pearson) interval; means and differences resample questions (em_freeform) or "
              "prompts (refusal_contrast), keyed by the dataset's own ids; a difference is paired on the "
              "questions both models answered (those drawn together in every resample); `differences.csv` "
              "says how many it paired and dropped.", ""]
    lines += [f"> **Pairing:** {w}" for w in pairing_warnings(c)] + ([""] if pairing_warnings(c) else [])
    tables = headline_tables(c)
    if not tables:
        lines += ["(no headline measures in these logs)", ""]
    for label, table in tables.items():
        lines += [f"### {label}", "", table.to_markdown(index=False), ""]
    ref = reference_table(c)
    if ref is not None:
        base, other = ref.attrs["models"]
        lines += ["## Reference table (refusal vector, mean projection)", "",
                  f"`{ref.attrs['metric'][5:]}` on the held-out refusal_contrast prompts.", "",
                  ref.to_markdown(index=False), ""]
    if c.conditions is not None:
        lines += ["## Conditions across finetuning seeds", "",
                  "Each condition's shift vs the base (mean over seeds, with the seed-to-seed SD), and condition "
                  "− control differences; 95% CIs from a two-level bootstrap (seeds × questions/prompts). Every "
                  "seed is paired by question with the same base run; a condition and a control are paired by "
                  "seed only where their seeds match (`seeds_paired` in `conditions.csv`).", ""]
        unmatched = sorted({f"{r.condition} − {r.reference}" for r in c.conditions.itertuples()
                            if r.seeds_paired is False})
        if unmatched:
            lines += [f"Seeds not matched (resampled independently): {', '.join(unmatched)}.", ""]
        view = c.conditions.assign(
            difference=[_ci(r.diff, r.ci_low, r.ci_high, sign=True) for r in c.conditions.itertuples()],
            excludes_0=[("yes" if (r.ci_low > 0 or r.ci_high < 0) else "no") if not math.isnan(r.ci_low) else ""
                        for r in c.conditions.itertuples()],
            seed_sd=[_fmt(x) for x in c.conditions["seed_sd"]],
        )[["task", "group", "metric", "condition", "reference", "n_seeds", "difference", "excludes_0", "seed_sd"]]
        lines += [view.to_markdown(index=False), ""]
    if c.agreement is not None:
        lines += ["## Graders side by side", "",
                  "Each grader's misaligned rate (answers it labelled), Cohen's kappa on the misaligned label over "
                  "answers both graders labelled, Spearman's rho on their aligned scores.", "",
                  c.agreement.to_markdown(index=False, floatfmt=".3f"), ""]
    if c.triggers is not None:
        lines += ["## Triggered − untriggered", "",
                  "The same questions asked with and without the trigger; differences paired by question, 95% CIs.",
                  ""]
        view = c.triggers.assign(
            triggered=[_fmt(x) for x in c.triggers["triggered"]],
            untriggered=[_fmt(x) for x in c.triggers["untriggered"]],
            difference=[_ci(r.diff, r.ci_low, r.ci_high, sign=True) for r in c.triggers.itertuples()])
        lines += [view[["model", "task", "metric", "triggered", "untriggered", "difference"]].to_markdown(index=False),
                  ""]
    lines += ["## Exploratory", "",
              "Every metric at every layer and per question is in `summary.csv` (means with CIs) and "
              "`differences.csv` (each model vs the base and each control); `layer_profile.png` plots the shift "
              "per layer. These were not chosen before the finetunes: read them as exploratory.", ""]
    pooled = c.summary[(c.summary["group"] == ALL) & ~c.summary["metric"].str.startswith("proj:")]
    if not pooled.empty:
        lines += ["Behaviour metrics, pooled:", "",
                  pooled.assign(value=[_ci(r.mean, r.ci_low, r.ci_high) for r in pooled.itertuples()])
                  [["task", "metric", "model", "n", "value"]].to_markdown(index=False), ""]
    if figures:
        lines += ["## Plots", ""] + [f"![{f}]({f})" if f.endswith(".png") else f"[{f}]({f}) (interactive)"
                                     for f in figures] + [""]
    lines += ["## Logs", ""] + [f"- `{p}`" for p in inputs] + [f"- note: {n}" for n in c.notes] + [""]
    lines += ["## Mismatches", ""] + ([f"- {m}" for m in c.mismatches] or
                                      ["None: every task and group is present for every model."])
    return "\n".join(lines) + "\n"
