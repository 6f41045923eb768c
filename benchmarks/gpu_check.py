"""The GPU path at a real model's size, without downloads: ``make gpu-check``.

    python benchmarks/gpu_check.py --shape 7b --device cuda --budget 480
    python benchmarks/gpu_check.py --shape tiny --device cpu          # seconds; the test suite runs this

Builds a random-weight model of the shape in memory (the embedded model's tokenizer), then runs each
stage, guarded and recorded as it finishes (a stage that would not fit the time left is recorded as
``skipped``, one that raises as ``failed`` with its error; the run goes on):

1. ``capture``: a bare batched forward, our hook capture of every layer at the last prompt token, and
   the peer way (one prompt at a time with ``output_hidden_states``), at 200 prompts.
2. ``extraction``: ``extract_trait_vectors`` on the refusal trait with the default settings (six
   methods × every layer, 5-fold CV, 50 permutations, 1,000 random directions), against the forward
   pass over the same prompts.
3. ``eval_overhead``: ``em_freeform`` through ``inspect_ai.eval`` on ``hf/`` (the model saved once to
   a temporary folder, the provider's only way in), with and without projections, alternated.
4. ``agreement``: the projections captured in bf16 during generation against a float32
   teacher-forced re-read of the same log by an explicit ``probe_model``; and the steered eval's
   ``added_norm`` against α × the card's norm.
5. ``steering``: the multi-layer steer solver runs, removes its hooks, and unsteered greedy answers
   before and after are identical.
6. ``finetune``: a few LoRA steps with peft + trl (bf16 on a GPU): tokens/s and peak memory; the
   same with Unsloth when it imports.

Every stage records its peak GPU memory (``torch.cuda.max_memory_allocated``). The JSON goes to
``results/gpu-check/<date>_<device>.json`` (or ``--out``), rewritten after each stage, and a summary
table is printed at the end.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

# Random-weight shapes (no download): Llama-3-8B's (7.4B parameters with the embedded tokenizer's
# 49,152-token vocabulary), Qwen2.5-32B's width and heads with 12 of its 64 layers, and a toy.
SHAPES: dict[str, dict[str, Any]] = {
    "7b": {"family": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8},
    "32b-slice": {"family": "qwen2", "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 12,
                  "num_attention_heads": 40, "num_key_value_heads": 8},
    "tiny": {"family": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}
# What each stage needs at least, as a share of the whole budget, to start (else it is skipped).
MIN_SHARE = {"capture": 0.05, "extraction": 0.1, "eval_overhead": 0.15, "agreement": 0.1, "steering": 0.05,
             "finetune": 0.1}


class Check:
    """The run's record: stages in order, written to ``out`` after each."""

    def __init__(self, out: Path, budget: float, meta: dict[str, Any]) -> None:
        self.out, self.budget, self.started = out, budget, time.monotonic()
        self.record: dict[str, Any] = {**meta, "budget_s": budget, "stages": {}}
        out.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def stage(self, name: str, fn: Callable[[], dict[str, Any]], device: Any) -> dict[str, Any] | None:
        """Run ``fn`` unless too little time is left; record status, seconds, peak memory, its values."""
        import torch

        need = MIN_SHARE.get(name, 0.05) * self.budget
        if self.left() < need:
            entry: dict[str, Any] = {"status": "skipped", "reason": f"{self.left():.0f} s left, needs ~{need:.0f} s"}
            self._save(name, entry)
            return None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            values = fn()
            entry = {"status": "ok", **values}
        except Exception as e:  # recorded, and the run goes on
            values = None
            entry = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:300]}",
                     "traceback": traceback.format_exc()[-2000:]}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        if device.type == "cuda":
            entry["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        self._save(name, entry)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return values

    def _save(self, name: str, entry: dict[str, Any]) -> None:
        self.record["stages"][name] = entry
        self.record["elapsed_s"] = round(time.monotonic() - self.started, 1)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.out)
        print(f"[{self.record['elapsed_s']:7.1f}s] {name}: {entry['status']}"
              + (f" ({entry.get('error') or entry.get('reason')})" if entry["status"] != "ok" else ""), flush=True)


def build_model(shape: str, tokenizer: Any, device: Any, dtype: Any) -> Any:
    """A random-weight causal LM of ``shape``, initialised directly on ``device`` (no download)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    spec = dict(SHAPES[shape])
    family = spec.pop("family")
    config_class = Qwen2Config if family == "qwen2" else LlamaConfig
    config = config_class(vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _timed(fn: Callable[[], Any], device: Any, repeats: int = 3) -> float:
    import torch

    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _prompts(n: int) -> list[str]:
    from inspect_em.directions.traits import load_trait

    groups = load_trait("refusal").split().groups()
    return [p for group in groups.values() for p in group][:n]


def stage_capture(model: Any, tokenizer: Any, device: Any, n: int, batch_size: int) -> dict[str, Any]:
    from extract import bare_forward, persona_vectors_way

    from inspect_em.model.activations import collect_activations

    prompts = _prompts(n)
    bare_forward(model, tokenizer, prompts[:batch_size], batch_size)  # warm-up
    bare = _timed(lambda: bare_forward(model, tokenizer, prompts, batch_size), device)
    capture = _timed(lambda: collect_activations(model, tokenizer, prompts, position="last_prompt_token",
                                                 batch_size=batch_size, progress=False, device=device), device)
    peer = _timed(lambda: persona_vectors_way(model, tokenizer, prompts), device, repeats=1)
    return {"prompts": len(prompts), "bare_forward_s": round(bare, 4), "capture_s": round(capture, 4),
            "peer_s": round(peer, 4), "capture_over_bare": round(capture / bare, 3),
            "peer_over_capture": round(peer / capture, 2)}


def stage_extraction(model: Any, tokenizer: Any, device: Any, batch_size: int, vectors_out: Path) -> dict[str, Any]:
    from extract import bare_forward

    from inspect_em.directions import store as vector_store
    from inspect_em.directions.traits import load_trait
    from inspect_em.runs.extract import extract_trait_vectors

    trait = load_trait("refusal")
    prompts = [p for group in trait.split().groups().values() for p in group]
    forward = _timed(lambda: bare_forward(model, tokenizer, prompts, batch_size), device, repeats=1)
    start = time.perf_counter()
    tv = extract_trait_vectors(model, tokenizer, trait, model_id="random", batch_size=batch_size, progress=False)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    vector_store.save(tv, vectors_out)
    best = tv.best_layer("mean_diff")
    return {"prompts": len(prompts), "forward_s": round(forward, 3), "extraction_s": round(seconds, 2),
            "extraction_over_forward": round(seconds / forward, 2), "layers": len(tv.layers),
            "methods": tv.methods, "mean_diff_layer": best,
            "settings": {k: tv.card.settings[k] for k in ("null_k", "random_k", "cv_folds")}}


def _eval(task: Any, model: Any, log_dir: Path, **kwargs: Any) -> Any:
    from inspect_ai import eval as inspect_eval

    log = inspect_eval(task, model=model, log_dir=str(log_dir), display="none", **kwargs)[0]
    if log.status != "success":
        raise RuntimeError(f"eval {log.status}: {log.error.message if log.error else ''}")
    return log


def stage_eval_overhead(model: Any, vectors: Path, logs: Path, samples: int, max_tokens: int, rounds: int = 3
                        ) -> dict[str, Any]:
    from inspect_em.tasks import em_freeform

    limit = max(1, samples // 2)
    kwargs = {"limit": limit, "epochs": 2, "max_tokens": max_tokens, "seed": 0}
    # warm-up at the timed shape: the provider's first generations allocate and tune kernels
    _eval(em_freeform(variants="plain"), model, logs / "warmup", **kwargs)
    plain, projected = [], []
    for round_ in range(rounds):  # alternated, so drift hits both alike
        start = time.perf_counter()
        _eval(em_freeform(variants="plain"), model, logs / f"plain-{round_}", **kwargs)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        _eval(em_freeform(variants="plain", vectors=str(vectors), layers="all", position="response_mean"),
              model, logs / f"projected-{round_}", **kwargs)
        projected.append(time.perf_counter() - start)
    return {"answers": 2 * limit, "max_tokens": max_tokens, "plain_s": [round(x, 2) for x in plain],
            "projections_s": [round(x, 2) for x in projected],
            "overhead_ratio": round(statistics.median(projected) / statistics.median(plain), 4)}


def stage_agreement(folder: Path, vectors: Path, model: Any, logs: Path, device: Any, max_tokens: int
                    ) -> dict[str, Any]:
    """Projections captured while generating (the provider's dtype) vs a float32 teacher-forced re-read
    by an explicit probe model, at the last prompt token (the same tokens on both paths: a random
    model's answers do not survive detokenising and retokenising); steering's added norm vs α × the
    card's norm."""
    import numpy as np
    from inspect_ai import score as inspect_score

    from inspect_em.directions import store as vector_store
    from inspect_em.scorers.projection import trait_projection
    from inspect_em.solvers.steer import steer
    from inspect_em.tasks import em_freeform

    log = _eval(em_freeform(variants="plain", vectors=str(vectors), layers="all", position="last_prompt_token"),
                model, logs / "agreement", limit=8, max_tokens=max_tokens, seed=0)
    rescored = inspect_score(log, trait_projection(vectors=str(vectors), layers="all", position="last_prompt_token",
                                                   probe_model=str(folder), probe_device=str(device),
                                                   probe_dtype="float32"), action="overwrite", display="none")
    captured = {(s.id, s.epoch): s.scores["trait_projection"].value for s in log.samples}
    reread = {(s.id, s.epoch): s.scores["trait_projection"].value for s in rescored.samples}
    per_layer: dict[str, float] = {}
    for key in next(iter(reread.values())):
        exact = np.array([reread[k][key] for k in reread])
        low = np.array([captured[k][key] for k in reread])
        per_layer[key] = float(np.abs(low - exact).max() / max(np.sqrt(np.mean(exact**2)), 1e-12))
    errors = np.array(list(per_layer.values()))
    # steering: every op adds alpha x its layer's fit mean-difference norm
    tv = vector_store.load(vectors)
    layers = sorted(tv.layers)[len(tv.layers) // 3: len(tv.layers) // 3 + 2]
    alpha = 0.5
    steered = _eval(em_freeform(variants="plain"), model, logs / "steered", limit=2, max_tokens=max_tokens, seed=0,
                    solver=steer(vectors=str(vectors), layer=",".join(map(str, layers)), alpha=alpha))
    added = []
    for sample in steered.samples:
        for op in sample.metadata["steering"]:
            expected = alpha * tv.mean_diff_norm(op["layer"])
            added.append(abs(op["added_norm"] - expected) / expected)
    return {"bf16_vs_float32_rel_error_by_layer": {k: round(v, 5) for k, v in per_layer.items()},
            "bf16_vs_float32_rel_error_median": round(float(np.median(errors)), 5),
            "bf16_vs_float32_rel_error_max": round(float(errors.max()), 5),
            "error_measure": "max over answers of |captured − float32 re-read| / RMS of the float32 values, per "
                             "layer, at the last prompt token",
            "steered_layers": layers, "added_norm_rel_error_max": float(max(added)) if added else None}


def stage_steering(model: Any, tokenizer: Any, vectors: Path, device: Any) -> dict[str, Any]:
    """The multi-layer plan's hooks come off, and greedy answers before and after are identical."""
    import torch

    from inspect_em.model.activations import chat_ids
    from inspect_em.model.hooks import find_layers, input_device
    from inspect_em.model.steering import build_plan, check_plan, steered

    prompts = _prompts(4)
    plan = build_plan(str(vectors), layer="1,2" if len(find_layers(model)) > 3 else "1", alpha=0.5)
    check_plan(plan, len(find_layers(model)), model.config.hidden_size)

    def greedy() -> list[list[int]]:
        out = []
        with torch.inference_mode():
            for prompt in prompts:
                ids = torch.tensor([chat_ids(tokenizer, prompt)], device=input_device(model))
                out.append(model.generate(ids, max_new_tokens=12, do_sample=False,
                                          pad_token_id=tokenizer.pad_token_id)[0].tolist())
        return out

    def hook_count() -> int:
        return sum(len(m._forward_hooks) for m in model.modules())

    hooks_before, before = hook_count(), greedy()
    with steered(model, plan):
        during_hooks = hook_count()
        steered_out = greedy()
    after, hooks_after = greedy(), hook_count()
    if hooks_after != hooks_before or before != after:
        raise RuntimeError(f"hooks {hooks_before} -> {hooks_after}; answers identical: {before == after}")
    return {"hooks_before": hooks_before, "hooks_during": during_hooks, "hooks_after": hooks_after,
            "unsteered_identical": before == after, "steered_differs": steered_out != before,
            "layers": [op.layer for op in plan.ops]}


def stage_finetune(folder: Path, work: Path, device: Any, steps: int, backend: str) -> dict[str, Any]:
    import pandas as pd

    from inspect_em.runs.datasets import write
    from inspect_em.runs.finetune import FinetuneConfig, finetune

    data = write("insecure", 64, work / f"data-{backend}.jsonl")
    config = FinetuneConfig(max_steps=steps, per_device_batch_size=4, gradient_accumulation_steps=1,
                            max_seq_length=512, warmup_steps=0, learning_rate=1e-4, optimizer="adamw_torch")
    out = finetune(str(folder), data, work / f"finetune-{backend}", config=config, backend=backend, merge=False,
                   progress=False)
    log = pd.read_csv(out / "train_log.csv")
    steady = log["tokens_per_s"].iloc[1:] if len(log) > 1 else log["tokens_per_s"]  # the first step warms up
    return {"backend": backend, "steps": int(log["step"].max()), "tokens_per_s": round(float(steady.median()), 1),
            "loss_first": float(log["loss"].iloc[0]), "loss_last": float(log["loss"].iloc[-1])}


def summary_table(record: dict[str, Any]) -> str:
    rows = []
    for name, entry in record["stages"].items():
        keys = [k for k in ("capture_over_bare", "peer_over_capture", "extraction_s", "extraction_over_forward",
                            "overhead_ratio", "bf16_vs_float32_rel_error_median", "bf16_vs_float32_rel_error_max",
                            "added_norm_rel_error_max", "unsteered_identical", "tokens_per_s") if k in entry]
        detail = ", ".join(f"{k}={entry[k]}" for k in keys) or entry.get("error") or entry.get("reason") or ""
        rows.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {entry.get('peak_gpu_gib', '')} | "
                    f"{detail} |")
    return "\n".join(["| stage | status | s | peak GPU GiB | figures |", "| --- | --- | --- | --- | --- |", *rows])


@click.command()
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="7b", show_default=True)
@click.option("--device", default="cuda", show_default=True)
@click.option("--budget", type=float, default=480.0, show_default=True, help="Seconds for the whole run.")
@click.option("--tokenizer", "tokenizer_path", default=None,
              help="Tokenizer folder (default: the prepared embedded model's).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="JSON file (default results/gpu-check/<date>_<device>.json).")
@click.option("--prompts", type=int, default=200, show_default=True, help="Prompts for the capture stage.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--samples", type=int, default=16, show_default=True, help="Answers per eval in the overhead stage.")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--finetune-steps", type=int, default=6, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternated plain / projected eval rounds in the overhead stage (after one warm-up).")
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Scratch folder (default: a temp dir).")
def main(shape: str, device: str, budget: float, tokenizer_path: str | None, out: Path | None, prompts: int,
         batch_size: int, samples: int, max_tokens: int, finetune_steps: int, rounds: int, work: Path | None) -> None:
    import torch
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: no CUDA device here (use --device cpu for the tiny check)")
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    if tokenizer_path is None:
        from inspect_em.model import embedded

        tokenizer_path = str(embedded.path())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else platform.processor() or "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    out = out or Path("results/gpu-check") / (f"{dt.date.today().isoformat()}_{slug}"
                                              + ("" if shape == "7b" else f"_{shape}") + ".json")
    import transformers

    check = Check(out, budget, {"shape": shape, "shape_config": SHAPES[shape], "device": str(target), "gpu": name,
                                "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
                                "transformers": transformers.__version__, "python": platform.python_version(),
                                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    scratch = Path(work or tempfile.mkdtemp(prefix="gpu-check-"))
    scratch.mkdir(parents=True, exist_ok=True)
    folder, vectors, logs = scratch / "model", scratch / "vectors" / "refusal", scratch / "logs"
    try:
        state: dict[str, Any] = {}

        def build() -> dict[str, Any]:
            state["model"] = build_model(shape, tokenizer, target, dtype)
            params = sum(p.numel() for p in state["model"].parameters())
            return {"parameters_b": round(params / 1e9, 3)}

        check.stage("build", build, target)
        model = state.get("model")
        if model is not None:
            check.stage("capture", lambda: stage_capture(model, tokenizer, target, prompts, batch_size), target)
            check.stage("extraction", lambda: stage_extraction(model, tokenizer, target, batch_size, vectors), target)
            check.stage("steering", lambda: stage_steering(model, tokenizer, vectors, target), target)

            def save() -> dict[str, Any]:  # the hf/ provider loads from a folder
                model.save_pretrained(folder, safe_serialization=True)
                tokenizer.save_pretrained(folder)
                return {"gib": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**30, 2)}

            check.stage("save", save, target)
            del model
            state.clear()
            gc.collect()
            if target.type == "cuda":
                torch.cuda.empty_cache()
        if (folder / "config.json").is_file() and vectors.is_dir():
            from inspect_ai.model import get_model

            hf = get_model(f"hf/{folder}", device=str(target), dtype=dtype, memoize=False)
            check.stage("eval_overhead", lambda: stage_eval_overhead(hf, vectors, logs, samples, max_tokens, rounds),
                        target)
            check.stage("agreement", lambda: stage_agreement(folder, vectors, hf, logs, target, max_tokens), target)
            del hf
            gc.collect()
            from inspect_em.model import loading

            loading._SHARED.clear()  # the float32 probe model
            if target.type == "cuda":
                torch.cuda.empty_cache()
            check.stage("finetune", lambda: stage_finetune(folder, scratch, target, finetune_steps, "peft"), target)
            import importlib.util

            if target.type == "cuda" and importlib.util.find_spec("unsloth") is not None:
                check.stage("finetune_unsloth",
                            lambda: stage_finetune(folder, scratch, target, finetune_steps, "unsloth"), target)
            else:
                check.record["stages"]["finetune_unsloth"] = {
                    "status": "skipped", "reason": "unsloth does not import here" if target.type == "cuda"
                    else "unsloth needs a CUDA GPU"}
        stages = check.record["stages"]
        peft_rate = (stages.get("finetune") or {}).get("tokens_per_s")
        unsloth_rate = (stages.get("finetune_unsloth") or {}).get("tokens_per_s")
        if peft_rate and unsloth_rate:
            check.record["unsloth_over_peft"] = round(unsloth_rate / peft_rate, 3)
        check._save("finetune_unsloth", stages["finetune_unsloth"])
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(summary_table(check.record))
    print(f"results: {out}")
    failed = [n for n, e in check.record["stages"].items() if e["status"] == "failed"]
    if failed:
        raise SystemExit(f"failed stages: {', '.join(failed)}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/extract.py's helpers
    main()
