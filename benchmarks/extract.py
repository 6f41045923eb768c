"""Benchmark: trait extraction against the forward pass it needs, side by side in one run.

    python benchmarks/extract.py                        # embedded model, CPU, the refusal trait's 524 prompts
    python benchmarks/extract.py --fit-only --shape 7b  # the fitting engine alone on synthetic [524, 32, 4096]
    python benchmarks/extract.py --random-shape 7b --device cuda --dtype bfloat16   # on a GPU, random weights

Model mode times, on the same prompts and batches (median of ``--repeats``):

- **bare forward**: the causal LM's plain batched forward (what any extraction must pay);
- **hook capture**: our capture of every layer at the trait's position (``collect_activations``);
- **persona_vectors way**: one prompt at a time with ``output_hidden_states`` (the usual peer code);
- **full extraction**: ``extract_trait_vectors`` with the default settings (six methods × every layer,
  5-fold CV, 50 permutations, 1,000 random directions), model already loaded.

and prints each against the bare forward (target: full extraction ≤ 2× on CPU). ``--fit-only`` times
the fitting engine on synthetic activations of a real model's shape (target at 7B on 2 CPU cores:
≤ 90 s) and reports the peak memory.
"""

from __future__ import annotations

import resource
import statistics
import time

import click
import numpy as np
import torch

# Shapes of real models, for random-weight runs and synthetic activations (no download needed).
SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32},
    "32b": {"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
            "num_key_value_heads": 8},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model, tokenizer, prompts: list[str], batch_size: int) -> None:
    """The causal LM's plain forward over the prompts, batched as extraction batches them."""
    from inspect_em.model.activations import chat_ids, encode_batch, pad_token_id
    from inspect_em.model.hooks import input_device

    ids = sorted((chat_ids(tokenizer, p) for p in prompts), key=len)
    device = input_device(model)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            enc = encode_batch(ids[start:start + batch_size], None, "last_prompt_token", pad_token_id(tokenizer))
            model(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                  position_ids=enc.position_ids.to(device), use_cache=False)
    _sync(device)


def persona_vectors_way(model, tokenizer, prompts: list[str]) -> None:
    """One prompt at a time with ``output_hidden_states``, the last prompt token of every layer."""
    from inspect_em.model.activations import chat_ids
    from inspect_em.model.hooks import input_device

    device = input_device(model)
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([chat_ids(tokenizer, prompt)], device=device)
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            torch.stack([h[0, -1] for h in hidden[1:]]).float().cpu()
    _sync(device)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_fit_only(shape: str, device: str, repeats: int) -> None:
    from inspect_em.directions.engine import METHOD_NAMES, FitSettings, fit_layers

    spec = SHAPES[shape]
    layers, d = spec["num_hidden_layers"], spec["hidden_size"]
    rng = np.random.default_rng(0)
    sizes = {"fit_pos": 100, "fit_neg": 100, "test_pos": 82, "test_neg": 82, "ood_pos": 80, "ood_neg": 80}
    target = torch.device(device)
    splits = {}
    for name, n in sizes.items():
        x = torch.tensor(rng.standard_normal((n, layers, d), dtype=np.float32) + 2.0)
        x[..., 0] += 1.0 if name.endswith("pos") else 0.0
        splits[name] = x.to(target)
    print(f"fit only: synthetic activations [{sum(sizes.values())}, {layers}, {d}] on {target}, "
          f"{torch.get_num_threads()} threads; six methods, 5-fold CV, 50 permutations, 1,000 random directions")
    result = None

    def run() -> None:
        nonlocal result
        result = fit_layers(splits, list(range(layers)), list(METHOD_NAMES), FitSettings())
        _sync(target)

    seconds = timed(run, repeats)
    assert result is not None
    peak = f"{result.peak_bytes / 2**30:.2f} GiB GPU" if result.peak_bytes else f"{peak_rss_gib():.2f} GiB RSS"
    print(f"fit (all layers):  {seconds:8.2f} s   (target at 7b on 2 CPU cores: <= 90 s); peak memory {peak}")


@click.command()
@click.option("--model", "model_ref", default="embedded", show_default=True)
@click.option("--trait", default="refusal", show_default=True)
@click.option("--random-shape", type=click.Choice(sorted(SHAPES)), default=None,
              help="Random weights of a real model's shape (with the embedded tokenizer).")
@click.option("--fit-only", is_flag=True, help="Time the fitting engine alone on synthetic activations.")
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="7b", show_default=True,
              help="With --fit-only: the activations' shape.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--peer/--no-peer", default=True, show_default=True, help="Also time the persona_vectors way.")
def main(model_ref: str, trait: str, random_shape: str | None, fit_only: bool, shape: str, device: str, dtype: str,
         batch_size: int, repeats: int, peer: bool) -> None:
    if fit_only:
        time_fit_only(shape, "cuda" if device == "auto" and torch.cuda.is_available() else
                 ("cpu" if device == "auto" else device), repeats)
        return
    from inspect_em.directions.traits import load_trait
    from inspect_em.model.activations import collect_activations
    from inspect_em.model.loading import load_hf_model
    from inspect_em.runs.extract import extract_trait_vectors

    model, tokenizer, model_id = load_hf_model(model_ref, device=device, dtype=dtype)
    if random_shape:
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(vocab_size=len(tokenizer), **SHAPES[random_shape])
        model = AutoModelForCausalLM.from_config(config, dtype=model.dtype).to(model.device).eval()
        model_id = f"random-{random_shape}"
    spec = load_trait(trait)
    prompts = [p for group in spec.split().groups().values() for p in group]
    print(f"model {model_id} on {model.device} ({model.dtype}); {len(prompts)} prompts ({spec.name}); batch "
          f"{batch_size}; {torch.get_num_threads()} threads; median of {repeats}")
    bare_forward(model, tokenizer, prompts[:batch_size], batch_size)  # warm-up
    bare = timed(lambda: bare_forward(model, tokenizer, prompts, batch_size), repeats)
    capture = timed(lambda: collect_activations(model, tokenizer, prompts, position="last_prompt_token",
                                                batch_size=batch_size, progress=False), repeats)
    peer_s = timed(lambda: persona_vectors_way(model, tokenizer, prompts), 1) if peer else float("nan")
    full = timed(lambda: extract_trait_vectors(model, tokenizer, spec, model_id=model_id, batch_size=batch_size,
                                               progress=False), repeats)
    print(f"bare forward:        {bare:8.2f} s")
    print(f"hook capture:        {capture:8.2f} s   {capture / bare:6.2f}x bare")
    print(f"persona_vectors way: {peer_s:8.2f} s   {peer_s / bare:6.2f}x bare  (one prompt at a time, "
          "output_hidden_states)")
    print(f"full extraction:     {full:8.2f} s   {full / bare:6.2f}x bare  (target <= 2x: six methods x all layers, "
          "5-fold CV, 50 permutations, 1,000 random directions)")
    print(f"peak memory: {peak_rss_gib():.2f} GiB RSS")


if __name__ == "__main__":
    main()
