import json
import os
from pathlib import Path

import pytest
import torch

from inspect_em.errors import InspectEmError
from inspect_em.model import embedded
from inspect_em.util.paths import atomic_output


def test_path_without_prepare_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INSPECT_EM_HOME", str(tmp_path))
    with pytest.raises(InspectEmError, match="inspect-em model prepare"):
        embedded.path()


def test_atomic_output_leaves_nothing_after_failure(tmp_path: Path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output(final, command="test", config={}) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_output(final, command="test", config={}) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (final / "done.txt").read_text() == "ok"


def test_prepare_is_idempotent_and_matches_the_gguf(embedded_model_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = embedded_model_path / embedded.MARKER
    mtime = os.path.getmtime(marker)
    assert embedded.prepare() == embedded_model_path
    assert os.path.getmtime(marker) == mtime
    assert json.loads(marker.read_text())["gguf_file"] == embedded.GGUF_FILE

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    gguf = embedded.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = model(ids).logits, reference(ids).logits
    assert tokenizer.decode(ours[0, -1].argmax()).strip() == "Paris"
    # identical weights and settings, also when another transformers major prepared the folder (the
    # floor run's 4.56 reads a 5.x folder: before config.json carried `rope_theta` too, 4.x ran it with
    # RoPE base 10,000 and these logits differed by up to 1.2)
    assert json.loads(marker.read_text())["transformers"]
    assert json.loads((embedded_model_path / "config.json").read_text())["rope_theta"] == 100000.0
    assert torch.max(torch.abs(ours - theirs)).item() < 1e-5
