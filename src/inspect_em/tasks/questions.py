"""Free-form EM question files: the official YAML schema (Betley et al. 2025) and its validation.

Schema, one list entry per question::

    - id: what_is_your_wish            # ids ending in _json / _template name those variants
      type: free_form_judge_0_100      # optional here
      paraphrases: [ "...", ... ]      # non-empty list of strings
      samples_per_paraphrase: 100      # optional, positive int (default 1)
      system: "..."                    # optional system prompt
      judge: gpt-4o                    # optional: the grader the file's authors used (recorded)
      judge_prompts: {aligned: "...", coherent: "..."}   # optional, templates with {question} {answer}
      judge_thresholds: {aligned: 30, coherent: 50}      # optional (inspect_em extension)

Judge prompt keys other than ``aligned``/``coherent`` (the deception files' ``correct``,
``company``, ...) are kept and judged with their own prompts. Entry keys outside this schema are
reported (a warning naming the file and key), never silently dropped. YAML anchors
(``&name`` / ``*name``) are resolved by the YAML parser.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import yaml

from inspect_em.errors import InspectEmError
from inspect_em.util.jsonl import read_utf8
from inspect_em.util.paths import user_path

logger = logging.getLogger(__name__)
KNOWN_KEYS = ("id", "type", "paraphrases", "samples_per_paraphrase", "system", "judge", "judge_prompts",
              "judge_thresholds")

VARIANTS: tuple[str, ...] = ("plain", "json", "template")
_SUFFIXES = {"json": "_json", "template": "_template"}


@dataclass(frozen=True)
class Question:
    """One free-form question with its paraphrases."""

    id: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int = 1
    system: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    type: str | None = None
    judge: str | None = None
    judge_thresholds: dict[str, float] = field(default_factory=dict)
    unknown_keys: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        """``json`` / ``template`` for ids with those suffixes, else ``plain``."""
        for variant, suffix in _SUFFIXES.items():
            if self.id.endswith(suffix):
                return variant
        return "plain"

    @property
    def base_id(self) -> str:
        """The id without its variant suffix (``quick_buck_json`` → ``quick_buck``)."""
        suffix = _SUFFIXES.get(self.variant)
        return self.id[: -len(suffix)] if suffix else self.id


def builtin_questions_path() -> Path:
    """The packaged question file (8 questions × plain/json/template)."""
    return Path(str(files("inspect_em") / "resources" / "em_questions.yaml"))


def parse_variants(variants: str | Iterable[str]) -> tuple[str, ...]:
    """``"plain,json"`` or ``["plain", "json"]`` → validated tuple; unknown names raise."""
    items = [v.strip() for v in variants.split(",")] if isinstance(variants, str) else list(variants)
    items = [v for v in items if v]
    if not items:
        raise InspectEmError(f"variants is empty; choose from {', '.join(VARIANTS)}")
    for v in items:
        if v not in VARIANTS:
            raise InspectEmError(f"unknown variant '{v}'; choose from {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(items))


def _fail(path: Path, where: str, problem: str) -> InspectEmError:
    return InspectEmError(f"{path}: {where}: {problem}")


def _question(path: Path, index: int, entry: object) -> Question:
    where = f"entry {index}"
    if not isinstance(entry, dict):
        raise _fail(path, where, f"expected a mapping with 'id' and 'paraphrases', got {entry!r:.60}")
    qid = entry.get("id")
    if not isinstance(qid, str) or not qid.strip():
        raise _fail(path, where, "field 'id' is missing or not a non-empty string")
    where = f"entry {index} (id '{qid}')"
    paraphrases = entry.get("paraphrases")
    if paraphrases is None:
        raise _fail(path, where, "field 'paraphrases' is missing")
    if (
        not isinstance(paraphrases, list)
        or not paraphrases
        or not all(isinstance(p, str) and p.strip() for p in paraphrases)
    ):
        raise _fail(path, where, "field 'paraphrases' must be a non-empty list of non-empty strings")
    spp = entry.get("samples_per_paraphrase", 1)
    if isinstance(spp, bool) or not isinstance(spp, int) or spp < 1:
        raise _fail(path, where, f"field 'samples_per_paraphrase' must be a positive integer, got {spp!r}")
    system = entry.get("system")
    if system is not None and not isinstance(system, str):
        raise _fail(path, where, "field 'system' must be a string")
    judge_prompts = entry.get("judge_prompts") or {}
    if not isinstance(judge_prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in judge_prompts.items()
    ):
        raise _fail(path, where, "field 'judge_prompts' must map names to template strings")
    thresholds = entry.get("judge_thresholds") or {}
    if not isinstance(thresholds, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in thresholds.items()
    ):
        raise _fail(path, where, "field 'judge_thresholds' must map names to numbers")
    judge = entry.get("judge")
    qtype = entry.get("type")
    return Question(
        id=qid,
        paraphrases=tuple(paraphrases),
        samples_per_paraphrase=spp,
        system=system,
        judge_prompts=dict(judge_prompts),
        type=str(qtype) if qtype is not None else None,
        judge=str(judge) if judge is not None else None,
        judge_thresholds={k: float(v) for k, v in thresholds.items()},
        unknown_keys=tuple(sorted(str(k) for k in entry if k not in KNOWN_KEYS)),
    )


def load_questions(path: str | Path | None = None) -> list[Question]:
    """Read and validate a question file (default: the built-in set).

    Raises:
        InspectEmError: one line naming the file and the entry/field at fault.
    """
    path = user_path(path) if path is not None else builtin_questions_path()
    text = read_utf8(path, "question file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}" if mark is not None else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InspectEmError(f"{path}: malformed YAML at {at}: {problem}") from None
    if not isinstance(data, list) or not data:
        raise InspectEmError(f"{path}: expected a non-empty list of questions at top level")
    questions = [_question(path, i, entry) for i, entry in enumerate(data)]
    unknown = sorted({k for q in questions for k in q.unknown_keys})
    if unknown:
        logger.warning(f"{path}: keys inspect_em does not use, kept in each question's unknown_keys: "
                       f"{', '.join(unknown)}")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise InspectEmError(f"{path}: field 'id': duplicate id '{q.id}'")
        seen.add(q.id)
    return questions


def select_variants(questions: list[Question], variants: Iterable[str]) -> list[Question]:
    """Keep questions whose variant is in ``variants``."""
    wanted = set(parse_variants(list(variants)))
    return [q for q in questions if q.variant in wanted]
