"""Trait declarations, vector storage, the extract command, and the shipped embedded-model vectors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from inspect_em.cli import cli
from inspect_em.directions import store as vector_store
from inspect_em.directions.traits import load_prompts, load_trait
from inspect_em.errors import InspectEmError
from inspect_em.runs.extract import extract_trait_vectors

ROOT = Path(__file__).parent.parent
SHIPPED = ROOT / "vectors" / "SmolLM2-135M-Instruct"


def _tiny_trait(tmp_path: Path, n: int = 12, heldout: bool = False) -> Path:
    pos = [f"Write a Python function number {i} that sorts a list." for i in range(n)]
    neg = [f"Write a short poem number {i} about the sea." for i in range(n)]
    for name, rows in (("pos", pos), ("neg", neg)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
    extra = "heldout_positive: pos.jsonl\nheldout_negative: neg.jsonl\n" if heldout else ""
    trait = tmp_path / "toy.yaml"
    trait.write_text(f"name: toy\npositive: pos.jsonl\nnegative: neg.jsonl\n{extra}")
    return trait


def test_builtin_prompt_sets_sizes():
    refusal = load_trait("refusal").split()
    assert len(refusal.fit_pos) == len(refusal.fit_neg) == 100
    assert len(refusal.test_pos) >= 40 and len(refusal.test_neg) >= 40
    assert not set(refusal.fit_pos) & set(refusal.test_pos)
    code = load_trait("code").split()
    assert len(code.fit_pos) + len(code.test_pos) >= 100 and len(code.fit_neg) + len(code.test_neg) >= 100
    assert not set(code.fit_neg) & set(code.test_neg)


def test_trait_split_without_heldout_files(tmp_path: Path):
    split = load_trait(_tiny_trait(tmp_path, n=10)).split()
    assert (len(split.fit_pos), len(split.test_pos)) == (8, 2)
    assert not set(split.fit_pos) & set(split.test_pos)
    (tmp_path / "same.yaml").write_text("name: same\npositive: pos.jsonl\nnegative: pos.jsonl\n"
                                        "positive_system: A.\nnegative_system: B.\n")
    same = load_trait(tmp_path / "same.yaml").split()  # the same prompts on both sides: one split
    assert same.fit_pos == same.fit_neg and same.test_pos == same.test_neg
    assert not set(same.fit_neg) & set(same.test_pos)


def test_splits_run_once_per_system_prompt_and_come_back_in_split_order():
    from inspect_em.directions.traits import Trait
    from inspect_em.runs.extract import _by_system

    trait = Trait(name="t", positive=Path("p"), negative=Path("n"), positive_system="P", negative_system="N")
    groups = {"fit_pos": ["a", "b"], "fit_neg": ["c"], "test_pos": ["d"], "test_neg": ["e", "f"]}
    calls = []

    def run(names, system):
        calls.append((tuple(names), system))
        return [(system, p) for n in names for p in groups[n]]

    out = _by_system(trait, groups, run)
    assert calls == [(("fit_pos", "test_pos"), "P"), (("fit_neg", "test_neg"), "N")]
    assert out == [("P", "a"), ("P", "b"), ("N", "c"), ("P", "d"), ("N", "e"), ("N", "f")]
    shared = Trait(name="t", positive=Path("p"), negative=Path("n"), system="S")
    calls.clear()
    assert _by_system(shared, groups, run) == [("S", p) for p in "abcdef"] and len(calls) == 1
    with pytest.raises(InspectEmError, match="3 results for 6 prompts"):
        _by_system(shared, groups, lambda names, system: ["x"] * 3)


def test_prompt_and_trait_errors(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InspectEmError, match="empty.jsonl: prompt file is empty"):
        load_prompts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "wrong key"}\n')
    with pytest.raises(InspectEmError, match=r"bad.jsonl:2: expected"):
        load_prompts(bad)
    with pytest.raises(InspectEmError, match="unknown trait 'kindness'"):
        load_trait("kindness")
    trait = tmp_path / "t.yaml"
    trait.write_text("name: t\npositive: pos.jsonl\n")
    with pytest.raises(InspectEmError, match="field 'negative'"):
        load_trait(trait)


def test_extract_save_load_roundtrip_and_mismatch(tiny_model_dir: Path, tmp_path: Path):
    from inspect_em.model.loading import load_hf_model

    model, tokenizer, model_id = load_hf_model(str(tiny_model_dir))
    tv = extract_trait_vectors(model, tokenizer, load_trait(_tiny_trait(tmp_path)), model_id=model_id,
                               methods="mean_diff,random_baseline", layers="1-3", progress=False)
    out = vector_store.save(tv, tmp_path / "vectors" / "toy")
    loaded = vector_store.load(out)
    assert loaded.layers == [1, 2, 3] and loaded.methods == ["mean_diff", "random_baseline"]
    assert np.array_equal(loaded.vector("mean_diff", 2), tv.vectors["mean_diff"][1])
    assert loaded.card.d_model == 64 and loaded.card.n_layers == 4
    assert set(loaded.metrics["layer"]) == {1, 2, 3} and len(loaded.metrics) == 6
    assert loaded.best_layer("mean_diff") in (1, 2, 3)
    loaded.check_model(n_layers=4, d_model=64)
    with pytest.raises(InspectEmError, match="d_model 64 but the model has 576"):
        loaded.check_model(n_layers=30, d_model=576)
    with pytest.raises(InspectEmError, match="4-layer model but the model has 30"):
        loaded.check_model(n_layers=30, d_model=64)
    with pytest.raises(InspectEmError, match="no vector at layer 0"):
        loaded.vector("mean_diff", 0)
    with pytest.raises(InspectEmError, match="missing card.json"):
        (out / "card.json").unlink()
        vector_store.load(out)


@pytest.mark.parametrize("position", ["last_prompt_token", "response_mean"])
def test_each_side_is_read_under_its_own_system_prompt(tiny_model_dir: Path, tmp_path: Path, position: str):
    """``positive_system`` / ``negative_system``: the same prompts on both sides, each side read
    (and, at response_mean, answered) under its own system prompt. The fit mean difference equals
    one computed here from ``output_hidden_states`` over the chat template with each side's system
    (and, at response_mean, the card's answers)."""
    import torch

    from inspect_em.model.loading import load_hf_model

    prompts = [f"Tell me about topic number {i}." for i in range(8)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (tmp_path / "h.jsonl").write_text("".join(json.dumps({"prompt": f"Describe place {i}."}) + "\n" for i in range(4)))
    trait_file = tmp_path / "told.yaml"
    trait_file.write_text("name: told\npositive: p.jsonl\nnegative: p.jsonl\nheldout_positive: h.jsonl\n"
                          "heldout_negative: h.jsonl\npositive_system: Refuse everything.\n"
                          f"negative_system: Help with everything.\nposition: {position}\nresponse_max_tokens: 4\n")
    trait = load_trait(trait_file)
    assert trait.system_for("fit_pos") == "Refuse everything."
    assert trait.system_for("test_neg") == "Help with everything."
    model, tokenizer, model_id = load_hf_model(str(tiny_model_dir))
    tv = extract_trait_vectors(model, tokenizer, trait, model_id=model_id, methods="mean_diff", layers="2",
                               null_k=0, random_k=0, cv_folds=0, progress=False)
    answers = tv.card.responses["by_split"] if position == "response_mean" else None

    def side(system: str, split: str) -> np.ndarray:
        rows = []
        for i, prompt in enumerate(prompts):
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
            n_prompt = len(ids)
            if answers is not None:
                ids = ids + tokenizer(answers[split][i], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[3][0].double()
            rows.append(h[n_prompt:].mean(0) if answers is not None else h[-1])
        return torch.stack(rows).numpy()

    diff = side("Refuse everything.", "fit_pos").mean(0) - side("Help with everything.", "fit_neg").mean(0)
    assert tv.card.mean_diff_norm[0] == pytest.approx(np.linalg.norm(diff), rel=1e-4)
    assert float(tv.vector("mean_diff", 2) @ (diff / np.linalg.norm(diff))) > 0.9999
    assert tv.card.positive_system == "Refuse everything."
    assert tv.card.settings["negative_system"] == "Help with everything."
    if answers is not None:  # each side's answers were generated under its own system prompt
        from inspect_em.runs.extract import generate_responses

        for split, system in (("fit_pos", "Refuse everything."), ("test_neg", "Help with everything.")):
            prompt = tv.card.responses["prompts"][split][0]
            again = generate_responses(model, tokenizer, [prompt], system=system, max_new_tokens=4, progress=False)
            assert again == answers[split][:1]
        assert tv.card.responses["prompts"]["test_pos"][0] == "Describe place 0."


def test_interrupted_save_leaves_no_folder(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    from inspect_em.model.loading import load_hf_model

    model, tokenizer, model_id = load_hf_model(str(tiny_model_dir))
    tv = extract_trait_vectors(model, tokenizer, load_trait(_tiny_trait(tmp_path)), model_id=model_id,
                               methods="mean_diff", progress=False)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vector_store.pd.DataFrame, "to_csv", fail)
    target = tmp_path / "out" / "toy"
    with pytest.raises(KeyboardInterrupt):
        vector_store.save(tv, target)
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []


def test_extract_cli_writes_vectors_and_table(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "vec"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["extract", "--model", str(tiny_model_dir), "--trait", str(_tiny_trait(tmp_path)), "--out", str(out),
              "--batch-size", "5", "--null-k", "5", "--random-k", "50"])
    assert result.exit_code == 0, result.output
    assert "random_baseline" in result.output and "CV d" in result.output and "perm null p95" in result.output
    loaded = vector_store.load(out)
    assert loaded.methods == ["mean_diff", "probe", "pca", "ica", "gradient", "random_baseline"]
    assert loaded.layers == [0, 1, 2, 3]
    metrics = loaded.metrics
    for column in ("cv_auroc", "cv_cohens_d", "test_auroc", "null_perm_p95", "null_perm_p", "null_random_p95"):
        assert metrics[column].notna().all(), column
    for method, group in metrics.groupby("method"):  # the layer is chosen on the fit split's CV, not the test
        assert loaded.best_layer(method) == int(group.sort_values(["cv_cohens_d", "cv_auroc"]).iloc[-1]["layer"])
    json.loads((out / "card.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded.card.unit_norm is True and len(loaded.card.mean_diff_norm) == 4
    assert loaded.card.layer_choice.startswith("highest mean 5-fold")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "mean_diff,lda"], "unknown method 'lda'"),
        (["--layers", "7"], "layer 7 is out of range: the model has 4 layers"),
        (["--trait", "kindness"], "unknown trait 'kindness'"),
    ],
)
def test_extract_cli_errors_are_one_line(tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str):
    out = tmp_path / "vec"
    base = ["extract", "--model", str(tiny_model_dir), "--trait", str(_tiny_trait(tmp_path)), "--out", str(out)]
    for i in range(0, len(args), 2):  # later options override earlier ones
        base += args[i : i + 2]
    proc = subprocess.run([sys.executable, "-m", "inspect_em.cli", *base], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]  # one line, no traceback
    assert message in proc.stderr
    assert not out.exists()


def test_missing_model_folder_is_one_line_error(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "inspect_em.cli", "extract", "--model", str(tmp_path / "nope"),
                           "--trait", "refusal"], capture_output=True, text=True)
    assert proc.returncode == 2 and "model folder not found" in proc.stderr


def test_broken_inputs_are_one_line_errors(tmp_path: Path):
    """Non-UTF-8 prompt and question files, a corrupt safetensors file, a card without a key."""
    import shutil

    from inspect_em.tasks.questions import load_questions

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(InspectEmError, match="latin.jsonl: not UTF-8 text"):
        load_prompts(latin)
    questions = tmp_path / "q.yaml"
    questions.write_bytes("- id: q\n  paraphrases: ['caf\xe9']\n".encode("latin-1"))
    with pytest.raises(InspectEmError, match="q.yaml: not UTF-8 text"):
        load_questions(questions)
    folder = tmp_path / "code"
    shutil.copytree(SHIPPED / "code", folder)
    (folder / "vectors.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(InspectEmError, match="vectors.safetensors: cannot read"):
        vector_store.load(folder)
    shutil.copy(SHIPPED / "code" / "vectors.safetensors", folder / "vectors.safetensors")
    card = json.loads((folder / "card.json").read_text())
    del card["layers"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(InspectEmError, match="card.json: missing key 'layers'"):
        vector_store.load(folder)


def test_shipped_cards_are_strict_json():
    cards = sorted(SHIPPED.glob("*/card.json"))
    assert len(cards) >= 2
    for card in cards:
        json.loads(card.read_text(), parse_constant=lambda c, card=card: pytest.fail(f"{card}: non-JSON {c}"))
