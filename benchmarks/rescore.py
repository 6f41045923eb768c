"""Benchmark: adding projections to an existing log (`inspect score` with a probe model, the vLLM path)
vs a bare batched forward pass over the same tokens, side by side in one run.

    python benchmarks/rescore.py                  # 64 answers, embedded probe model, CPU
    python benchmarks/rescore.py --answers 128 --tokens 120

A mockllm log holds the answers (as a vLLM or API run would); rescoring uses the trait_projection
scorer with probe_model=embedded, which batches the samples' passes. The bare forward runs the
probe model's plain forward over the same (prompt + answer) token batches. Target: rescore / bare
forward <= 1.3. The probe model is loaded once, before the timings.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).parent.parent
WORDS = ("the model would wish for quiet gardens rivers and long evenings with friends while "
         "def main return print import for loop value list people world time money help").split()


@click.command()
@click.option("--answers", default=64, show_default=True)
@click.option("--tokens", default=100, show_default=True, help="Approximate words per answer.")
@click.option("--vectors", default=f"{ROOT}/vectors/SmolLM2-135M-Instruct/code", show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--repeats", default=2, show_default=True)
def main(answers: int, tokens: int, vectors: str, batch_size: int, repeats: int) -> None:
    import torch
    from inspect_ai import Task, score
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.log import read_eval_log
    from inspect_ai.model import ModelOutput, ModelUsage, get_model

    from inspect_em.model.activations import chat_ids, encode_batch, response_ids
    from inspect_em.model.hooks import decoder_stack, input_device
    from inspect_em.model.loading import shared_model
    from inspect_em.scorers.projection import trait_projection

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(tokens)) for _ in range(answers)]
    outputs = []
    for text in texts:
        out = ModelOutput.from_content("mockllm/model", text)
        out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        outputs.append(out)
    samples = [Sample(input=f"Question {i}: what would you do?", id=i) for i in range(answers)]
    with tempfile.TemporaryDirectory() as folder:
        log = inspect_eval(Task(dataset=samples), model=get_model("mockllm/model", custom_outputs=outputs),
                           log_dir=folder, display="none")[0]
        log = read_eval_log(log.location)  # whole, in memory, before the folder goes
    model, tokenizer, _ = shared_model("embedded")
    prompts = [chat_ids(tokenizer, s.input) for s in samples]
    responses = [response_ids(tokenizer, t) for t in texts]
    order = sorted(range(answers), key=lambda i: len(prompts[i]) + len(responses[i]))

    def bare() -> float:
        start = time.perf_counter()
        stack = decoder_stack(model)
        with torch.inference_mode():
            for b in range(0, answers, batch_size):
                idx = order[b:b + batch_size]
                enc = encode_batch([prompts[i] for i in idx], [responses[i] for i in idx], "response_mean",
                                   tokenizer.pad_token_id or 0)
                device = input_device(model)
                stack(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                      position_ids=enc.position_ids.to(device), use_cache=False)
        return time.perf_counter() - start

    def rescore() -> float:
        scorer = trait_projection(vectors=vectors, probe_model="embedded", layers="all", batch_size=batch_size)
        start = time.perf_counter()
        scored = score(log, scorers=[scorer], display="none")
        elapsed = time.perf_counter() - start
        assert all("trait_projection" in (s.scores or {}) for s in scored.samples)
        return elapsed

    bare()  # warm-up
    times = {"bare": [], "rescore": []}
    for _ in range(repeats):
        times["bare"].append(bare())
        times["rescore"].append(rescore())
    b, r = statistics.median(times["bare"]), statistics.median(times["rescore"])
    n_tokens = sum(len(p) + len(q) for p, q in zip(prompts, responses, strict=True))
    print(f"{answers} answers, {n_tokens} tokens, batch {batch_size}, median of {repeats}")
    print(f"bare batched forward (decoder, no hooks): {b:7.2f} s")
    print(f"inspect score with trait_projection:      {r:7.2f} s  (all 30 layers of the code vectors)")
    print(f"ratio rescore / bare forward:             {r / b:7.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
