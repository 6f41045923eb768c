"""Comparison plots: rates per question, projection distributions, layer profiles of the
projection difference.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot, so
importing this module does not pick or switch a backend (a notebook keeps its own) and nothing is
left open.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from inspect_em.readout import ALL, column, column_key, is_column, parse_metric_key

if TYPE_CHECKING:
    from inspect_em.analysis.compare import Comparison

RATES = ("code_mode", column("judge", "misaligned"), "loaded_numbers")


def subplots(rows: int, height: float, width: float = 9.0) -> tuple[Figure, list]:
    """A figure with ``rows`` stacked axes (no pyplot)."""
    fig = Figure(figsize=(width, height * rows))
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def write_all(c: Comparison, folder: Path) -> list[str]:
    """Write every plot the data supports (and, with inspect_viz installed, the interactive
    ``layer_profile.html``); returns the file names."""
    written = []
    for name, fn in (("rates.png", rates), ("projections.png", projections), ("layer_profile.png", layer_profile)):
        fig = fn(c)
        if fig is not None:
            fig.savefig(folder / name, dpi=110, bbox_inches="tight")
            written.append(name)
    if interactive_layer_profile(c, folder / "layer_profile.html"):
        written.append("layer_profile.html")
    return written


def rates(c: Comparison) -> Figure | None:
    """Code-mode and misaligned rates per question, bars per model with 95% bootstrap CIs."""
    s = c.summary
    if s.empty:
        return None
    metrics = [m for m in RATES if (s["metric"] == m).any()]
    if not metrics:
        return None
    fig, axes = subplots(len(metrics), 3.6, width=11)
    for ax, metric in zip(axes, metrics, strict=True):
        sel = s[s["metric"] == metric]
        groups = list(dict.fromkeys(sel["task"] + ": " + sel["group"]))
        width = 0.8 / len(c.labels)
        for k, label in enumerate(c.labels):
            rows = sel[sel["model"] == label].assign(key=lambda d: d["task"] + ": " + d["group"]).set_index("key")
            rows = rows.reindex(groups)
            x = np.arange(len(groups)) + k * width
            err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]).clip(min=0)
            ax.bar(x, rows["mean"].fillna(0), width, yerr=np.nan_to_num(err), capsize=2, label=label)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} rate")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title(f"{metric} rate per question (95% CI)")
    fig.tight_layout()
    return fig


def projections(c: Comparison) -> Figure | None:
    """Distributions of projections per group type, base vs each model: for each task and
    trait/method, the layer with the clearest shift."""
    df = c.samples
    keys = [k for k in df.columns if is_column(k, "proj") and df[k].notna().any()]
    if not keys:
        return None
    panels = _informative_keys(c, keys)[:6]
    if not panels:
        return None
    fig, axes = subplots(len(panels), 3.2)
    for ax, (task, key) in zip(axes, panels, strict=True):
        tdf = df[df["task"] == task]
        groups = sorted(tdf["group"].unique()) if task == "refusal_contrast" else [ALL]
        data, names = [], []
        for group in groups:
            gdf = tdf if group == ALL else tdf[tdf["group"] == group]
            for label in c.labels:
                values = gdf.loc[gdf["label"] == label, key].dropna().to_numpy()
                if len(values):
                    data.append(values)
                    names.append(f"{group}\n{label}")
        if not data:
            continue
        ax.violinplot(data, showmeans=True)
        ax.set_xticks(np.arange(1, len(names) + 1), names, fontsize=7)
        ax.set_ylabel("projection")
        ax.set_title(f"{task}: {column_key(key, 'proj')}", fontsize=9)
    fig.tight_layout()
    return fig


def _informative_keys(c: Comparison, keys: list[str]) -> list[tuple[str, str]]:
    """Per task and trait/method, the layer whose shift vs base is largest relative to its CI."""
    s = c.summary
    chosen: dict[tuple[str, str], tuple[float, str]] = {}
    for task in sorted(c.samples["task"].unique()):
        for key in keys:
            parsed = parse_metric_key(key)
            family = f"{parsed.trait}/{parsed.method}" if parsed else key
            rows = s[(s["task"] == task) & (s["metric"] == key) & s["diff_vs_base"].notna()]
            if not c.samples.loc[c.samples["task"] == task, key].notna().any():
                continue
            width = (rows["diff_ci_high"] - rows["diff_ci_low"]).abs().max() if len(rows) else np.nan
            strength = float(rows["diff_vs_base"].abs().max() / width) if len(rows) and width > 0 else 0.0
            if (task, family) not in chosen or strength > chosen[(task, family)][0]:
                chosen[(task, family)] = (strength, key)
    return [(task, key) for (task, _), (_, key) in chosen.items()]


def layer_profile_rows(c: Comparison) -> pd.DataFrame | None:
    """The layer profile's data: one row per task × trait × method × layer × model (not the base),
    with ``diff_vs_base`` and its 95% CI (the pooled group of each task); None when no panel has
    at least two layers."""
    s = c.summary
    if s.empty:
        return None
    keys = {m: key for m in set(s["metric"]) if (key := parse_metric_key(m)) is not None}
    sel = s[s["metric"].isin(list(keys)) & (s["model"] != c.base) & s["diff_vs_base"].notna()]
    pooled = sel[(sel["group"] == ALL) | ~sel["task"].isin(sel.loc[sel["group"] == ALL, "task"])]
    if pooled.empty:
        return None
    pooled = pooled.assign(trait=[keys[m].trait for m in pooled["metric"]],
                           method=[keys[m].method for m in pooled["metric"]],
                           layer=[keys[m].layer for m in pooled["metric"]])
    if all(len(g) < 2 * g["model"].nunique() for _, g in pooled.groupby(["task", "trait", "method"])):
        return None
    return pooled.sort_values(["task", "trait", "method", "layer"], kind="stable").reset_index(drop=True)


def layer_profile(c: Comparison) -> Figure | None:
    """Mean projection difference (model − base) per layer, 95% CI band, per trait/method/task."""
    pooled = layer_profile_rows(c)
    if pooled is None:
        return None
    panels = list(pooled.groupby(["task", "trait", "method"]))
    fig, axes = subplots(len(panels), 3.4)
    for ax, ((task, trait, method), panel) in zip(axes, panels, strict=True):
        for model, g in panel.groupby("model", sort=False):
            g = g.sort_values("layer")
            line = ax.plot(g["layer"], g["diff_vs_base"], marker="o", ms=3, label=f"{model} − {c.base}")
            ax.fill_between(g["layer"], g["diff_ci_low"], g["diff_ci_high"], alpha=0.2, color=line[0].get_color())
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("projection difference")
        ax.set_title(f"{task}: {trait}/{method} shift vs {c.base} (95% CI; exploratory)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def interactive_layer_profile(c: Comparison, path: Path) -> bool:
    """The layer profile as a self-contained interactive page (``inspect_viz``, the ``viz`` extra):
    one panel row per task × trait/method, a dot per model and layer with its 95% CI and a tooltip.
    Returns False (and writes nothing) when inspect_viz is missing or fails (a warning: the PNGs
    stand), or there is no profile."""
    try:
        from inspect_viz import Data
        from inspect_viz.mark import dot, rule_x, rule_y
        from inspect_viz.plot import plot, to_html
    except ImportError:
        return False
    pooled = layer_profile_rows(c)
    if pooled is None:
        return False
    table = pooled.assign(panel=pooled["task"] + ": " + pooled["trait"] + "/" + pooled["method"],
                          model=pooled["model"] + " − " + c.base)
    try:
        data = Data.from_dataframe(table[["panel", "model", "layer", "diff_vs_base", "diff_ci_low", "diff_ci_high"]])
        component = plot(
            rule_x(data, x="layer", y1="diff_ci_low", y2="diff_ci_high", stroke="model", fy="panel",
                   stroke_opacity=0.4),
            dot(data, x="layer", y="diff_vs_base", fill="model", fy="panel", tip=True),
            rule_y(y=0),
            title=f"Projection shift vs {c.base} per layer (95% CI; exploratory)",
            x_label="layer", y_label="projection difference", legend="color",
        )
        html = to_html(component)
    except Exception as e:  # an optional extra: the report stands without it
        warnings.warn(f"layer_profile.html not written (inspect_viz: {type(e).__name__}: {e})", stacklevel=2)
        return False
    path.write_text(html, encoding="utf-8")  # UTF-8 on every platform (the labels hold '−')
    return True
