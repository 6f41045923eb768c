"""The shipped vectors of the embedded model are reproduced from their prompts (and, at the response
position, from the answers their cards keep) and are valid on held-out data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspect_em.directions import store as vector_store
from inspect_em.directions.traits import load_trait

SHIPPED = Path(__file__).parent.parent / "vectors" / "SmolLM2-135M-Instruct"
# The shipped vectors were extracted with transformers 5.x: on that major they are reproduced exactly
# (cos > 0.9999, the same greedy answers). Another major (the floor run's 4.56) computes the same
# model with other kernels: measured cos 0.981-0.998, and other greedy answers.
import transformers  # noqa: E402

SAME_MAJOR = transformers.__version__.split(".")[0] == "5"
COS_MIN = 0.9999 if SAME_MAJOR else 0.97
RESPONSE_FOLDERS = ["code", "refusal.response_mean", "refusal_instructed"]
# one worker, in file order: each response vector's fit answers are read over three tests (the negative
# side, then each half of the positive side, so each test stays within its budget on one thread); the
# last test only combines the sums
pytestmark = pytest.mark.xdist_group("shipped-vectors")
_SUMS: dict[tuple[str, str, int], tuple[np.ndarray, int]] = {}


def _part_sum(embedded_model, folder: str, side: str, part: int, parts: int = 2) -> tuple[np.ndarray, int]:
    """The sum and count over part ``part`` of ``parts`` of ``side``'s fit answers of the card layer's
    response-mean activations (``[d_model]``, float64), read once per module."""
    from inspect_em.model.activations import collect_activations

    if (folder, side, part) not in _SUMS:
        model, tokenizer = embedded_model
        shipped = vector_store.load(SHIPPED / folder)
        trait = load_trait(shipped.trait)
        answers, prompts = shipped.card.responses["by_split"], shipped.card.responses["prompts"]
        rows = slice(part * len(prompts[side]) // parts, (part + 1) * len(prompts[side]) // parts)
        acts = collect_activations(model, tokenizer, prompts[side][rows], layers=[shipped.best_layer("mean_diff")],
                                   position="response_mean", responses=answers[side][rows],
                                   system=trait.system_for(side), progress=False, batch_size=32)[:, 0].double()
        _SUMS[(folder, side, part)] = (acts.sum(0).numpy(), acts.shape[0])
    return _SUMS[(folder, side, part)]


def _side_mean(embedded_model, folder: str, side: str) -> np.ndarray:
    """The mean over every fit answer of ``side`` (both parts)."""
    (a, n), (b, m) = (_part_sum(embedded_model, folder, side, part) for part in (0, 1))
    return (a + b) / (n + m)


@pytest.mark.parametrize("folder", ["refusal", "code.last_prompt_token"])
def test_shipped_prompt_vectors_are_reproduced_and_valid(embedded_model, folder: str):
    """At the card's layer, the fit split's mean difference (activations read again from the embedded
    model, every fit prompt) is the shipped vector; on the first 24 + 24 held-out prompts its AUROC
    (scikit-learn) clears the bar, as the card's full-split AUROC does, and the card's held-out d
    beats both nulls. The engine's metrics and layer choice are tested against the reference loop
    in test_extraction."""
    from sklearn.metrics import roc_auc_score

    from inspect_em.model.activations import collect_activations

    model, tokenizer = embedded_model
    shipped = vector_store.load(SHIPPED / folder)
    shipped.check_model(n_layers=model.config.num_hidden_layers, d_model=model.config.hidden_size)
    assert shipped.card.config_hash == vector_store.config_hash(model.config)
    trait = load_trait(shipped.trait)
    groups = trait.split(seed=0).groups()
    layer = shipped.best_layer("mean_diff")
    subset = {"fit_pos": None, "fit_neg": None, "test_pos": 24, "test_neg": 24}
    acts = {k: collect_activations(model, tokenizer, groups[k][:n], layers=[layer], position=shipped.card.position,
                                   system=trait.system_for(k), progress=False, batch_size=32)[:, 0].double().numpy()
            for k, n in subset.items()}
    v = acts["fit_pos"].mean(0) - acts["fit_neg"].mean(0)
    v /= np.linalg.norm(v)
    assert float(v @ shipped.vector("mean_diff", layer)) > COS_MIN
    scores = np.concatenate([acts["test_pos"] @ v, acts["test_neg"] @ v])
    labels = np.r_[np.ones(len(acts["test_pos"])), np.zeros(len(acts["test_neg"]))]
    auroc = roc_auc_score(labels, scores)
    saved = shipped.metrics.set_index(["method", "layer"]).loc[("mean_diff", layer)]
    assert auroc >= 0.95 and saved["test_auroc"] >= 0.95
    assert saved["test_cohens_d"] > saved["null_perm_d_p95"] and saved["test_cohens_d"] > saved["null_random_d_p95"]


@pytest.mark.parametrize("folder", RESPONSE_FOLDERS)
def test_shipped_response_answers_are_the_models_own(embedded_model, folder: str):
    """Response-position vectors: the card keeps the prompts and the model's answers; the answers pass
    the trait's filter, and greedy decoding gives the same answers again (on two prompts: regenerating
    all of them takes minutes). Reads the negative side's fit activations for the next test."""
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
    if SAME_MAJOR:  # under other kernels greedy decoding takes other paths (the floor's first words differ)
        assert again == answers["fit_neg"][:2]
    assert np.isfinite(_side_mean(embedded_model, folder, "fit_neg")).all()


@pytest.mark.parametrize("part", [0, 1])
@pytest.mark.parametrize("folder", RESPONSE_FOLDERS)
def test_shipped_response_positive_answers_are_read(embedded_model, folder: str, part: int):
    """One half of the positive side's fit answers (for the next test)."""
    total, n = _part_sum(embedded_model, folder, "fit_pos", part)
    assert n > 0 and np.isfinite(total).all()


@pytest.mark.parametrize("folder", RESPONSE_FOLDERS)
def test_shipped_response_vectors_are_reproduced_from_their_answers(embedded_model, folder: str):
    """Refitting mean_diff on the mean over the kept answers' tokens (every fit answer, both sides)
    gives the shipped vector."""
    shipped = vector_store.load(SHIPPED / folder)
    layer = shipped.best_layer("mean_diff")
    v = _side_mean(embedded_model, folder, "fit_pos") - _side_mean(embedded_model, folder, "fit_neg")
    assert float(v / np.linalg.norm(v) @ shipped.vector("mean_diff", layer)) > COS_MIN
