"""Benchmark: em_freeform with vs without the trait_projection scorer, same seed and samples.

    python benchmarks/projection_overhead.py                 # embedded model on CPU
    python benchmarks/projection_overhead.py --samples 2 --max-tokens 200

Both runs use the same hf model object (loaded once, outside the timings) and the same seed;
the ratio with/without is printed (target <= 1.10 on CPU: generation dominates, and projections
cost one teacher-forced forward pass per sample). Runs alternate to spread machine noise.
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
@click.option("--max-tokens", default=120, show_default=True)
@click.option("--over", default="response_mean", show_default=True,
              help="Projection position: response_mean, last_prompt_token, prompt_mean, per_token.")
@click.option("--repeats", default=2, show_default=True)
def main(model_ref: str, vectors: str, samples: int, max_tokens: int, over: str, repeats: int) -> None:
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    from inspect_em.modeling import resolve_model_ref
    from inspect_em.tasks import em_freeform

    model = get_model(f"hf/{resolve_model_ref(model_ref)}")
    times: dict[str, list[float]] = {"without": [], "with": []}
    tokens: dict[str, int] = {}

    def run(label: str) -> None:
        task = em_freeform(variants="plain", samples_per_question=samples,
                           vectors=vectors if label == "with" else None, over=over)
        with tempfile.TemporaryDirectory() as logs:
            start = time.perf_counter()
            log = inspect_eval(task, model=model, seed=0, max_tokens=max_tokens, log_dir=logs, display="none")[0]
            times[label].append(time.perf_counter() - start)
        assert log.status == "success", log.error
        tokens[label] = sum(u.output_tokens for u in log.stats.model_usage.values())

    run("without")  # warm-up (first generate call compiles/allocates)
    times["without"].clear()
    for _ in range(repeats):
        run("without")
        run("with")
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"em_freeform, 8 questions x {samples} sample(s), max_tokens {max_tokens}, over={over}, seed 0, "
          f"median of {repeats}")
    print(f"without projections: {without:7.2f} s  ({tokens['without']} output tokens)")
    print(f"with projections:    {with_:7.2f} s  ({tokens['with']} output tokens)")
    print(f"ratio with/without:  {with_ / without:7.3f}  (target <= 1.10 on CPU)")


if __name__ == "__main__":
    main()
