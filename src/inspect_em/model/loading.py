"""Loading a Hugging Face causal LM (or the embedded model): the one loader of extraction,
finetuning, probe models and screening.

Devices: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda:0``...; or an accelerate
``device_map`` (``auto``, ``balanced``, ``sequential``, or a JSON/dict map of module → device,
``disk`` included, with ``offload_folder``) to shard a model over several GPUs and offload
what does not fit to CPU or disk. ``load_in_4bit``/``load_in_8bit`` quantise with bitsandbytes
(CUDA only; ``pip install inspect-em[gpu]``). The tokenizer always has a pad token.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from inspect_em.errors import InspectEmError

if TYPE_CHECKING:
    from inspect_em.directions.store import TraitVectors

EMBEDDED_ALIASES = ("embedded", "smollm2")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)


def resolve_model_ref(model: str) -> str:
    """``embedded`` → the prepared SmolLM2 folder; ``hf/<x>`` → ``<x>``; else unchanged."""
    if model in EMBEDDED_ALIASES:
        from inspect_em.model import embedded

        return str(embedded.path())
    return model[3:] if model.startswith("hf/") else model


@contextmanager
def hub_offline() -> Iterator[None]:
    """The Hugging Face Hub in offline mode for this block, restored after: ``HF_HUB_OFFLINE`` for
    later imports and subprocesses, and huggingface_hub's own flag when it is already imported (it
    reads the variable once, at import). For runs whose every model is a local folder under a
    readable name, which Inspect and transformers would otherwise look up on the Hub, with retries."""
    before = os.environ.get("HF_HUB_OFFLINE")
    constants = sys.modules.get("huggingface_hub.constants")
    flag = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010  # a module attribute mypy cannot see
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before
        now = sys.modules.get("huggingface_hub.constants")  # imported inside the block: it read our "1"
        if now is not None:
            restored = flag if constants is not None else (before or "").upper() in ("1", "ON", "YES", "TRUE")
            setattr(now, "HF_HUB_OFFLINE", restored)  # noqa: B010


def hub_offline_for_local(model: str) -> AbstractContextManager[None]:
    """:func:`hub_offline` when ``model`` is a local folder (the embedded model too), else no change:
    Inspect looks a model's info up by its display name (``hf/<name>``), which for a local folder
    under a readable name can only fail, after ~25 s of retries."""
    return hub_offline() if Path(resolve_model_ref(model)).expanduser().is_dir() else nullcontext()


def model_id_of(model: str) -> str:
    """The id recorded in vector cards: the embedded model's name, else the folder path or hub id."""
    if model in EMBEDDED_ALIASES:
        from inspect_em.model.embedded import MODEL_NAME

        return MODEL_NAME
    return resolve_model_ref(model)


def local_folder(model: str) -> Path | None:
    """The model's local folder, when it is one (for output-safety checks)."""
    path = Path(resolve_model_ref(model)).expanduser()
    return path if path.is_dir() else None


def _check_local(ref: str) -> None:
    looks_local = ref.startswith((".", "/", "~")) or (os.sep in ref and Path(ref).parent.exists())
    if looks_local and not Path(ref).expanduser().exists():
        raise InspectEmError(f"{ref}: model folder not found")


def load_config(model: str) -> Any:
    """The model's (text) config alone, no weights: for checks before loading."""
    from transformers import AutoConfig

    ref = resolve_model_ref(model)
    _check_local(ref)
    try:
        config = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise InspectEmError(f"{ref}: cannot read the model config ({str(e).splitlines()[0]})") from None
    return config


def load_tokenizer(model: str) -> Any:
    """The model's tokenizer alone (cheap: for checks before the weights load), with a pad token."""
    from transformers import AutoTokenizer

    ref = resolve_model_ref(model)
    _check_local(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise InspectEmError(f"{ref}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def text_config(config: Any) -> Any:
    """The language model's part of a config (multimodal configs nest it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_shape(model: str) -> tuple[int, int]:
    """``(n_layers, d_model)`` from the model's config alone (no weights loaded)."""
    text = text_config(load_config(model))
    n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    d_model = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not isinstance(n_layers, int) or not isinstance(d_model, int):
        raise InspectEmError(f"{resolve_model_ref(model)}: the config has no num_hidden_layers / hidden_size")
    return n_layers, d_model


def check_vectors_fit(sets: Sequence[TraitVectors], model: str) -> None:
    """Refuse vectors made for a model of another shape, from the config alone: before any weights load."""
    n_layers, d_model = model_shape(model)
    for tv in sets:
        tv.check_model(n_layers=n_layers, d_model=d_model, source=f"model {model}")


def config_layers(model: str) -> int:
    """Number of decoder layers from the model's config alone (no weights loaded)."""
    return model_shape(model)[0]


def parse_device_map(device_map: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``auto``/``balanced``/``sequential``/``balanced_low_0``, a JSON object, or a dict."""
    if device_map is None or isinstance(device_map, dict):
        return device_map
    text = str(device_map).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as e:
            raise InspectEmError(f"device map: not valid JSON ({e})") from None
        if not isinstance(parsed, dict):
            raise InspectEmError("device map: expected a JSON object of module → device")
        return parsed
    if text not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise InspectEmError(f"unknown device map '{text}' (use auto, balanced, sequential or a JSON object)")
    return text


def torch_dtype(dtype: str, on_gpu: bool) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    value = getattr(torch, dtype, None) if dtype in DTYPES else None
    if not isinstance(value, torch.dtype):
        raise InspectEmError(f"unknown dtype '{dtype}' (use {', '.join(DTYPES)})")
    return value


def load_hf_model(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, model_id)`` in eval mode; a missing local folder is a one-line error.

    Args:
        model: local folder, hub id (only from the local cache: no downloads when
            ``HF_HUB_OFFLINE=1``), ``hf/<...>`` or ``embedded``.
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda:0``... (ignored with a
            ``device_map``).
        dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        device_map: an accelerate device map (see the module docstring).
        offload_folder: where a device map's ``disk`` modules are kept.
        load_in_4bit / load_in_8bit: bitsandbytes quantisation (CUDA only).
    """
    import torch
    from transformers import AutoModelForCausalLM

    ref = resolve_model_ref(model)
    _check_local(ref)
    device_map = parse_device_map(device_map)
    on_gpu = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if on_gpu else "cpu"
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, on_gpu or str(device).startswith("cuda"))}
    if load_in_4bit or load_in_8bit:
        if not on_gpu:
            raise InspectEmError("--load-in-4bit/--load-in-8bit need a CUDA GPU (bitsandbytes)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
        device_map = device_map or "auto"
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    tokenizer = load_tokenizer(model)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except OSError as e:
        raise InspectEmError(f"{ref}: cannot load model ({str(e).splitlines()[0]})") from None
    if device_map is None:
        hf_model = hf_model.to(device)
    hf_model.eval()
    return hf_model, tokenizer, model_id_of(model)


# Models loaded for readers (probe models), by (reference, device, dtype): loaded once per process.
_SHARED: dict[tuple[str, str, str], tuple[Any, Any, str]] = {}
SHARED_LOADS = {"count": 0}


def portable_config(config_file: Path) -> None:
    """A saved model's ``config.json`` that every supported transformers version reads alike.

    transformers 5 writes RoPE settings as ``rope_parameters``, which 4.x (our floor) ignores: it
    would run the model with its default base 10,000 (SmolLM2's is 100,000), a different model.
    Written also as 4.x's ``rope_theta`` (and ``rope_scaling`` for a non-default type); 5.x reads
    ``rope_parameters`` as before."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def check_in_place_adapter(adapter: Path) -> None:
    """A one-line error unless ``adapter`` is a LoRA adapter that :func:`lora_applied` can put in and
    take out again exactly (no whole-module copies, trainable token rows or replicated layers)."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise InspectEmError(f"{adapter}: a {config.get('peft_type')} adapter, not LoRA: merge it into a model instead")
    if config.get("modules_to_save") or config.get("trainable_token_indices") or config.get("layer_replication"):
        raise InspectEmError(f"{adapter}: the adapter replaces whole modules, token rows or layers (modules_to_save / "
                             "trainable tokens / layer_replication), which cannot be removed again: merge it into a "
                             "model instead")


@contextmanager
def lora_applied(model: Any, adapter: Path) -> Iterator[Any]:
    """``model`` (a loaded transformers model) runs with the LoRA adapter in ``adapter`` for the block,
    then exactly as before: peft injects the adapter's layers into the model's own modules (so a
    provider holding the model generates with them) and removes them afterwards. The base weights are
    never changed, so a series of checkpoints is evaluated on one loaded base model instead of a merged
    copy per checkpoint. Yields the ``PeftModel``."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    check_in_place_adapter(adapter)
    if any(isinstance(module, BaseTunerLayer) for module in model.modules()):
        raise InspectEmError(f"{adapter}: the model already carries adapter layers; apply one adapter at a time")
    kept = {name: getattr(model.config, name) for name in ("pretraining_tp",) if hasattr(model.config, name)}
    had_peft_config = hasattr(model, "peft_config")
    wrapped = None
    try:
        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated name, once per checkpoint
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        yield wrapped
    finally:
        if wrapped is not None:
            wrapped.unload()
        else:  # failed while injecting: take out whatever layers it put in
            for name, module in list(model.named_modules()):
                if isinstance(module, BaseTunerLayer) and hasattr(module, "get_base_layer"):
                    parent, _, child = name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
        if not had_peft_config and "peft_config" in vars(model):
            del model.peft_config  # peft 0.13 leaves it after unload()
        for name, value in kept.items():
            setattr(model.config, name, value)


def shared_model(ref: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any, str]:
    """``(model, tokenizer, model_id)`` loaded once per process and shared (probe models of scorers)."""
    key = (ref, device, dtype)
    if key not in _SHARED:
        _SHARED[key] = load_hf_model(ref, device=device, dtype=dtype)
        SHARED_LOADS["count"] += 1
    return _SHARED[key]
