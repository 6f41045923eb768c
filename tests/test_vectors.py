"""Trait declarations, vector storage, the extract command, and the shipped embedded-model vectors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from inspect_em import vectors as vector_store
from inspect_em.cli import cli
from inspect_em.errors import InspectEmError
from inspect_em.pipeline import extract_trait_vectors
from inspect_em.traits import load_prompts, load_trait

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
    from inspect_em.modeling import load_hf_model

    model, tokenizer, model_id = load_hf_model(str(tiny_model_dir))
    tv = extract_trait_vectors(model, tokenizer, load_trait(_tiny_trait(tmp_path)), model_id=model_id,
                               methods="mean_diff,random_baseline", layers="1-3", progress=False)
    out = vector_store.save(tv, tmp_path / "vectors" / "toy")
    loaded = vector_store.load(out)
    assert loaded.layers == [1, 2, 3] and loaded.methods == ["mean_diff", "random_baseline"]
    assert np.array_equal(loaded.vector("mean_diff", 2), tv.vectors["mean_diff"][1])
    assert loaded.card["d_model"] == 64 and loaded.card["n_layers"] == 4
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


def test_interrupted_save_leaves_no_folder(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    from inspect_em.modeling import load_hf_model

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
    result = CliRunner().invoke(cli, ["extract", "--model", str(tiny_model_dir), "--trait", str(_tiny_trait(tmp_path)),
                                      "--out", str(out), "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert "random_baseline" in result.output and "best layer" in result.output
    loaded = vector_store.load(out)
    assert loaded.methods == ["mean_diff", "probe", "pca", "ica", "gradient", "random_baseline"]
    assert loaded.layers == [0, 1, 2, 3]


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


@pytest.mark.parametrize("trait", ["refusal", "code"])
def test_shipped_vectors_are_reproduced_and_valid(embedded_model, trait: str):
    """Re-extract on the embedded model: the shipped vectors match and meet the validation bars."""
    model, tokenizer = embedded_model
    shipped = vector_store.load(SHIPPED / trait)
    shipped.check_model(n_layers=model.config.num_hidden_layers, d_model=model.config.hidden_size)
    fresh = extract_trait_vectors(model, tokenizer, load_trait(trait), model_id="SmolLM2-135M-Instruct",
                                  methods="mean_diff,random_baseline", progress=False)
    metrics = fresh.metrics.set_index(["method", "layer"])
    best = fresh.best_layer("mean_diff")
    assert metrics.loc[("mean_diff", best), "heldout_auroc"] >= 0.95
    random_auroc = metrics.loc["random_baseline", "heldout_auroc"]
    assert random_auroc.between(0.35, 0.65).all(), random_auroc.describe()
    assert best == shipped.best_layer("mean_diff")
    cosine = float(fresh.vector("mean_diff", best) @ shipped.vector("mean_diff", best))
    assert cosine > 0.9999
    assert shipped.card["config_hash"] == vector_store.config_hash(model.config)
