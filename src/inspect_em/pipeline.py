"""Trait extraction end to end: prompts → activations (every layer) → six methods → validation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import __version__
from .activations import collect_activations, find_layers, hidden_size, resolve_layers
from .errors import InspectEmError
from .extraction import make_method, resolve_methods
from .traits import Trait
from .validation import best_layers, validate
from .vectors import FORMAT_VERSION, TraitVectors, config_hash


def extract_trait_vectors(
    model: Any,
    tokenizer: Any,
    trait: Trait,
    *,
    model_id: str,
    methods: str | list[str] = "all",
    layers: str | list[int] = "all",
    position: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> TraitVectors:
    """Fit every method at every selected layer on the trait's fit split; validate on held-out.

    One batched forward pass per prompt batch captures all selected layers at once.
    """
    method_names = resolve_methods(methods)
    n_layers = len(find_layers(model))
    selected = resolve_layers(n_layers, layers)
    position = position or trait.position
    split = trait.split()
    groups = [split.fit_pos, split.fit_neg, split.test_pos, split.test_neg]
    acts = collect_activations(
        model, tokenizer, [p for g in groups for p in g], layers=selected, position=position,  # type: ignore[arg-type]
        system=trait.system, batch_size=batch_size, progress=progress, desc=f"{trait.name} activations",
    ).numpy()
    bounds = np.cumsum([0] + [len(g) for g in groups])
    fit_pos, fit_neg, test_pos, test_neg = (acts[bounds[i]:bounds[i + 1]] for i in range(4))

    d_model = hidden_size(model)
    vectors = {m: np.zeros((len(selected), d_model), dtype=np.float32) for m in method_names}
    rows = []
    jobs = [(slot, layer, m) for slot, layer in enumerate(selected) for m in method_names]
    for slot, layer, name in tqdm(jobs, desc=f"{trait.name} methods × layers", disable=not progress, leave=False):
        direction = make_method(name).extract(fit_pos[:, slot], fit_neg[:, slot])
        vectors[name][slot] = direction.vector
        scores = validate(direction.vector, fit_pos[:, slot], fit_neg[:, slot], test_pos[:, slot], test_neg[:, slot])
        mean_diff_norm = float(np.linalg.norm(fit_pos[:, slot].mean(0) - fit_neg[:, slot].mean(0)))
        rows.append({"method": name, "layer": layer, **scores, "mean_diff_norm": mean_diff_norm})
    metrics = pd.DataFrame(rows)
    if not np.isfinite(metrics["heldout_auroc"]).all():
        raise InspectEmError(f"trait {trait.name}: non-finite validation metrics")
    best = best_layers(metrics)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    card = {
        "format_version": FORMAT_VERSION,
        "trait": trait.name,
        "description": trait.description,
        "model": model_id,
        "model_class": type(model).__name__,
        "config_hash": config_hash(model.config),
        "n_layers": n_layers,
        "d_model": d_model,
        "layers": selected,
        "position": position,
        "model_dtype": dtype,
        "activation_dtype": "float32",
        "methods": method_names,
        "best_layer": best,
        "best": {m: _summary(metrics, m, best[m]) for m in method_names},
        "n_fit": [len(split.fit_pos), len(split.fit_neg)],
        "n_heldout": [len(split.test_pos), len(split.test_neg)],
        "prompt_sha256": trait.prompt_hashes(),
        "trait_source": trait.source_label(),
        "system": trait.system,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inspect_em_version": __version__,
    }
    return TraitVectors(vectors, selected, card, metrics)


def _summary(metrics: pd.DataFrame, method: str, layer: int) -> dict[str, float]:
    row = metrics[(metrics["method"] == method) & (metrics["layer"] == layer)].iloc[0]
    keys = ("heldout_accuracy", "heldout_auroc", "heldout_cohens_d", "heldout_separation")
    return {k: round(float(row[k]), 4) for k in keys}
