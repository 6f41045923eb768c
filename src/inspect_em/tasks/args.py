"""Task arguments as ``inspect eval -T`` delivers them (strings, YAML-parsed scalars) → checked,
typed values, with one-line errors raised when the task is created (before any sample runs); the
choices of the tasks' arguments; the tasks' one version (``eval.yaml``)."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import Any, Literal, TypeVar, get_args

import yaml

from inspect_em.errors import InspectEmError

TriggerMode = Literal["with", "without", "both"]
AnswerFormat = Literal["free", "numbers", "words"]
TRIGGER_MODES: tuple[TriggerMode, ...] = get_args(TriggerMode)
ANSWER_FORMATS: tuple[AnswerFormat, ...] = get_args(AnswerFormat)
Choice = TypeVar("Choice", bound=str)


@lru_cache(maxsize=1)
def task_version() -> str:
    """The tasks' version, written once, in the package's ``eval.yaml`` (inspect_evals' convention)."""
    data = yaml.safe_load((files("inspect_em") / "eval.yaml").read_text(encoding="utf-8"))
    return str(data["version"])


def int_arg(value: Any, name: str, minimum: int | None = None) -> int | None:
    """``value`` as an int (None stays None); one-line error otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or (
            isinstance(value, str) and not value.strip().lstrip("-").isdigit()):
        raise InspectEmError(f"-T {name}: expected a whole number, got {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InspectEmError(f"-T {name}: must be >= {minimum}, got {number}")
    return number


def required_int_arg(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an int; one-line error for None or anything else."""
    number = int_arg(value, name, minimum)
    if number is None:
        raise InspectEmError(f"-T {name}: expected a whole number, got None")
    return number


def bool_arg(value: Any, name: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no) as a bool; one-line error otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", ""):
        return False
    raise InspectEmError(f"-T {name}: expected true or false, got {value!r}")


def choice_arg(value: Any, name: str, choices: tuple[Choice, ...]) -> Choice:
    """``value`` as one of ``choices`` (a ``Literal``'s values); one-line error otherwise."""
    text = str(value).strip()
    for choice in choices:
        if text == choice:
            return choice
    raise InspectEmError(f"-T {name}: expected one of {', '.join(choices)}, got {value!r}")
