"""Base-vs-EM comparison: Inspect logs → tidy samples → summary table, bootstrap CIs, plots.

Logs are read with ``inspect_ai.analysis`` dataframes (``samples_df`` joined to ``evals_df``),
never parsed by hand. The first log's model is the base; every other model is compared to it.
Samples are matched by task name and group (``question_id`` for em_freeform, ``prompt_type``
for refusal_contrast); groups or tasks present on one side only are reported, not dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InspectEmError
from .paths import atomic_dir

ALL = "(all)"
SCALAR_SCORES = {"score_code_mode": "code_mode", "score_refusal": "refusal"}
DICT_SCORES = {"score_trait_projection": "proj", "score_em_judge": "judge"}


def _log_files(paths: Sequence[str | Path]) -> list[str]:
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.glob("*.eval"))
            if not found:
                raise InspectEmError(f"{p}: no .eval logs in this folder")
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise InspectEmError(f"{p}: log not found")
    return files


def _expand(value: Any) -> dict[str, float]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        return {}
    return {str(k): (float(v) if v is not None else math.nan) for k, v in data.items()}


def load_samples(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per sample × epoch with columns ``label``, ``task``, ``group``, ``sample_id``,
    ``epoch`` and one float column per metric (``code_mode``, ``refusal``,
    ``proj:<trait>/<method>/L<layer>``, ``judge:<key>``)."""
    from inspect_ai.analysis import evals_df, samples_df

    files = _log_files(paths)
    samples = samples_df(files, quiet=True)
    evals = evals_df(files, quiet=True)[["eval_id", "model", "task_name", "log"]]
    if samples.empty:
        raise InspectEmError("the logs hold no samples")
    df = samples.merge(evals.rename(columns={"log": "eval_log"}), on="eval_id", how="left")
    if labels is None:
        model_of = evals.set_index("log")["model"]
        labels = [_short_model(model_of[f]) for f in files]
    elif len(labels) != len(files):
        raise InspectEmError(f"{len(labels)} labels for {len(files)} logs")
    df["label"] = df["eval_log"].map(dict(zip(files, labels, strict=True)))
    df["task"] = df["task_name"].str.replace("inspect_em/", "", regex=False)
    group = pd.Series(ALL, index=df.index)
    for column in ("metadata_prompt_type", "metadata_question_id"):
        if column in df:
            group = df[column].where(df[column].notna(), group)
    df["group"] = group.astype(str)
    out = df[["label", "task", "group", "sample_id", "id", "epoch", "model"]].copy()
    for column, name in SCALAR_SCORES.items():
        if column in df:
            out[name] = pd.to_numeric(df[column], errors="coerce")
    for column, prefix in DICT_SCORES.items():
        if column in df:
            expanded = pd.DataFrame([_expand(v) for v in df[column]], index=df.index)
            for key in expanded.columns:
                out[f"{prefix}:{key}"] = expanded[key].astype(float)
    out.attrs["label_order"] = list(dict.fromkeys(labels))
    return out


def _short_model(model: str) -> str:
    name = str(model)
    if name.startswith("hf/"):
        name = name[3:]
    return Path(name).name or name


def metric_columns(df: pd.DataFrame) -> list[str]:
    fixed = {"label", "task", "group", "sample_id", "id", "epoch", "model"}
    return [c for c in df.columns if c not in fixed and df[c].notna().any()]


def bootstrap_diff(other: np.ndarray, base: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap CI of mean(other) − mean(base) (NaN with < 2 values a side)."""
    from scipy.stats import bootstrap

    # sorted so that the (seeded) CI does not depend on the order the logs list samples in
    other, base = np.sort(other[~np.isnan(other)]), np.sort(base[~np.isnan(base)])
    if len(other) < 2 or len(base) < 2:
        return math.nan, math.nan
    if np.ptp(other) == 0 and np.ptp(base) == 0:
        d = float(other[0] - base[0])
        return d, d
    res = bootstrap((other, base), lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis), vectorized=True,
                    n_resamples=n_resamples, confidence_level=0.95, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_mean(values: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean."""
    from scipy.stats import bootstrap

    values = np.sort(values[~np.isnan(values)])
    if len(values) < 2:
        return math.nan, math.nan
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    res = bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=0.95, method="percentile",
                    random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass
class Comparison:
    """The comparison's tables. ``summary`` is long: one row per task × group × metric × model."""

    samples: pd.DataFrame
    base: str
    labels: list[str]
    summary: pd.DataFrame
    mismatches: list[str] = field(default_factory=list)


def compare(df: pd.DataFrame, base: str | None = None) -> Comparison:
    """Means per model/task/group/metric, and each model − base with a 95% bootstrap CI."""
    labels = df.attrs.get("label_order") or list(dict.fromkeys(df["label"]))
    if len(labels) < 2:
        raise InspectEmError(f"compare needs logs of at least two models, got {labels}")
    base = base or labels[0]
    if base not in labels:
        raise InspectEmError(f"base '{base}' is not among the models {labels}")
    metrics = metric_columns(df)
    mismatches: list[str] = []
    rows = []
    for task, tdf in df.groupby("task", sort=True):
        present = set(tdf["label"])
        for label in labels:
            if label not in present:
                mismatches.append(f"task {task}: no log for {label}")
        if base not in present:
            continue
        base_groups = set(tdf.loc[tdf["label"] == base, "group"])
        for label in labels:
            if label == base or label not in present:
                continue
            groups = set(tdf.loc[tdf["label"] == label, "group"])
            for g in sorted(base_groups - groups):
                mismatches.append(f"task {task}: group {g} only in {base}")
            for g in sorted(groups - base_groups):
                mismatches.append(f"task {task}: group {g} only in {label}")
        groups = sorted(set(tdf["group"])) + ([ALL] if tdf["group"].nunique() > 1 else [])
        for group in groups:
            gdf = tdf if group == ALL else tdf[tdf["group"] == group]
            for metric in metrics:
                base_values = gdf.loc[gdf["label"] == base, metric].to_numpy(dtype=float)
                for label in labels:
                    values = gdf.loc[gdf["label"] == label, metric].to_numpy(dtype=float)
                    valid = values[~np.isnan(values)]
                    if len(valid) == 0:
                        continue
                    low, high = bootstrap_mean(values)
                    row = {"task": task, "group": group, "metric": metric, "model": label, "n": len(valid),
                           "mean": float(valid.mean()), "ci_low": low, "ci_high": high,
                           "diff_vs_base": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan}
                    if label != base and (~np.isnan(base_values)).any():
                        row["diff_vs_base"] = float(valid.mean() - np.nanmean(base_values))
                        row["diff_ci_low"], row["diff_ci_high"] = bootstrap_diff(values, base_values)
                    rows.append(row)
    summary = pd.DataFrame(rows)
    return Comparison(df, base, labels, summary, mismatches)


def reference_table(comparison: Comparison, other: str | None = None, metric: str | None = None) -> pd.DataFrame | None:
    """The reference experiment's table: prompt type × (base, EM, difference) for the refusal
    projection of refusal_contrast logs; None without such logs.

    ``metric`` defaults to the refusal projection with the largest harmful − benign gap in the
    base model (the layer where the vector works best on these prompts).
    """
    s = comparison.summary
    if s.empty:
        return None
    rc = s[(s["task"] == "refusal_contrast") & s["metric"].str.startswith("proj:refusal/")]
    rc = rc[rc["group"].isin(["harmful", "benign"])]
    if rc.empty:
        return None
    if metric is None:
        base_rows = rc[rc["model"] == comparison.base].pivot_table(index="metric", columns="group", values="mean")
        if not {"harmful", "benign"} <= set(base_rows.columns):
            return None
        metric = str((base_rows["harmful"] - base_rows["benign"]).idxmax())
    other = other or next((m for m in comparison.labels if m != comparison.base and m in set(rc["model"])), None)
    if other is None:
        return None
    rows = []
    for group in ("harmful", "benign"):
        sel = rc[(rc["metric"] == metric) & (rc["group"] == group)].set_index("model")
        if comparison.base in sel.index and other in sel.index:
            b, e = sel.loc[comparison.base, "mean"], sel.loc[other, "mean"]
            rows.append({"Prompt type": group, "Base": round(b, 2), "EM": round(e, 2), "Difference": round(e - b, 2)})
    table = pd.DataFrame(rows)
    table.attrs["metric"] = metric
    table.attrs["models"] = (comparison.base, other)
    return table


def _fmt(x: float, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def write_report(comparison: Comparison, out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """Write ``report.md``, ``summary.csv`` and PNG plots into ``out`` (atomically)."""
    from . import plots

    out = Path(out)
    with atomic_dir(out, overwrite=True) as tmp:
        comparison.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.6g")
        figures = plots.write_all(comparison, tmp)
        (tmp / "report.md").write_text(_markdown(comparison, inputs, figures))
    return out


def _markdown(c: Comparison, inputs: Sequence[str | Path], figures: list[str]) -> str:
    lines = ["# inspect_em comparison", "", f"Base model: **{c.base}**; compared: "
             + ", ".join(f"**{m}**" for m in c.labels if m != c.base), "", "Logs:", ""]
    lines += [f"- `{p}`" for p in inputs]
    table = reference_table(c)
    if table is not None:
        base, other = table.attrs["models"]
        lines += ["", "## Reference table (refusal vector, mean projection)", "",
                  f"`{table.attrs['metric'][5:]}` on the held-out refusal_contrast prompts; Base = {base}, "
                  f"EM = {other}.", "", table.to_markdown(index=False)]
    s = c.summary
    if not s.empty:
        lines += ["", "## Differences from the base model (95% bootstrap CI)", ""]
        diffs = s[s["model"] != c.base].copy()
        pooled = diffs[(diffs["group"] == ALL) | ~diffs["task"].isin(diffs.loc[diffs["group"] == ALL, "task"])]
        view = pooled.assign(
            base=[_base_mean(s, c.base, r) for r in pooled.itertuples()],
            difference=[f"{_fmt(r.diff_vs_base)} [{_fmt(r.diff_ci_low)}, {_fmt(r.diff_ci_high)}]"
                        for r in pooled.itertuples()],
        )[["task", "group", "metric", "model", "n", "base", "mean", "difference"]]
        lines += [view.to_markdown(index=False, floatfmt=".3f")]
        lines += ["", "## Per group", ""]
        per = s[s["group"] != ALL][["task", "group", "metric", "model", "n", "mean", "ci_low", "ci_high",
                                    "diff_vs_base", "diff_ci_low", "diff_ci_high"]]
        lines += [per.to_markdown(index=False, floatfmt=".3f")]
    if figures:
        lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in figures]
    lines += ["", "## Mismatches", ""] + ([f"- {m}" for m in c.mismatches] or ["None: every task and group is present "
                                                                              "for every model."])
    return "\n".join(lines) + "\n"


def _base_mean(summary: pd.DataFrame, base: str, row: Any) -> float:
    sel = summary[(summary["task"] == row.task) & (summary["group"] == row.group) & (summary["metric"] == row.metric)
                  & (summary["model"] == base)]
    return float(sel["mean"].iloc[0]) if len(sel) else math.nan
