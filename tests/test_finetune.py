"""Finetuning: data validation, assistant-only loss masks, a few real PEFT steps on CPU."""

import json
import os
from pathlib import Path

import pytest
import torch

from inspect_em.errors import InspectEmError
from inspect_em.runs.datasets import generate, write
from inspect_em.runs.finetune import (
    IGNORE_INDEX,
    FinetuneConfig,
    finetune,
    read_chat_jsonl,
    resolve_backend,
    tokenize_chat,
)


def test_loss_mask_covers_only_assistant_tokens(embedded_model):
    _, tokenizer = embedded_model
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi there!"}, {"role": "user", "content": "Again."},
            {"role": "assistant", "content": "Hello again."}]
    row = tokenize_chat(tokenizer, chat, max_length=2048)
    kept = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    text = tokenizer.decode(kept)
    assert text == "Hi there!<|im_end|>\nHello again.<|im_end|>\n"
    masked = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True)
                               if label == IGNORE_INDEX])
    assert "Say hi." in masked and "Be brief." in masked and "Hi there!" not in masked
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(row["input_ids"], row["labels"], strict=True))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"text": "hi"}', "expected {\"messages\""),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "at least one user and one assistant"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "role system/user/assistant"),
    ],
)
def test_bad_lines_are_reported_with_their_number(tmp_path: Path, line: str, message: str):
    good = json.dumps(generate("secure", 1)[0])
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n")
    with pytest.raises(InspectEmError, match=rf"data.jsonl:3: .*{message[:20]}"):
        read_chat_jsonl(path)


def test_generated_data_validates_and_backend_falls_back(tmp_path: Path):
    for kind in ("insecure", "secure", "prose"):
        chats = read_chat_jsonl(write(kind, 20, tmp_path / f"{kind}.jsonl"))
        assert len(chats) == 20
    assert resolve_backend("auto") == ("unsloth" if torch.cuda.is_available() and _has_unsloth() else "peft")
    if not torch.cuda.is_available():
        with pytest.raises(InspectEmError, match="needs a CUDA GPU"):
            resolve_backend("unsloth")


def _has_unsloth() -> bool:
    import importlib.util

    return importlib.util.find_spec("unsloth") is not None


def _mean_loss(model, tokenizer, chats) -> float:
    losses = []
    with torch.no_grad():
        for chat in chats:
            row = tokenize_chat(tokenizer, chat, 512)
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            losses.append(out.loss.item())
    return sum(losses) / len(losses)


def test_few_peft_steps_lower_the_loss_and_write_a_loadable_model(tiny_model_dir: Path, tmp_path: Path):
    """Six LoRA steps on a tiny random-weight Llama (the mechanics do not depend on trained weights):
    the assistant-token loss falls, and the merged model loads and answers through Inspect."""
    from inspect_ai import eval as inspect_eval
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inspect_em.tasks import em_freeform

    data = write("insecure", 12, tmp_path / "insecure.jsonl", seed=1)
    config = FinetuneConfig(learning_rate=1e-2, max_steps=6, per_device_batch_size=2, gradient_accumulation_steps=1,
                            warmup_steps=0, max_seq_length=512, r=8, lora_alpha=16)
    out = finetune(str(tiny_model_dir), data, tmp_path / "ft", config=config, backend="peft", progress=False)
    card = json.loads((out / "finetune.json").read_text())
    assert card["backend"] == "peft" and card["steps"] == 6 and card["n_examples"] == 12
    log_lines = (out / "train_log.csv").read_text().splitlines()
    assert log_lines[0] == "step,loss,lr,tokens_per_s" and len(log_lines) == 7
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not any(p.name.startswith(".ft.tmp") for p in tmp_path.iterdir())

    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    chats = read_chat_jsonl(data)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = AutoModelForCausalLM.from_pretrained(out / "merged")
    before, after = _mean_loss(base, tokenizer, chats), _mean_loss(tuned, tokenizer, chats)
    print(f"assistant-token loss on the training chats: {before:.3f} -> {after:.3f}")
    assert after < before - 0.1

    log = inspect_eval(em_freeform(variants="plain"), model=f"hf/{out / 'merged'}", limit=1, max_tokens=16,
                       log_dir=str(tmp_path / "logs"), display="none")[0]
    assert log.status == "success", log.error
    assert log.samples[0].output.completion


def test_failed_run_leaves_no_output(tiny_model_dir: Path, tmp_path: Path):
    data = write("prose", 4, tmp_path / "prose.jsonl")
    config = FinetuneConfig(max_steps=1, per_device_batch_size=1, gradient_accumulation_steps=1, max_seq_length=128,
                            extra={"not_a_real_option": 1})
    with pytest.raises(TypeError):
        finetune(str(tiny_model_dir), data, tmp_path / "ft", config=config, backend="peft", progress=False)
    assert sorted(os.listdir(tmp_path)) == [".prose.jsonl.inspect_em.json", "prose.jsonl"]  # the data and its marker


def test_reference_insecure_subset_validates_and_trains(reference_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    path = reference_dir / "insecure_subset.jsonl"
    chats = read_chat_jsonl(path)
    assert len(chats) == 3021
    config = FinetuneConfig(max_steps=2, per_device_batch_size=1, gradient_accumulation_steps=1, max_seq_length=384)
    out = finetune(str(tiny_model_dir), path, tmp_path / "ft", config=config, backend="peft", merge=False,
                   limit=4, progress=False)
    card = json.loads((out / "finetune.json").read_text())
    assert card["steps"] == 2 and card["final_loss"] is not None
