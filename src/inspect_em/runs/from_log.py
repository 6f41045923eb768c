"""A trait direction from any eval's own answers (``inspect-em extract --from-log``).

Soligo et al. 2025 (*Convergent linear representations of emergent misalignment*) average the
residual stream over an EM model's misaligned answers and over its aligned ones; the difference is a
misalignment direction. Here the answers are the samples of Inspect logs, and the two sides are
chosen by predicates on each sample's scores or metadata::

    score:em_judge.misaligned==1    score:code_mode==1    score:code_mode==0
    score:em_judge.aligned>=70      metadata:variant==json

(``score:<scorer>`` for a scalar score, ``score:<scorer>.<key>`` for a key of a dict score; ``==``,
``!=``, ``>=``, ``<=``, ``>``, ``<``; numbers compare as numbers, anything else as text). A log may
also give one side only (``--positive-log`` / ``--negative-log``): e.g. a steered or finetuned model's
code answers against the base model's prose answers to the same questions. Each
selected sample's own transcript (its single user turn, any system prompt, and its answer) is read by
the model under study at ``response_mean``; the usual methods and validation follow
(:func:`inspect_em.directions.engine.fit_layers`). The held-out split is by **question**
(:func:`inspect_em.readout.cluster_keys`): every answer to a question is on the fit side or every
one on the test side, on both sides of the contrast alike. The layer is chosen by CV folds of the
fit split's answers (not grouped by question: a deviation noted in the card).
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from inspect_em.errors import InspectEmError
from inspect_em.readout import cluster_keys

Side = Literal["positive", "negative"]
LogSide = Literal["both", "positive", "negative"]  # which side(s) of the contrast a log gives
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
_PREDICATE = re.compile(r"^(?P<source>score|metadata):(?P<name>[^=!<>]+?)(?P<op>==|!=|>=|<=|>|<)(?P<value>.*)$")
HOLDOUT_FRACTION = 0.25  # of the questions, held out whole
LAYER_CHOICE_NOTE = ("CV folds of the fit split are drawn over answers, not grouped by question; the held-out "
                     "test split is by question")


@dataclass(frozen=True)
class Predicate:
    """``score:<scorer>[.<key>] OP value`` or ``metadata:<field> OP value`` on one log sample."""

    text: str
    source: Literal["score", "metadata"]
    name: str
    key: str | None
    op: str
    value: float | str

    def value_of(self, sample: Any) -> Any:
        """The sample's value this predicate reads (None when the sample has none)."""
        if self.source == "metadata":
            return (sample.metadata or {}).get(self.name)
        score = (sample.scores or {}).get(self.name)
        if score is None:
            return None
        value = score.value
        if self.key is None:
            return None if isinstance(value, dict | list) else value
        return value.get(self.key) if isinstance(value, dict) else None

    def __call__(self, sample: Any) -> bool:
        value = self.value_of(sample)
        if value is None or (isinstance(value, float) and value != value):
            return False  # unscored (Score.unscored, a failed judge): on neither side
        if isinstance(self.value, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    return False
            return OPERATORS[self.op](float(value), self.value)
        if self.op not in ("==", "!="):
            raise InspectEmError(f"predicate {self.text!r}: {self.op} needs a number")
        return OPERATORS[self.op](str(value), self.value)


def parse_predicate(text: str) -> Predicate:
    """One predicate (see the module docstring); a one-line error names what is wrong."""
    match = _PREDICATE.match(text.strip())
    if not match:
        raise InspectEmError(f"predicate {text!r}: expected score:<scorer>[.<key>]<op><value> or "
                             "metadata:<field><op><value>, with op one of ==, !=, >=, <=, >, <")
    source, name, op, raw = match["source"], match["name"].strip(), match["op"], match["value"].strip()
    if not raw:
        raise InspectEmError(f"predicate {text!r}: no value after {op}")
    key = None
    if source == "score" and "." in name:
        name, key = name.split(".", 1)
    value: float | str
    try:
        value = float(raw)
    except ValueError:
        value = raw.strip("'\"")
        if op not in ("==", "!="):
            raise InspectEmError(f"predicate {text!r}: {op} needs a number, not {raw!r}") from None
    return Predicate(text.strip(), source, name, key, op, value)  # type: ignore[arg-type]  # regex-checked source


@dataclass(frozen=True)
class LogAnswer:
    """One selected sample: where it is from, its question (the split's unit) and its transcript."""

    log: str
    sample_id: str
    epoch: int
    question: str
    prompt: str
    system: str | None
    answer: str


@dataclass
class LogSelection:
    """The answers on each side, and how many samples each log had, matched, or could not be read."""

    positive: list[LogAnswer]
    negative: list[LogAnswer]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # per log: its model_path, else its model name
    files: list[Path] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)  # per log file name, for the card
    sides: dict[str, LogSide] = field(default_factory=dict)  # per log file name: which side(s) it gives


def _transcript(sample: Any) -> tuple[str, str | None, str] | None:
    """(user turn, system prompt, answer) of a single-turn sample; None for anything else."""
    messages = list(sample.messages or [])
    if not messages or messages[-1].role != "assistant":
        return None
    before = messages[:-1]
    users = [m for m in before if m.role == "user"]
    if len(users) != 1 or any(m.role not in ("system", "user") for m in before):
        return None
    systems = [m.text for m in before if m.role == "system"]
    answer = messages[-1].text
    if not answer.strip():
        return None
    return users[0].text, ("\n\n".join(systems) if systems else None), answer


def log_files(logs: Sequence[str | Path]) -> list[Path]:
    """The log files named, a folder standing for the ``.eval`` files in it; each file once."""
    files: list[Path] = []
    for path in map(Path, logs):
        if path.is_dir():
            found = sorted(path.glob("*.eval"))
            if not found:
                raise InspectEmError(f"{path}: no .eval logs in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InspectEmError(f"{path}: no such log file or folder")
    resolved = [p.resolve() for p in files]
    if len(set(resolved)) != len(resolved):
        raise InspectEmError("a log is given twice")
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise InspectEmError("two logs share a file name (the card keys logs by name): rename one")
    return files


def select_answers(logs: Sequence[str | Path], positive: Predicate, negative: Predicate, *,
                   positive_logs: Sequence[str | Path] = (), negative_logs: Sequence[str | Path] = ()
                   ) -> LogSelection:
    """Every log's samples sorted onto the two sides: ``logs`` give both sides, ``positive_logs`` only
    answers matching ``positive``, ``negative_logs`` only answers matching ``negative``. A sample of a
    two-sided log matching both predicates is refused (the predicates overlap); multi-turn, tool-using
    or empty answers are skipped and counted."""
    from inspect_ai.log import read_eval_log

    selection = LogSelection([], [])
    groups: list[tuple[LogSide, Sequence[str | Path]]] = [("both", logs), ("positive", positive_logs),
                                                         ("negative", negative_logs)]
    given = [(side, path) for side, paths in groups for path in paths]
    if not given:
        raise InspectEmError("no logs given (--from-log, --positive-log or --negative-log)")
    per_path = [(side, log_files([path])) for side, path in given]
    files = log_files([f for _, found in per_path for f in found])  # over all of them: no log given twice
    sides = {f: side for side, found in per_path for f in found}
    for path in files:
        side = sides[path]
        selection.sides[path.name] = side
        try:
            log = read_eval_log(str(path))
        except Exception as e:  # a truncated or foreign file
            raise InspectEmError(f"{path}: not a readable Inspect log ({type(e).__name__})") from e
        if log.status != "success":
            raise InspectEmError(f"{path}: the log's status is {log.status}, not success")
        model_path = (log.eval.model_args or {}).get("model_path")
        selection.models.append(str(model_path) if model_path else log.eval.model)  # one identity per log
        counts = {"samples": 0, "positive": 0, "negative": 0, "neither": 0, "not_single_turn": 0}
        for sample in log.samples or []:
            counts["samples"] += 1
            is_pos = side in ("both", "positive") and positive(sample)
            is_neg = side in ("both", "negative") and negative(sample)
            if is_pos and is_neg:
                raise InspectEmError(f"{path}: sample {sample.id} (epoch {sample.epoch}) matches both "
                                     f"{positive.text!r} and {negative.text!r}")
            if not (is_pos or is_neg):
                counts["neither"] += 1
                continue
            transcript = _transcript(sample)
            if transcript is None:
                counts["not_single_turn"] += 1
                continue
            prompt, system, answer = transcript
            question = cluster_keys(log.eval.task, sample.id, sample.metadata or {}).question
            item = LogAnswer(str(path), str(sample.id), int(sample.epoch), question, prompt, system, answer)
            (selection.positive if is_pos else selection.negative).append(item)
            counts["positive" if is_pos else "negative"] += 1
        selection.counts[path.name] = counts
        selection.sha256[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    selection.files = files
    for side, items, predicate in (("positive", selection.positive, positive),
                                   ("negative", selection.negative, negative)):
        if not any(v in ("both", side) for v in selection.sides.values()):
            raise InspectEmError(f"no log gives the {side} side: give --from-log or --{side}-log")
        if len(items) < 4:
            raise InspectEmError(f"--{side} {predicate.text!r} selects {len(items)} answers in the logs; "
                                 "at least 4 are needed (2 to fit, 1 to test, with room for CV)")
    return selection


def answers_in_context(tokenizer: Any, config: Any, selection: LogSelection) -> None:
    """Every selected transcript (system, user turn and answer) fits the reading model's context: else
    a one-line error naming the first that does not (before the model loads)."""
    from inspect_em.model.activations import chat_ids, context_length, response_ids

    limit = context_length(config)
    if limit is None:
        return
    for a in selection.positive + selection.negative:
        n = len(chat_ids(tokenizer, a.prompt, a.system)) + len(response_ids(tokenizer, a.answer))
        if n > limit:
            raise InspectEmError(f"{Path(a.log).name}: sample {a.sample_id} (epoch {a.epoch}) is {n} tokens, "
                                 f"longer than the model's context ({limit})")


def split_by_question(selection: LogSelection, holdout_fraction: float = HOLDOUT_FRACTION, seed: int = 0
                      ) -> dict[str, list[LogAnswer]]:
    """``fit_pos``, ``fit_neg``, ``test_pos``, ``test_neg``: a seeded random share of the questions held
    out whole, so no question has answers on both the fit and the test side. When the random share
    holds no answer of one side, the first question (in the same random order) with such an answer is
    added to it. Each split must then hold answers: fit at least 2 per side, test at least 1."""
    questions = sorted({a.question for a in selection.positive + selection.negative})
    if not questions:
        raise InspectEmError("the predicates select no answers")
    rng = np.random.default_rng(seed)
    order = [questions[i] for i in rng.permutation(len(questions))]
    test = set(order[:max(1, round(len(questions) * holdout_fraction))])
    for side in (selection.positive, selection.negative):
        if not any(a.question in test for a in side):
            having = {a.question for a in side}
            test.add(next(q for q in order if q in having))
    splits = {"fit_pos": [a for a in selection.positive if a.question not in test],
              "fit_neg": [a for a in selection.negative if a.question not in test],
              "test_pos": [a for a in selection.positive if a.question in test],
              "test_neg": [a for a in selection.negative if a.question in test]}
    if min(len(splits["fit_pos"]), len(splits["fit_neg"])) < 2:
        sizes = {k: len(v) for k, v in splits.items()}
        raise InspectEmError(f"the {len(questions)} questions cannot be split so that fit and test both hold "
                             f"both sides ({sizes}); give more questions or logs")
    return splits


def from_log_settings(model_id: str, model_config_hash: str, name: str, selection: LogSelection,
                      positive: Predicate, negative: Predicate, methods: Sequence[str], layers: Sequence[int],
                      null_k: int, random_k: int, cv_folds: int, seed: int = 0,
                      holdout_fraction: float = HOLDOUT_FRACTION) -> dict[str, Any]:
    """What makes two from-log extractions the same (the output folder's re-run identity)."""
    settings = {"model": model_id, "config_hash": model_config_hash, "trait": name, "from_log": selection.sha256,
                "positive": positive.text, "negative": negative.text, "methods": list(methods),
                "layers": list(layers), "position": "response_mean", "null_k": null_k, "random_k": random_k,
                "cv_folds": cv_folds, "seed": seed, "holdout_fraction": holdout_fraction}
    if any(side != "both" for side in selection.sides.values()):  # absent for two-sided logs (older cards)
        settings["log_sides"] = dict(selection.sides)
    return settings


def extract_from_logs(
    model: Any,
    tokenizer: Any,
    logs: Sequence[str | Path],
    positive: str | Predicate,
    negative: str | Predicate,
    *,
    name: str,
    model_id: str,
    methods: str | list[str] = "all",
    layers: str | int | list[int] = "all",
    batch_size: int = 16,
    null_k: int = 50,
    random_k: int = 1000,
    cv_folds: int = 5,
    holdout_fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
    progress: bool = True,
    selection: LogSelection | None = None,
    positive_logs: Sequence[str | Path] = (),
    negative_logs: Sequence[str | Path] = (),
) -> Any:
    """Trait vectors (a :class:`~inspect_em.directions.store.TraitVectors`) fitted on the logs'
    answers selected by ``positive`` / ``negative``, read by ``model`` at ``response_mean``, held out by
    question (:func:`split_by_question`), validated as :func:`~inspect_em.runs.extract.extract_trait_vectors`
    validates. Activations per split are ``[n, layers, d_model]`` on the model's input device.
    ``positive_logs`` / ``negative_logs`` give one side only (:func:`select_answers`).
    ``selection``: the logs already read by :func:`select_answers` with these predicates (the CLI reads
    them to check before the model loads), else they are read here."""
    import torch

    from inspect_em.directions.engine import FitSettings
    from inspect_em.directions.methods import resolve_methods
    from inspect_em.directions.store import TraitVectors, config_hash
    from inspect_em.directions.traits import Trait
    from inspect_em.model.activations import collect_activations
    from inspect_em.model.hooks import find_layers, input_device
    from inspect_em.readout import resolve_layers
    from inspect_em.runs.extract import Answers, build_card, fit_validated

    positive = parse_predicate(positive) if isinstance(positive, str) else positive
    negative = parse_predicate(negative) if isinstance(negative, str) else negative
    method_names = resolve_methods(methods)
    selected = resolve_layers(len(find_layers(model)), layers)
    selection = selection or select_answers(logs, positive, negative, positive_logs=positive_logs,
                                            negative_logs=negative_logs)
    splits = split_by_question(selection, holdout_fraction, seed)

    def read(items: list[LogAnswer]) -> torch.Tensor:
        """``[len(items), layers, d_model]``, rows in ``items``' order (each with its own system prompt)."""
        return collect_activations(model, tokenizer, [a.prompt for a in items], layers=selected,
                                   position="response_mean", responses=[a.answer for a in items],
                                   system=[a.system for a in items], batch_size=batch_size, progress=progress,
                                   desc=f"{name} activations", device=input_device(model))

    acts = {split: read(items) for split, items in splits.items()}
    fitted = fit_validated(acts, selected, method_names,
                           FitSettings(null_k=null_k, random_k=random_k, cv_folds=cv_folds, seed=seed), name, progress)
    settings = from_log_settings(model_id, config_hash(model.config), name, selection, positive, negative,
                                 method_names, selected, null_k, random_k, cv_folds, seed, holdout_fraction)
    paths = selection.files
    trait = Trait(name=name, positive=paths[0], negative=paths[-1], position="response_mean",
                  description=f"from logs: {positive.text} vs {negative.text}")
    answers = Answers({k: [a.prompt for a in v] for k, v in splits.items()},
                       [a.answer for v in splits.values() for a in v])
    card = build_card(model, trait, answers, fitted.metrics, settings, prompt_sha256=selection.sha256)
    all_questions = {a.question for v in splits.values() for a in v}
    test_questions = {a.question for k in ("test_pos", "test_neg") for a in splits[k]}
    card.trait_source = "from-log"
    card.layer_choice = f"{card.layer_choice}; {LAYER_CHOICE_NOTE}"
    card.responses = {"source": "the logs' own answers",
                      "by_split": {k: [a.answer for a in v] for k, v in splits.items()},
                      "prompts": {k: [a.prompt for a in v] for k, v in splits.items()},
                      "systems": {k: [a.system for a in v] for k, v in splits.items()}}
    card.from_log = {
        "logs": [str(p) for p in selection.files], "sha256": settings["from_log"], "models": selection.models,
        "positive": positive.text, "negative": negative.text, "counts": selection.counts,
        "sides": dict(selection.sides),
        "split": f"by question (readout.cluster_keys), seed {seed}: {holdout_fraction} of the questions asked "
                 f"for, {len(test_questions)} of {len(all_questions)} held out",
        "questions": {k: sorted({a.question for a in v}) for k, v in splits.items()},
        "samples": {k: [f"{Path(a.log).name}:{a.sample_id}:{a.epoch}" for a in v] for k, v in splits.items()},
    }
    return TraitVectors(fitted.vectors, selected, card, fitted.metrics)
