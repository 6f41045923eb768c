"""Loading a Hugging Face causal LM (or the embedded model) for activation work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InspectEmError

EMBEDDED_ALIASES = ("embedded", "smollm2")


def resolve_model_ref(model: str) -> str:
    """``embedded`` → the prepared SmolLM2 folder; ``hf/<x>`` → ``<x>``; else unchanged."""
    if model in EMBEDDED_ALIASES:
        from . import embedded

        return str(embedded.path())
    return model[3:] if model.startswith("hf/") else model


def _check_local(ref: str) -> None:
    looks_local = ref.startswith((".", "/", "~")) or (os.sep in ref and Path(ref).parent.exists())
    if looks_local and not Path(ref).expanduser().exists():
        raise InspectEmError(f"{ref}: model folder not found")


def config_layers(model: str) -> int:
    """Number of decoder layers from the model's config alone (no weights loaded)."""
    from transformers import AutoConfig

    ref = resolve_model_ref(model)
    _check_local(ref)
    try:
        config = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise InspectEmError(f"{ref}: cannot read the model config ({str(e).splitlines()[0]})") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    if not isinstance(n_layers, int):
        raise InspectEmError(f"{ref}: the config has no num_hidden_layers")
    return n_layers


def load_hf_model(model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, model_id)``; a missing local folder is a one-line error.

    ``model_id`` is the hub id or folder path, or the embedded model's name for ``embedded``.

    Args:
        model: local folder, hub id (only from the local cache: no downloads when
            ``HF_HUB_OFFLINE=1``), ``hf/<...>`` or ``embedded``.
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda:0``...
        dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32``, ``bfloat16``, ``float16``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = resolve_model_ref(model)
    _check_local(ref)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise InspectEmError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16, float16)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        hf_model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch_dtype).to(device)
    except OSError as e:
        raise InspectEmError(f"{ref}: cannot load model ({str(e).splitlines()[0]})") from None
    hf_model.eval()
    model_id = embedded_name() if model in EMBEDDED_ALIASES else ref
    return hf_model, tokenizer, model_id


def embedded_name() -> str:
    from .embedded import MODEL_NAME

    return MODEL_NAME
