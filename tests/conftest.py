"""Shared fixtures: the embedded model (prepared once) and the optional reference folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE_ENV = "INSPECT_EM_REFERENCE"


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    """The prepared SmolLM2-135M-Instruct folder (prepared on first use; no network)."""
    from inspect_em.model import embedded

    return embedded.prepare()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``$INSPECT_EM_REFERENCE`` (e.g. ../shared/em-reference); the test skips without it."""
    value = os.environ.get(REFERENCE_ENV, "")
    if not value:
        pytest.skip(f"{REFERENCE_ENV} is not set (reference material absent)")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{REFERENCE_ENV}={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_path: Path) -> Path:
    """A 4-layer random-weight Llama (d_model 64) with the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def embedded_model(embedded_model_path: Path):
    """(model, tokenizer) of the embedded model in float32 on CPU, loaded once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    model.eval()
    with torch.no_grad():  # transformers installs its own output-capture hooks on first use
        model(torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    return model, AutoTokenizer.from_pretrained(embedded_model_path)


@pytest.fixture(autouse=True)
def offline_token_estimates(monkeypatch: pytest.MonkeyPatch) -> None:
    """mockllm estimates token counts with tiktoken, which downloads its vocabulary: no network
    here, so tests count whitespace-separated words instead (only mockllm usage figures change)."""
    import tiktoken

    class Words:
        def encode(self, text: str, **_: object) -> list[str]:
            return text.split()

    monkeypatch.setattr(tiktoken, "get_encoding", lambda _name: Words())
