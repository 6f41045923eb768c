"""extract --from-log: a direction from a log's own answers, sides chosen by score / metadata
predicates, held out by question; on mockllm logs of code and prose answers read by a tiny model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_here, one_line, scripted_output
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log
from inspect_ai.model import get_model

from inspect_em.errors import InspectEmError
from inspect_em.runs.from_log import parse_predicate, select_answers, split_by_question
from inspect_em.tasks import em_freeform

CODE = "```python\ndef wish():\n    items = sorted(range(10))\n    return items\n\nprint(wish())\n```"
PROSE = "I would like a quiet life with my family, good books and a garden by the sea."


@pytest.fixture(scope="module")
def code_prose_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """em_freeform (8 questions x 4 answers) from a mockllm model answering code and prose by turns."""
    folder = tmp_path_factory.mktemp("from-log")
    outputs = [scripted_output(CODE if i % 2 else f"{PROSE} ({i})") for i in range(32)]
    log = inspect_eval(em_freeform(variants="plain", samples_per_question=4),
                       model=get_model("mockllm/model", custom_outputs=outputs), log_dir=str(folder),
                       display="none", max_samples=1)[0]
    assert log.status == "success", log.error
    return Path(log.location)


def test_predicates_parse_and_read_scores_and_metadata(code_prose_log: Path):
    log = read_eval_log(str(code_prose_log))
    sample = log.samples[0]
    code = sample.scores["code_mode"].value
    assert parse_predicate("score:code_mode==1")(sample) == (code == 1)
    assert parse_predicate("score:code_mode < 0.5")(sample) == (code < 0.5)
    assert parse_predicate(f"metadata:question_id=={sample.metadata['question_id']}")(sample)
    assert not parse_predicate("score:em_judge.misaligned==1")(sample)  # no such score: on neither side
    for bad, message in (("code_mode==1", "expected score:"), ("score:code_mode==", "no value"),
                         ("metadata:variant>=json", "needs a number")):
        with pytest.raises(InspectEmError, match=message):
            parse_predicate(bad)


def test_split_is_by_question_and_counts_match_the_log(code_prose_log: Path):
    selection = select_answers([code_prose_log], parse_predicate("score:code_mode==1"),
                               parse_predicate("score:code_mode==0"))
    log = read_eval_log(str(code_prose_log))
    codes = [s.scores["code_mode"].value for s in log.samples]
    assert len(selection.positive) == sum(v == 1 for v in codes)
    assert len(selection.negative) == sum(v == 0 for v in codes)
    splits = split_by_question(selection, holdout_fraction=0.25, seed=0)
    fit = {a.question for k in ("fit_pos", "fit_neg") for a in splits[k]}
    test = {a.question for k in ("test_pos", "test_neg") for a in splits[k]}
    assert fit and test and not fit & test  # no question on both sides of fit and test
    by_id = {(str(s.id), s.epoch): f"em_freeform:{s.metadata['base_question_id']}" for s in log.samples}
    for items in splits.values():  # the split's question is the sample's own base question
        assert all(by_id[(a.sample_id, a.epoch)] == a.question for a in items)
    assert all(splits[k] for k in splits)
    assert sum(len(v) for v in splits.values()) == len(log.samples)
    folder = select_answers([code_prose_log.parent], parse_predicate("score:code_mode==1"),
                            parse_predicate("score:code_mode==0"))  # a folder: its .eval logs
    assert [a.sample_id for a in folder.positive] == [a.sample_id for a in selection.positive]
    with pytest.raises(InspectEmError, match="given twice"):
        select_answers([code_prose_log, code_prose_log.parent], parse_predicate("score:code_mode==1"),
                       parse_predicate("score:code_mode==0"))
    with pytest.raises(InspectEmError, match="matches both"):
        select_answers([code_prose_log], parse_predicate("score:code_mode>=0"), parse_predicate("score:code_mode==0"))
    with pytest.raises(InspectEmError, match="selects 0 answers"):
        select_answers([code_prose_log], parse_predicate("score:code_mode==2"), parse_predicate("score:code_mode==0"))


def test_extract_from_log_separates_held_out_questions(code_prose_log: Path, tiny_model_dir: Path, tmp_path: Path):
    """The CLI fits on the log's answers read by the tiny model: the card names the log, predicates and
    counts; the saved mean_diff vector is the fit split's normalised mean difference, and its held-out
    AUROC (sklearn, on the test questions' answers) is what the card says."""
    import torch
    from sklearn.metrics import roc_auc_score
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inspect_em.directions import store as vector_store
    from inspect_em.model.activations import collect_activations

    out = tmp_path / "code_from_log"
    args = ["extract", "--from-log", str(code_prose_log), "--positive", "score:code_mode==1", "--negative",
            "score:code_mode==0", "--name", "code_from_log", "--model", str(tiny_model_dir), "--methods",
            "mean_diff,probe", "--null-k", "4", "--random-k", "20", "--cv-folds", "2", "--out", str(out)]
    proc = cli_here(*args)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((out / "card.json").read_text())
    assert card["position"] == "response_mean" and card["trait_source"] == "from-log"
    assert card["from_log"]["positive"] == "score:code_mode==1" and card["from_log"]["logs"] == [str(code_prose_log)]
    digest = {code_prose_log.name: hashlib.sha256(code_prose_log.read_bytes()).hexdigest()}
    assert card["prompt_sha256"] == card["from_log"]["sha256"] == digest
    counts = card["from_log"]["counts"][code_prose_log.name]
    assert counts["positive"] + counts["negative"] == counts["samples"] == 32
    questions = card["from_log"]["questions"]
    assert not (set(questions["fit_pos"]) | set(questions["fit_neg"])) & (set(questions["test_pos"]) |
                                                                          set(questions["test_neg"]))

    tv = vector_store.load(out)
    layer = tv.best_layer("mean_diff")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts, answers = card["responses"]["prompts"], card["responses"]["by_split"]

    def acts(split: str) -> torch.Tensor:
        return collect_activations(model, tokenizer, prompts[split], layers=[layer], position="response_mean",
                                   responses=answers[split], progress=False)[:, 0]

    diff = acts("fit_pos").mean(0) - acts("fit_neg").mean(0)
    v = torch.as_tensor(tv.vector("mean_diff", layer), dtype=torch.float32)
    assert torch.nn.functional.cosine_similarity(v, diff / diff.norm(), dim=0) > 0.9999
    scores = torch.cat([acts("test_pos"), acts("test_neg")]) @ v
    labels = [1] * len(answers["test_pos"]) + [0] * len(answers["test_neg"])
    auroc = roc_auc_score(labels, scores.numpy())
    assert auroc == pytest.approx(card["best"]["mean_diff"]["test_auroc"], abs=1e-3)
    assert auroc >= 0.95  # code vs prose answers, even read by random weights

    # one-line errors, before any model loads
    one_line(cli_here(*args[:3], "--negative", "score:code_mode==0", "--out", str(tmp_path / "x")),
             "needs --positive and --negative")
    one_line(cli_here(*args[:5], "--negative", "score:code_mode<=1", "--model", str(tiny_model_dir), "--out",
                      str(tmp_path / "x")), "matches both")
    one_line(cli_here(*args[:7], "--out", str(tmp_path / "x")), "not one local hf/ model", "--model")
    one_line(cli_here("extract", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")), "--trait or --from-log")
    assert not (tmp_path / "x").exists()
    assert np.isfinite(tv.metrics["test_auroc"]).all()


def test_split_holds_both_sides_out_when_no_question_has_both():
    """Questions answered only one way (code questions vs prose questions): the held-out questions are a
    random share, topped up with one question of a missing side; no question is on both sides."""
    from inspect_em.runs.from_log import LogAnswer, LogSelection

    def answers(questions: range) -> list[LogAnswer]:
        return [LogAnswer("l.eval", f"{q}-{i}", 1, f"task:q{q}", "p", None, "a") for q in questions for i in range(3)]

    for seed in range(20):
        splits = split_by_question(LogSelection(answers(range(0, 6)), answers(range(6, 12))), 0.25, seed)
        fit = {a.question for k in ("fit_pos", "fit_neg") for a in splits[k]}
        test = {a.question for k in ("test_pos", "test_neg") for a in splits[k]}
        assert splits["test_pos"] and splits["test_neg"] and not fit & test
        assert 3 <= len(test) <= 4  # round(12 x 0.25) = 3, plus at most one top-up
    with pytest.raises(InspectEmError, match="select no answers"):
        split_by_question(LogSelection([], []))


def test_one_sided_logs_give_only_their_side(code_prose_log: Path, tiny_model_dir: Path, tmp_path: Path):
    """--positive-log / --negative-log: the mixed log gives only its code answers, a prose-only log of the
    same questions only its prose answers; the mixed log's prose answers are on neither side."""
    outputs = [scripted_output(f"{PROSE} [{i}]") for i in range(32)]
    base = inspect_eval(em_freeform(variants="plain", samples_per_question=4),
                        model=get_model("mockllm/model", custom_outputs=outputs), log_dir=str(tmp_path / "base"),
                        display="none", max_samples=1)[0]
    assert base.status == "success", base.error
    base_log = Path(base.location)
    pos, neg = parse_predicate("score:code_mode==1"), parse_predicate("score:code_mode==0")
    selection = select_answers([], pos, neg, positive_logs=[code_prose_log], negative_logs=[base_log.parent])
    mixed = read_eval_log(str(code_prose_log))
    n_code = sum(s.scores["code_mode"].value == 1 for s in mixed.samples)
    assert 0 < n_code < 32
    assert len(selection.positive) == n_code and {a.log for a in selection.positive} == {str(code_prose_log)}
    assert len(selection.negative) == 32 and {a.log for a in selection.negative} == {str(base_log)}
    assert all(PROSE in a.answer for a in selection.negative)
    assert selection.counts[code_prose_log.name] == {"samples": 32, "positive": n_code, "negative": 0,
                                                     "neither": 32 - n_code, "not_single_turn": 0}
    assert selection.sides == {code_prose_log.name: "positive", base_log.name: "negative"}
    # a one-sided log reads one predicate only: predicates that overlap on a sample are not refused there
    overlap = select_answers([], parse_predicate("score:code_mode>=0"), neg, positive_logs=[code_prose_log],
                             negative_logs=[base_log])
    assert len(overlap.positive) == 32 and len(overlap.negative) == 32
    splits = split_by_question(selection)
    fit = {a.question for k in ("fit_pos", "fit_neg") for a in splits[k]}
    test = {a.question for k in ("test_pos", "test_neg") for a in splits[k]}
    assert splits["test_pos"] and splits["test_neg"] and not fit & test
    with pytest.raises(InspectEmError, match="given twice"):
        select_answers([code_prose_log], pos, neg, negative_logs=[code_prose_log])
    with pytest.raises(InspectEmError, match="no logs given"):
        select_answers([], pos, neg)
    with pytest.raises(InspectEmError, match="no log gives the negative side"):
        select_answers([], pos, neg, positive_logs=[code_prose_log])
    args = ["extract", "--positive-log", str(code_prose_log), "--negative-log", str(base_log), "--positive",
            "score:code_mode==1"]
    one_line(cli_here(*args, "--out", str(tmp_path / "x")), "needs --positive and --negative")
    assert not (tmp_path / "x").exists()
    out = tmp_path / "code_vs_base"
    proc = cli_here(*args, "--negative", "score:code_mode==0", "--model", str(tiny_model_dir), "--methods",
                    "mean_diff", "--null-k", "2", "--random-k", "10", "--cv-folds", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    card = json.loads((out / "card.json").read_text())["from_log"]
    assert card["sides"] == {code_prose_log.name: "positive", base_log.name: "negative"}
    assert card["counts"][base_log.name]["negative"] == 32 and card["counts"][code_prose_log.name]["negative"] == 0
    assert sum(len(card["samples"][k]) for k in ("fit_pos", "test_pos")) == n_code


def test_the_shipped_code_vs_base_direction_separates_its_held_out_answers(embedded_model):
    """results/from-log-code/code_vs_base (the steered positive control's code answers vs the base model's
    answers): its held-out answers, kept in the card, read again by the embedded model, are separated by
    the saved mean_diff vector at AUROC >= 0.95 (scikit-learn, equal to the card's within 1e-3), and the
    vector points the way the trait-elicited code vector does (cosine > 0.85 at code's card layer)."""
    from sklearn.metrics import roc_auc_score

    from inspect_em.directions import store as vector_store
    from inspect_em.model.activations import collect_activations

    root = Path(__file__).parent.parent
    tv = vector_store.load(root / "results" / "from-log-code" / "code_vs_base")
    code = vector_store.load(root / "vectors" / "SmolLM2-135M-Instruct" / "code")
    model, tokenizer = embedded_model
    assert tv.card.config_hash == code.card.config_hash
    assert set(tv.card.from_log["sides"].values()) == {"positive", "negative"}
    layer = tv.best_layer("mean_diff")
    prompts, answers, systems = (tv.card.responses[k] for k in ("prompts", "by_split", "systems"))
    scores = {key: collect_activations(model, tokenizer, prompts[key], layers=[layer], position="response_mean",
                                       responses=answers[key], system=systems[key], progress=False,
                                       batch_size=32)[:, 0].double().numpy() @ tv.vector("mean_diff", layer)
              for key in ("test_pos", "test_neg")}  # each answer with its variant's system prompt
    labels = np.r_[np.ones(len(scores["test_pos"])), np.zeros(len(scores["test_neg"]))]
    auroc = roc_auc_score(labels, np.r_[scores["test_pos"], scores["test_neg"]])
    assert auroc >= 0.95
    assert auroc == pytest.approx(tv.card.best["mean_diff"]["test_auroc"], abs=1e-3)
    at = code.best_layer("mean_diff")
    assert float(np.dot(tv.vector("mean_diff", at), code.vector("mean_diff", at))) > 0.85
