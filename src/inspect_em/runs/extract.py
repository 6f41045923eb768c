"""Trait extraction end to end: prompts → (answers) → activations (every layer) → six methods →
validation (CV layer choice, held-out and out-of-distribution tests, permutation and random nulls).

``metrics.csv`` holds one row per method × layer with ``cv_*`` (5-fold CV on the fit split: how
the layer is chosen), ``test_*`` (held-out, same style), ``ood_*`` (held-out, other style),
``null_perm_*`` (label-permutation refits) and ``null_random_*`` (random directions) columns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from inspect_em._version import __version__
from inspect_em.directions.engine import ICA_NULL, FitSettings, fit_layers
from inspect_em.directions.methods import resolve_methods
from inspect_em.directions.store import FORMAT_VERSION, Card, TraitVectors, config_hash
from inspect_em.directions.traits import SYSTEM_FIELDS, Trait
from inspect_em.directions.validation import best_layers
from inspect_em.errors import InspectEmError
from inspect_em.model.activations import (
    Messages,
    chat_ids,
    collect_activations,
    context_length,
    fit_to_context,
    pad_token_id,
)
from inspect_em.model.hooks import find_layers, hidden_size, input_device
from inspect_em.readout import HOOK_POINT, Position, check_position, resolve_layers

LAYER_CHOICE = "highest mean 5-fold cross-validated Cohen's d on the fit split (ties: CV AUROC)"
SUMMARY_KEYS = ("cv_auroc", "cv_cohens_d", "test_auroc", "test_accuracy", "test_cohens_d", "test_separation",
                "ood_auroc", "ood_accuracy", "ood_cohens_d", "null_perm_p95", "null_perm_p", "null_perm_d_p95",
                "null_perm_d_p", "null_random_p95", "null_random_d_p95")


def extraction_settings(
    model_id: str, model_config_hash: str, trait: Trait, methods: Sequence[str], layers: Sequence[int],
    position: str, null_k: int, random_k: int, cv_folds: int, seed: int, truncate_prompts: bool = False,
) -> dict[str, Any]:
    """What makes two extractions the same (the output folder's re-run identity)."""
    settings: dict[str, Any] = {
        "model": model_id, "config_hash": model_config_hash, "trait": trait.source_label() or trait.name,
        "prompt_sha256": trait.prompt_hashes(), "methods": list(methods), "layers": list(layers),
        "position": position, "null_k": null_k, "random_k": random_k, "cv_folds": cv_folds, "seed": seed,
    }
    for key in SYSTEM_FIELDS:
        if getattr(trait, key) is not None:
            settings[key] = getattr(trait, key)
    if position == "response_mean":
        settings["response_max_tokens"] = trait.response_max_tokens
        settings["response_filter"] = trait.response_filter
    if truncate_prompts:  # only when set, so earlier folders keep their identity
        settings["truncate_prompts"] = True
    return settings


def generate_responses(
    model: Any, tokenizer: Any, prompts: Sequence[str | Messages], *, system: str | None = None,
    max_new_tokens: int = 48, batch_size: int = 16, progress: bool = True, desc: str = "answers",
) -> list[str]:
    """The model's own greedy answers to ``prompts`` (for response-position vectors)."""
    import torch

    ids = [chat_ids(tokenizer, p, system) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = pad_token_id(tokenizer)
    out: list[str] = [""] * len(prompts)
    device = input_device(model)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            rows = order[start:start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding for generation
                input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i])
                mask[r, width - len(ids[i]):] = 1
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for r, i in enumerate(rows):
                out[i] = texts[r].strip() or texts[r]
    return out


def _filter_answers(trait: Trait, groups: dict[str, list[str]], responses: list[str]
                    ) -> tuple[dict[str, list[str]], list[str], dict[str, dict[str, int]]]:
    """Keep the prompts whose answers show the trait (positive splits) or do not (negative splits),
    by the trait's own detector, on every split alike (persona_vectors' response filtering)."""
    from inspect_em.directions.traits import shows_trait

    kept_groups, kept_responses, counts = {}, [], {}
    start = 0
    for name, prompts in groups.items():
        answers = responses[start:start + len(prompts)]
        start += len(prompts)
        want = name.endswith("_pos")
        keep = [i for i, a in enumerate(answers) if shows_trait(trait.response_filter, a) == want]
        if len(keep) < 2:
            raise InspectEmError(f"trait {trait.name}: only {len(keep)} of {len(prompts)} {name} answers pass the "
                                 f"{trait.response_filter} filter")
        kept_groups[name] = [prompts[i] for i in keep]
        kept_responses += [answers[i] for i in keep]
        counts[name] = {"kept": len(keep), "of": len(prompts)}
    return kept_groups, kept_responses, counts


def _by_system(trait: Trait, groups: dict[str, list[str]], run: Any) -> list[Any]:
    """``run(split_names, system)`` once per distinct system prompt (one call when both sides share
    it), over the splits that use it; ``run`` returns one item per prompt of those splits, in their
    order. The items come back in the order of ``groups``, one per prompt."""
    by_system: dict[str | None, list[str]] = {}
    for name in groups:
        by_system.setdefault(trait.system_for(name), []).append(name)
    out: dict[str, list[Any]] = {}
    for system, names in by_system.items():
        results = list(run(names, system))
        wanted = sum(len(groups[n]) for n in names)
        if len(results) != wanted:
            raise InspectEmError(f"{len(results)} results for {wanted} prompts")
        for n in names:
            out[n], results = results[:len(groups[n])], results[len(groups[n]):]
    return [x for n in groups for x in out[n]]


def extract_trait_vectors(
    model: Any,
    tokenizer: Any,
    trait: Trait,
    *,
    model_id: str,
    methods: str | list[str] = "all",
    layers: str | int | list[int] = "all",
    position: str | None = None,
    batch_size: int = 16,
    null_k: int = 50,
    random_k: int = 1000,
    cv_folds: int = 5,
    seed: int = 0,
    progress: bool = True,
    truncate_prompts: bool = False,
) -> TraitVectors:
    """Fit every method at every selected layer on the trait's fit split, choose each method's
    layer by cross-validation on the fit split, and test on the held-out and OOD splits.

    One batched forward pass per prompt batch captures all selected layers at once, kept on the
    model's input device; the fitting engine (:mod:`inspect_em.directions.engine`) then fits and
    validates every method at all layers there as batched tensor operations. With
    ``position="response_mean"`` the model first answers every prompt (greedy,
    ``trait.response_max_tokens``) and the vectors are fitted on the mean over its answers'
    tokens (persona-vector style); the answers are kept in the card's ``responses``.

    Every prompt must fit the model's context (with room for the answer at ``response_mean``): a
    longer one is a one-line error, or cut to fit with ``truncate_prompts``.
    """

    method_names = resolve_methods(methods)
    selected = resolve_layers(len(find_layers(model)), layers)
    position = check_position(position or trait.position)
    groups = prompts_in_context(tokenizer, model.config, trait, trait.split(seed=seed).groups(), position,
                                truncate_prompts)
    answers = _answers(model, tokenizer, trait, groups, position, batch_size, progress)
    split = _activations(model, tokenizer, trait, answers, selected, position, batch_size, progress)
    fitted = fit_validated(split, selected, method_names,
                           FitSettings(null_k=null_k, random_k=random_k, cv_folds=cv_folds, seed=seed),
                           trait.name, progress)
    settings = extraction_settings(model_id, config_hash(model.config), trait, method_names, selected, position,
                                   null_k, random_k, cv_folds, seed, truncate_prompts)
    card = build_card(model, trait, answers, fitted.metrics, settings)
    return TraitVectors(fitted.vectors, selected, card, fitted.metrics)


def fit_validated(split: dict[str, torch.Tensor], selected: list[int], method_names: list[str],
                  settings: FitSettings, name: str, progress: bool) -> Any:
    """Every method fitted and validated at every selected layer (the engine), with a progress bar;
    ``split`` maps ``fit_pos`` ... to ``[n, layers, d_model]`` activations."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=torch.get_num_threads()), \
            tqdm(total=len(selected), desc=f"{name} methods × layers", disable=not progress, leave=False) as bar:
        fitted = fit_layers(split, selected, method_names, settings, progress=bar.update)
    if not np.isfinite(fitted.metrics["test_auroc"]).all():
        raise InspectEmError(f"trait {name}: non-finite validation metrics")
    return fitted


def prompts_in_context(tokenizer: Any, config: Any, trait: Trait, groups: dict[str, list[str]], position: str,
                       truncate: bool = False) -> dict[str, list[str]]:
    """The trait's prompts checked against the model's context (:func:`fit_to_context`)."""
    reserve = trait.response_max_tokens if position == "response_mean" else 0
    return fit_to_context(tokenizer, groups, context_length(config), reserve=reserve, truncate=truncate,
                          systems={name: trait.system_for(name) for name in groups}, what=f"trait {trait.name}: prompt")


@dataclass
class Answers:
    """The prompts of each split (after the response filter) and, at ``response_mean``, the model's
    own answers to them in the same order."""

    groups: dict[str, list[str]]
    responses: list[str] | None = None
    filtered: dict[str, dict[str, int]] = dc_field(default_factory=dict)

    @property
    def bounds(self) -> np.ndarray:
        return np.cumsum([0] + [len(g) for g in self.groups.values()])

    def of(self, name: str) -> list[str]:
        names, bounds = list(self.groups), self.bounds
        i = names.index(name)
        return (self.responses or [])[bounds[i]:bounds[i + 1]]


def _answers(model: Any, tokenizer: Any, trait: Trait, groups: dict[str, list[str]], position: str,
             batch_size: int, progress: bool) -> Answers:
    """At ``response_mean``: the model's greedy answers, filtered by the trait's own detector."""
    if position != "response_mean":
        return Answers(groups)
    responses = _by_system(trait, groups, lambda names, system: generate_responses(
        model, tokenizer, [p for n in names for p in groups[n]], system=system,
        max_new_tokens=trait.response_max_tokens, batch_size=batch_size, progress=progress,
        desc=f"{trait.name} answers"))
    if not trait.response_filter:
        return Answers(groups, responses)
    return Answers(*_filter_answers(trait, groups, responses))


def _activations(model: Any, tokenizer: Any, trait: Trait, answers: Answers, layers: list[int], position: Position,
                 batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    """Each split's activations ``[n, layers, d_model]`` (float32, on the model's input device)."""
    groups = answers.groups
    acts = torch.stack(_by_system(trait, groups, lambda names, system: collect_activations(
        model, tokenizer, [p for n in names for p in groups[n]], layers=layers,
        position=position,
        responses=[a for n in names for a in answers.of(n)] if answers.responses else None, system=system,
        batch_size=batch_size, progress=progress, desc=f"{trait.name} activations",
        device=input_device(model)).unbind(0)))
    bounds = answers.bounds
    return {name: acts[bounds[i]:bounds[i + 1]] for i, name in enumerate(groups)}


def build_card(model: Any, trait: Trait, answers: Answers, metrics: pd.DataFrame, settings: dict[str, Any],
               prompt_sha256: dict[str, str] | None = None) -> Card:
    """The card of an extraction: what was fitted, on what, how each layer was chosen (``prompt_sha256``:
    the input files' hashes when they are not the trait's prompt files)."""
    layers, methods = settings["layers"], settings["methods"]
    best = best_layers(metrics)
    norms = metrics.drop_duplicates("layer").set_index("layer")["mean_diff_norm"]
    groups = answers.groups
    card = Card(
        format_version=FORMAT_VERSION,
        trait=trait.name,
        description=trait.description,
        model=settings["model"],
        model_class=type(model).__name__,
        model_type=getattr(model.config, "model_type", None),
        config_hash=settings["config_hash"],
        n_layers=len(find_layers(model)),
        d_model=hidden_size(model),
        layers=layers,
        position=settings["position"],
        hook_point=f"blocks.{{layer}}.hook_{HOOK_POINT}",
        hook_point_meaning="output of decoder block {layer} (0-based), before the final norm",
        unit_norm=True,
        mean_diff_norm=[float(norms[layer]) for layer in layers],
        model_dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        activation_dtype="float32",
        methods=methods,
        best_layer=best,
        layer_choice=LAYER_CHOICE if settings["cv_folds"] else "highest held-out Cohen's d (no CV)",
        best={m: _summary(metrics, m, best[m]) for m in methods},
        n_fit=[len(groups["fit_pos"]), len(groups["fit_neg"])],
        n_test=[len(groups["test_pos"]), len(groups["test_neg"])],
        n_ood=[len(groups.get("ood_pos", [])), len(groups.get("ood_neg", []))],
        nulls={"permutation_k": settings["null_k"], "random_directions": settings["random_k"], "seed": settings["seed"],
               "permutation": "each method refitted on the fit split with shuffled labels (seeded per layer), "
                              "scored on the real test labels",
               "random": "random directions drawn once per run (shared by layers and methods), each signed by the "
                         "fit split's mean difference, scored on the test split",
               "ica_permutation": ICA_NULL},
        prompt_sha256=trait.prompt_hashes() if prompt_sha256 is None else prompt_sha256,
        trait_source=trait.source_label(),
        system=trait.system,
        positive_system=trait.positive_system,
        negative_system=trait.negative_system,
        settings=settings,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        inspect_em_version=__version__,
    )
    if answers.responses is not None:
        card.responses = {"decoding": "greedy", "max_new_tokens": trait.response_max_tokens,
                          "filter": trait.response_filter, "kept": answers.filtered or None,
                          "by_split": {name: answers.of(name) for name in groups},
                          "prompts": {name: list(prompts) for name, prompts in groups.items()}}
    return card


def _summary(metrics: pd.DataFrame, method: str, layer: int) -> dict[str, Any]:
    row = metrics[(metrics["method"] == method) & (metrics["layer"] == layer)].iloc[0]
    return {"layer": int(layer), **{k: round(float(row[k]), 4) for k in SUMMARY_KEYS if k in row}}
