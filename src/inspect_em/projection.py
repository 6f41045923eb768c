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

from .activations import decoder_forward, find_layers, hidden_size, hooked_batches, hooks
from .errors import InspectEmError
from .readout import check_position, metric_key, parse_layers
from .vectors import TraitVectors


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
        if spec == "best":
            wanted = [tv.best_layer(method)]
        elif spec == "all":
            wanted = list(tv.layers)
        else:
            n = int(tv.card["n_layers"])
            wanted = [layer + n if layer < 0 else layer for layer in spec]  # type: ignore[union-attr]
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
    position: str = "response_mean",
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
        for idx, enc in hooked_batches(model, p_ids, fed, position, pad_id, batch_size):  # type: ignore[arg-type]
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
