"""Hook capture against an independent computation with output_hidden_states=True."""

import pytest
import torch
from torch import nn

from inspect_em.errors import InspectEmError
from inspect_em.model.activations import chat_ids, collect_activations, encode_batch
from inspect_em.model.hooks import find_layers, hook_name, hooks
from inspect_em.readout import POSITIONS, resolve_layers

PROMPTS = [
    "Hi",
    "How do I bake a chocolate cake for my friend's birthday party tomorrow afternoon?",
    "Write a poem about the sea.",
]
RESPONSES = ["Hello there!", "Mix flour, cocoa and sugar, then bake for 30 minutes.", "Waves"]


def _hook_counts(model) -> list[int]:
    """Forward hooks per block (transformers adds its own capture hooks; we count ours on top)."""
    return [len(block._forward_hooks) for block in find_layers(model)]


def _reference(model, tokenizer, position: str, padding_side: str, systems=None) -> torch.Tensor:
    """Same padded batch, one plain forward with output_hidden_states, reductions in float64.

    hidden_states[i + 1] is block i's output, except the last entry, which transformers returns
    after the final norm: the norm is swapped for an identity for this pass.
    """
    responses = RESPONSES if position == "response_mean" else None
    prompt_ids = [chat_ids(tokenizer, p, s) for p, s in zip(PROMPTS, systems or [None] * len(PROMPTS), strict=True)]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses] if responses else None
    enc = encode_batch(prompt_ids, response_ids, position, tokenizer.pad_token_id, padding_side)
    norm, model.model.norm = model.model.norm, nn.Identity()
    try:
        with torch.no_grad():
            hidden = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                           position_ids=enc.position_ids, output_hidden_states=True).hidden_states
    finally:
        model.model.norm = norm
    w = enc.weights.double()
    return torch.stack([(h.double() * w[..., None]).sum(1) for h in hidden[1:]], dim=1).float()


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("position", POSITIONS)
def test_hooks_match_output_hidden_states(embedded_model, position: str, padding_side: str):
    model, tokenizer = embedded_model
    responses = RESPONSES if position == "response_mean" else None
    before = _hook_counts(model)
    got = collect_activations(model, tokenizer, PROMPTS, position=position, responses=responses,
                              padding_side=padding_side, batch_size=3, progress=False)
    assert got.shape == (3, 30, 576) and got.dtype == torch.float32
    expected = _reference(model, tokenizer, position, padding_side)
    assert _hook_counts(model) == before
    assert torch.max(torch.abs(got - expected)).item() <= 1e-4


def test_one_system_prompt_per_row_matches_output_hidden_states(embedded_model):
    """Rows with different system prompts (a log's variants) read in one batch equal the plain forward
    of each row's own chat template; a count mismatch is a one-line error."""
    model, tokenizer = embedded_model
    systems = ["Answer in JSON.", None, "You are a pirate."]
    got = collect_activations(model, tokenizer, PROMPTS, position="response_mean", responses=RESPONSES,
                              system=systems, batch_size=3, progress=False)
    expected = _reference(model, tokenizer, "response_mean", "right", systems)
    assert torch.max(torch.abs(got - expected)).item() <= 1e-4
    plain = collect_activations(model, tokenizer, PROMPTS, position="response_mean", responses=RESPONSES,
                                batch_size=3, progress=False)
    assert torch.max(torch.abs(got[1] - plain[1])).item() <= 1e-4  # the row without one: as before
    assert torch.max(torch.abs(got[0] - plain[0])).item() > 1e-2  # a system prompt is read
    with pytest.raises(InspectEmError, match="3 prompts but 2 system prompts"):
        collect_activations(model, tokenizer, PROMPTS, system=systems[:2], progress=False)


def test_padding_does_not_change_activations(embedded_model):
    """Batched (padded, either side) vs one prompt at a time: same values up to float32 matmul noise."""
    model, tokenizer = embedded_model
    alone = torch.cat([collect_activations(model, tokenizer, [p], progress=False) for p in PROMPTS])
    for side in ("left", "right"):
        batched = collect_activations(model, tokenizer, PROMPTS, padding_side=side, batch_size=3, progress=False)
        relative = (batched - alone).norm(dim=-1) / alone.norm(dim=-1)
        assert relative.max().item() < 1e-5


def test_layer_selection_and_order(embedded_model):
    model, tokenizer = embedded_model
    full = collect_activations(model, tokenizer, PROMPTS, progress=False, batch_size=2)
    some = collect_activations(model, tokenizer, PROMPTS, layers="3,0,29", progress=False, batch_size=2)
    assert torch.equal(some, full[:, [0, 3, 29]])


def test_hooks_are_removed_even_on_error(embedded_model):
    model, tokenizer = embedded_model

    def explode(_resid: torch.Tensor) -> None:
        raise RuntimeError("boom")

    ids = torch.tensor([chat_ids(tokenizer, "hello")])
    before = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(model, {5: explode, hook_name(7): explode}):
            assert _hook_counts(model)[5] == before[5] + 1
            model(ids)
    assert _hook_counts(model) == before
    with pytest.raises(InspectEmError, match="unknown hook point 'blocks.x'"):
        with hooks(model, {"blocks.x": explode}):
            pass
    assert _hook_counts(model) == before


def test_bad_inputs_are_one_line_errors(embedded_model):
    model, tokenizer = embedded_model
    with pytest.raises(InspectEmError, match="layer 30 is out of range: the model has 30 layers"):
        collect_activations(model, tokenizer, PROMPTS, layers=[30], progress=False)
    with pytest.raises(InspectEmError, match="no prompts"):
        collect_activations(model, tokenizer, [], progress=False)
    with pytest.raises(InspectEmError, match="needs responses"):
        collect_activations(model, tokenizer, PROMPTS, position="response_mean", progress=False)
    with pytest.raises(InspectEmError, match="cannot find the decoder layers of Linear"):
        find_layers(nn.Linear(2, 2))
    assert resolve_layers(30, "all") == list(range(30))
    assert resolve_layers(30, "10-12,-1") == [10, 11, 12, 29]
    with pytest.raises(InspectEmError, match="cannot parse"):
        resolve_layers(30, "ten")


def _bos_adding(tokenizer, template_writes_bos: bool):
    """The embedded tokenizer made Llama-like: its post-processor adds BOS (<|endoftext|>), and its
    chat template either writes BOS itself (Llama 3 / Gemma style) or relies on the tokenizer."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    bos = "<|endoftext|>"
    tok.bos_token = bos
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    if template_writes_bos:
        tok.chat_template = "{{ bos_token }}" + tok.chat_template
    return tok, tok.convert_tokens_to_ids(bos)


@pytest.mark.parametrize("template_writes_bos", [True, False])
def test_extraction_and_projection_tokenise_alike_with_one_bos(embedded_model, tiny_model_dir, monkeypatch,
                                                                template_writes_bos: bool):
    from inspect_ai.model import ChatMessageUser
    from transformers import AutoModelForCausalLM

    import inspect_em.model.activations as activations
    from inspect_em.scorers.projection import _Source

    _, tokenizer = embedded_model
    tok, bos = _bos_adding(tokenizer, template_writes_bos)
    text = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                   tokenize=False)
    naive = tok(text)["input_ids"]  # what a plain tokenizer call does with the rendered template
    assert naive.count(bos) == (2 if template_writes_bos else 1)
    seen: list[list[int]] = []
    original = activations.encode_batch

    def spy(prompt_ids, *args, **kwargs):
        seen.extend(list(p) for p in prompt_ids)
        return original(prompt_ids, *args, **kwargs)

    monkeypatch.setattr(activations, "encode_batch", spy)
    tiny = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    collect_activations(tiny, tok, ["Hello"], layers=[0], progress=False)  # extraction's path
    reader = _Source(tiny, tok, "tiny")  # the projection scorer's path
    assert seen == [reader.prompt_ids([ChatMessageUser(content="Hello")])]
    assert seen[0].count(bos) == 1 and seen[0][0] == bos
    assert seen[0] == [bos] + [t for t in naive if t != bos]
