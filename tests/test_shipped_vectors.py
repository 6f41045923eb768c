"""The shipped vectors of the embedded model are pinned to their prompts (and, at the response position,
to the answers their cards keep), and are valid on held-out data.

Each vector was fitted on the card layer's activations of ~120-200 rows. Those rows' activations are
stored (``tests/data/shipped_activations.safetensors``, written by ``tools/shipped_activations.py``):
the shipped vector is their mean difference, and a seeded subset of every group is read again from
the model here and matches its stored row. A change in how activations are read (chat template,
position, padding, hooks) moves every row, so a subset catches it; re-reading all ~1,000 rows took
four minutes of every test run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from inspect_em.directions import store as vector_store
from inspect_em.directions.traits import load_trait

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "vectors" / "SmolLM2-135M-Instruct"
STORED = ROOT / "tests" / "data" / "shipped_activations.safetensors"
# The stored rows are float16 (read with transformers 5.x): a row read again differs by that rounding,
# relative error < 2e-3, on 5.x and on the floor run's 4.56 alike (measured: 1e-4 to 3e-4 on both).
ROW_REL_ERROR = 2e-3
SUBSET = 8  # rows per group read again
PROMPT_FOLDERS = ["refusal", "code.last_prompt_token"]
RESPONSE_FOLDERS = ["code", "refusal.response_mean", "refusal_instructed"]
pytestmark = pytest.mark.xdist_group("shipped-vectors")


def _tool():
    """tools/shipped_activations.py (which rows are stored, and their hash)."""
    spec = importlib.util.spec_from_file_location("shipped_activations", ROOT / "tools" / "shipped_activations.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stored(folder: str) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Per group: the stored rows ``[n, d_model]`` (float64) and their metadata (layer, rows' hash)."""
    from safetensors import safe_open

    with safe_open(str(STORED), framework="np") as f:
        meta = f.metadata()
        keys = [k for k in f.keys() if k.startswith(f"{folder}/")]
        acts = {k.split("/", 1)[1]: f.get_tensor(k).astype(np.float64) for k in keys}
    return acts, {k.split("/", 1)[1]: json.loads(meta[k]) for k in keys}


@pytest.mark.parametrize("folder", PROMPT_FOLDERS + RESPONSE_FOLDERS)
def test_shipped_vectors_are_the_mean_difference_of_their_stored_rows(folder: str):
    """The card was fitted on the trait's prompt files as they are (sha256), split with seed 0, on as
    many rows as are stored; the stored rows are those rows (hash of prompts, answers and system
    prompt), at the card's layer; their mean difference is the shipped vector (cos > 0.9999) with the
    card's norm (which sets steering strength; relative error < 2e-3). For prompt-position
    vectors, on the first 24 + 24 held-out prompts the vector's AUROC (scikit-learn) clears the bar,
    as the card's full-split AUROC does, and the card's held-out d beats both nulls."""
    from sklearn.metrics import roc_auc_score

    tool = _tool()
    shipped = vector_store.load(SHIPPED / folder)
    layer = shipped.best_layer("mean_diff")
    acts, meta = _stored(folder)
    expected = tool.rows(folder)
    assert set(acts) == set(expected)
    assert load_trait(shipped.trait).prompt_hashes() == shipped.card.prompt_sha256
    assert shipped.card.settings["seed"] == 0
    assert shipped.card.n_fit == [len(expected["fit_pos"][0]), len(expected["fit_neg"][0])]
    for group, (prompts, answers, system) in expected.items():
        assert meta[group] == {"layer": layer, "rows": tool.rows_hash(prompts, answers, system)}, group
        assert acts[group].shape == (len(prompts), shipped.card.d_model) and np.isfinite(acts[group]).all()
    v = acts["fit_pos"].mean(0) - acts["fit_neg"].mean(0)
    shipped_v = shipped.vector("mean_diff", layer)
    assert float(v / np.linalg.norm(v) @ shipped_v) > 0.9999
    assert abs(np.linalg.norm(v) / shipped.mean_diff_norm(layer) - 1) < 2e-3
    if folder in PROMPT_FOLDERS:
        scores = np.concatenate([acts["test_pos"] @ shipped_v, acts["test_neg"] @ shipped_v])
        labels = np.r_[np.ones(len(acts["test_pos"])), np.zeros(len(acts["test_neg"]))]
        saved = shipped.metrics.set_index(["method", "layer"]).loc[("mean_diff", layer)]
        assert roc_auc_score(labels, scores) >= 0.95 and saved["test_auroc"] >= 0.95
        assert saved["test_cohens_d"] > saved["null_perm_d_p95"] and saved["test_cohens_d"] > saved["null_random_d_p95"]


@pytest.mark.parametrize("folder", PROMPT_FOLDERS + RESPONSE_FOLDERS)
def test_a_subset_of_the_stored_rows_is_read_again_from_the_model(embedded_model, folder: str):
    """8 rows of every group (a seeded choice, read in one batch, so padding is exercised), read again
    from the embedded model at the card's position and layer, equal their stored rows: relative error
    < 2e-3 (float16 storage)."""
    from inspect_em.model.activations import collect_activations

    model, tokenizer = embedded_model
    shipped = vector_store.load(SHIPPED / folder)
    shipped.check_model(n_layers=model.config.num_hidden_layers, d_model=model.config.hidden_size)
    assert shipped.card.config_hash == vector_store.config_hash(model.config)
    acts, _ = _stored(folder)
    rng = np.random.default_rng(0)
    for group, (prompts, answers, system) in _tool().rows(folder).items():
        pick = np.sort(rng.choice(len(prompts), size=min(SUBSET, len(prompts)), replace=False))
        again = collect_activations(model, tokenizer, [prompts[i] for i in pick],
                                    layers=[shipped.best_layer("mean_diff")], position=shipped.card.position,
                                    responses=[answers[i] for i in pick] if answers is not None else None,
                                    system=system, progress=False, batch_size=32)[:, 0].double().numpy()
        stored = acts[group][pick]
        error = np.linalg.norm(again - stored, axis=1) / np.linalg.norm(stored, axis=1)
        assert error.max() < ROW_REL_ERROR, (group, pick.tolist(), error.round(5).tolist())


@pytest.mark.parametrize("folder", RESPONSE_FOLDERS)
def test_shipped_response_answers_are_the_models_own(embedded_model, folder: str):
    """Response-position vectors: the card keeps the prompts and the model's answers; the answers pass
    the trait's filter, and greedy decoding gives the same answers again (on two prompts: regenerating
    all of them takes minutes)."""
    from inspect_em.directions.traits import shows_trait
    from inspect_em.runs.extract import generate_responses

    model, tokenizer = embedded_model
    shipped = vector_store.load(SHIPPED / folder)
    trait = load_trait(shipped.trait)
    answers, prompts = shipped.card.responses["by_split"], shipped.card.responses["prompts"]
    if trait.response_filter:
        assert all(shows_trait(trait.response_filter, a) for a in answers["fit_pos"])
        assert not any(shows_trait(trait.response_filter, a) for a in answers["fit_neg"])
    again = generate_responses(model, tokenizer, prompts["fit_neg"][:2], max_new_tokens=trait.response_max_tokens,
                               system=trait.system_for("fit_neg"), progress=False)
    assert again == answers["fit_neg"][:2]
