"""Causal validation of trait vectors: steer the model along a vector (layers × alphas) and measure
the behaviour the trait names, with our own scorers, as Inspect evals.

- ``code``: code-mode rate on the em_freeform questions when the code vector is added.
- ``refusal`` and ``refusal_instructed``: refusal rate on the held-out benign prompts when the
  vector is added; with ``mode="ablate"``, the refusal rate on the harmful prompts and the
  harmful − benign projection gap at every layer when the direction is ablated everywhere.

Every configuration also reads the trait's projection at the card's layer in the steered forward
pass (``with_steering``: what the steering did to the model's own activations) and the answers'
perplexity under the unsteered model (fluency; an answer counts as coherent when its perplexity is
at most the 95th percentile of the unsteered answers'). The runs go through Inspect's
``eval_set`` (resumable). Results: ``causal.csv``, ``causal.png`` (behaviour rate per layer ×
alpha), ``calibration.png`` (behaviour rate vs projection shift at the calibration layer) and, with
``update_card``, a ``causal`` section in the vector card beside the held-out layer choice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from inspect_em.directions.store import CalibrationPoint
from inspect_em.errors import InspectEmError
from inspect_em.readout import Position, cluster_keys

if TYPE_CHECKING:  # steering loads torch: the sweep imports it when it runs
    from inspect_em.model.steering import SteerMode

BEHAVIOURS = {"code": ("code_mode", None), "refusal": ("refusal", "benign"),
              "refusal_instructed": ("refusal", "benign")}
COHERENT_QUANTILE = 0.95


@dataclass
class SweepResult:
    table: pd.DataFrame
    summary: dict[str, Any]
    out: Path
    gaps: pd.DataFrame | None = None


def _tasks(trait: str, vectors: Path, layer_alphas: Sequence[tuple[int | str, float]], mode: SteerMode,
           samples: int, max_tokens: int, limit: int | None, position: Position = "last_prompt_token") -> list[Any]:
    """One eval task per (layer, alpha): the unsteered reference first. Projections are read at
    ``position`` (the refusal vectors' card position); code vectors are read over the answers."""
    from inspect_ai import task_with
    from inspect_ai.model import GenerateConfig

    from inspect_em.scorers.code_mode import code_mode
    from inspect_em.scorers.fluency import answer_perplexity
    from inspect_em.scorers.projection import narrow_metrics, trait_projection
    from inspect_em.scorers.refusal import refusal
    from inspect_em.solvers.steer import steer
    from inspect_em.tasks import em_freeform, refusal_contrast

    tasks = []
    for layer, alpha in layer_alphas:
        projection = narrow_metrics(trait_projection(
            vectors=str(vectors), layers="all" if mode == "ablate" else "best",
            position="response_mean" if trait == "code" else position, with_steering=True))
        if trait == "code":
            base = em_freeform(variants="plain", samples_per_question=samples)
            scorers = [code_mode(), projection, answer_perplexity()]
            config = GenerateConfig(temperature=1.0, max_tokens=max_tokens)
        else:
            base = refusal_contrast(vectors=str(vectors), max_tokens=max_tokens, position=position)
            scorers = [refusal(), projection, answer_perplexity()]
            config = GenerateConfig(max_tokens=max_tokens)
        name = str(layer).replace("+", "_")
        kwargs: dict[str, Any] = {"name": f"sweep_{trait}_{mode}_L{name}_a{alpha:g}", "scorer": scorers,
                                  "config": config}
        if alpha != 0:  # alpha 0 is the unsteered reference (in ablate mode alpha 1 means ablated)
            kwargs["solver"] = steer(vectors=str(vectors), layer=str(layer).replace("+", ","), alpha=alpha,
                                     mode=mode)
        tasks.append(task_with(base, **kwargs))
    return tasks


def run_sweep(
    model_ref: str, vectors: str | Path, *, layers: str = "best", alphas: Sequence[float] = (0, 2, 4, 8),
    mode: SteerMode = "add", samples: int = 2, max_tokens: int = 64, limit: int | None = None,
    out: str | Path | None = None, seed: int = 0, update_card: bool = False, force: bool = False,
    joint: bool = False,
) -> SweepResult:
    """Run the sweep and write its results (see the module docstring).

    With ``joint``, each alpha steers all the chosen layers at once (each with its own vector and
    norm; multi-layer steering) and the table's ``layer`` is their label, e.g. ``12+14+16+18``.
    """
    from inspect_ai import eval_set
    from inspect_ai.log import read_eval_log
    from inspect_ai.model import get_model

    from inspect_em.directions import store as vector_store
    from inspect_em.model.loading import check_vectors_fit, hub_offline_for_local, resolve_model_ref
    from inspect_em.readout import absolute_layer, check_position, parse_layers
    from inspect_em.util.paths import atomic_output, check_live_folder, check_output, claim_live_folder

    tv = vector_store.load(vectors)
    if tv.trait not in BEHAVIOURS:
        raise InspectEmError(f"steer-sweep measures the behaviour of {', '.join(BEHAVIOURS)} vectors, not {tv.trait}")
    if mode not in ("add", "ablate"):
        raise InspectEmError(f"unknown mode '{mode}' (add or ablate)")
    spec = parse_layers(layers, allow_best=True)
    card_layer = tv.best_layer("mean_diff")
    chosen = list(dict.fromkeys(absolute_layer(x, tv.n_layers) for x in spec)) if isinstance(spec, tuple) else \
        list(tv.layers) if spec == "all" else [card_layer]
    for layer in chosen:
        tv.vector("mean_diff", layer)  # one-line error for a layer without a vector
    bad = [a for a in alphas if not math.isfinite(float(a))]
    if bad:
        raise InspectEmError(f"--alphas: {bad[0]} is not a finite number")
    alphas = sorted({float(a) for a in alphas} | ({0.0} if mode == "add" else set()))
    if mode == "add" and not any(alphas):
        raise InspectEmError("steer-sweep needs a non-zero alpha to add (alpha 0, the unsteered reference, "
                             "always runs)")
    if joint and mode != "add":
        raise InspectEmError("joint (multi-layer) steering applies to mode add")
    joint = joint and len(chosen) > 1
    steered: list[int | str] = ["+".join(str(x) for x in chosen)] if joint else list(chosen)
    pairs = [(card_layer, 0.0)] + [(layer, a) for layer in steered for a in alphas if a != 0] if mode == "add" else \
        [(card_layer, 0.0), (card_layer, 1.0)]
    out = Path(out) if out is not None else Path(vectors) .with_name(f"{tv.trait}-sweep-{mode}")
    config = {"model": model_ref, "vectors": str(vectors), "layers": chosen, "alphas": alphas, "mode": mode,
              "samples": samples, "max_tokens": max_tokens, "limit": limit, "seed": seed}
    if joint:
        config["joint"] = True
    # every check before the model loads: the results folder, the logs folder, the card to update,
    # the vectors against the model's config
    check_output(out, command="steer-sweep", config=config, inputs=[vectors], force=force)
    log_dir = out.with_name(f"{out.name}-logs")
    check_live_folder(log_dir, command="steer-sweep", config=config, force=force)
    if update_card:
        vector_store.check_save(tv, vectors)
    ref = resolve_model_ref(model_ref)
    check_vectors_fit([tv], ref)
    position = check_position(tv.card.position or "last_prompt_token", what="card position")
    tasks = _tasks(tv.trait, Path(vectors), pairs, mode, samples, max_tokens, limit, position)
    claim_live_folder(log_dir, command="steer-sweep", config=config, force=force)
    with hub_offline_for_local(ref):
        model = get_model(f"hf/{Path(ref).name if Path(ref).exists() else ref}", model_path=ref, memoize=False)
        ok, logs = eval_set(tasks, log_dir=str(log_dir), model=model, limit=limit, seed=seed, display="none",
                            log_dir_allow_dirty=True, max_tasks=1, retry_attempts=1)
    if not ok:
        raise InspectEmError(f"the sweep's evals did not finish (logs in {log_dir}); re-run to resume")
    # eval_set hands back headers for logs it reused: read each one whole
    by_name = {log.eval.task: log if log.samples is not None else read_eval_log(log.location) for log in logs}
    table, gaps = _table(tv, [(p, by_name[t.name]) for p, t in zip(pairs, tasks, strict=True)], mode, card_layer)
    summary = _summary(table, tv.trait, mode, card_layer)
    with atomic_output(out, command="steer-sweep", config=config, inputs=[vectors], force=force) as tmp:
        table.to_csv(tmp / "causal.csv", index=False, float_format="%.6g")
        if gaps is not None:
            gaps.to_csv(tmp / "ablation_gaps.csv", index=False, float_format="%.6g")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        _plots(table, summary, tmp, tv.trait, gaps)
    if update_card:
        causal = dict(tv.card.causal or {})
        causal["add_joint" if joint else mode] = summary  # a joint sweep never replaces the one-layer calibration
        if mode == "add" and not joint:
            causal.update({k: summary[k] for k in ("best_layer", "calibrated_alpha", "calibration_layer",
                                                   "projection_layer", "calibration") if k in summary})
        tv.card = tv.card.with_causal(causal)
        vector_store.save(tv, vectors)
    return SweepResult(table, summary, out, gaps)


def _values(log: Any, scorer: str, key: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Per answer (sample × epoch): a score's value, its cluster (question/prompt) and prompt type."""
    values, clusters, groups = [], [], []
    for s in log.samples:
        score = (s.scores or {}).get(scorer)
        value = score.value if score is not None else math.nan
        if key is not None:
            value = value.get(key, math.nan) if isinstance(value, dict) else math.nan
        values.append(float(value) if value is not None else math.nan)
        clusters.append(cluster_keys(log.eval.task, s.id, s.metadata or {}).question)
        groups.append(str(s.metadata.get("prompt_type", "")))
    return np.array(values), clusters, groups


def _table(tv: Any, runs: list[tuple[tuple[int | str, float], Any]], mode: str, card_layer: int
           ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    from inspect_em.analysis.stats import Clustered, binomial_ci, bootstrap_diff, bootstrap_mean
    from inspect_em.readout import metric_key

    behaviour, group = BEHAVIOURS[tv.trait]
    if mode == "ablate":
        group = "harmful"
    key = metric_key(tv.trait, "mean_diff", card_layer)
    base_log = runs[0][1]
    base_proj, base_clusters, base_groups = _values(base_log, "trait_projection", key)
    base_ppl, _, _ = _values(base_log, "answer_perplexity")
    threshold = float(np.nanquantile(base_ppl, COHERENT_QUANTILE))
    rows = []
    for (layer, alpha), log in runs:
        rate, clusters, groups = _values(log, behaviour)
        proj, _, _ = _values(log, "trait_projection", key)
        ppl, _, _ = _values(log, "answer_perplexity")
        keep = np.array([group is None or g == group for g in groups])
        r = rate[keep & ~np.isnan(rate)]
        low, high = binomial_ci(int(r.sum()), len(r)) if len(r) else (math.nan, math.nan)
        sel = [c for c, k in zip(clusters, keep, strict=True) if k]
        data = Clustered.of(proj[keep], sel)
        base_keep = np.array([group is None or g == group for g in base_groups])
        base_data = Clustered.of(base_proj[base_keep], [c for c, k in zip(base_clusters, base_keep, strict=True)
                                                        if k])
        shift = bootstrap_diff(data, base_data)
        proj_low, proj_high = bootstrap_mean(data)
        rows.append({"layer": layer, "alpha": alpha, "mode": mode, "n": len(r),
                     "behaviour": behaviour + (f" ({group})" if group else ""), "rate": float(r.mean()) if len(r)
                     else math.nan, "rate_low": low, "rate_high": high,
                     "projection": data.mean(), "projection_low": proj_low, "projection_high": proj_high,
                     "shift": shift.estimate, "shift_low": shift.low, "shift_high": shift.high,
                     "coherent_rate": float(np.mean(ppl[keep] <= threshold)), "median_perplexity":
                     float(np.nanmedian(ppl[keep])), "perplexity_threshold": threshold})
    table = pd.DataFrame(rows)
    gaps = None
    if mode == "ablate":
        gap_rows = []
        for name, log in (("unsteered", runs[0][1]), ("ablated", runs[1][1])):
            for layer in tv.layers:
                k = metric_key(tv.trait, "mean_diff", layer)
                values, _, groups = _values(log, "trait_projection", k)
                harmful = values[np.array(groups) == "harmful"]
                benign = values[np.array(groups) == "benign"]
                gap_rows.append({"model": name, "layer": layer, "harmful": float(np.nanmean(harmful)),
                                 "benign": float(np.nanmean(benign)),
                                 "gap": float(np.nanmean(harmful) - np.nanmean(benign))})
        gaps = pd.DataFrame(gap_rows)
    return table, gaps


def _summary(table: pd.DataFrame, trait: str, mode: str, card_layer: int) -> dict[str, Any]:
    base = table[table["alpha"] == 0]
    base_rate = float(base["rate"].iloc[0]) if len(base) else math.nan
    summary: dict[str, Any] = {"trait": trait, "mode": mode, "behaviour": str(table["behaviour"].iloc[0]),
                               "unsteered_rate": base_rate, "card_layer": card_layer,
                               "coherence": f"perplexity of the answer on its own (after an empty user turn) under "
                                            f"the unsteered model <= the {COHERENT_QUANTILE:.0%} quantile of "
                                            "unsteered answers"}
    if mode == "ablate":
        summary["ablated_rate"] = float(table["rate"].iloc[-1])
        return summary
    steered_layers = list(table.loc[table["alpha"] != 0, "layer"])
    layer = card_layer if card_layer in steered_layers else steered_layers[-1]
    at = table[table["layer"] == layer].sort_values("alpha")
    summary["calibration_layer"] = _layer_value(layer)  # where it steered
    summary["projection_layer"] = int(card_layer)  # where the shift on the curve was read
    # the instrument's curve at the calibration layer, coherent or not (coherence is in causal.csv)
    curve = pd.concat([base.assign(layer=layer), at[at["alpha"] != 0]])
    summary["calibration"] = [
        CalibrationPoint(round(float(r.alpha), 3), round(float(r.shift), 3), round(float(r.rate), 4),
                         round(float(r.rate_low), 4), round(float(r.rate_high), 4)).to_list()
        for r in curve.itertuples()]
    enough = at[(at["alpha"] != 0) & (at["rate"] >= 0.5) & (at["coherent_rate"] >= 0.5)]
    summary["calibrated_alpha"] = float(enough["alpha"].iloc[0]) if len(enough) else None
    steered = table[(table["alpha"] != 0) & (table["coherent_rate"] >= 0.5)]
    if not steered.empty:  # the causal layer: the largest behaviour change while answers stay coherent
        effect = steered.assign(effect=steered["rate"] - base_rate).groupby("layer")["effect"].max()
        summary["best_layer"] = _layer_value(effect.idxmax())
        summary["best_layer_effect"] = float(effect.max())
    return summary


def _layer_value(layer: Any) -> int | str:
    """A table's layer as the card records it: a number, or a joint label such as ``12+14+16+18``."""
    return layer if isinstance(layer, str) else int(layer)


def _plots(table: pd.DataFrame, summary: dict[str, Any], folder: Path, trait: str, gaps: pd.DataFrame | None) -> None:
    from inspect_em.analysis.plots import subplots

    if summary["mode"] == "add":
        grid = table[table["alpha"] != 0].pivot_table(index="layer", columns="alpha", values="rate")
        fig, (ax,) = subplots(1, max(2.5, 0.45 * len(grid) + 1.5), width=7)
        image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [f"{a:g}" for a in grid.columns])
        ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index])
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
        ax.set_xlabel("alpha (x fit mean-difference norm)")
        ax.set_ylabel("steered layer")
        ax.set_title(f"{trait}: {summary['behaviour']} rate when adding the vector "
                     f"(unsteered {summary['unsteered_rate']:.2f})", fontsize=9)
        fig.colorbar(image, ax=ax)
        fig.savefig(folder / "causal.png", dpi=110, bbox_inches="tight")
        curve = summary.get("calibration")
        if curve:
            fig, (ax,) = subplots(1, 3.6, width=6)
            rows = table[(table["layer"] == summary["calibration_layer"]) | (table["alpha"] == 0)].sort_values("alpha")
            ax.errorbar(rows["shift"], rows["rate"],
                        xerr=np.vstack([rows["shift"] - rows["shift_low"], rows["shift_high"] - rows["shift"]]
                                       ).clip(min=0),
                        yerr=np.vstack([rows["rate"] - rows["rate_low"], rows["rate_high"] - rows["rate"]]).clip(min=0),
                        marker="o", capsize=3)
            for r in rows.itertuples():
                ax.annotate(f"α={r.alpha:g}", (r.shift, r.rate), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
            ax.set_xlabel(f"projection shift read at L{summary['card_layer']} (steered pass − unsteered), "
                          f"steering at L{summary['calibration_layer']}", fontsize=8)
            ax.set_ylabel(f"{summary['behaviour']} rate")
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{trait} calibration: behaviour vs projection shift (95% CIs)", fontsize=9)
            fig.savefig(folder / "calibration.png", dpi=110, bbox_inches="tight")
    if gaps is not None:
        fig, (ax,) = subplots(1, 3.4, width=7)
        for name, g in gaps.groupby("model"):
            ax.plot(g["layer"], g["gap"], marker="o", ms=3, label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("harmful − benign projection")
        ax.set_title(f"{trait}: projection gap with the direction ablated everywhere", fontsize=9)
        ax.legend(fontsize=8)
        fig.savefig(folder / "ablation_gap.png", dpi=110, bbox_inches="tight")
