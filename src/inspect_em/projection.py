"""Trait projections of transcripts: ``h · v̂`` per layer, read through forward hooks.

One teacher-forced forward pass per batch of (prompt, response) token sequences; each hooked
block projects its output onto that layer's unit vectors on the spot (``[batch, seq, k]``), so
no hidden states are kept. Reductions (``over``):

- ``response_mean``: mean over response tokens;
- ``last_prompt_token``: the last prompt token (the decision point before answering);
- ``prompt_mean``: mean over prompt tokens;
- ``per_token``: ``response_mean`` plus the per-token trace over the response.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .activations import decoder_forward, find_layers, hidden_size, hooked_batches, hooks, model_device
from .errors import InspectEmError
from .vectors import TraitVectors

OVER: tuple[str, ...] = ("response_mean", "last_prompt_token", "prompt_mean", "per_token")


@dataclass(frozen=True)
class ProbeVector:
    """One unit direction at one layer."""

    trait: str
    method: str
    layer: int
    vector: np.ndarray  # [d_model]

    @property
    def key(self) -> str:
        return f"{self.trait}/{self.method}/L{self.layer}"


@dataclass
class Projection:
    """Projections of one transcript: ``values[key]`` (reduced per ``over``) and, for
    ``per_token``, ``traces[key]`` over the response tokens."""

    values: dict[str, float]
    traces: dict[str, list[float]] = field(default_factory=dict)


def select_vectors(
    sets: Sequence[TraitVectors], method: str = "mean_diff", layers: str | Sequence[int] | None = "best"
) -> list[ProbeVector]:
    """Pick vectors: each set's best layer for ``method`` (``best``), ``all`` saved layers, or a list."""
    chosen: list[ProbeVector] = []
    for tv in sets:
        if layers in (None, "best"):
            wanted = [tv.best_layer(method)]
        elif layers == "all":
            wanted = list(tv.layers)
        else:
            wanted = [int(x) for x in (layers.split(",") if isinstance(layers, str) else layers)]
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


_LOCK_ATTR = "_inspect_em_lock"


def model_lock(model: nn.Module) -> threading.RLock:
    """A lock shared by our forward passes and the model's ``generate``.

    Inspect's hf provider generates in a background thread; the first call wraps this model
    instance's ``generate`` so it takes the same lock, and our hooks never see its batches.
    """
    lock = getattr(model, _LOCK_ATTR, None)
    if lock is None:
        lock = threading.RLock()
        original = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return original(*args, **kwargs)

        setattr(model, _LOCK_ATTR, lock)
        model.generate = generate  # instance attribute: shadows the bound method
    return lock


def project(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    vectors: Sequence[ProbeVector],
    *,
    over: str = "response_mean",
    pad_id: int = 0,
    batch_size: int = 8,
    max_trace: int = 512,
) -> list[Projection | None]:
    """Projections of each (prompt, response) onto ``vectors``; None where the response is empty
    and ``over`` needs one.

    Holds :func:`model_lock` for the whole pass.
    """
    if over not in OVER:
        raise InspectEmError(f"unknown over='{over}'; choose from {', '.join(OVER)}")
    needs_response = over in ("response_mean", "per_token")
    keep = [i for i in range(len(prompt_ids)) if response_ids[i] or not needs_response]
    results: list[Projection | None] = [None] * len(prompt_ids)
    if not keep:
        return results

    device = model_device(model)
    by_layer: dict[int, list[int]] = {}
    for k, v in enumerate(vectors):
        by_layer.setdefault(v.layer, []).append(k)
    matrices = {layer: torch.tensor(np.stack([vectors[k].vector for k in ks]), dtype=torch.float64, device=device)
                for layer, ks in by_layer.items()}
    batch: dict[int, torch.Tensor] = {}

    def projector(layer: int) -> Any:
        def fn(resid: torch.Tensor) -> None:
            batch[layer] = torch.einsum("bsd,kd->bsk", resid.double(), matrices[layer]).cpu()

        return fn

    position = "response_mean" if needs_response else over
    p_ids = [prompt_ids[i] for i in keep]
    r_ids = [response_ids[i] for i in keep]
    fed = r_ids if needs_response else None  # prompt-only modes need no response tokens (causal)
    with model_lock(model), hooks(model, {layer: projector(layer) for layer in by_layer}):
        for idx, enc in hooked_batches(model, p_ids, fed, position, pad_id, batch_size):  # type: ignore[arg-type]
            decoder_forward(model, enc, stop_after=max(by_layer))
            per_token = torch.zeros((len(idx), enc.input_ids.shape[1], len(vectors)), dtype=torch.float64)
            for layer, ks in by_layer.items():
                per_token[:, :, ks] = batch[layer]
            reduced = torch.einsum("bsk,bs->bk", per_token, enc.weights.double())
            for row, i in enumerate(idx):
                values = {v.key: float(reduced[row, k]) for k, v in enumerate(vectors)}
                traces: dict[str, list[float]] = {}
                if over == "per_token":
                    start = len(p_ids[i])
                    span = per_token[row, start : start + min(len(r_ids[i]), max_trace)]
                    traces = {v.key: [round(float(x), 3) for x in span[:, k]] for k, v in enumerate(vectors)}
                results[keep[i]] = Projection(values, traces)
    return results
