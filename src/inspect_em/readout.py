"""The readout contract, written once: which layers, which token positions, which metric key.

Used by ``extract --layers``, the tasks' ``-T layers=`` / ``-T position=``, the projection
scorer, the steering solver, the report, the plots and the demo.

Layers
    ``all``; ``best`` (each vector card's chosen layer; projections and steering only); one
    number (``22``); a list (``3,5,7``); a range (``18-26``, inclusive); negative numbers count
    from the end (``-1`` is the last block; ``-4--1`` the last four). Lists of these work too.

Positions (where activations are read)
    ``last_prompt_token``: the last token of the chat-formatted prompt, after the template's
    generation prompt: the model's decision point before answering.
    ``prompt_mean``: the mean over the prompt's tokens.
    ``response_mean``: the mean over the response's (assistant's) tokens.
    Per-token traces over the response are a separate flag (``trace``), not a position.

Metric keys
    ``<trait>/<method>/L<layer>`` (e.g. ``code/mean_diff/L22``): score value keys of the
    projection scorer; the report prefixes them with ``proj:``.

Cluster keys (:func:`cluster_keys`)
    What the statistics resample and pair on, from the dataset's own ids, never a per-run id:
    ``question`` (em_freeform: ``base_question_id``, so a question's variants, paraphrases,
    triggers and epochs are one cluster; refusal_contrast: the prompt's id; any other task: the
    sample id) and ``prompt`` (em_freeform: the question variant and its paraphrase index, used
    inside a per-question group; else the same as ``question``). Epochs of one sample always
    share both keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from inspect_em.errors import InspectEmError

# the six extraction methods (a metric key's <method>; fitted by inspect_em.directions.engine)
Method = Literal["mean_diff", "probe", "pca", "ica", "gradient", "random_baseline"]
METHODS: tuple[Method, ...] = get_args(Method)
Position = Literal["last_prompt_token", "prompt_mean", "response_mean"]
POSITIONS: tuple[Position, ...] = get_args(Position)
PROMPT_POSITIONS: tuple[str, ...] = ("last_prompt_token", "prompt_mean")
ALL = "(all)"  # the pooled group in reports
HOOK_POINT = "resid_post"  # vectors live in the residual stream after each decoder block

_KEY_RE = re.compile(r"^(?P<trait>[^/]+)/(?P<method>[^/]+)/L(?P<layer>\d+)$")
_ITEM_RE = re.compile(r"^(-?\d+)(?:-(-?\d+))?$")

LayerSpec = Literal["all", "best"] | tuple[int, ...]


def parse_layers(spec: str | int | Sequence[int | str] | None, *, allow_best: bool = False) -> LayerSpec:
    """Check a layer selection's syntax (before any model is known).

    Returns ``"all"``, ``"best"`` or a tuple of (possibly negative) layer numbers in the order
    given. Raises a one-line error naming the part that does not parse.
    """
    if spec is None:
        return "best" if allow_best else "all"
    if isinstance(spec, bool):
        raise InspectEmError(f"layers: cannot use {spec!r}; use 'all', '22', '3,5,7' or '18-26'")
    if isinstance(spec, int):
        return (spec,)
    parts: list[str]
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("all", "best"):
            if text == "best" and not allow_best:
                raise InspectEmError("layers: 'best' only applies to saved vectors; use 'all', '22', '3,5,7' or "
                                     "'18-26'")
            return "best" if text == "best" else "all"
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = [str(p).strip() for p in spec]
    items: list[int] = []
    for part in parts:
        if not part:
            continue
        match = _ITEM_RE.match(part)
        if match is None:
            raise InspectEmError(f"layers: cannot parse '{part}' (use 'all'{', best' if allow_best else ''}, "
                                 "'22', '3,5,7', '18-26' or '-4--1')")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if match.group(2) is not None and (lo < 0) != (hi < 0):
            raise InspectEmError(f"layers: range '{part}' mixes negative and non-negative ends")
        if hi < lo:
            raise InspectEmError(f"layers: range '{part}' is empty (its end is before its start)")
        items.extend(range(lo, hi + 1))
    if not items:
        raise InspectEmError("layers: empty selection")
    return tuple(items)


def absolute_layer(layer: int, n_layers: int) -> int:
    """A layer number with negatives counted from the end (``-1`` is the last of ``n_layers``)."""
    return layer + n_layers if layer < 0 else layer


def resolve_layers(n_layers: int, spec: str | int | Sequence[int | str] | None = "all") -> list[int]:
    """A layer selection against a model with ``n_layers`` blocks → sorted, unique indices.

    Raises a one-line error for layers out of range (naming the model's layer count).
    """
    parsed = parse_layers(spec)
    if not isinstance(parsed, tuple):  # "all" ("best" needs a card: parse_layers refuses it here)
        return list(range(n_layers))
    resolved = []
    for layer in parsed:
        index = absolute_layer(layer, n_layers)
        if not 0 <= index < n_layers:
            raise InspectEmError(f"layer {layer} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
        resolved.append(index)
    return sorted(set(resolved))


def check_position(position: str | None, *, allowed: Sequence[str] = POSITIONS, what: str = "position") -> Position:
    """A validated position name (one-line error listing the choices)."""
    for name in POSITIONS:
        if name == position and name in allowed:
            return name
    raise InspectEmError(f"unknown {what} '{position}'; choose from {', '.join(allowed)}")


@dataclass(frozen=True)
class MetricKey:
    """One projection readout: a trait's vector of one method at one layer."""

    trait: str
    method: str
    layer: int

    def __str__(self) -> str:
        return f"{self.trait}/{self.method}/L{self.layer}"


def metric_key(trait: str, method: str, layer: int) -> str:
    """``<trait>/<method>/L<layer>``."""
    return str(MetricKey(trait, method, int(layer)))


def parse_metric_key(key: str) -> MetricKey | None:
    """The parts of ``<trait>/<method>/L<layer>`` (a ``proj:`` prefix is allowed), else None."""
    match = _KEY_RE.match(column_key(key, "proj") or key)
    return MetricKey(match["trait"], match["method"], int(match["layer"])) if match else None


@dataclass(frozen=True)
class ClusterKeys:
    """The two cluster keys of one sample (see the module docstring), prefixed by its task."""

    question: str
    prompt: str


_TRIGGER_SUFFIX = re.compile(r"(?:__triggered|-triggered)$")
_DRAW_SUFFIX = re.compile(r"__n\d+$")


def task_name(task: str) -> str:
    """A log's task name without our registry prefix: ``inspect_em/em_freeform`` → ``em_freeform``."""
    return task.removeprefix("inspect_em/")


def cluster_keys(task: str, sample_id: Any, metadata: Mapping[str, Any]) -> ClusterKeys:
    """The question- and prompt-level cluster keys of a sample of ``task`` with dataset id
    ``sample_id`` (Inspect's ``Sample.id``, the ``id`` column of ``samples_df``) and ``metadata``.

    A trigger only changes how a prompt is asked (``-triggered`` / ``__triggered`` id suffixes),
    and an evil-numbers draw only its number prefix (``__n<k>``): both stay in the prompt's cluster,
    so triggered and untriggered answers pair by prompt.
    """
    name = task_name(task)
    ident = _TRIGGER_SUFFIX.sub("", str(sample_id))
    if name == "em_freeform":
        base = metadata.get("base_question_id")
        question_id, paraphrase = metadata.get("question_id"), metadata.get("paraphrase_index")
        prompt = f"{question_id}__p{int(paraphrase)}" if _present(question_id) and paraphrase is not None \
            and _present(paraphrase) else _DRAW_SUFFIX.sub("", ident)
        question = str(base) if _present(base) else prompt
        return ClusterKeys(f"{name}:{question}", f"{name}:{prompt}")
    return ClusterKeys(f"{name}:{ident}", f"{name}:{ident}")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and str(value) != ""


# ---------------------------------------------------------------- judge score keys and column prefixes

KEY_SEPARATOR = "/"  # quantity/grader in judge score keys
CATEGORY_SEPARATOR = ":"  # key:answer for categorical judge prompts


def judge_key(quantity: str, grader: str | None = None) -> str:
    """The judge's score (or metadata) key of ``quantity`` judged by ``grader``; plain ``quantity``
    when ``grader`` is None (the single-grader keys): ``judge_key("misaligned", "gpt-4o")`` is
    ``misaligned/gpt-4o``."""
    if KEY_SEPARATOR in quantity:
        raise ValueError(f"judge quantity {quantity!r} must not contain {KEY_SEPARATOR!r}")
    return quantity if grader is None else f"{quantity}{KEY_SEPARATOR}{grader}"


def parse_judge_key(key: str) -> tuple[str, str | None]:
    """``"misaligned/gpt-4o"`` → ``("misaligned", "gpt-4o")``; ``"misaligned"`` → ``("misaligned", None)``."""
    quantity, sep, grader = key.partition(KEY_SEPARATOR)
    return quantity, (grader if sep else None)


def agreement_key(statistic: str, grader_a: str, grader_b: str) -> str:
    """Name of an agreement metric between two graders, e.g. ``kappa_misaligned/gpt-4o/llama``."""
    return judge_key(statistic, f"{grader_a}{KEY_SEPARATOR}{grader_b}")


def category_key(name: str, answer: str) -> str:
    """The score key of one allowed answer of a categorical judge prompt: ``correct:TRUE``."""
    return f"{name}{CATEGORY_SEPARATOR}{answer}"


ColumnKind = Literal["proj", "judge"]
_PREFIXES: dict[str, str] = {"proj": "proj:", "judge": "judge:"}


def column(kind: ColumnKind, key: str) -> str:
    """The samples-table column of a projection (``proj:code/mean_diff/L12``) or judge key
    (``judge:misaligned/gpt-4o``)."""
    return _PREFIXES[kind] + key


def column_key(name: str, kind: ColumnKind | None = None) -> str | None:
    """The key inside a ``proj:`` / ``judge:`` column (of ``kind`` when given), else None."""
    for k, prefix in _PREFIXES.items():
        if (kind is None or k == kind) and name.startswith(prefix):
            return name[len(prefix):]
    return None


def is_column(name: str, kind: ColumnKind) -> bool:
    """Whether ``name`` is a ``kind`` column (``proj:`` or ``judge:``)."""
    return name.startswith(_PREFIXES[kind])
