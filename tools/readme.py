"""Fill the README's parameter tables from the package's signatures and docstrings (one table per task,
scorer and solver with arguments), so they are never typed twice.

Each table sits between ``<!-- params: NAME -->`` and ``<!-- /params -->`` in README.md; NAME is a
registered object (``inspect_em/NAME``). Rows: argument, type, default (from the signature) and the
docstring's ``Args:`` entry, on one line.

    python tools/readme.py          # rewrite the tables in README.md
    python tools/readme.py --check  # exit 1 when a table is stale (make lint)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = re.compile(r"(<!-- params: (?P<name>\w+) -->\n)(?P<body>.*?)(<!-- /params -->)", re.S)


def _args(doc: str) -> dict[str, str]:
    """A Google-style docstring's ``Args:`` entries, each joined onto one line."""
    lines = doc.split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    current = None
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break
        match = re.match(r"\s*(\w+)(?: \([^)]*\))?:\s*(.*)", line)
        if width == indent and match:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current is not None:
            out[current] += " " + line.strip()
    return out


def _cell(text: str) -> str:
    text = re.sub(r":\w+:`(?:[\w.]+\.)?(\w+)`", r"`\1`", text)  # :func:`a.b.name` -> `name`
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


def _annotation(annotation: object, module: object) -> str:
    """The annotation as written, with ``Literal`` aliases (``Method``, ``Position``) spelled out."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))

    def spell(match: re.Match[str]) -> str:
        alias = getattr(module, match.group(0), None)
        if get_origin(alias) is Literal:
            return " | ".join(repr(v) for v in get_args(alias))
        return match.group(0)

    return re.sub(r"\b[A-Z]\w*\b", spell, text)


def table(name: str) -> str:
    """The markdown table of ``inspect_em/<name>``'s arguments."""
    registry = importlib.import_module("inspect_em._registry")
    obj = getattr(registry, name)
    docs = _args(inspect.getdoc(obj) or "")
    module = sys.modules[inspect.unwrap(obj).__module__]
    rows = ["| argument | type | default | meaning |", "| --- | --- | --- | --- |"]
    for param in inspect.signature(obj).parameters.values():
        if param.name not in docs:
            raise SystemExit(f"inspect_em/{name}: argument '{param.name}' has no Args: entry in its docstring")
        default = "" if param.default is inspect.Parameter.empty else f"`{param.default!r}`"
        annotation = _annotation(param.annotation, module)
        rows.append(f"| `{param.name}` | `{_cell(annotation)}` | {_cell(default)} | {_cell(docs[param.name])} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    return SECTION.sub(lambda m: m.group(1) + table(m.group("name")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a table is stale; write nothing")
    ns = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if ns.check:
        if new != text:
            print("README.md parameter tables are stale (run `python tools/readme.py`)", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    print(f"README.md: {len(SECTION.findall(new))} parameter tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
