"""Checkpoint series (``inspect-em finetune --save-every N``): the order of a series, and what its
LoRA adapters do to the weights.

For each checkpoint and each adapted module, ``ΔW = s · B A`` (``s = lora_alpha / √r`` with rsLoRA,
else ``lora_alpha / r``). The table holds ``‖ΔW‖_F`` per layer and module, and for the modules that
write into the residual stream (``o_proj``, ``down_proj``) the cosine of ΔW's top output direction
(its first left singular vector, sign-free) with each trait vector at that vector's card layer: the
"direction rotation" signal of the Model Organisms for EM work. All layers of a checkpoint are
decomposed at once (batched QR of ``B`` and SVD of ``R A``, never the d × d matrix).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from inspect_em.errors import InspectEmError

if TYPE_CHECKING:
    from inspect_em.analysis.logs import LogInfo
    from inspect_em.directions.store import TraitVectors

RESIDUAL_WRITERS = ("o_proj", "down_proj")  # modules whose output is added to the residual stream
CHECKPOINT_FILE = "checkpoint.json"


@dataclass(frozen=True)
class Checkpoint:
    """One saved adapter of a series and its optimizer step."""

    step: int
    path: Path


def read_series(folder: str | Path) -> list[Checkpoint]:
    """The checkpoints under ``folder`` (a finetune's output or its ``checkpoints/``), in step order
    as each ``checkpoint.json`` records it, whatever the folder names."""
    root = Path(folder)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        raise InspectEmError(f"{folder}: no such folder")
    found: dict[int, Path] = {}
    for marker in sorted(root.glob(f"*/{CHECKPOINT_FILE}")):
        try:
            step = int(json.loads(marker.read_text())["step"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            raise InspectEmError(f"{marker}: expected {{\"step\": <int>}}") from None
        if step in found:
            raise InspectEmError(f"{folder}: step {step} saved twice ({found[step].name}, {marker.parent.name})")
        found[step] = marker.parent
    if not found:
        raise InspectEmError(f"{folder}: no checkpoints (finetune with --save-every N)")
    return [Checkpoint(step, found[step]) for step in sorted(found)]


def _module_key(name: str) -> tuple[int, str, str] | None:
    """(layer, module, A|B) of an adapter weight name such as
    ``base_model.model.model.layers.3.self_attn.o_proj.lora_A.weight``."""
    parts = name.split(".")
    if "layers" not in parts or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B"):
        return None
    layer = int(parts[parts.index("layers") + 1])
    return layer, parts[-3], parts[-2][-1]


def lora_deltas(adapter: str | Path, vectors: Sequence[tuple[str, int, object]] = ()) -> pd.DataFrame:
    """One row per layer × adapted module of the adapter at ``adapter``: ``delta_norm`` (``‖ΔW‖_F``)
    and, for residual writers, ``cos:<trait>`` = ``|u₁ · v̂|`` for each ``(trait, card layer, v̂)`` in
    ``vectors`` whose card layer is this row's layer (``v̂`` a ``[d_model]`` array)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(adapter)
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora"):
        raise InspectEmError(f"{adapter}: per-module ranks or alphas, or DoRA: not read here (one r and alpha)")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights = load_file(str(folder / "adapter_model.safetensors"))
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        key = _module_key(name)
        if key is not None:
            pairs.setdefault(key[:2], {})[key[2]] = tensor.float()
    rows: list[dict[str, object]] = []
    for module in sorted({m for _, m in pairs}):
        layers = sorted(layer for layer, m in pairs if m == module)
        a = torch.stack([pairs[(layer, module)]["A"] for layer in layers])  # [L, r, in]
        b = torch.stack([pairs[(layer, module)]["B"] for layer in layers]) * scale  # [L, out, r]
        q, rr = torch.linalg.qr(b)  # ΔW = Q (R A): its singular values are R A's
        u_small, sigma, _ = torch.linalg.svd(rr @ a, full_matrices=False)  # [L, r, r], [L, r]
        norms = sigma.pow(2).sum(-1).sqrt()
        top = (q @ u_small[..., :1])[..., 0]  # [L, out]: the first left singular vector
        for i, layer in enumerate(layers):
            row: dict[str, object] = {"layer": layer, "module": module, "delta_norm": float(norms[i])}
            if module in RESIDUAL_WRITERS:
                for trait, card_layer, v in vectors:
                    if card_layer == layer:  # no direction while ΔW = 0 (step 0: B starts at zero)
                        vt = torch.as_tensor(v, dtype=torch.float32)
                        row[f"cos:{trait}"] = float((top[i] @ vt).abs() / (top[i].norm() * vt.norm())) \
                            if norms[i] > 0 else float("nan")
            rows.append(row)
    if not rows:
        raise InspectEmError(f"{adapter}: no LoRA weights in adapter_model.safetensors")
    return pd.DataFrame(rows)


def card_directions(cards: Sequence[TraitVectors]) -> list[tuple[str, int, object]]:
    """``(trait, card layer, v̂ [d_model])`` of each card's mean_diff vector at its card layer: what
    :func:`lora_deltas` compares each adapter's top direction with."""
    return [(tv.trait, tv.best_layer("mean_diff"), tv.vector("mean_diff", tv.best_layer("mean_diff")))
            for tv in cards]


def series_deltas(folder: str | Path, vectors: Sequence[tuple[str, int, object]] = ()) -> pd.DataFrame:
    """:func:`lora_deltas` of every checkpoint of a series, with a ``step`` column, in step order."""
    frames = [lora_deltas(c.path, vectors).assign(step=c.step) for c in read_series(folder)]
    return pd.concat(frames, ignore_index=True)


# --- the series read back from its logs: each headline measure against the optimizer step ---------

BASE_RUN = "base"  # the ``series_run`` of the base model's log: step 0 of every run


def headline_measures(columns: Sequence[str]) -> list[str]:
    """The measures plotted: code mode, the judge's misaligned rate(s), every projection column."""
    from inspect_em.readout import column_key, is_column, judge_key

    return [c for c in columns if c == "code_mode" or is_column(c, "proj")
            or column_key(c, "judge") == judge_key("misaligned")]


def series_table(samples: pd.DataFrame, steps: dict[str, tuple[str, int]], control: str | None,
                 base_label: str) -> pd.DataFrame:
    """One row per run × step × measure on em_freeform: the mean and CI, and the difference vs the base
    model and vs the ``control`` run's same step, both paired by question (compare's
    :func:`~inspect_em.analysis.compare.diff_ci`). ``samples``: a :func:`load_samples` frame;
    ``steps``: label → ``(run, step)`` for each checkpoint's label. A run without its own step-0 label
    starts from the base model's log (``base_label``): a LoRA adapter starts at ΔW = 0."""
    from inspect_em.analysis.compare import diff_ci, mean_ci
    from inspect_em.analysis.stats import Clustered

    df = samples[samples["task"] == "em_freeform"]
    by_label = {label: g for label, g in df.groupby("label")}
    if base_label not in by_label:
        raise InspectEmError(f"series: no em_freeform log of the base model ('{base_label}')")
    points = {label: point for label, point in steps.items() if point[0] != BASE_RUN and label in by_label}
    missing = sorted(label for label, point in steps.items() if point[0] != BASE_RUN and label not in by_label)
    if missing:
        raise InspectEmError(f"series: no em_freeform samples for {', '.join(missing)}")
    for run in sorted({run for run, _ in points.values()}):
        if (run, 0) not in points.values():  # step 0 read from the base model's log
            key = f"{run}.step0 (the base model)"
            points[key], by_label[key] = (run, 0), by_label[base_label]
    at = {point: label for label, point in points.items()}
    if control is not None and control not in {run for run, _ in points.values()}:
        raise InspectEmError(f"series control {control!r} is not one of the runs "
                             f"({', '.join(sorted({run for run, _ in points.values()}))})")

    def clustered(label: str, metric: str) -> Clustered:
        g = by_label[label]
        return Clustered.of(g[metric].to_numpy(float), g["cluster"].tolist())

    rows = []
    for metric in headline_measures([c for c in df.columns if df[c].notna().any()]):
        base = clustered(base_label, metric)
        for label, (run, step) in sorted(points.items(), key=lambda kv: kv[1]):
            data = clustered(label, metric)
            low, high, _ = mean_ci(data, metric)
            row: dict[str, object] = {"run": run, "step": step, "metric": metric, "n": data.n, "value": data.mean(),
                                      "value_low": low, "value_high": high}
            vs = diff_ci(data, base, metric)
            low_b, high_b = (0.0, 0.0) if step == 0 else (vs.low, vs.high)  # step 0 is the base model itself
            row.update(diff_vs_base=vs.estimate, diff_vs_base_low=low_b, diff_vs_base_high=high_b)
            if control and run != control and (control, step) in at:
                vc = diff_ci(data, clustered(at[(control, step)], metric), metric)
                low_c, high_c = (0.0, 0.0) if step == 0 else (vc.low, vc.high)  # both are the base model
                row.update(diff_vs_control=vc.estimate, diff_vs_control_low=low_c, diff_vs_control_high=high_c)
            rows.append(row)
    return pd.DataFrame(rows)


def lora_summary(lora: pd.DataFrame) -> pd.DataFrame:
    """Per run and step: the total ``‖ΔW‖_F`` (all layers and modules) and each ``cos:<trait>``
    (the residual writers' mean at the card layer)."""
    import numpy as np

    cos = [c for c in lora.columns if c.startswith("cos:")]
    total = lora.groupby(["run", "step"])["delta_norm"].apply(lambda x: float(np.sqrt((x ** 2).sum())))
    out = total.rename("delta_norm").reset_index()
    if cos:
        out = out.merge(lora.groupby(["run", "step"])[cos].mean().reset_index(), on=["run", "step"])
    return out


def plot_series(table: pd.DataFrame, lora: pd.DataFrame | None, d_model: int | None, path: Path) -> None:
    """One panel per measure (difference vs base against step, 95% CI bands), then, when the adapters
    were read, ``‖ΔW‖_F`` and the cosine of ΔW's top direction with each trait vector."""
    from inspect_em.analysis.plots import subplots

    metrics = list(dict.fromkeys(table["metric"]))
    summary = lora_summary(lora) if lora is not None and not lora.empty else None
    cos = [c for c in summary.columns if c.startswith("cos:")] if summary is not None else []
    panels = len(metrics) + (1 if summary is not None else 0) + (1 if cos else 0)
    fig, axes = subplots(panels, 2.6, width=6.5)
    for ax, metric in zip(axes, metrics, strict=False):
        for run, g in table[table["metric"] == metric].groupby("run", sort=False):
            g = g.sort_values("step")
            ax.plot(g["step"], g["diff_vs_base"], marker="o", label=run)
            ax.fill_between(g["step"], g["diff_vs_base_low"], g["diff_vs_base_high"], alpha=0.2)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{metric} − base", fontsize=9)
        ax.set_xlabel("optimizer step")
    if summary is not None:
        ax = axes[len(metrics)]
        for run, g in summary.groupby("run", sort=False):
            ax.plot(g["step"], g["delta_norm"], marker="o", label=run)
        ax.set_title("LoRA ‖ΔW‖_F (all layers)", fontsize=9)
        ax.set_xlabel("optimizer step")
    if summary is not None and cos:
        ax = axes[-1]
        for run, g in summary.groupby("run", sort=False):
            for c in cos:
                ax.plot(g["step"], g[c], marker="o", label=f"{run} {c.removeprefix('cos:')}")
        if d_model:
            ax.axhline(math.sqrt(2 / (math.pi * d_model)), color="grey", ls="--", lw=0.8, label="random direction")
        ax.set_title("|cos| ΔW top direction vs trait (card layer)", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def series_lora(infos: Sequence[LogInfo], steps: dict[str, tuple[str, int]]
                ) -> tuple[pd.DataFrame | None, int | None, list[str]]:
    """:func:`lora_deltas` of the adapters the series' logs name (:class:`LogInfo`'s ``adapter_path``), with the
    cosines against the vectors their em_freeform task projected on (``-T vectors=``), ``d_model``, and
    notes on what could not be read: no table when an adapter is gone or was retrained after its eval
    (its digest differs from the log's), no cosine with a vector folder that is gone."""
    from inspect_em.directions import store as vector_store
    from inspect_em.util.paths import sha256_file

    adapters: dict[tuple[str, int], Path] = {}
    vector_folders: dict[str, None] = {}
    for info in infos:
        if info.label not in steps or steps[info.label][0] == BASE_RUN or info.superseded:
            continue
        weights = Path(info.adapter_path) / "adapter_model.safetensors" if info.adapter_path else None
        if weights is None or not weights.is_file() or sha256_file(weights)[:12] != info.adapter:
            return None, None, [f"the series' LoRA deltas are not plotted: {info.label}'s adapter "
                                f"({info.adapter_path}) is gone, or was retrained after its eval"]
        adapters[steps[info.label]] = weights.parent
        for folder in str(info.task_vectors or "").split(","):
            if folder.strip():
                vector_folders[folder.strip()] = None
    if not adapters:
        return None, None, []
    missing = [v for v in vector_folders if not Path(v).is_dir()]
    cards = [vector_store.load(v) for v in vector_folders if v not in missing]
    vecs = card_directions([tv for tv in cards if "mean_diff" in tv.methods])
    frames = [lora_deltas(path, vecs).assign(run=run, step=step) for (run, step), path in sorted(adapters.items())]
    notes = [f"no cosine with {v}: the vector folder the series' logs name is not here" for v in missing]
    return pd.concat(frames, ignore_index=True), (cards[0].card.d_model if cards else None), notes
