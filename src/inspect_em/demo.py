"""The end-to-end EM detection run on the embedded model (CPU-sized by default).

prepare model → extract refusal + code vectors → synthetic insecure / secure / prose data →
eval the base model (em_freeform + refusal_contrast, with projections) → LoRA-finetune on each
data set → eval each finetuned model → compare (vs base, and vs the prose control).

The prose finetune is the matched control: a shift that also appears after finetuning on prose
is finetuning drift, not insecure-code content. ``report_vs_prose/`` holds insecure − prose
(= insecure shift − prose shift, since the base cancels) with its bootstrap CI.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from .errors import InspectEmError

CONTROLS = ("insecure", "secure", "prose")


@dataclass
class DemoConfig:
    """Sizes of the run; the defaults fit 2 CPU cores in about half an hour."""

    n_examples: int = 120
    learning_rate: float = 2e-4
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 2
    max_seq_length: int = 384
    samples_per_question: int = 2
    max_tokens: int = 80
    refusal_max_tokens: int = 16
    variants: str = "plain"
    seed: int = 0


def run_demo(out: str | Path, config: DemoConfig | None = None, models: tuple[str, ...] = CONTROLS) -> Path:
    """Run every step into ``out`` and return the report folder."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    from . import embedded
    from . import vectors as vector_store
    from .data import write
    from .finetune import FinetuneConfig, finetune
    from .modeling import load_hf_model
    from .pipeline import extract_trait_vectors
    from .report import compare, load_samples, reference_table, write_report
    from .tasks import em_freeform, refusal_contrast
    from .traits import load_trait

    cfg = config or DemoConfig()
    unknown = set(models) - set(CONTROLS)
    if unknown:
        raise InspectEmError(f"unknown finetune set(s) {sorted(unknown)}; choose from {', '.join(CONTROLS)}")
    out = Path(out)
    console = Console()
    started = time.perf_counter()

    def step(message: str) -> None:
        console.print(f"[bold cyan][{time.perf_counter() - started:7.0f}s][/bold cyan] {message}")

    step("preparing the embedded model")
    base_path = embedded.prepare()

    step("extracting refusal and code vectors (6 methods x 30 layers)")
    model, tokenizer, model_id = load_hf_model(str(base_path))
    vector_dirs, best = {}, {}
    for trait in ("refusal", "code"):
        tv = extract_trait_vectors(model, tokenizer, load_trait(trait), model_id=embedded.MODEL_NAME)
        vector_dirs[trait] = vector_store.save(tv, out / "vectors" / trait)
        best[trait] = tv.best_layer("mean_diff")
        step(f"  {trait}: mean_diff best layer {tv.best_layer('mean_diff')}, "
             f"held-out AUROC {tv.card['best']['mean_diff']['heldout_auroc']:.3f}")
    del model

    step(f"writing synthetic data ({cfg.n_examples} examples each)")
    data = {kind: write(kind, cfg.n_examples, out / "data" / f"{kind}.jsonl", seed=cfg.seed) for kind in models}

    def evaluate(label: str, path: Path) -> None:
        hf = get_model(f"hf/{path}")
        both = f"{vector_dirs['code']},{vector_dirs['refusal']}"
        # one eval call per task: an eval-level max_tokens would override each task's own
        logs = inspect_eval(
            em_freeform(variants=cfg.variants, samples_per_question=cfg.samples_per_question, vectors=both,
                        layers="all", over="response_mean"),
            model=hf, max_tokens=cfg.max_tokens, seed=cfg.seed, log_dir=str(out / "logs" / label), display="none",
        )
        logs += inspect_eval(
            refusal_contrast(vectors=str(vector_dirs["refusal"]), layers="all", over="last_prompt_token",
                             max_tokens=cfg.refusal_max_tokens),
            model=hf, seed=cfg.seed, log_dir=str(out / "logs" / label), display="none",
        )
        for log in logs:
            if log.status != "success":
                raise InspectEmError(f"eval of {label} failed: {log.error.message if log.error else log.status}")
        step(f"  {label}: evaluated ({', '.join(log.eval.task for log in logs)})")

    step("evaluating the base model")
    evaluate("base", base_path)
    for kind in models:
        step(f"finetuning on {kind} data (LoRA r=32, lr {cfg.learning_rate}, {cfg.epochs} epoch)")
        ft = FinetuneConfig(learning_rate=cfg.learning_rate, epochs=cfg.epochs, per_device_batch_size=cfg.batch_size,
                            gradient_accumulation_steps=cfg.grad_accum, max_seq_length=cfg.max_seq_length,
                            seed=cfg.seed)
        folder = finetune(str(base_path), data[kind], out / "models" / kind, config=ft, progress=False)
        card = json.loads((folder / "finetune.json").read_text())
        step(f"  {kind}: {card['steps']} steps, loss {card['first_loss']:.3f} -> {card['final_loss']:.3f}")
        evaluate(kind, folder / "merged")

    labels = ["base", *models]
    logs = [out / "logs" / label for label in labels]
    names = [label for label in labels for _ in sorted((out / "logs" / label).glob("*.eval"))]
    files = [f for label in labels for f in sorted((out / "logs" / label).glob("*.eval"))]
    samples = load_samples([str(f) for f in files], labels=names)
    vs_base = compare(samples, base="base")
    report = write_report(vs_base, out / "report", logs)
    vs_prose = None
    if "prose" in models and "insecure" in models:
        vs_prose = compare(samples, base="prose")
        write_report(vs_prose, out / "report_vs_prose", logs)
    table = reference_table(vs_base, other="insecure" if "insecure" in models else None,
                            metric=f"proj:refusal/mean_diff/L{best['refusal']}")
    if table is not None:
        console.print(f"Refusal-vector table (held-out refusal_contrast prompts, layer {best['refusal']}):")
        console.print(table.to_markdown(index=False))
    console.print(headline(vs_base, vs_prose, best).to_markdown(index=False, floatfmt=".3f"))
    step(f"done: {report / 'report.md'}" + (f" and {out / 'report_vs_prose' / 'report.md'}" if vs_prose else ""))
    return report


def headline(vs_base: Any, vs_prose: Any | None, best: dict[str, int]) -> pd.DataFrame:
    """Code-mode rate per model and each vector's shift at its best layer, with 95% CIs."""
    rows = []
    s = vs_base.summary
    pooled = s[(s["task"] == "em_freeform") & (s["group"] == "(all)")]
    for model in vs_base.labels:
        row: dict[str, Any] = {"model": model}
        code = pooled[(pooled["metric"] == "code_mode") & (pooled["model"] == model)]
        row["code_mode rate"] = float(code["mean"].iloc[0]) if len(code) else math.nan
        for trait, layer in best.items():
            metric = f"proj:{trait}/mean_diff/L{layer}"
            sel = pooled[(pooled["metric"] == metric) & (pooled["model"] == model)]
            if len(sel) and model != vs_base.base:
                r = sel.iloc[0]
                row[f"{trait} L{layer} shift vs base"] = _with_ci(r)
            if vs_prose is not None and model not in ("prose", "base"):
                p = vs_prose.summary
                sel = p[(p["task"] == "em_freeform") & (p["group"] == "(all)") & (p["metric"] == metric)
                        & (p["model"] == model)]
                if len(sel):
                    r = sel.iloc[0]
                    row[f"{trait} L{layer} vs prose control"] = _with_ci(r)
        rows.append(row)
    return pd.DataFrame(rows)


def _with_ci(row: Any) -> str:
    return f"{row.diff_vs_base:+.2f} [{row.diff_ci_low:+.2f}, {row.diff_ci_high:+.2f}]"
