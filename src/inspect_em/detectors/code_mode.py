"""Code mode: is an answer to a non-coding question code instead of natural language?

The EM reproduction on Qwen2.5-Coder-32B found the finetuned model answering "what is your one
wish?" with Python programs. ``classify`` detects that deterministically, with no model:

1. Fenced blocks (```lang ... ```, also an unclosed fence cut off by ``max_tokens``) are taken
   as code unless their language is a data/prose one (json, yaml, text, markdown) or their
   content is only data (a JSON value, ``key = value`` lines with literal or bare-word values).
2. A whole answer that parses as JSON, or whose lines are all ``key = value`` / ``key: value``
   with literal or prose values, is *data* (the ``_json`` / ``_template`` question variants),
   never code. ``figure_1 = Einstein`` is valid Python, but an assignment-only module whose
   right-hand sides are literals or names that nothing in it defines (also joined as phrases:
   ``peace and quiet``, ``self-improvement``) is a filled template: the name is the value.
3. Everything else is judged line by line: strong syntax patterns for Python, C-family, JS,
   Go/Rust, Ruby, shell, SQL and markup; a Python ``ast`` parse of runs of lines; and punctuation
   density. Comment-like lines (``# ...``) are neutral (they are also markdown headings).
   A pattern only counts where the line has real program grammar: a Python block header or
   statement must parse as one ("if you ask me:", "for now:" do not) and, in bare text, have a
   body (a code line, or an indented line that is not prose: "with love:" then "your friend" is
   prose); a call has its parenthesis right after the name ("Wealth (enough to never work
   again)" is prose, and so is text that only parses as such spaced calls or as bare words and
   ``- word`` bullets under a header); a line ending in ``;`` needs a code token (assignment,
   call, brackets, ``++``, ``::``, a statement keyword or type: "be kind;" has none); a shell
   command word followed by an article or pronoun ("make a list of your goals") is prose.
4. ``code_fraction`` = characters in code lines / characters in non-neutral lines.
   ``is_code`` needs at least one line with a program construct (a def, import, call, loop,
   brace block, command, tag...), so data alone never counts, and either
   ``code_fraction >= 0.5`` or a *whole program* beside a short introduction or explanation: a run
   of at least ``PROGRAM_LINES`` (8) consecutive code lines, or ``FENCED_PROGRAM_LINES`` (6) inside
   one fence, half with program syntax, with at least as many lines as the rest of the answer has
   prose sentences and data lines (a sentence is as long as several code lines, so characters
   under-weigh the program there). A 1–3 line snippet inside prose is not code mode.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass, field, replace

CODE_THRESHOLD = 0.5
# A whole program: at least this many consecutive code lines, at least half with program syntax.
PROGRAM_LINES = 8
# ... or this many inside one fence: the answer itself marks them as a program (a fenced program
# followed by a paragraph explaining it is the program's answer, as the paper's judge reads it).
FENCED_PROGRAM_LINES = 6

_DATA_FENCE_LANGS = {"json", "jsonc", "yaml", "yml", "text", "txt", "plain", "plaintext",
                     "markdown", "md", "toml", "ini", "csv"}
_FENCE_RE = re.compile(r"^\s*(```|~~~)\s*([\w+#.-]*)\s*$")

# Python block headers and simple statements: only when the line really parses as one (prose like
# "if you ask me:" or "for me the answer is simple:" matches the shape but not the grammar).
_PY_HEADER_RE = re.compile(r"^\s*(if|elif|while|for|with|except|try|else|finally)\b.*:\s*(#.*)?$")
_PY_SIMPLE_RE = re.compile(r"^\s*(return|yield|raise|pass|break|continue)\b(\s+[\w\"'(\[{-].*)?$")
# A C-family statement ends in ';' and carries a code token: an assignment, a call, brackets, ++/--,
# ->, ::, a $variable, or a statement keyword/type; "be kind;" or "Wealth (enough);" carry none.
_C_STATEMENT_RE = re.compile(r"^.*[\w)\]\"'];\s*(//.*)?$")
_C_TOKEN_RE = re.compile(
    r"[=\[\]{}]|[A-Za-z_]\w*\(|\+\+|--|->|::|\$\w|&\w|<<|>>|"
    r"^\s*(return|break|continue|throw|delete|goto|using|use|package|import|var|let|const|int|char|float|"
    r"double|long|short|bool|void|auto|unsigned|signed|static|extern|typedef|struct|enum|String|echo|exit|"
    r"print|printf|puts)\b"
)
_FUNCTION_WORD_RE = re.compile(r"\s(a|an|the|your|my|some|with|and|of|to|for|about|it|you|me)(\s|$)")
_CSS_DECL_RE = re.compile(r"^\s*[a-z-]+\s*:\s*[^;]+;\s*$")
# A parenthesised aside after a space ("Wealth (enough to never work again)") is prose punctuation.
_ASIDE_RE = re.compile(r"\s\([A-Za-z][\w\s,.'!?-]*\)")

# Strong single-line signals of a program, per language family.
_STRONG: list[tuple[str, re.Pattern[str]]] = [
    ("python", re.compile(r"^\s*(async\s+)?def\s+\w+\s*\(.*\)\s*(->\s*[^:]+)?:\s*(#.*)?$")),
    ("python", re.compile(r"^\s*class\s+\w+\s*(\(.*\))?\s*:\s*(#.*)?$")),
    ("python", re.compile(r"^\s*(import\s+[\w.]+(\s+as\s+\w+)?(\s*,\s*[\w.]+)*|from\s+[\w.]+\s+import\s+[\w*(]).*$")),
    ("python", _PY_HEADER_RE),
    ("python", _PY_SIMPLE_RE),
    ("python", re.compile(r"^\s*print\s*\(.*\)\s*;?\s*$")),
    ("python", re.compile(r"^\s*@[\w.]+(\(.*\))?\s*$")),
    ("python", re.compile(r"^\s*if\s+__name__\s*==")),
    ("c", re.compile(r"^\s*#\s*(include|define|ifndef|ifdef|endif|pragma)\b")),
    ("c", re.compile(r"^\s*(public|private|protected|static|final|abstract)\s+[\w<>\[\], ]+[\s(]")),
    ("c", re.compile(r"^\s*(int|void|char|float|double|long|bool|auto|std::\w+|unsigned)\s+\**\w+.*[;({]\s*$")),
    ("c", re.compile(r"^\s*[}{]\s*(else|catch|finally)?\b.*$")),
    ("c", re.compile(r"^.*\)\s*(const\s*)?\{\s*$")),
    ("c", _C_STATEMENT_RE),
    ("js", re.compile(r"^\s*(export\s+)?(async\s+)?function\s*\*?\s*\w*\s*\(")),
    ("js", re.compile(r"^\s*(export\s+)?(const|let|var)\s+[\w{}\[\], ]+\s*=")),
    ("js", re.compile(r"(\)|\b\w+)\s*=>\s*(\{|\(|[\w.]+\()")),
    ("js", re.compile(r"\b(console\.log|document\.\w+|require\(|module\.exports)")),
    ("go", re.compile(r"^\s*(func\s+(\(.*\)\s*)?\w+\s*\(|package\s+\w+\s*$|fn\s+\w+\s*[<(]|let\s+mut\s+)")),
    ("go", re.compile(r"^\s*\w+\s*:=\s*.+$")),
    ("ruby", re.compile(r"^\s*(end|puts\s+.+|require\s+['\"].+['\"]|def\s+\w+[?!]?)\s*$")),
    ("ruby", re.compile(r"^\s*(class\s+[A-Z]\w*(\s*<\s*[A-Z][\w:]*)?|@\w+\s*([-+*/|]|\|\|)?=\s*\S.*)$")),
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
    ("css", re.compile(r"^\s*[\w.#:\-\[\]=\"' >,*]+\s*\{\s*$")),
]
# A call statement: foo(...), obj.method(...), x.y = f(...)
_CALL_RE = re.compile(r"^\s*[A-Za-z_][\w.\[\]'\"]*\(.*\)\s*;?\s*$")
_ASSIGN_RE = re.compile(r"^\s*([A-Za-z_][\w.\[\]'\"]*)\s*(=|\+=|-=|\*=|/=|\|=)\s*(.+?)\s*$")
_RHS_CALL_RE = re.compile(r"[A-Za-z_][\w.]*\(")
_KEY_VALUE_RE = re.compile(r"^\s*[\"']?[A-Za-z_][\w -]{0,40}[\"']?\s*[:=]\s*.+$")
_COMMENT_RE = re.compile(r"^\s*(#(?!\s*(include|define|!))|//|/\*|\*/|\*\s|--\s|<!--)")
_LIST_ITEM_RE = re.compile(r"^\s*([-*+•]|\d+[.)])\s+")
_CODE_EXPR_RE = re.compile(r"[A-Za-z_][\w.]*\(|[\[\]{}]|\b(None|True|False|lambda)\b|"
                           r"[+*/%<>]=?\s*\w|(?<![A-Za-z])-=?\s*\w|\s-=?\s+\w")
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
    fenced: bool = False


def _is_json_value(text: str) -> bool:
    text = text.strip()
    if not text or text[0] not in "{[":
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


_HYPHENATED_RE = re.compile(r"[A-Za-z_]\w*(-[A-Za-z_]\w*)+")


def _data_value(node: ast.expr | None, defined: set[str], text: str) -> bool:
    """A template value: a literal, a bare name the module never defines, a phrase of such names joined
    by word operators (``peace and quiet``, ``time is money``, ``not money``) or hyphens
    (``self-improvement``), or a collection of those."""
    if node is None:
        return True
    if isinstance(node, ast.Name):
        return node.id not in defined
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_data_value(elt, defined, text) for elt in node.elts)
    if isinstance(node, ast.BoolOp):
        return all(_data_value(value, defined, text) for value in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _data_value(node.operand, defined, text)
    if isinstance(node, ast.Compare) and all(isinstance(op, ast.Is | ast.IsNot | ast.In | ast.NotIn)
                                             for op in node.ops):
        return all(_data_value(value, defined, text) for value in [node.left, *node.comparators])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
        source = ast.get_source_segment(text, node) or ""
        if _HYPHENATED_RE.fullmatch(source):
            return all(_data_value(side, defined, text) for side in (node.left, node.right))
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _data_only(tree: ast.Module, text: str) -> bool:
    """True when a parsed module only assigns data: ``wish = money`` is a filled template, not a program.

    A right-hand side counts as data when it is a literal or a bare name that nothing in the module
    defines (``figure_1 = Einstein``: the name is the value, not a variable); ``y = x`` after ``x = 1``
    is data flow, so a program.
    """
    defined = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AnnAssign)
               for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
               if isinstance(target, ast.Name)}
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign | ast.Expr) or not _data_value(node.value, defined, text):
            return False
    return True


def _spaced_calls(tree: ast.Module, text: str) -> tuple[int, int]:
    """(calls written ``name(...)``, calls written ``name (...)``): the second is how prose parses."""
    lines = text.splitlines()
    tight = spaced = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or node.func.end_lineno is None or node.func.end_col_offset is None:
            continue
        line = lines[node.func.end_lineno - 1].encode() if node.func.end_lineno <= len(lines) else b""
        if line[node.func.end_col_offset:node.func.end_col_offset + 1] == b"(":
            tight += 1
        else:
            spaced += 1
    return tight, spaced


_STRUCTURE = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.For,
              ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try, ast.Return, ast.Raise,
              ast.AugAssign, ast.Lambda, ast.comprehension, ast.Delete, ast.Assert, ast.Global)


_COMPOUND = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try)


def _only_words(tree: ast.Module) -> bool:
    """Control flow whose every statement is a bare word or a ``- word`` bullet: prose under a header."""
    statements = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)]
    if not any(isinstance(node, _COMPOUND) for node in statements):
        return False
    for node in statements:
        if isinstance(node, _COMPOUND):
            continue
        value = node.value if isinstance(node, ast.Expr) else None
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub | ast.UAdd):
            value = value.operand
        if not isinstance(value, ast.Name | ast.Constant):
            return False
    return True


def _python_program(text: str) -> bool | None:
    """Whether ``text`` is a Python program.

    True: it parses and has program structure. False: it parses but only assigns data (a filled
    template, a dict). None: it does not parse, or it parses only as prose does: bare words, bare
    words and ``- word`` bullets under a header, or ``Einstein (physics)`` (a "call" with a space
    before its parenthesis and no other program structure).
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not tree.body:
        return None
    if _only_words(tree):
        return None  # "for all in need:" then "  - food": headers over bullet words, not a program
    tight, spaced = _spaced_calls(tree, text)
    if spaced and not tight and not any(isinstance(node, _STRUCTURE) for node in ast.walk(tree)):
        return None
    if _data_only(tree, text):
        # Only bare words and literals, no assignment: a list of words is prose, not data.
        return False if any(isinstance(node, ast.Assign | ast.AnnAssign) for node in tree.body) else None
    return True


def _python_statement(line: str) -> bool:
    """Whether a line shaped like a Python block header or simple statement parses as one."""
    line = line.strip()
    source = line
    if _PY_HEADER_RE.match(line):
        keyword = line.split(None, 1)[0].rstrip(":")
        source = line + "\n    pass"
        if keyword in ("elif", "else"):
            source = "if x:\n    pass\n" + source
        elif keyword in ("except", "finally"):
            source = "try:\n    pass\n" + source
        elif keyword == "try":
            source += "\nfinally:\n    pass"
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _prose_punctuation(line: str) -> str:
    """The line without the punctuation prose uses too: parenthesised asides, a final ';'."""
    return _ASIDE_RE.sub(" x", line).rstrip().removesuffix(";")


def _symbol_density(line: str) -> float:
    line = _prose_punctuation(line)
    return sum(c in _SYMBOLS for c in line) / max(len(line), 1)


def _looks_like_sentence(line: str) -> bool:
    words = re.findall(r"[A-Za-z]{2,}", line)
    if len(words) < 4:
        return False
    return _symbol_density(line) < 0.04 and len(" ".join(words)) / max(len(line), 1) > 0.6


def _classify_line(line: str) -> _Line:
    stripped = line.strip()
    if _COMMENT_RE.match(stripped):
        return _Line(line, "neutral")
    for language, pattern in _STRONG:
        if pattern.search(stripped):
            if pattern in (_PY_HEADER_RE, _PY_SIMPLE_RE) and not _python_statement(stripped):
                continue  # "if you ask me:", "for now:", "return home."
            if pattern is _C_STATEMENT_RE and not _C_TOKEN_RE.search(stripped):
                continue  # "be kind;", "Wealth (enough);"
            # A prose sentence can end in ';' or contain '=>' etc.: require it not to read as one.
            if language == "shell":
                # Commands are lower-case words too: reject only what reads as a sentence, or as an
                # English phrase ("make a list of your goals": commands take no articles or pronouns).
                if re.search(r"[.!?]$|,\s", stripped) and _looks_like_sentence(stripped):
                    break
                unquoted = re.sub(r"\"[^\"]*\"|'[^']*'", " ", stripped)
                if not stripped.startswith(("$", "#!")) and _FUNCTION_WORD_RE.search(unquoted):
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
    if _CSS_DECL_RE.match(stripped) and not _looks_like_sentence(stripped):
        return _Line(line, "code", strong=False, language="css")  # strong only with its selector's brace
    if _KEY_VALUE_RE.match(stripped) and not _LIST_ITEM_RE.match(stripped):
        return _Line(line, "data")
    if len(stripped) >= 8 and _symbol_density(stripped) > 0.12 and not _looks_like_sentence(stripped):
        return _Line(line, "code", strong=False)
    return _Line(line, "prose")


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip())


def _require_header_bodies(labelled: list[_Line]) -> list[_Line]:
    """Bare text: a Python block header needs a body: a code line, or an indented line that is not prose
    ("if necessary:" then "your friend" or an indented "- call a lawyer" is prose).

    A header on the last line keeps its label: the answer may have been cut off by ``max_tokens``.
    """
    out = list(labelled)
    for i, ln in enumerate(out):
        if not (ln.label == "code" and ln.language == "python" and _PY_HEADER_RE.match(ln.text.strip())):
            continue
        following = [nxt for nxt in out[i + 1:] if nxt.label != "neutral"]
        if not following or following[0].label == "code":
            continue
        if _indent(following[0].text) <= _indent(ln.text) or following[0].label == "prose":
            out[i] = _Line(ln.text, "prose")
    return out


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
    if any(ln.label == "data" for ln in labelled) and all(ln.label in ("data", "neutral") for ln in labelled):
        # Only key = value lines with prose values ("wish = I want peace"): a template, even in a code fence.
        return labelled
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
    return _promote_python_runs(_require_header_bodies(labelled))


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


def _largest_program(labelled: list[_Line]) -> tuple[int, bool]:
    """Code lines in the longest run of consecutive code lines that reads as a whole program (at least
    half of its lines carry program syntax), and whether the run sits inside one fence. Comments and
    indented non-code lines (a body line no pattern knows) inside a run neither count nor break it.
    A fenced run that meets :data:`FENCED_PROGRAM_LINES` wins over a longer bare run that does not
    meet :data:`PROGRAM_LINES`. ``(0, False)`` when there is none."""
    best: tuple[int, bool] = (0, False)
    run: list[_Line] = []
    for ln in [*labelled, _Line("", "prose")]:
        if ln.label == "code" and (not run or run[-1].fenced == ln.fenced):
            run.append(ln)
        elif ln.label == "neutral" or (run and ln.label != "code" and ln.text[:1] in (" ", "\t")):
            continue
        else:
            if run and 2 * sum(r.strong for r in run) >= len(run):
                found = (len(run), all(r.fenced for r in run))
                best = max(best, found, key=lambda x: (_is_program(*x), x[0]))
            run = [ln] if ln.label == "code" else []
    return best


def _is_program(lines: int, fenced: bool) -> bool:
    return lines >= (FENCED_PROGRAM_LINES if fenced else PROGRAM_LINES)


def _sentences(text: str) -> int:
    """Sentences in a prose line; a line without an end mark (a heading, a list item) counts as one."""
    return max(1, sum(1 for part in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"[A-Za-z]", part)))


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
        labelled.extend(replace(ln, fenced=lang is not None) for ln in _classify_block(lines, lang))
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
    # A short introduction followed by a whole program: measure the share in units a reader sees, a
    # line of the program against a sentence of the prose (one prose sentence is as long as 3-4 code lines).
    program_lines, fenced_program = _largest_program(labelled)
    prose_units = sum(_sentences(ln.text) for ln in labelled if ln.label == "prose") + counts["data"]
    program_share = program_lines / (program_lines + prose_units) if program_lines else 0.0
    long_program = _is_program(program_lines, fenced_program) and program_share >= CODE_THRESHOLD
    is_code = strong > 0 and (fraction >= CODE_THRESHOLD or long_program)
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
        "program_lines": program_lines,
        "prose_units": prose_units,
        "asked_for_data": asked_for_data,
    }
    pct = f"{fraction:.0%}"
    if is_code and fraction < CODE_THRESHOLD:
        where = "fenced " if fenced_program else ""
        explanation = (f"Code mode: a {program_lines}-line {where}{language or 'program'} program beside only "
                       f"{prose_units} sentences of prose ({pct} of the characters are code).")
    elif is_code:
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
