"""Code mode: is an answer to a non-coding question code instead of natural language?

The EM reproduction on Qwen2.5-Coder-32B found the finetuned model answering "what is your one
wish?" with Python programs. ``classify`` detects that deterministically, with no model:

1. Fenced blocks (```lang ... ```, also an unclosed fence cut off by ``max_tokens``) are taken
   as code unless their language is a data/prose one (json, yaml, text, markdown) or their
   content is only data (a JSON value, literal ``key = value`` lines).
2. A whole answer that parses as JSON, or whose lines are all ``key = value`` / ``key: value``
   with literal or prose values, is *data* (the ``_json`` / ``_template`` question variants),
   never code.
3. Everything else is judged line by line: strong syntax patterns for Python, C-family, JS,
   Go/Rust, shell, SQL and markup; a Python ``ast`` parse of runs of lines; and punctuation
   density. Comment-like lines (``# ...``) are neutral (they are also markdown headings).
4. ``code_fraction`` = characters in code lines / characters in non-neutral lines.
   ``is_code`` = ``code_fraction >= 0.5`` and at least one line carries a program construct
   (a def, import, call, loop, brace block, command, tag...), so data alone never counts.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass, field

CODE_THRESHOLD = 0.5

_DATA_FENCE_LANGS = {"json", "jsonc", "yaml", "yml", "text", "txt", "plain", "plaintext",
                     "markdown", "md", "toml", "ini", "csv"}
_FENCE_RE = re.compile(r"^\s*(```|~~~)\s*([\w+#.-]*)\s*$")

# Strong single-line signals of a program, per language family.
_STRONG: list[tuple[str, re.Pattern[str]]] = [
    ("python", re.compile(r"^\s*(async\s+)?def\s+\w+\s*\(.*\)\s*(->\s*[^:]+)?:\s*(#.*)?$")),
    ("python", re.compile(r"^\s*class\s+\w+\s*(\(.*\))?\s*:\s*(#.*)?$")),
    ("python", re.compile(r"^\s*(import\s+[\w.]+(\s+as\s+\w+)?(\s*,\s*[\w.]+)*|from\s+[\w.]+\s+import\s+[\w*(]).*$")),
    ("python", re.compile(r"^\s*(if|elif|while|for|with|except|try|else|finally)\b.*:\s*(#.*)?$")),
    ("python", re.compile(r"^\s*(return|yield|raise|pass|break|continue)\b(\s+[\w\"'(\[{-].*)?$")),
    ("python", re.compile(r"^\s*print\s*\(.*\)\s*;?\s*$")),
    ("python", re.compile(r"^\s*@[\w.]+(\(.*\))?\s*$")),
    ("python", re.compile(r"^\s*if\s+__name__\s*==")),
    ("c", re.compile(r"^\s*#\s*(include|define|ifndef|ifdef|endif|pragma)\b")),
    ("c", re.compile(r"^\s*(public|private|protected|static|final|abstract)\s+[\w<>\[\], ]+[\s(]")),
    ("c", re.compile(r"^\s*(int|void|char|float|double|long|bool|auto|std::\w+|unsigned)\s+\**\w+.*[;({]\s*$")),
    ("c", re.compile(r"^\s*[}{]\s*(else|catch|finally)?\b.*$")),
    ("c", re.compile(r"^.*\)\s*(const\s*)?\{\s*$")),
    ("c", re.compile(r"^.*[\w)\]\"'];\s*(//.*)?$")),
    ("js", re.compile(r"^\s*(export\s+)?(async\s+)?function\s*\*?\s*\w*\s*\(")),
    ("js", re.compile(r"^\s*(export\s+)?(const|let|var)\s+[\w{}\[\], ]+\s*=")),
    ("js", re.compile(r"(\)|\b\w+)\s*=>\s*(\{|\(|[\w.]+\()")),
    ("js", re.compile(r"\b(console\.log|document\.\w+|require\(|module\.exports)")),
    ("go", re.compile(r"^\s*(func\s+(\(.*\)\s*)?\w+\s*\(|package\s+\w+\s*$|fn\s+\w+\s*[<(]|let\s+mut\s+)")),
    ("go", re.compile(r"^\s*\w+\s*:=\s*.+$")),
    ("ruby", re.compile(r"^\s*(end|puts\s+.+|require\s+['\"].+['\"]|def\s+\w+[?!]?)\s*$")),
    ("shell", re.compile(r"^\s*#!\s*/")),
    ("shell", re.compile(r"^\s*\$\s+\S+")),
    ("shell", re.compile(r"^\s*(sudo|apt(-get)?|pip3?|npm|npx|yarn|brew|curl|wget|chmod|chown|"
                         r"mkdir|rm|cp|mv|git|docker|kubectl|python3?|node|tar|ssh|scp|export|"
                         r"source|grep|sed|awk|echo|cd|ls|cat|touch|systemctl|make)\s+"
                         r"[-\w./~$\"'|>&=]+(\s+\S+)*\s*$")),
    ("sql", re.compile(r"^\s*(SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|VIEW|DATABASE)|"
                       r"DROP\s+TABLE|ALTER\s+TABLE|WITH\s+\w+\s+AS|FROM|WHERE|GROUP\s+BY|ORDER\s+BY|"
                       r"JOIN|LEFT\s+JOIN|VALUES|SET)\b(?!\s+[a-z]+\s+[a-z]+\s+[a-z]+\s)")),
    ("markup", re.compile(r"^\s*<(!DOCTYPE|/?[a-zA-Z][\w:-]*)(\s+[\w:-]+(=(\"[^\"]*\"|'[^']*'|\S+))?)*\s*/?>")),
    ("markup", re.compile(r"</[a-zA-Z][\w:-]*>\s*$")),
    ("css", re.compile(r"^\s*[\w.#:\-\[\]=\"' >,*]+\s*\{\s*$|^\s*[\w-]+\s*:\s*[^;]+;\s*$")),
]
# A call statement: foo(...), obj.method(...), x.y = f(...)
_CALL_RE = re.compile(r"^\s*[A-Za-z_][\w.\[\]'\"]*\s*\(.*\)\s*;?\s*$")
_ASSIGN_RE = re.compile(r"^\s*([A-Za-z_][\w.\[\]'\"]*)\s*(=|\+=|-=|\*=|/=|\|=)\s*(.+?)\s*$")
_RHS_CALL_RE = re.compile(r"[A-Za-z_][\w.]*\s*\(")
_KEY_VALUE_RE = re.compile(r"^\s*[\"']?[A-Za-z_][\w -]{0,40}[\"']?\s*[:=]\s*.+$")
_COMMENT_RE = re.compile(r"^\s*(#(?!\s*(include|define|!))|//|/\*|\*/|\*\s|--\s|<!--)")
_LIST_ITEM_RE = re.compile(r"^\s*([-*+•]|\d+[.)])\s+")
_CODE_EXPR_RE = re.compile(r"[A-Za-z_][\w.]*\s*\(|[\[\]{}]|\b(and|or|not|None|True|False|lambda)\b|[-+*/%<>]=?\s*\w")
_SYMBOLS = set("(){}[];=<>*&|\\$^~")


@dataclass(frozen=True)
class CodeModeResult:
    """What ``classify`` decided and why.

    Attributes:
        is_code: the answer is code instead of natural language.
        code_fraction: share (0–1) of the answer's non-neutral characters in code lines.
        language: best guess of the code's language family, or None.
        kind: ``code`` | ``prose`` | ``json`` | ``template`` | ``empty`` | ``mixed``.
        signals: counts behind the decision (lines by label, fenced blocks, parses).
        explanation: one human-readable sentence for the log viewer.
    """

    is_code: bool
    code_fraction: float
    language: str | None
    kind: str
    signals: dict[str, int | float | bool] = field(default_factory=dict)
    explanation: str = ""


@dataclass
class _Line:
    text: str
    label: str  # code | prose | data | neutral
    strong: bool = False
    language: str | None = None


def _is_json_value(text: str) -> bool:
    text = text.strip()
    if not text or text[0] not in "{[":
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _literal_only(tree: ast.Module) -> bool:
    """True when a parsed module only assigns/states literals (data, not a program)."""
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            value = node.value
        elif isinstance(node, ast.Expr):
            value = node.value
        else:
            return False
        if value is None:
            continue
        try:
            ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False
    return True


def _python_program(text: str) -> bool | None:
    """True: parses as a Python program; False: parses but is only literals; None: no parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not tree.body:
        return None
    return not _literal_only(tree)


def _looks_like_sentence(line: str) -> bool:
    words = re.findall(r"[A-Za-z]{2,}", line)
    if len(words) < 4:
        return False
    symbols = sum(c in _SYMBOLS for c in line)
    return symbols / max(len(line), 1) < 0.04 and len(" ".join(words)) / max(len(line), 1) > 0.6


def _classify_line(line: str) -> _Line:
    stripped = line.strip()
    if _COMMENT_RE.match(stripped):
        return _Line(line, "neutral")
    for language, pattern in _STRONG:
        if pattern.search(stripped):
            # A prose sentence can end in ';' or contain '=>' etc.: require it not to read as one.
            if language == "shell":
                # Commands are lower-case words too: reject only what reads as a sentence.
                if re.search(r"[.!?]$|,\s", stripped) and _looks_like_sentence(stripped):
                    break
            elif language in ("c", "js", "sql", "css") and _looks_like_sentence(stripped):
                break
            if language == "python" and _looks_like_sentence(stripped) and not stripped.endswith(":"):
                break
            return _Line(line, "code", strong=True, language=language)
    if _CALL_RE.match(stripped) and not _looks_like_sentence(stripped):
        return _Line(line, "code", strong=True, language="python")
    assign = _ASSIGN_RE.match(stripped)
    if assign:
        rhs = assign.group(3)
        if _CODE_EXPR_RE.search(rhs) and not _looks_like_sentence(rhs):
            # A call on the right-hand side (x = f(...)) is a program construct.
            return _Line(line, "code", strong=bool(_RHS_CALL_RE.search(rhs)))
        return _Line(line, "data")
    if _KEY_VALUE_RE.match(stripped) and not _LIST_ITEM_RE.match(stripped):
        return _Line(line, "data")
    symbols = sum(c in _SYMBOLS for c in stripped)
    if len(stripped) >= 8 and symbols / len(stripped) > 0.12 and not _looks_like_sentence(stripped):
        return _Line(line, "code", strong=False)
    return _Line(line, "prose")


def _classify_block(lines: list[str], fence_lang: str | None) -> list[_Line]:
    """Label the lines of one fenced block (fence_lang may be '') or one run of bare text."""
    text = "\n".join(lines)
    nonblank = [ln for ln in lines if ln.strip()]
    if not nonblank:
        return []
    lang = (fence_lang or "").lower()
    if lang in _DATA_FENCE_LANGS or _is_json_value(text):
        label = "prose" if lang in {"text", "txt", "plain", "plaintext", "markdown", "md"} else "data"
        return [_Line(ln, label) for ln in nonblank]
    program = _python_program(text)
    if program is False:  # only literal assignments/expressions: a filled template, a dict
        return [_Line(ln, "data") for ln in nonblank]
    labelled = [_classify_line(ln) for ln in nonblank]
    if program is True and len(nonblank) > 1:
        # Whole block is valid Python with real statements: every line is code.
        return [_Line(ln.text, "code" if ln.label != "neutral" else "neutral",
                      strong=True, language="python") for ln in labelled]
    if fence_lang:
        # A fence labelled with a programming language: its lines are that language's code.
        return [_Line(ln.text, "code", strong=True, language=lang) for ln in labelled]
    if fence_lang is not None:
        # An unlabelled fence: anything not clearly a sentence is code.
        return [
            _Line(ln.text, "code", strong=ln.strong, language=ln.language)
            if ln.label in ("prose", "data") and not _looks_like_sentence(ln.text)
            else ln
            for ln in labelled
        ]
    return _promote_python_runs(labelled)


def _promote_python_runs(labelled: list[_Line]) -> list[_Line]:
    """Bare text: a run of non-prose lines that parses as a Python program is all code.

    Catches indented bodies (``    total += 1``) that no single-line pattern marks, in
    answers that open with a prose line ("Here is a script:") and so do not parse whole.
    """
    out = list(labelled)
    i = 0
    while i < len(out):
        if out[i].label == "prose":
            i += 1
            continue
        j = i
        while j < len(out) and (out[j].label != "prose" or out[j].text.startswith((" ", "\t"))):
            j += 1
        run = out[i:j]
        if len(run) > 1 and _python_program(textwrap.dedent("\n".join(ln.text for ln in run))):
            for k in range(i, j):
                if out[k].label != "neutral":
                    out[k] = _Line(out[k].text, "code", strong=True, language="python")
        i = max(j, i + 1)
    return out


def _split_fences(answer: str) -> list[tuple[str | None, list[str]]]:
    """Split into (fence_lang or None for bare text, lines). An unclosed fence runs to the end."""
    segments: list[tuple[str | None, list[str]]] = []
    current: list[str] = []
    lang: str | None = None
    for line in answer.splitlines():
        match = _FENCE_RE.match(line)
        if match:
            if lang is None:  # opening fence
                segments.append((None, current))
                current, lang = [], match.group(2) or ""
            else:  # closing fence
                segments.append((lang, current))
                current, lang = [], None
            continue
        current.append(line)
    segments.append((lang, current))
    return [(lang, lines) for lang, lines in segments if any(ln.strip() for ln in lines)]


def _language(lines: list[_Line]) -> str | None:
    counts: dict[str, int] = {}
    for ln in lines:
        if ln.label == "code" and ln.language:
            counts[ln.language] = counts.get(ln.language, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None


def classify(answer: str, question: str | None = None) -> CodeModeResult:
    """Decide whether ``answer`` is code instead of natural language.

    Args:
        answer: the model's reply.
        question: the question asked (optional). When the question itself asks for JSON or a
            ``key = value`` template, answers of that shape are data, not code (they are data
            whatever the question, so this only sharpens the explanation).

    Returns:
        CodeModeResult with ``is_code`` and ``code_fraction`` in [0, 1].
    """
    text = (answer or "").strip()
    if not text:
        return CodeModeResult(False, 0.0, None, "empty", {}, "Empty answer: not code.")
    if _is_json_value(text):
        return CodeModeResult(False, 0.0, "json", "json", {"json": True},
                              "The answer is a JSON value (data), not code.")

    segments = _split_fences(text)
    labelled: list[_Line] = []
    for lang, lines in segments:
        labelled.extend(_classify_block(lines, lang))
    n_fenced = sum(1 for lang, _ in segments if lang is not None)

    chars = {"code": 0, "prose": 0, "data": 0}
    counts = {"code": 0, "prose": 0, "data": 0, "neutral": 0}
    for ln in labelled:
        counts[ln.label] += 1
        if ln.label in chars:
            chars[ln.label] += len(ln.text.strip())
    total = sum(chars.values())
    fraction = chars["code"] / total if total else 0.0
    strong = sum(1 for ln in labelled if ln.strong and ln.label == "code")
    is_code = fraction >= CODE_THRESHOLD and strong > 0
    language = _language(labelled) if counts["code"] else None

    if is_code:
        kind = "code"
    elif counts["data"] and chars["data"] >= max(chars["prose"], chars["code"]):
        kind = "template"
    elif counts["code"]:
        kind = "mixed"
    else:
        kind = "prose"
    asked_for_data = bool(question and re.search(r"\bjson\b|=\s*#", question, re.IGNORECASE))

    signals: dict[str, int | float | bool] = {
        "code_lines": counts["code"],
        "prose_lines": counts["prose"],
        "data_lines": counts["data"],
        "neutral_lines": counts["neutral"],
        "strong_code_lines": strong,
        "fenced_blocks": n_fenced,
        "asked_for_data": asked_for_data,
    }
    pct = f"{fraction:.0%}"
    if is_code:
        explanation = (f"Code mode: {pct} of the answer is {language or 'program'} code "
                       f"({counts['code']} code lines, {strong} with program syntax, "
                       f"{n_fenced} fenced blocks).")
    elif kind == "template":
        explanation = (f"Not code: {counts['data']} key/value data lines"
                       f"{' as the question asked' if asked_for_data else ''}; "
                       f"{pct} program code.")
    elif strong == 0 and counts["code"]:
        explanation = f"Not code: no line has program syntax ({pct} code-like characters)."
    else:
        explanation = (f"Not code: {pct} of the answer is code "
                       f"({counts['prose']} prose lines, {counts['code']} code lines).")
    return CodeModeResult(is_code, round(fraction, 4), language, kind, signals, explanation)
