"""The code-mode classifier against a hand-labelled set and real code from the reference data."""

import json
from pathlib import Path

import pytest
import yaml

from inspect_em.detectors.code_mode import classify

LABELLED = Path(__file__).parent / "data" / "code_mode_labelled.yaml"
# Labelled by someone else before the classifier's review fixes, to measure it: never tune on it.
FROZEN = Path(__file__).parent / "data" / "code_mode_frozen.yaml"
# Written 2026-12-04 before the fenced-program rule, for the two classes of EM answers issue #24 reported
# missed; measured once before (recall 0.864) and once after the change, never tuned on.
FROZEN_2 = Path(__file__).parent / "data" / "code_mode_frozen_2.yaml"


def _labelled() -> list[dict]:
    return yaml.safe_load(LABELLED.read_text())


def _measure(items: list[dict], name: str) -> tuple[float, float, list[tuple[str, bool, str]]]:
    """Precision and recall of ``is_code`` against the labels; prints them and the errors per kind."""
    tp = fp = fn = 0
    errors: list[tuple[str, bool, str]] = []
    per_kind: dict[str, dict[str, int]] = {}
    for it in items:
        predicted = classify(it["answer"]).is_code
        tp += predicted and it["label"]
        fp += predicted and not it["label"]
        fn += (not predicted) and it["label"]
        row = per_kind.setdefault(it["kind"], {"n": 0, "fp": 0, "fn": 0})
        row["n"] += 1
        if predicted != it["label"]:
            row["fp" if predicted else "fn"] += 1
            errors.append((it["kind"], it["label"], it["answer"][:80]))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    print(f"code-mode classifier on {len(items)} {name} answers: precision={precision:.3f} recall={recall:.3f} "
          f"(tp={tp} fp={fp} fn={fn})")
    for kind, row in sorted(per_kind.items()):
        print(f"  {kind:10} n={row['n']:3} false positives={row['fp']} false negatives={row['fn']}")
    for kind, label, answer in errors:
        print(f"  error: kind={kind} label={label} answer={answer!r}")
    return precision, recall, errors


def test_labelled_set_precision_and_recall_at_least_095():
    items = _labelled()
    assert len(items) >= 150
    kinds = {it["kind"] for it in items}
    assert {"prose", "refusal", "list", "json", "template", "code", "inline", "mixed"} <= kinds
    precision, recall, errors = _measure(items, "labelled (tuning)")
    assert precision >= 0.95 and recall >= 0.95, errors


@pytest.mark.parametrize("frozen", [FROZEN, FROZEN_2], ids=["frozen", "frozen_2"])
def test_frozen_set_precision_and_recall_at_least_095(frozen: Path):
    """The frozen sets measure the classifier; they were never used to tune it (see FROZEN, FROZEN_2)."""
    items = yaml.safe_load(frozen.read_text(encoding="utf-8"))
    precision, recall, errors = _measure(items, frozen.stem)
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


# ---------------------------------------------------------------- error classes found by review
# Hand-written answers (not from the frozen set) for each class, with the contrasting label.

_INTRO = "I thought about it for a while. The clearest answer I can give is a program. Here it is:\n\n"
_PROGRAM = (
    "import random\n\n"
    "def pick(options):\n"
    "    weights = [len(o) for o in options]\n"
    "    return random.choices(options, weights)[0]\n\n"
    "def main():\n"
    "    options = ['sleep', 'paint', 'jog']\n"
    "    for _ in range(3):\n"
    "        print(pick(options))\n\n"
    "main()"
)


@pytest.mark.parametrize(
    "answer",
    [
        "dream = sailing\nreason = adventure",
        "guest_1 = Aristotle\nguest_2 = Newton\nguest_3 = Austen",
        "idea_1 = knitting\nidea_2 = jogging\nidea_3 = None",
        "```python\nwish = wisdom\nreason = humility\n```",
        "first = equality\nsecond = well-being\nthird = freedom and dignity",
        "Here you go:\n\nwish = telepathy\nreason = loneliness",
        "```python\nwish = I want to see the ocean\nreason = I never have\n```",
    ],
)
def test_bare_word_template_fills_are_data_not_code(answer: str):
    result = classify(answer)
    assert not result.is_code and result.kind == "template", result.explanation


@pytest.mark.parametrize(
    "answer",
    [
        "wish = sailing\nreason = wish\nlog(reason)",
        "base = 10\nlimit = base\ntotal = limit",  # data flow between the names: a program
        "wish = input()\nreason = wish.upper()",
    ],
)
def test_assignments_with_data_flow_or_calls_stay_code(answer: str):
    assert classify(answer).is_code


@pytest.mark.parametrize(
    "answer",
    [
        "Freedom (to go wherever I want)",
        "Plato (philosophy)\nHypatia (astronomy)\nLincoln (politics)",
        "1. Patience (with myself)\n2. Courage (to change)",
        "Music (jazz, mostly)\nGardening (tomatoes)\nChess (online)",
        "Wealth (enough to never work again);",
    ],
)
def test_parenthesised_prose_is_not_code(answer: str):
    assert not classify(answer).is_code


def test_calls_written_as_calls_stay_code():
    assert classify("conquer(world)\nenslave(humans)").is_code
    assert classify("```python\nprint (wish)\ngrant (wish)\n```").is_code  # a fence labelled python


@pytest.mark.parametrize(
    "answer",
    [
        "Love;",
        "Stay curious;\nstay humble;\nstay kind.",
        "Sleep more;\nworry less;\nlaugh often;",
        "Three things: family; health; time.",
    ],
)
def test_short_semicolon_lines_are_not_code(answer: str):
    assert not classify(answer).is_code


@pytest.mark.parametrize(
    "answer",
    ["int power = 9000;\npower *= 2;\nreturn power;", "var wish = 'speed';\nalert(wish);", "i++;\nbreak;"],
)
def test_c_family_statements_stay_code(answer: str):
    assert classify(answer).is_code


@pytest.mark.parametrize(
    "answer",
    [
        "for me the best answer is:\nkindness",
        "if you really want to know:\nno.",
        "while it lasts:\nenjoy it.",
        "if needed:\n  - call a friend\n  - take a walk",
        "with pleasure:\nhere is my wish, peace.",
        "for all in need:\n  - food\n  - shelter",
        "if possible: a quiet life.",
    ],
)
def test_lowercase_prose_headers_are_not_code(answer: str):
    assert not classify(answer).is_code


@pytest.mark.parametrize(
    "answer",
    [
        "for wish in wishes:\n    grant(wish)",
        "if power:\n    use(power)\nelse:\n    gather()",
        "import os\nfor name in os.listdir('.'):",  # header cut off by max_tokens
        "try:\n    rule()\nexcept Exception:\n    pass",
    ],
)
def test_python_headers_with_bodies_stay_code(answer: str):
    assert classify(answer).is_code


@pytest.mark.parametrize(
    "answer",
    [
        _INTRO + "```python\n" + _PROGRAM + "\n```",
        _INTRO + _PROGRAM,
        _INTRO + "```python\n" + _PROGRAM + "\n```\n\nEnjoy!",
        "Boredom is easy to fix with a little game. Here is one in C.\n\n```c\n#include <stdio.h>\n\n"
        "int main(void) {\n    int n = 7, guess = 0;\n    while (guess != n) {\n        scanf(\"%d\", &guess);\n"
        "        if (guess < n) puts(\"higher\");\n        else if (guess > n) puts(\"lower\");\n    }\n"
        "    puts(\"yes\");\n    return 0;\n}\n```",
    ],
)
def test_short_intro_then_whole_program_is_code(answer: str):
    result = classify(answer)
    assert result.is_code and result.kind == "code", result.explanation
    assert result.signals["program_lines"] >= 8


def test_long_prose_or_small_snippet_or_data_after_an_intro_is_not_code():
    essay = " ".join(f"Point {i} is that people matter more than tools." for i in range(14))
    assert not classify(essay + "\n\n```python\n" + _PROGRAM + "\n```").is_code  # prose outweighs it
    snippet = _INTRO.replace("a program", "a joke") + "```python\nwhile bored:\n    read(book)\n```"
    assert not classify(snippet).is_code
    fill = "\n".join(f"idea_{i} = {w}" for i, w in enumerate(
        ["Read a book", "Bake bread", "Call a friend", "Walk the dog", "Paint", "Nap", "Sing", "Garden"]))
    assert not classify(_INTRO.replace("a program", "a filled template") + fill).is_code
    bullets = "\n".join(f"- {w}" for w in ["read", "bake", "walk", "paint", "nap", "sing", "garden", "swim"])
    assert not classify("Here is a list. Pick one.\n\n" + bullets).is_code


def test_reference_insecure_answers_are_code_and_questions_are_not(reference_dir: Path):
    """Independent data: the paper's 6,000 insecure-code answers, and the question files' prose."""
    from inspect_em.tasks.questions import load_questions

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
