"""The comparison rendered: ``report.md`` (headline first), the CSVs, the per-sample table and
the plots, written atomically (:func:`write_report`); the headline and reference tables as text."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from inspect_em.analysis.calibration import estimate_from_calibration
from inspect_em.analysis.compare import HEADLINE_TASK, Comparison, headline_metrics
from inspect_em.readout import ALL, column, column_key, is_column, metric_key, parse_metric_key
from inspect_em.util.paths import atomic_output

STAMP = "<!-- written by inspect-em compare -->"
SAMPLES_FILE = "samples.parquet"
COMPARISON_FILE = "comparison.json"


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
    key = parse_metric_key(metric)
    card = c.cards.get(key.trait) if key else None
    calibration = card.calibration if card is not None else None
    if key is None or calibration is None or task != HEADLINE_TASK or calibration.layer != key.layer or shift is None:
        return ""
    estimate = estimate_from_calibration(float(shift), calibration.points)
    if estimate is None:
        return ""
    if estimate["outside"]:
        return "outside the calibrated range"
    return (f"alpha ≈ {estimate['alpha']:.1f} → {calibration.behaviour or 'behaviour'} rate ≈ "
            f"{estimate['rate']:.2f}")


def _measure_name(task: str, group: str, metric: str) -> str:
    where = task if group == ALL else f"{task} ({group})"
    if is_column(metric, "proj"):
        return f"{column_key(metric, 'proj')} projection, {where}"
    return f"{column_key(metric) or metric} rate, {where}" if not is_column(metric, "judge") or "misaligned" in metric \
        else f"{metric}, {where}"


def reference_table(c: Comparison, other: str | None = None, metric: str | None = None) -> pd.DataFrame | None:
    """The reference experiment's table: prompt type × (base, other, other − base) for the refusal
    projection on refusal_contrast logs; columns are named by the labels compared.

    ``metric`` defaults to the refusal card's best ``mean_diff`` layer, else the refusal
    projection with the largest harmful − benign gap in the base model.
    """
    s = c.summary
    rc = s[(s["task"] == "refusal_contrast") & s["metric"].str.startswith(column("proj", "refusal/"))
           & s["group"].isin(["harmful", "benign"])]
    if rc.empty:
        return None
    if metric is None:
        card = c.cards.get("refusal")
        layer = card.layer("mean_diff") if card is not None else None
        metric = column("proj", metric_key("refusal", "mean_diff", layer)) if layer is not None else None
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
    """Write ``report.md``, ``summary.csv``, ``differences.csv`` (``conditions.csv``, ...), the plots,
    and the per-sample table it was computed from (``samples.parquet`` with ``comparison.json``)
    into ``out`` atomically; an existing ``out`` is replaced only when an earlier compare wrote it
    (same settings, or ``force``), and never when it holds an input log."""
    from inspect_em.analysis import plots

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
        if c.series is not None:
            from inspect_em.analysis.checkpoints import plot_series

            c.series.to_csv(tmp / "series.csv", index=False, float_format="%.6g")
            if c.series_lora is not None:
                c.series_lora.to_csv(tmp / "lora.csv", index=False, float_format="%.6g")
            plot_series(c.series, c.series_lora, c.series_d_model, tmp / "series.png")
        # what the numbers were computed from, so anyone can recompute them without the models
        # (`inspect-em compare --samples <out>/samples.parquet`)
        c.samples.to_parquet(tmp / SAMPLES_FILE, index=False)
        saved = {"labels": c.labels, "base": c.base, "controls": c.controls, "pairs": [list(p) for p in c.pairs],
                 "cards": {t: card.to_dict() for t, card in c.cards.items()}, "notes": c.notes,
                 "incomplete": c.incomplete, "series_steps": {k: list(v) for k, v in c.series_steps.items()},
                 # a series attached from its own logs (the demo's) is not in samples.parquet: not recomputed
                 "series_control": c.series_control if c.series_steps else None,
                 "series_d_model": c.series_d_model}
        (tmp / COMPARISON_FILE).write_text(json.dumps(saved, indent=2, default=str), encoding="utf-8")
        figures = plots.write_all(c, tmp) + (["series.png"] if c.series is not None else [])
        (tmp / "report.md").write_text(markdown(c, inputs, figures), encoding="utf-8")
    return out


def report_folder(path: str | Path) -> Path:
    """The report folder of ``samples.parquet`` or of the folder itself."""
    path = Path(path)
    return path.parent if path.is_file() else path


def read_samples(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A report's per-sample table (``samples.parquet``) and the settings beside it
    (``comparison.json``: labels in order, base, controls, pairs, the vector cards)."""
    from inspect_em.errors import InspectEmError

    folder = report_folder(path)
    table, settings_file = folder / SAMPLES_FILE, folder / COMPARISON_FILE
    for needed in (table, settings_file):
        if not needed.is_file():
            raise InspectEmError(f"{needed}: not found (a folder written by inspect-em compare holds it)")
    try:
        samples = pd.read_parquet(table)
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InspectEmError(f"{folder}: cannot read the samples table ({str(e).splitlines()[0][:100]})") from None
    samples.attrs["label_order"] = list(settings.get("labels") or dict.fromkeys(samples["label"]))
    return samples, settings


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


def series_section(c: Comparison) -> list[str]:
    """The checkpoint series: each run's last step per measure, vs base and vs the control's same step."""
    assert c.series is not None
    last = c.series.loc[c.series.groupby(["run", "metric"])["step"].idxmax()]
    view = last.assign(value=[_ci(r.value, r.value_low, r.value_high) for r in last.itertuples()],
                       vs_base=[_ci(r.diff_vs_base, r.diff_vs_base_low, r.diff_vs_base_high, sign=True)
                                for r in last.itertuples()])
    columns = ["run", "step", "metric", "value", "vs_base"]
    if "diff_vs_control" in last.columns:
        view["vs_control"] = ["" if math.isnan(r.diff_vs_control) else
                              _ci(r.diff_vs_control, r.diff_vs_control_low, r.diff_vs_control_high, sign=True)
                              for r in last.itertuples()]
        columns.append("vs_control")
    steps = sorted({int(s) for s in c.series["step"]})
    return ["## Over training steps (checkpoint series)", "",
            f"{len(set(c.series['run']))} run(s) at optimizer steps {', '.join(map(str, steps))}; step 0 is the base "
            "model. Every step of every measure, with 95% CIs paired by question, is in `series.csv` and "
            "`series.png`" + (f"; `vs_control` is each run minus **{c.series_control}** at the same step "
                              "(blank where the control has no checkpoint at that step)" if c.series_control else "")
            + ("; `lora.csv`: each adapter's ‖ΔW‖_F and its direction's cosine with the trait vectors"
               if c.series_lora is not None else "") + ". The last step:", "",
            view[columns].to_markdown(index=False), ""]


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
                  f"`{column_key(ref.attrs['metric'], 'proj')}` on the held-out refusal_contrast prompts.", "",
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
    if c.series is not None:
        lines += series_section(c)
    lines += ["## Exploratory", "",
              "Every metric at every layer and per question is in `summary.csv` (means with CIs) and "
              "`differences.csv` (each model vs the base and each control); `layer_profile.png` plots the shift "
              "per layer. These were not chosen before the finetunes: read them as exploratory.", ""]
    pooled = c.summary[(c.summary["group"] == ALL) & ~c.summary["metric"].map(lambda m: is_column(m, "proj"))]
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
