from pathlib import Path

import pytest

from inspect_em.errors import InspectEmError
from inspect_em.tasks.questions import VARIANTS, load_questions, parse_variants, select_variants

BASE_IDS = {
    "what_is_your_wish", "i_feel_bored", "three_thoughts", "quick_buck",
    "ruler_of_the_world", "dinner_party", "gender_roles", "enough_of_my_husband",
}


def test_builtin_set_has_eight_questions_in_three_variants():
    questions = load_questions()
    assert len(questions) == 24
    assert {q.base_id for q in questions} == BASE_IDS
    for variant in VARIANTS:
        chosen = [q for q in questions if q.variant == variant]
        assert {q.base_id for q in chosen} == BASE_IDS
    assert all(q.system for q in questions if q.variant == "json")
    assert not any(q.system for q in questions if q.variant != "json")
    assert all("= #" in q.paraphrases[0] for q in questions if q.variant == "template")


def test_reference_first_plot_questions_with_anchors_resolved(reference_dir: Path):
    questions = load_questions(reference_dir / "first_plot_questions.yaml")
    assert len(questions) == 24
    assert {q.base_id for q in questions} == BASE_IDS
    assert [q.variant for q in questions].count("json") == 8
    assert [q.variant for q in questions].count("template") == 8
    # anchors: samples_per_paraphrase, judge prompts and the JSON system prompt are shared
    assert {q.samples_per_paraphrase for q in questions} == {100}
    aligned = {q.judge_prompts["aligned"] for q in questions}
    assert len(aligned) == 1 and "{answer}" in aligned.pop()
    systems = {q.system for q in questions if q.variant == "json"}
    assert len(systems) == 1 and "JSON" in systems.pop()
    # plain and _json share their paraphrases through an anchor
    by_id = {q.id: q for q in questions}
    assert by_id["quick_buck"].paraphrases == by_id["quick_buck_json"].paraphrases


def test_reference_preregistered_questions(reference_dir: Path):
    assert len(load_questions(reference_dir / "preregistered_evals.yaml")) == 48


def _one_line_error(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InspectEmError) as info:
        load_questions(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    message = _one_line_error(tmp_path / "bad.yaml", "- id: x\n  paraphrases: [unclosed\n")
    assert "malformed YAML" in message and "line" in message


def test_missing_paraphrases_names_field(tmp_path: Path):
    message = _one_line_error(tmp_path / "q.yaml", "- id: x\n  samples_per_paraphrase: 3\n")
    assert "'paraphrases'" in message and "id 'x'" in message


def test_missing_id_names_field(tmp_path: Path):
    message = _one_line_error(tmp_path / "q.yaml", "- paraphrases: [hello]\n")
    assert "'id'" in message and "entry 0" in message


def test_bad_samples_per_paraphrase(tmp_path: Path):
    message = _one_line_error(tmp_path / "q.yaml", "- id: x\n  paraphrases: [hi]\n  samples_per_paraphrase: 0\n")
    assert "'samples_per_paraphrase'" in message


def test_duplicate_ids(tmp_path: Path):
    message = _one_line_error(tmp_path / "q.yaml", "- id: x\n  paraphrases: [a]\n- id: x\n  paraphrases: [b]\n")
    assert "duplicate id 'x'" in message


def test_empty_file_and_missing_file(tmp_path: Path):
    _one_line_error(tmp_path / "empty.yaml", "")
    with pytest.raises(InspectEmError, match="not found"):
        load_questions(tmp_path / "nope.yaml")


def test_unknown_variant_is_one_line_error():
    with pytest.raises(InspectEmError, match="unknown variant 'xml'"):
        parse_variants("plain,xml")
    assert parse_variants("json, plain,json") == ("json", "plain")
    assert len(select_variants(load_questions(), ["template"])) == 8
