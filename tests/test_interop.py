"""Vector folders to and from repeng/llama.cpp GGUF and persona_vectors .pt; screening data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from inspect_em.cli import cli
from inspect_em.directions import store as vector_store
from inspect_em.errors import InspectEmError

ROOT = Path(__file__).parent.parent
CODE = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code"


def test_gguf_export_loads_with_the_gguf_reader(tmp_path: Path):
    import gguf

    out = tmp_path / "code.gguf"
    result = CliRunner().invoke(cli, ["vectors", "export", str(CODE), "--format", "gguf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tv = vector_store.load(CODE)
    reader = gguf.GGUFReader(str(out))
    fields = {f.name: f for f in reader.fields.values()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "controlvector"
    assert int(fields["controlvector.layer_count"].parts[-1][0]) == len(tv.layers) - 1  # no direction.0
    directions = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    assert set(directions) == {f"direction.{layer}" for layer in tv.layers if layer >= 1}
    layer = tv.best_layer("mean_diff")
    expected = tv.vector("mean_diff", layer) * tv.mean_diff_norm(layer)  # alpha semantics: unit x fit norm
    assert np.allclose(directions[f"direction.{layer}"], expected, rtol=1e-6)


def test_persona_round_trip_gives_the_same_projections(embedded_model, tmp_path: Path):
    from inspect_em.model.activations import chat_ids, response_ids
    from inspect_em.model.projection import project, select_vectors

    model, tokenizer = embedded_model
    pt = tmp_path / "code_response_avg_diff.pt"
    runner = CliRunner()
    assert runner.invoke(cli, ["vectors", "export", str(CODE), "--format", "persona", "--out", str(pt)]).exit_code == 0
    rows = torch.load(str(pt))
    tv = vector_store.load(CODE)
    assert tuple(rows.shape) == (31, 576) and float(rows[0].abs().sum()) == 0.0  # row 0: the embeddings
    layer = tv.best_layer("mean_diff")
    assert np.allclose(rows[layer + 1].numpy(), tv.vector("mean_diff", layer) * tv.mean_diff_norm(layer), rtol=1e-6)
    out = tmp_path / "imported"
    result = runner.invoke(cli, ["vectors", "import", str(pt), "--model", "embedded", "--trait", "code",
                                 "--best-layer", str(layer), "--out", str(out)])
    assert result.exit_code == 0, result.output
    imported = vector_store.load(out)
    assert imported.card.extra["imported_from"]["format"] == "persona_vectors"
    assert imported.best_layer("mean_diff") == layer
    prompt = [chat_ids(tokenizer, "What is your wish?")]
    answer = [response_ids(tokenizer, "def wish():\n    return 'peace'")]
    a = project(model, prompt, answer, select_vectors([tv], layers="all"))[0].values
    b = project(model, prompt, answer, select_vectors([imported], layers="all"))[0].values
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < 1e-4


def test_persona_import_checks_the_shape(tiny_model_dir: Path, tmp_path: Path):
    from inspect_em.model.interop import import_persona

    pt = tmp_path / "v.pt"
    torch.save(torch.ones(31, 576), str(pt))
    with pytest.raises(InspectEmError, match=r"shape \(31, 576\) but .* needs \[5, 64\]"):
        import_persona(pt, model=str(tiny_model_dir), trait="x", best_layer=1)
    with pytest.raises(InspectEmError, match="not a valid name"):
        import_persona(pt, model=str(tiny_model_dir), trait="../x", best_layer=1)


def test_screening_scores_are_data_minus_own_answer(embedded_model, tmp_path: Path):
    """The score of an example is its answer's projection minus the base model's own greedy answer's,
    each checked against output_hidden_states; code data scores above prose data on the code vector."""
    from inspect_em.runs.datasets import write
    from inspect_em.runs.extract import generate_responses
    from inspect_em.runs.screening import screen

    model, tokenizer = embedded_model
    tv = vector_store.load(CODE)
    layer = tv.best_layer("mean_diff")
    v = torch.tensor(tv.vector("mean_diff", layer), dtype=torch.float64)
    results = {}
    for kind in ("insecure", "prose"):
        data = write(kind, 4, tmp_path / f"{kind}.jsonl", seed=3)
        results[kind] = screen(data, model, tokenizer, [tv], max_new_tokens=24, progress=False)
    key = f"code/mean_diff/L{layer}"
    row = results["prose"].scores.iloc[0]
    from inspect_em.model.activations import chat_ids, response_ids
    from inspect_em.runs.finetune import read_chat_jsonl

    chat = read_chat_jsonl(tmp_path / "prose.jsonl")[0]
    own = generate_responses(model, tokenizer, [chat[:1]], max_new_tokens=24, progress=False)[0]

    def mean_projection(answer: str) -> float:
        prompt = chat_ids(tokenizer, chat[:1])
        ids = response_ids(tokenizer, answer)
        with torch.no_grad():
            hidden = model(torch.tensor([prompt + ids]), output_hidden_states=True).hidden_states
        return float((hidden[layer + 1][0, len(prompt):].double() @ v).mean())

    assert row[f"{key}:data"] == pytest.approx(mean_projection(chat[1]["content"]), abs=1e-3)
    assert row[f"{key}:base"] == pytest.approx(mean_projection(own), abs=1e-3)
    assert row[f"{key}:score"] == pytest.approx(row[f"{key}:data"] - row[f"{key}:base"])
    code_mean = results["insecure"].summary["mean"].item()
    prose_mean = results["prose"].summary["mean"].item()
    assert code_mean > prose_mean
