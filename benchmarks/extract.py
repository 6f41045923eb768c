"""Benchmark: a bare forward pass vs full trait extraction, side by side on the same prompts.

    python benchmarks/extract.py                      # embedded model, CPU, refusal prompts
    python benchmarks/extract.py --random-shape 7b --device cuda --dtype bfloat16   # on a GPU

Prints wall times and the ratio  full extraction (hooks on all layers + six methods × all layers
+ validation) / bare forward (the causal LM's plain forward over the same batches). Target on
CPU for the embedded model: ratio <= 1.3. Extraction runs the decoder stack without the LM head,
so the script also times a bare decoder-only forward: full/decoder is the true cost of the hooks
and the methods. Each measurement is repeated and the median taken.
"""

from __future__ import annotations

import statistics
import time

import click
import torch

# Shapes of real models, for random-weight runs on a GPU (no download needed).
SHAPES = {
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
}


def _bare_forward(model, tokenizer, prompts: list[str], batch_size: int, head: bool = True) -> None:
    from inspect_em.activations import chat_ids, decoder_stack, encode_batch, input_device

    ids = sorted((chat_ids(tokenizer, p) for p in prompts), key=len)
    device = input_device(model)
    if not head:
        model = decoder_stack(model)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            enc = encode_batch(ids[start:start + batch_size], None, "last_prompt_token", tokenizer.pad_token_id or 0)
            model(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                  position_ids=enc.position_ids.to(device), use_cache=False)
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@click.command()
@click.option("--model", "model_ref", default="embedded", show_default=True)
@click.option("--trait", default="refusal", show_default=True)
@click.option("--random-shape", type=click.Choice(sorted(SHAPES)), default=None,
              help="Use random weights of a real model's shape (with the embedded tokenizer).")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--repeats", default=3, show_default=True)
def main(model_ref: str, trait: str, random_shape: str | None, device: str, dtype: str, batch_size: int,
         repeats: int) -> None:
    from inspect_em.modeling import load_hf_model
    from inspect_em.pipeline import extract_trait_vectors
    from inspect_em.traits import load_trait

    model, tokenizer, model_id = load_hf_model(model_ref, device=device, dtype=dtype)
    if random_shape:
        from transformers import AutoModelForCausalLM, LlamaConfig

        config = LlamaConfig(vocab_size=len(tokenizer), **SHAPES[random_shape])
        model = AutoModelForCausalLM.from_config(config, dtype=model.dtype).to(model.device).eval()
        model_id = f"random-{random_shape}"
    spec = load_trait(trait)
    split = spec.split()
    prompts = split.fit_pos + split.fit_neg + split.test_pos + split.test_neg
    print(f"model {model_id} on {model.device} ({model.dtype}); {len(prompts)} prompts; batch {batch_size}; "
          f"{torch.get_num_threads()} threads; median of {repeats}")

    _bare_forward(model, tokenizer, prompts[:batch_size], batch_size)  # warm-up
    bare = _timed(lambda: _bare_forward(model, tokenizer, prompts, batch_size), repeats)
    decoder = _timed(lambda: _bare_forward(model, tokenizer, prompts, batch_size, head=False), repeats)
    full = _timed(lambda: extract_trait_vectors(model, tokenizer, spec, model_id=model_id, batch_size=batch_size,
                                                progress=False), repeats)
    print(f"bare forward:     {bare:8.2f} s")
    print(f"bare decoder:     {decoder:8.2f} s  (same, without the LM head: extraction needs no logits)")
    print(f"full extraction:  {full:8.2f} s  (hooks on all layers, 6 methods x all layers, validation)")
    print(f"ratio full/bare:     {full / bare:8.3f}  (target <= 1.3 on CPU)")
    print(f"ratio full/decoder:  {full / decoder:8.3f}  (the cost of hooks + methods alone)")


if __name__ == "__main__":
    main()
