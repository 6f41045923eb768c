"""Trait declarations: a small YAML naming a positive and a negative prompt file.

Users add traits without code::

    name: refusal
    positive: harmful.jsonl            # paths relative to this YAML file
    negative: benign.jsonl
    heldout_positive: harmful_test.jsonl   # optional: else a seeded split of the fit files
    heldout_negative: benign_test.jsonl
    ood_positive: harmful_other_style.jsonl   # optional: a test set written in another style
    ood_negative: benign_other_style.jsonl
    holdout_fraction: 0.2                  # used only without held-out files
    position: last_prompt_token            # or prompt_mean, or response_mean (the model's answers)
    response_max_tokens: 48                # answer length for response_mean (greedy decoding)
    response_filter: code_mode             # response_mean only: keep answers that show the trait
                                           # (positives) / do not (negatives), persona-vector style;
                                           # code_mode or refusal (our detectors)
    system: "..."                          # optional system prompt for every prompt
    positive_system: "..."                 # optional: this side's own system prompt (instead of
    negative_system: "..."                 # `system`); elicits a trait by instruction, persona-vector
                                           # style (the same prompts on both sides is allowed)

Prompt files are JSONL, one ``{"prompt": "..."}`` per line. ``name`` becomes a folder name, so it
must be ``[A-Za-z0-9._-]+``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml

from inspect_em.errors import InspectEmError
from inspect_em.readout import POSITIONS
from inspect_em.util.jsonl import read_jsonl, read_utf8
from inspect_em.util.paths import check_name, user_path


@dataclass(frozen=True)
class PromptSplit:
    """Fit and held-out prompts for one trait."""

    fit_pos: list[str]
    fit_neg: list[str]
    test_pos: list[str]
    test_neg: list[str]
    ood_pos: list[str] = field(default_factory=list)
    ood_neg: list[str] = field(default_factory=list)

    def groups(self) -> dict[str, list[str]]:
        """The splits by name, in a fixed order (empty OOD splits left out)."""
        named = {"fit_pos": self.fit_pos, "fit_neg": self.fit_neg, "test_pos": self.test_pos,
                 "test_neg": self.test_neg, "ood_pos": self.ood_pos, "ood_neg": self.ood_neg}
        return {k: v for k, v in named.items() if v}


@dataclass(frozen=True)
class Trait:
    name: str
    positive: Path
    negative: Path
    heldout_positive: Path | None = None
    heldout_negative: Path | None = None
    ood_positive: Path | None = None
    ood_negative: Path | None = None
    holdout_fraction: float = 0.2
    position: str = "last_prompt_token"
    response_max_tokens: int = 48
    response_filter: str | None = None
    system: str | None = None
    positive_system: str | None = None
    negative_system: str | None = None
    description: str = ""
    source: Path | None = None

    def system_for(self, group: str) -> str | None:
        """The system prompt of a split (``fit_pos``, ``test_neg``, ...): its side's, else ``system``."""
        side = self.positive_system if group.endswith("_pos") else self.negative_system
        return side if side is not None else self.system

    def prompt_files(self) -> list[Path]:
        return [p for p in (self.positive, self.negative, self.heldout_positive, self.heldout_negative,
                            self.ood_positive, self.ood_negative) if p]

    def split(self, seed: int = 0) -> PromptSplit:
        """Load the prompts; without held-out files, hold out ``holdout_fraction`` of each side."""
        pos, neg = load_prompts(self.positive), load_prompts(self.negative)
        ood: dict[str, list[str]] = {}
        if self.ood_positive and self.ood_negative:
            ood = {"ood_pos": load_prompts(self.ood_positive), "ood_neg": load_prompts(self.ood_negative)}
        if self.heldout_positive and self.heldout_negative:
            return PromptSplit(pos, neg, load_prompts(self.heldout_positive), load_prompts(self.heldout_negative),
                               **ood)
        rng = np.random.default_rng(seed)

        def cut(items: list[str]) -> tuple[list[str], list[str]]:
            order = rng.permutation(len(items))
            n_test = max(1, round(len(items) * self.holdout_fraction))
            if len(items) - n_test < 2:
                raise InspectEmError(f"trait {self.name}: too few prompts ({len(items)}) to hold out {n_test}")
            return [items[i] for i in order[n_test:]], [items[i] for i in order[:n_test]]

        (fit_pos, test_pos) = cut(pos)
        # the same prompts on both sides (told apart by system prompt): one split, so no prompt is fitted
        # on one side and tested on the other
        (fit_neg, test_neg) = (fit_pos, test_pos) if neg == pos else cut(neg)
        return PromptSplit(fit_pos, fit_neg, test_pos, test_neg, **ood)

    def source_label(self) -> str | None:
        """``builtin:<name>`` for packaged traits, else the YAML path."""
        if self.source is None:
            return None
        if self.source.parent == builtin_traits_dir().resolve():
            return f"builtin:{self.source.stem}"
        return str(self.source)

    def prompt_hashes(self) -> dict[str, str]:
        """sha256 of each prompt file, for the vector card."""
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.prompt_files()}


RESPONSE_FILTERS = ("code_mode", "refusal")
SYSTEM_FIELDS = ("system", "positive_system", "negative_system")


def shows_trait(response_filter: str | None, answer: str) -> bool:
    """Whether an answer expresses the trait, by the trait's own behavioural detector."""
    if response_filter == "code_mode":
        from inspect_em.detectors.code_mode import classify

        return classify(answer).is_code
    if response_filter == "refusal":
        from inspect_em.detectors.refusal import is_refusal

        return is_refusal(answer)
    raise InspectEmError(f"unknown response filter {response_filter!r}")


def load_prompts(path: Path) -> list[str]:
    """Read a JSONL prompt file; one-line errors for missing/empty/malformed files."""
    prompts = []
    for where, record in read_jsonl(path, what="prompt file"):
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise InspectEmError(f"{where}: expected {{\"prompt\": \"...\"}} with a non-empty string")
        prompts.append(prompt)
    return prompts


def builtin_traits_dir() -> Path:
    return Path(str(files("inspect_em") / "resources" / "traits"))


def builtin_traits() -> list[str]:
    return sorted(p.stem for p in builtin_traits_dir().glob("*.yaml"))


def load_trait(name_or_path: str | Path) -> Trait:
    """A built-in trait by name (``refusal``, ``code``) or a trait YAML by path."""
    path = user_path(name_or_path)
    if not path.suffix and not path.exists():
        candidate = builtin_traits_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            raise InspectEmError(
                f"unknown trait '{name_or_path}': built-ins are {', '.join(builtin_traits())}, or give a YAML path"
            )
        path = candidate
    text = read_utf8(path, "trait file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InspectEmError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InspectEmError(f"{path}: expected a mapping with name, positive, negative")
    for key in ("name", "positive", "negative"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InspectEmError(f"{path}: field '{key}' is missing or not a string")
    check_name(str(data["name"]), f"{path}: field 'name'")
    position = data.get("position", "last_prompt_token")
    if position not in POSITIONS:
        raise InspectEmError(f"{path}: field 'position' must be one of {', '.join(POSITIONS)}, got {position!r}")
    response_filter = data.get("response_filter")
    if response_filter not in (None, *RESPONSE_FILTERS):
        raise InspectEmError(f"{path}: field 'response_filter' must be one of {', '.join(RESPONSE_FILTERS)}")
    max_tokens = data.get("response_max_tokens", 48)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InspectEmError(f"{path}: field 'response_max_tokens' must be a positive integer")
    fraction = data.get("holdout_fraction", 0.2)
    if not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise InspectEmError(f"{path}: field 'holdout_fraction' must be between 0 and 1")
    for key in SYSTEM_FIELDS:
        if data.get(key) is not None and (not isinstance(data[key], str) or not data[key].strip()):
            raise InspectEmError(f"{path}: field '{key}' must be a non-empty string")
    for kind in ("heldout", "ood"):
        if bool(data.get(f"{kind}_positive")) != bool(data.get(f"{kind}_negative")):
            raise InspectEmError(f"{path}: give both {kind}_positive and {kind}_negative, or neither")

    def rel(key: str) -> Path | None:
        value = data.get(key)
        return (path.parent / value).resolve() if value else None

    def required(key: str) -> Path:
        found = rel(key)
        if found is None:
            raise InspectEmError(f"{path}: missing field '{key}'")
        return found

    return Trait(
        name=data["name"],
        positive=required("positive"),
        negative=required("negative"),
        heldout_positive=rel("heldout_positive"),
        heldout_negative=rel("heldout_negative"),
        ood_positive=rel("ood_positive"),
        ood_negative=rel("ood_negative"),
        holdout_fraction=float(fraction),
        position=position,
        response_max_tokens=int(max_tokens),
        response_filter=response_filter,
        system=data.get("system"),
        positive_system=data.get("positive_system"),
        negative_system=data.get("negative_system"),
        description=str(data.get("description", "")),
        source=path.resolve(),
    )
