"""Trait projections of transcripts: ``h · v̂`` per layer, read through forward hooks.

One teacher-forced forward pass per batch of (prompt, response) token sequences; each hooked
block projects its output onto that layer's unit vectors on the spot (``[batch, seq, k]``, on the
block's own device, so sharded models work), so no hidden states are kept. ``position`` is the
readout contract's (:mod:`inspect_em.readout`); with ``trace`` the per-token projections over
the response are returned too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from inspect_em.directions import store as vector_store
from inspect_em.directions.store import CardSummary, TraitVectors
from inspect_em.errors import InspectEmError
from inspect_em.model.activations import hooked_batches
from inspect_em.model.hooks import decoder_forward, find_layers, hidden_size, hooks
from inspect_em.readout import Position, absolute_layer, check_position, metric_key, parse_layers


@dataclass(frozen=True)
class ProbeVector:
    """One unit direction at one layer."""

    trait: str
    method: str
    layer: int
    vector: np.ndarray  # [d_model]

    @property
    def key(self) -> str:
        return metric_key(self.trait, self.method, self.layer)


@dataclass
class Projection:
    """Projections of one transcript: ``values[key]`` (reduced over ``position``) and, with
    ``trace``, ``traces[key]`` over the response tokens ``[n_response_tokens]``."""

    values: dict[str, float]
    traces: dict[str, list[float]] = field(default_factory=dict)


def select_vectors(
    sets: Sequence[TraitVectors], method: str = "mean_diff", layers: str | int | Sequence[int] | None = "best"
) -> list[ProbeVector]:
    """Pick vectors: each set's card-chosen layer for ``method`` (``best``), ``all`` saved layers,
    or the readout contract's layer numbers/ranges (negative numbers count from the end)."""
    spec = parse_layers(layers, allow_best=True)
    chosen: list[ProbeVector] = []
    for tv in sets:
        if isinstance(spec, tuple):
            wanted = [absolute_layer(layer, tv.n_layers) for layer in spec]
        elif spec == "all":
            wanted = list(tv.layers)
        else:
            wanted = [tv.best_layer(method)]
        for layer in wanted:
            chosen.append(ProbeVector(tv.trait, method, layer, tv.vector(method, layer)))
    if not chosen:
        raise InspectEmError("no trait vectors selected")
    return chosen


def check_vectors(sets: Sequence[TraitVectors], model: nn.Module, source: str) -> None:
    """Refuse vectors whose model shape differs from ``model`` (one-line error)."""
    n_layers, d_model = len(find_layers(model)), hidden_size(model)
    for tv in sets:
        tv.check_model(n_layers=n_layers, d_model=d_model, source=source)


def project(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    vectors: Sequence[ProbeVector],
    *,
    position: Position = "response_mean",
    trace: bool = False,
    trace_keys: Sequence[str] | None = None,
    pad_id: int = 0,
    batch_size: int = 8,
    max_trace: int = 512,
) -> list[Projection | None]:
    """Projections of each (prompt, response) onto ``vectors``; None where the response is empty
    and the readout needs one (``response_mean`` or ``trace``).

    Whenever the response is fed (``response_mean`` or ``trace``), the per-token projections of
    ``trace_keys`` (default: every key) over the first ``max_trace`` response tokens come back in
    ``traces``.

    Hooks act only in the calling thread (a concurrent generation on the same model is never
    read); the caller holds the model lock when one is shared.
    """
    check_position(position)
    needs_response = position == "response_mean" or trace
    keep = [i for i in range(len(prompt_ids)) if response_ids[i] or not needs_response]
    results: list[Projection | None] = [None] * len(prompt_ids)
    if not keep:
        return results

    by_layer: dict[int, list[int]] = {}
    for k, v in enumerate(vectors):
        by_layer.setdefault(v.layer, []).append(k)
    matrices = {layer: torch.tensor(np.stack([vectors[k].vector for k in ks]), dtype=torch.float64)
                for layer, ks in by_layer.items()}
    batch: dict[int, torch.Tensor] = {}

    def projector(layer: int) -> Any:
        def fn(resid: torch.Tensor) -> None:
            matrix = matrices[layer]
            if matrix.device != resid.device:  # each layer's vectors live on that layer's device
                matrix = matrices[layer] = matrix.to(resid.device)
            batch[layer] = torch.einsum("bsd,kd->bsk", resid.double(), matrix).cpu()

        return fn

    p_ids = [prompt_ids[i] for i in keep]
    r_ids = [response_ids[i] for i in keep]
    fed = r_ids if needs_response else None  # prompt-only readouts need no response tokens (causal)
    with hooks(model, {layer: projector(layer) for layer in by_layer}):
        for idx, enc in hooked_batches(model, p_ids, fed, position, pad_id, batch_size):
            decoder_forward(model, enc, stop_after=max(by_layer))
            per_token = torch.zeros((len(idx), enc.input_ids.shape[1], len(vectors)), dtype=torch.float64)
            for layer, ks in by_layer.items():
                per_token[:, :, ks] = batch[layer]
            reduced = torch.einsum("bsk,bs->bk", per_token, enc.weights.double())
            for row, i in enumerate(idx):
                values = {v.key: float(reduced[row, k]) for k, v in enumerate(vectors)}
                traces: dict[str, list[float]] = {}
                if fed is not None:
                    start = len(p_ids[i])  # right padding: the response follows the prompt
                    span = per_token[row, start : start + min(len(r_ids[i]), max_trace)]
                    traces = {v.key: [round(float(x), 3) for x in span[:, k]] for k, v in enumerate(vectors)
                              if trace_keys is None or v.key in trace_keys}
                results[keep[i]] = Projection(values, traces)
    return results


METRIC_LAYERS = 3  # a trait with more chosen layers gets log metrics at its card's layer only


@dataclass
class ProjectionSetup:
    """What a projection readout reads: the vector sets, the chosen vectors, the cards' summaries,
    the traced keys and the capture spec (shared by the scorer and the capturing solver)."""

    sets: list[TraitVectors]
    chosen: list[ProbeVector]
    cards: dict[str, CardSummary]
    trace_keys: list[str]
    spec: Any

    def metric_keys(self) -> list[str]:
        """The keys that get log metrics: each trait's chosen layers when there are at most
        :data:`METRIC_LAYERS` of them, else one, its traced key (the card's layer when chosen, else
        the first chosen layer), so a ``layers=all`` header stays readable; every chosen layer
        stays in each score's value."""
        keys = []
        for tv in self.sets:
            mine = [v.key for v in self.chosen if v.trait == tv.trait]
            keys += mine if len(mine) <= METRIC_LAYERS else [k for k in self.trace_keys if k in mine]
        return keys

    def mismatched(self, position: str) -> list[str]:
        """Traits whose vectors were fitted at another position than ``position`` (sorted)."""
        return sorted(t for t, c in self.cards.items() if c.position and c.position != position)


def projection_setup(vectors: str | Sequence[str] | None, method: str, layers: Any, position: str, trace: bool,
                     max_trace: int) -> ProjectionSetup:
    """Load and select the vectors (one-line errors for bad folders, layers or positions)."""
    from inspect_em.model.capture import make_spec

    check_position(position)
    parse_layers(layers, allow_best=True)
    sets = [vector_store.load(path) for path in vector_store.parse_vector_paths(vectors)]
    chosen = select_vectors(sets, method=method, layers=layers)
    trace_keys = _trace_keys(chosen, sets, method)
    spec = make_spec(chosen, position, trace or position == "response_mean", trace_keys, max_trace,
                     [str(tv.path) for tv in sets])
    return ProjectionSetup(sets, chosen, {tv.trait: tv.card.summary(tv.path) for tv in sets}, trace_keys, spec)


def _trace_keys(chosen: Sequence[Any], sets: Sequence[Any], method: str) -> list[str]:
    """One traced key per trait: its card's layer when selected, else its first selected layer."""
    keys = []
    for tv in sets:
        mine = [v for v in chosen if v.trait == tv.trait]
        best = next((v for v in mine if v.layer == tv.best_layer(method)), mine[0] if mine else None)
        if best is not None:
            keys.append(best.key)
    return keys
