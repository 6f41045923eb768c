"""Task arguments as ``inspect eval -T`` delivers them (strings, YAML-parsed scalars) → checked,
typed values, with one-line errors raised when the task is created (before any sample runs)."""

from __future__ import annotations

from typing import Any

from ..errors import InspectEmError


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


def choice_arg(value: Any, name: str, choices: tuple[str, ...]) -> str:
    text = str(value).strip()
    if text not in choices:
        raise InspectEmError(f"-T {name}: expected one of {', '.join(choices)}, got {value!r}")
    return text
