"""Residual-stream activations from every decoder block, captured with forward hooks.

Hook points are named TransformerLens-style: ``blocks.{i}.hook_resid_post`` is the output of
decoder block ``i`` (0-based). Hooks are installed by a context manager that always removes them,
even when the forward pass raises.

Each hook reduces its block's output ``[batch, seq, d_model]`` to ``[batch, d_model]`` on the spot
(a weighted sum over positions, accumulated in float64 and stored as float32), so memory holds
one batch's hidden states for one layer at a time plus the ``[batch, n_layers, d_model]`` result,
never ``seq × layers``.

Positions are the readout contract's (:mod:`inspect_em.readout`); prompts are tokenised by
:func:`chat_ids`, the one tokenisation path of extraction, projection, steering and screening.

Sharded models (accelerate ``device_map``, CPU/disk offload, several GPUs) work as they are:
each hook reduces on its own block's device and only the ``[batch, d_model]`` result moves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import InspectEmError
from .readout import Position, check_position, resolve_layers

# Attribute paths to the list of decoder blocks, by architecture family.
_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, SmolLM, Qwen2/3, Mistral, Gemma, Phi-3
    "model.language_model.layers",  # Gemma 3, multimodal wrappers
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "transformer.blocks",  # MPT
)


def hook_name(layer: int) -> str:
    """Name of the residual-stream hook point after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks; unwraps peft models. One-line error naming the class otherwise."""
    roots: list[Any] = [model]
    base = getattr(model, "get_base_model", None)
    if callable(base):
        roots.insert(0, base())
    for root in roots:
        for path in _LAYER_PATHS:
            obj: Any = root
            for attr in path.split("."):
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            if isinstance(obj, nn.ModuleList) and len(obj) > 0:
                return obj
    raise InspectEmError(
        f"cannot find the decoder layers of {type(model).__name__}: tried {', '.join(_LAYER_PATHS)}"
    )


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _hook_layer(key: int | str, n_layers: int) -> int:
    """A layer index from an int or a hook-point name (``blocks.5.hook_resid_post``)."""
    if isinstance(key, str):
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_post" or not parts[1].isdigit():
            raise InspectEmError(f"unknown hook point '{key}' (expected {hook_name(0).replace('0', 'N')})")
        key = int(parts[1])
    return resolve_layers(n_layers, [key])[0]


@contextmanager
def hooks(model: nn.Module, fns: dict[int | str, Callable[[torch.Tensor], None]]) -> Iterator[None]:
    """Run ``fns[point](resid_post)`` on each listed block's output; always removes the hooks.

    Keys are layer indices or hook-point names (``blocks.{i}.hook_resid_post``); ``resid_post``
    is the block output ``[batch, seq, d_model]`` in the model's dtype, on the block's device.
    The hooks act only in the thread that installed them: a forward pass another thread runs on
    the same model meanwhile (e.g. the hf provider's generation) is never read.
    """
    blocks = find_layers(model)
    owner = threading.get_ident()
    handles = []
    try:
        for key, fn in fns.items():
            layer = _hook_layer(key, len(blocks))

            def hook(_module: nn.Module, _inputs: Any, output: Any, fn=fn) -> None:
                if threading.get_ident() == owner:
                    fn(_block_output(output))

            handles.append(blocks[layer].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class EncodedBatch:
    """Padded token ids with the per-row weights that define the position to read.

    Attributes:
        input_ids: ``[batch, seq]``.
        attention_mask: ``[batch, seq]`` (1 = real token).
        position_ids: ``[batch, seq]`` (count of real tokens before; correct under left padding).
        weights: ``[batch, seq]`` float32, each row sums to 1 over the positions to average.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    weights: torch.Tensor


Messages = Sequence[dict[str, str]]


def chat_messages(prompt: str | Messages, system: str | None = None) -> list[dict[str, str]]:
    """A user prompt (with an optional system prompt) or a message list → ``[{"role", "content"}]``."""
    if isinstance(prompt, str):
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def chat_ids(tokenizer: Any, prompt: str | Messages, system: str | None = None,
             add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a prompt rendered with the tokenizer's chat template (and its generation
    prompt): the one tokenisation path of extraction, projection, steering and screening.

    Special tokens: the template's text is tokenised without the tokenizer's own special tokens
    when the template already writes the BOS token (Llama 3, Gemma: otherwise BOS is doubled), and
    with them when it does not (so a tokenizer that relies on adding BOS still gets exactly one).
    Without a chat template (base models) the messages' contents are joined by blank lines.
    """
    messages = chat_messages(prompt, system)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    else:
        text = "\n\n".join(m["content"] for m in messages)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def response_ids(tokenizer: Any, response: str) -> list[int]:
    """Token ids of a response's text (no special tokens: it continues the prompt)."""
    return list(tokenizer(response, add_special_tokens=False)["input_ids"]) if response else []


def encode_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]] | None,
    position: Position,
    pad_id: int,
    padding_side: str = "right",
) -> EncodedBatch:
    """Pad prompt(+response) id lists into one batch and build the position weights."""
    rows, weights = [], []
    for i, prompt in enumerate(prompt_ids):
        response = list(response_ids[i]) if response_ids is not None else []
        ids = list(prompt) + response
        w = torch.zeros(len(ids))
        if position == "last_prompt_token":
            w[len(prompt) - 1] = 1.0
        elif position == "prompt_mean":
            w[: len(prompt)] = 1.0 / len(prompt)
        elif position == "response_mean":
            if not response:
                raise InspectEmError(f"response_mean needs a non-empty response (row {i} has none)")
            w[len(prompt) :] = 1.0 / len(response)
        else:
            check_position(position)
        rows.append(ids)
        weights.append(w)
    width = max(len(r) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    wt = torch.zeros((batch, width), dtype=torch.float32)
    for i, (ids, w) in enumerate(zip(rows, weights, strict=True)):
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        input_ids[i, span] = torch.tensor(ids, dtype=torch.long)
        mask[i, span] = 1
        wt[i, span] = w
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return EncodedBatch(input_ids, mask, position_ids, wt)


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the embedding's device (CPU when it is offloaded to disk/meta)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    device = weight.device if weight is not None else next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def collect_activations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    layers: str | Sequence[int] | None = "all",
    position: Position = "last_prompt_token",
    responses: Sequence[str] | None = None,
    system: str | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    progress: bool = True,
    desc: str = "activations",
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Residual-stream activations at one position, for every prompt and selected layer.

    Returns:
        float32 tensor ``[n_prompts, n_layers_selected, d_model]`` on ``device`` (the CPU by
        default; extraction keeps them on the model's input device, where they are fitted), rows
        in the order of ``prompts``.
    """
    if not prompts:
        raise InspectEmError("no prompts given")
    check_position(position)
    if responses is not None and len(responses) != len(prompts):
        raise InspectEmError(f"{len(prompts)} prompts but {len(responses)} responses")
    if position == "response_mean" and responses is None:
        raise InspectEmError("position response_mean needs responses")
    blocks = find_layers(model)
    selected = resolve_layers(len(blocks), layers)
    prompt_ids = [chat_ids(tokenizer, p, system) for p in prompts]
    resp_ids = [response_ids(tokenizer, r) for r in responses] if responses is not None else None
    d_model = hidden_size(model)
    out = torch.empty((len(prompts), len(selected), d_model), dtype=torch.float32, device=device)
    batch: dict[str, Any] = {}
    first = input_device(model)

    def on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """This batch's position weights (float64) and last-token positions on ``device``, copied once
        per batch and device (a copy inside every hook would stall the GPU's queue each layer)."""
        if device not in batch["on"]:
            batch["on"][device] = (batch["weights"].to(device, torch.float64, non_blocking=True),
                                   batch["positions"].to(device, non_blocking=True))
        return batch["on"][device]

    def reducer(slot: int) -> Callable[[torch.Tensor], None]:
        def fn(resid: torch.Tensor) -> None:
            weights, positions = on(resid.device)
            if position == "last_prompt_token":  # one token: read it, exactly
                reduced = resid[torch.arange(resid.shape[0], device=resid.device), positions].float()
            else:  # float64 accumulation: residual streams carry values in the hundreds, where float32
                # sums drift by ~1e-4; the result is stored as float32
                reduced = torch.einsum("bsd,bs->bd", resid.double(), weights).float()
            batch["out"][:, slot] = reduced.to(batch["out"].device)

        return fn

    with hooks(model, {layer: reducer(slot) for slot, layer in enumerate(selected)}):
        for idx, enc in hooked_batches(model, prompt_ids, resp_ids, position, pad_token_id(tokenizer),
                                       batch_size, padding_side, progress, desc):
            batch["weights"], batch["on"] = enc.weights, {}
            batch["positions"] = enc.weights.argmax(dim=1)  # last_prompt_token: the one weighted position
            on(first)
            batch["out"] = torch.empty((len(idx), len(selected), d_model), dtype=torch.float32, device=device)
            decoder_forward(model, enc, stop_after=selected[-1])
            out[torch.tensor(idx, device=out.device)] = batch["out"]
    return out


def pad_token_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def hooked_batches(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]] | None,
    position: Position,
    pad_id: int,
    batch_size: int,
    padding_side: str = "right",
    progress: bool = False,
    desc: str = "activations",
) -> Iterator[tuple[list[int], EncodedBatch]]:
    """Yield ``(row indices, padded batch)`` in length order, with the model in eval/inference mode.

    The caller installs its hooks around the loop and calls :func:`decoder_forward` per batch.
    """
    lengths = [len(p) + (len(response_ids[i]) if response_ids else 0) for i, p in enumerate(prompt_ids)]
    order = sorted(range(len(prompt_ids)), key=lambda i: lengths[i])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
                idx = order[start : start + batch_size]
                yield idx, encode_batch(
                    [prompt_ids[i] for i in idx],
                    [response_ids[i] for i in idx] if response_ids else None,
                    position,
                    pad_id,
                    padding_side,
                )
    finally:
        model.train(was_training)


class _StopForward(Exception):
    """Raised after the deepest hooked block: the remaining blocks are not needed."""


def decoder_forward(model: nn.Module, enc: EncodedBatch, stop_after: int | None = None) -> None:
    """One forward pass of the decoder stack (no LM head) over ``enc``; hooks see every block.

    With ``stop_after`` the pass ends right after that block (hooks installed before this call
    on that block still run first), skipping the deeper blocks and the final norm.
    """
    device = input_device(model)
    handle = None
    if stop_after is not None:
        owner = threading.get_ident()

        def stop(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            if threading.get_ident() == owner:
                raise _StopForward

        handle = find_layers(model)[stop_after].register_forward_hook(stop)
    try:
        decoder_stack(model)(
            input_ids=enc.input_ids.to(device),
            attention_mask=enc.attention_mask.to(device),
            position_ids=enc.position_ids.to(device),
            use_cache=False,
        )
    except _StopForward:
        pass
    finally:
        if handle is not None:
            handle.remove()


def decoder_stack(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (``model.model`` for Llama), so no logits are computed.

    Falls back to the whole model when the base model cannot be identified.
    """
    root = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    prefix = getattr(root, "base_model_prefix", "")
    base = getattr(root, prefix, None) if prefix else None
    return base if isinstance(base, nn.Module) and base is not root else root


def hidden_size(model: nn.Module) -> int:
    """``d_model`` from the model's (text) config."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int):
        raise InspectEmError(f"{type(model).__name__} has no config.hidden_size")
    return size
