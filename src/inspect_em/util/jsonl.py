"""Reading text and JSONL files with one-line (line-numbered) errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inspect_em.errors import InspectEmError


def read_utf8(path: Path, what: str = "file") -> str:
    """The file's text; a missing file or one that is not UTF-8 is a one-line error naming it."""
    if not path.is_file():
        raise InspectEmError(f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InspectEmError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[str, Any]]:
    """Yield ``("<path>:<line>", record)`` for each non-blank line; errors name the line.

    Raises:
        InspectEmError: the file is missing, a line is not JSON, or the file has no records.
    """
    path = Path(path)
    text = read_utf8(path, what)
    seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InspectEmError(f"{where}: not valid JSON ({e.msg})") from None
        seen = True
        yield where, record
    if not seen:
        raise InspectEmError(f"{path}: {what} is empty")
