"""Projections captured while the ``hf/`` model generates: no extra forward pass.

Every token the model reads passes through the hooked blocks anyway: the prompt in the first
forward pass, then each new token as it is fed back. Hooks project those hidden states onto the
vectors on the spot (``[batch, seq, k]`` per step); after ``generate`` the rows are reduced per
position (``last_prompt_token``, ``prompt_mean`` over the unpadded prompt, ``response_mean`` over
the response tokens fed back) and packed into the generation output's ``hidden_states`` slot, which
Inspect's hf provider slices per sample; :mod:`inspect_em.inspect_adapter` unpacks each sample's
row into the sample's store, where the projection scorer finds it.

What is read: the prompt exactly as the provider tokenised it, and the generated token ids (not a
re-tokenisation of the answer's text). A last token cut off by ``max_tokens`` is never fed back, so
it is not in ``response_mean``; an answer that ends with an end-of-turn token loses nothing (that
token is not part of the answer). The teacher-forced fallback pass reads the same positions of
the re-tokenised transcript.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

STORE_PREFIX = "inspect_em/capture/"


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: unit vectors (``keys[i]`` at ``layers[i]``), where, and the trace."""

    key: str
    keys: tuple[str, ...]
    layers: tuple[int, ...]
    vectors: Any = field(compare=False, hash=False, repr=False)  # float64 [k, d_model]
    position: str = "response_mean"
    trace: bool = False
    trace_keys: tuple[str, ...] = ()
    max_trace: int = 256

    @property
    def store_key(self) -> str:
        return STORE_PREFIX + self.key


def make_spec(chosen: Sequence[Any], position: str, trace: bool, trace_keys: Sequence[str], max_trace: int,
              sources: Sequence[str]) -> CaptureSpec:
    """A spec from the projection scorer's chosen vectors; its key is a hash of what it reads."""
    import numpy as np

    ident = json.dumps({"keys": [v.key for v in chosen], "sources": list(sources), "position": position,
                        "trace": trace, "trace_keys": list(trace_keys), "max_trace": max_trace}, sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return CaptureSpec(key, tuple(v.key for v in chosen), tuple(v.layer for v in chosen),
                       np.stack([v.vector for v in chosen]).astype(np.float64), position, trace, tuple(trace_keys),
                       max_trace)


class _Capture:
    """Per-step projections of one ``generate`` call (hooks act only in the generating thread)."""

    def __init__(self, spec: CaptureSpec) -> None:
        import torch

        self.spec = spec
        self.by_layer: dict[int, list[int]] = {}
        for i, layer in enumerate(spec.layers):
            self.by_layer.setdefault(layer, []).append(i)
        self.matrices = {layer: torch.tensor(spec.vectors[idx], dtype=torch.float64)
                         for layer, idx in self.by_layer.items()}
        self.steps: list[dict[int, Any]] = []
        self.first = min(self.by_layer)

    def hook(self, layer: int) -> Any:
        def fn(resid: Any) -> None:
            if layer == self.first:
                self.steps.append({})
            matrix = self.matrices[layer]
            if matrix.device != resid.device:
                matrix = self.matrices[layer] = matrix.to(resid.device)
            # [batch, seq, k_layer], kept on the layer's device: a copy to the CPU here would stall the
            # generation at every layer of every step; finish() moves each layer's steps once
            self.steps[-1][layer] = resid.double() @ matrix.T

        return fn

    def finish(self, sequences: Any, input_ids: Any, attention_mask: Any, eos_ids: set[int]) -> Any:
        """One packed row per batch row: ``[k values, n fed, ids (max_trace), trace (k_t x max_trace)]``."""
        import torch

        spec = self.spec
        k = len(spec.keys)

        def gather(steps: range) -> Any:  # [batch, seq, k] in the spec's key order, on the CPU
            rows = self.steps[steps.start][self.first].shape[0]
            seq = sum(self.steps[i][self.first].shape[1] for i in steps)
            out = torch.empty((rows, seq, k), dtype=torch.float64)
            for layer, idx in self.by_layer.items():  # one copy per layer
                out[:, :, idx] = torch.cat([self.steps[i][layer] for i in steps], dim=1).cpu()
            return out

        prompt = gather(range(0, 1))
        generated = sequences[:, input_ids.shape[1]:].cpu()
        fed = gather(range(1, len(self.steps))) if len(self.steps) > 1 else \
            torch.zeros((prompt.shape[0], 0, k), dtype=torch.float64)
        mask = attention_mask.cpu().double()
        trace_idx = [spec.keys.index(key) for key in spec.trace_keys] if spec.trace else []
        cap = spec.max_trace
        rows = torch.full((prompt.shape[0], k + 1 + cap + len(trace_idx) * cap), math.nan, dtype=torch.float64)
        for r in range(prompt.shape[0]):
            ends = [j for j, t in enumerate(generated[r].tolist()) if t in eos_ids]
            n_answer = ends[0] if ends else generated.shape[1]
            n_fed = min(n_answer, fed.shape[1])
            if spec.position == "last_prompt_token":
                values = prompt[r, -1]
            elif spec.position == "prompt_mean":
                values = (prompt[r] * mask[r, :, None]).sum(0) / mask[r].sum()
            else:
                values = fed[r, :n_fed].mean(0) if n_fed else torch.full((k,), math.nan, dtype=torch.float64)
            rows[r, :k] = values
            rows[r, k] = n_fed
            shown = min(n_fed, cap)
            rows[r, k + 1:k + 1 + shown] = generated[r, :shown].double()
            for t, i in enumerate(trace_idx):
                start = k + 1 + cap + t * cap
                rows[r, start:start + shown] = fed[r, :shown, i]
        return rows


@contextmanager
def capturing(model: Any, spec: CaptureSpec) -> Iterator[_Capture]:
    """Install the capture hooks on ``model`` for one ``generate`` call (always removed)."""
    from inspect_em.model.hooks import hooks

    capture = _Capture(spec)
    with hooks(model, {layer: capture.hook(layer) for layer in capture.by_layer}):
        yield capture


def unpack(spec: CaptureSpec, row: Sequence[float]) -> dict[str, Any]:
    """A packed row (see :meth:`_Capture.finish`) → the JSON record kept in the sample's store."""
    k, cap = len(spec.keys), spec.max_trace
    n_fed = int(row[k])
    shown = min(n_fed, cap)
    record: dict[str, Any] = {
        "values": {key: (None if math.isnan(row[i]) else float(row[i])) for i, key in enumerate(spec.keys)},
        "n_fed": n_fed,
        "ids": [int(x) for x in row[k + 1:k + 1 + shown]],
        "position": spec.position,
    }
    if spec.trace:
        record["trace"] = {key: [round(float(x), 3) for x in row[k + 1 + cap + t * cap:k + 1 + cap + t * cap + shown]]
                           for t, key in enumerate(spec.trace_keys)}
    return record


def eos_ids(model: Any) -> set[int]:
    """Token ids that end an answer (the generation config's EOS ids and the pad id)."""
    config = getattr(model, "generation_config", None)
    ids: set[int] = set()
    for attr in ("eos_token_id", "pad_token_id"):
        value = getattr(config, attr, None) if config is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids

