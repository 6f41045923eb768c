"""Residual-stream activations from every decoder block, captured with forward hooks
(:mod:`inspect_em.model.hooks`: ``blocks.{i}.hook_resid_post``, the output of block ``i``).

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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from inspect_em.errors import InspectEmError
from inspect_em.model.hooks import decoder_forward, find_layers, hidden_size, hooks, input_device
from inspect_em.readout import Position, check_position, resolve_layers


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


def context_length(config: Any) -> int | None:
    """The longest sequence the model takes (``max_position_embeddings`` of its text config), if known."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def fit_to_context(tokenizer: Any, groups: dict[str, list[str]], context: int | None, *, reserve: int = 0,
                   systems: dict[str, str | None] | None = None, truncate: bool = False,
                   what: str = "prompt") -> dict[str, list[str]]:
    """Check that every prompt, rendered with the chat template (and its split's system prompt),
    leaves ``reserve`` tokens of the model's ``context`` for the answer.

    Returns ``groups`` unchanged when all fit; with ``truncate``, the long prompts cut (their text's
    last tokens dropped) to fit; else raises a one-line error naming the first prompt too long.
    """
    if context is None:
        return groups
    limit = context - reserve
    out: dict[str, list[str]] = {}
    for name, prompts in groups.items():
        system = (systems or {}).get(name)
        kept = []
        for i, prompt in enumerate(prompts):
            n = len(chat_ids(tokenizer, prompt, system))
            if n > limit and not truncate:
                raise InspectEmError(
                    f"{what} {i} of {name} ({prompt[:40]!r}...) is {n} tokens with the chat template; the "
                    f"model's context is {context}" + (f" and {reserve} are kept for the answer" if reserve else "")
                    + ": shorten it, or pass --truncate-prompts")
            for _ in range(4):  # decoding and re-encoding can shift a token or two: cut again if needed
                if n <= limit:
                    break
                text_ids = response_ids(tokenizer, prompt)
                prompt = tokenizer.decode(text_ids[:max(len(text_ids) - (n - limit), 0)])
                n = len(chat_ids(tokenizer, prompt, system))
            kept.append(prompt)
        out[name] = kept
    return out


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


def collect_activations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    layers: str | Sequence[int] | None = "all",
    position: Position = "last_prompt_token",
    responses: Sequence[str] | None = None,
    system: str | Sequence[str | None] | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    progress: bool = True,
    desc: str = "activations",
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Residual-stream activations at one position, for every prompt and selected layer.
    ``system``: one system prompt for all prompts, or one per prompt (rows with different system
    prompts share batches).

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
    systems = [system] * len(prompts) if system is None or isinstance(system, str) else list(system)
    if len(systems) != len(prompts):
        raise InspectEmError(f"{len(prompts)} prompts but {len(systems)} system prompts")
    prompt_ids = [chat_ids(tokenizer, p, s) for p, s in zip(prompts, systems, strict=True)]
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


