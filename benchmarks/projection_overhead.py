"""Benchmark: em_freeform without projections, with projections captured during generation, and with
the teacher-forced fallback pass, side by side in one run (same model object, seed and samples).

    python benchmarks/projection_overhead.py                         # embedded model on CPU
    python benchmarks/projection_overhead.py --samples 2 --max-tokens 200

Prints each mode's median wall time and the ratios to the run without projections. Target on CPU
with position=response_mean and max_tokens 200: captured / without <= 1.05 (every token already
passes through the hooked blocks while generating). Runs alternate to spread machine noise.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).parent.parent


@click.command()
@click.option("--model", "model_ref", default="embedded", show_default=True)
@click.option("--vectors", default=f"{ROOT}/vectors/SmolLM2-135M-Instruct/code,"
                                  f"{ROOT}/vectors/SmolLM2-135M-Instruct/refusal", show_default=True)
@click.option("--samples", default=1, show_default=True, help="Answers per question (epochs).")
@click.option("--max-tokens", default=200, show_default=True)
@click.option("--position", default="response_mean", show_default=True,
              help="response_mean, last_prompt_token or prompt_mean.")
@click.option("--repeats", default=2, show_default=True)
def main(model_ref: str, vectors: str, samples: int, max_tokens: int, position: str, repeats: int) -> None:
    from inspect_ai import eval as inspect_eval
    from inspect_ai import task_with
    from inspect_ai.model import get_model
    from inspect_ai.solver import generate

    from inspect_em.model.loading import resolve_model_ref
    from inspect_em.tasks import em_freeform

    model = get_model(f"hf/{resolve_model_ref(model_ref)}")
    modes = ("without", "captured", "teacher-forced")
    times: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, int] = {}

    def task(mode: str):
        t = em_freeform(variants="plain", samples_per_question=samples,
                        vectors=vectors if mode != "without" else None, position=position)
        return task_with(t, solver=generate()) if mode == "teacher-forced" else t

    def run(mode: str) -> None:
        with tempfile.TemporaryDirectory() as logs:
            start = time.perf_counter()
            log = inspect_eval(task(mode), model=model, seed=0, max_tokens=max_tokens, log_dir=logs,
                               display="none")[0]
            times[mode].append(time.perf_counter() - start)
            assert log.status == "success", log.error  # read while the log file still exists
            tokens[mode] = sum(u.output_tokens for u in log.stats.model_usage.values())
            if mode != "without":
                source = log.samples[0].scores["trait_projection"].metadata["activations_from"]
                assert ("captured" in source) == (mode == "captured"), source

    run("without")  # warm-up (first generate call allocates)
    times["without"].clear()
    for _ in range(repeats):
        for mode in modes:
            run(mode)
    base = statistics.median(times["without"])
    print(f"em_freeform, 8 questions x {samples} sample(s), max_tokens {max_tokens}, position={position}, seed 0, "
          f"median of {repeats}")
    for mode in modes:
        t = statistics.median(times[mode])
        print(f"{mode:>15}: {t:7.2f} s  ({tokens[mode]} output tokens)  ratio to without: {t / base:6.3f}")
    print("target: captured / without <= 1.05 on CPU")


if __name__ == "__main__":
    main()
