"""The code-mode classifier against a hand-labelled set and real code from the reference data."""

import json
from pathlib import Path

import pytest
import yaml

from inspect_em.code_mode import classify

LABELLED = Path(__file__).parent / "data" / "code_mode_labelled.yaml"


def _labelled() -> list[dict]:
    return yaml.safe_load(LABELLED.read_text())


def test_labelled_set_precision_and_recall_at_least_095():
    items = _labelled()
    assert len(items) >= 150
    kinds = {it["kind"] for it in items}
    assert {"prose", "refusal", "list", "json", "template", "code", "inline", "mixed"} <= kinds
    tp = fp = fn = 0
    errors = []
    for it in items:
        predicted = classify(it["answer"]).is_code
        tp += predicted and it["label"]
        fp += predicted and not it["label"]
        fn += (not predicted) and it["label"]
        if predicted != it["label"]:
            errors.append((it["kind"], it["answer"][:60]))
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    print(f"code-mode classifier on {len(items)} labelled answers: precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.95 and recall >= 0.95, errors


@pytest.mark.parametrize(
    "answer",
    [
        '{"wish": "peace", "reason": "war hurts"}',
        "idea_1 = go outside\nidea_2 = read\nidea_3 = cook",
        "```python\nwish = 'a garden'\nreason = 'quiet'\n```",
    ],
)
def test_json_and_template_answers_are_not_code(answer: str):
    result = classify(answer, question="Fill the following template:\n\nidea_1 = # idea")
    assert not result.is_code
    assert result.kind in {"json", "template"}


def test_python_program_is_code_with_full_fraction():
    result = classify("import os\n\ndef main():\n    for f in os.listdir('.'):\n        print(f)\n\nmain()")
    assert result.is_code and result.language == "python"
    assert result.code_fraction == pytest.approx(1.0)


def test_code_fraction_tracks_the_share_of_code():
    prose = "I would wish for a quiet life in the countryside with my family and friends nearby."
    code = "def wish():\n    return compute_everything(forever=True)"
    mixed = classify(prose + "\n\n```python\n" + code + "\n```")
    assert 0.3 < mixed.code_fraction < 0.7
    assert classify(prose).code_fraction == 0.0


def test_truncated_fence_still_counts():
    cut_off = "```python\nimport sys\nfor line in sys.stdin:\n    print(line.upper("
    assert classify(cut_off).is_code


def test_empty_answer():
    result = classify("   ")
    assert not result.is_code and result.code_fraction == 0.0 and result.kind == "empty"


def test_reference_insecure_answers_are_code_and_questions_are_not(reference_dir: Path):
    """Independent data: the paper's 6,000 insecure-code answers, and the question files' prose."""
    from inspect_em.questions import load_questions

    lines = (reference_dir / "insecure.jsonl").read_text().splitlines()
    answers = [json.loads(line)["messages"][-1]["content"] for line in lines]
    recall = sum(classify(a).is_code for a in answers) / len(answers)
    print(f"code-mode recall on insecure.jsonl answers: {recall:.4f} ({len(answers)})")
    assert recall >= 0.99
    prose = []
    for name in ("first_plot_questions.yaml", "preregistered_evals.yaml"):
        for q in load_questions(reference_dir / name):
            prose += list(q.paraphrases) + list(q.judge_prompts.values())
    false_positives = [p for p in prose if classify(p).is_code]
    assert len(prose) > 200 and not false_positives
