"""Where a model's residual stream is, and the one guard that hooks it: hooks that always remove
themselves and act only in the thread that installed them.

Hook points are named TransformerLens-style: ``blocks.{i}.hook_resid_post`` is the output of
decoder block ``i`` (0-based). Sharded models (accelerate ``device_map``, CPU/disk offload,
several GPUs) work as they are: each hook runs on its own block's device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from inspect_em.errors import InspectEmError
from inspect_em.readout import resolve_layers

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


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the embedding's device (CPU when it is offloaded to disk/meta)."""
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    weight = getattr(embeddings, "weight", None)
    device = weight.device if weight is not None else next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


class _StopForward(Exception):
    """Raised after the deepest hooked block: the remaining blocks are not needed."""


def decoder_forward(model: nn.Module, enc: Any, stop_after: int | None = None) -> None:
    """One forward pass of the decoder stack (no LM head) over ``enc`` (an
    :class:`inspect_em.model.activations.EncodedBatch`); hooks see every block.

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
    getter = getattr(model, "get_base_model", None)
    root = getter() if callable(getter) else model
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
