"""Adding and ablating trait directions in the residual stream (forward hooks).

- ``add``: after decoder block ``L``, every position gets ``alpha × n_L × v̂``, where ``n_L`` is
  the norm of the fit mean difference at ``L`` (from the vector card): ``alpha = 1`` adds the
  mean difference between the trait's positive and negative prompts; negative alpha subtracts.
- ``ablate`` (directional ablation, Arditi et al. 2024): the direction is projected out of the
  residual stream everywhere: from the embeddings and from what every attention and MLP block
  writes (``x ← x − (x·v̂) v̂``), so no residual-stream state carries it. Blocks whose
  attention/MLP modules cannot be found are ablated at their inputs and outputs instead.

A :class:`SteeringPlan` is hashable (by its operations' keys), so generations with the same
steering can share a batch and different steering never does. :func:`steered` installs the hooks
as a context manager that always removes them; hooks act only in the thread that installed them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from inspect_em.errors import InspectEmError
from inspect_em.readout import absolute_layer, parse_layers

SteerMode = Literal["add", "ablate"]
MODES: tuple[str, ...] = get_args(SteerMode)


@dataclass(frozen=True)
class SteerOp:
    """One direction to add at one layer, or to ablate everywhere.

    Attributes:
        trait, method, layer: which vector (the layer it was fitted at).
        mode: ``add`` or ``ablate``.
        alpha: multiple of the fit mean-difference norm to add (``add`` only).
        scale: the fit mean-difference norm ``n_L`` at ``layer`` (projection units).
        source: the vector folder (for the log).
    """

    trait: str
    method: str
    layer: int
    mode: str
    alpha: float
    scale: float
    source: str
    vector: tuple[float, ...] = field(repr=False, compare=False, hash=False)

    @property
    def key(self) -> str:
        what = f"{self.trait}/{self.method}/L{self.layer}"
        return f"add {what} alpha={self.alpha:g}" if self.mode == "add" else f"ablate {what}"

    def describe(self) -> dict[str, Any]:
        """What the log records about this operation."""
        return {"trait": self.trait, "method": self.method, "layer": self.layer, "mode": self.mode,
                "alpha": self.alpha if self.mode == "add" else None,
                "added_norm": abs(self.alpha) * self.scale if self.mode == "add" else None,
                "vectors": self.source}


@dataclass(frozen=True)
class SteeringPlan:
    """Several steering operations applied together (hashable by their keys)."""

    ops: tuple[SteerOp, ...]

    @property
    def key(self) -> str:
        return "; ".join(op.key for op in self.ops)

    def describe(self) -> list[dict[str, Any]]:
        return [op.describe() for op in self.ops]

    def __bool__(self) -> bool:
        return bool(self.ops)


def build_plan(
    vectors: str | Sequence[str],
    layer: str | int | Sequence[int] = "best",
    alpha: float = 1.0,
    method: str = "mean_diff",
    mode: str = "add",
) -> SteeringPlan:
    """Load vector folder(s) and choose the layer(s) to steer: ``best`` (each card's), a number, or
    several (``"12,14,16,18"``, ``"12-18"``, a list): each layer gets its own vector, added at
    ``alpha`` times its own fit mean-difference norm (multi-layer steering), or ablated everywhere.

    Raises one-line errors for an unknown mode, method or layer, before any model is touched.
    """
    from inspect_em.directions import store as vector_store
    from inspect_em.directions.store import parse_vector_paths

    if mode not in MODES:
        raise InspectEmError(f"unknown steering mode '{mode}'; choose from {', '.join(MODES)}")
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise InspectEmError(f"alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(alpha):
        raise InspectEmError(f"alpha must be a finite number, got {alpha}")
    spec = parse_layers(layer, allow_best=True)
    if spec == "all":
        raise InspectEmError(f"steering layer must be 'best', a layer number or a few layers, got {layer!r}")
    ops = []
    for path in parse_vector_paths(vectors):
        tv = vector_store.load(path)
        chosen = list(spec) if isinstance(spec, tuple) else [tv.best_layer(method)]
        for at in dict.fromkeys(absolute_layer(x, tv.n_layers) for x in chosen):
            unit = tv.vector(method, at)
            ops.append(SteerOp(tv.trait, method, at, mode, alpha, tv.mean_diff_norm(at), str(path),
                               tuple(float(x) for x in unit)))
    return SteeringPlan(tuple(ops))


def check_plan(plan: SteeringPlan, n_layers: int, d_model: int) -> None:
    """Refuse a plan whose vectors do not fit the model."""
    for op in plan.ops:
        if len(op.vector) != d_model:
            raise InspectEmError(f"{op.source}: vectors have d_model {len(op.vector)} but the model has {d_model}")
        if not 0 <= op.layer < n_layers:
            raise InspectEmError(f"{op.source}: layer {op.layer} is out of range for a {n_layers}-layer model")


class _Direction:
    """A unit direction ``[d_model]`` (or an orthonormal basis ``[d_model, k]``), cached on each
    device/dtype it is used on."""

    def __init__(self, values: Any) -> None:
        import torch

        self.cpu = torch.tensor(np.asarray(values, dtype=np.float32))
        self.cache: dict[tuple[Any, Any], Any] = {}

    def on(self, like: Any) -> Any:
        key = (like.device, like.dtype)
        if key not in self.cache:
            self.cache[key] = self.cpu.to(device=like.device, dtype=like.dtype)
        return self.cache[key]


def _replace_first(output: Any, fn: Any) -> Any:
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


def _ablate(x: Any, basis: _Direction) -> Any:
    """``x`` with its component in the span of ``basis`` (orthonormal ``[d_model, k]``) removed."""
    q = basis.on(x)
    return x - (x @ q) @ q.T


def _orthonormal(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """An orthonormal basis ``[d_model, k]`` of the span of ``vectors`` (several ablated directions
    are removed together: projecting them out one after another leaves a part of the first when
    they are not orthogonal)."""
    q, r = np.linalg.qr(np.asarray(vectors, dtype=np.float64).T)
    keep = np.abs(np.diag(r)) > 1e-8 * max(1.0, float(np.abs(np.diag(r)).max()))
    return q[:, keep]


def _submodule(block: Any, names: Sequence[str]) -> Any:
    for name in names:
        module = getattr(block, name, None)
        if module is not None:
            return module
    return None


@contextmanager
def steered(model: Any, plan: SteeringPlan) -> Iterator[None]:
    """Install ``plan``'s hooks on ``model`` for the duration of the block (always removed).

    Hooks act only in the calling thread, so another thread's forward passes on the same model
    (a concurrent unsteered generation, a projection pass) are never steered.
    """
    import threading

    from inspect_em.model.hooks import find_layers

    owner = threading.get_ident()
    blocks = find_layers(model)
    with ExitStack() as stack:
        handles: list[Any] = []
        stack.callback(lambda: [h.remove() for h in handles])

        def post(fn: Any) -> Any:
            def hook(_module: Any, _inputs: Any, output: Any) -> Any:
                if threading.get_ident() != owner:
                    return None
                return _replace_first(output, fn)

            return hook

        for op in plan.ops:
            if op.mode != "add":
                continue
            direction = _Direction(op.vector)
            amount = op.alpha * op.scale

            def add(x: Any, d: _Direction = direction, amount: float = amount) -> Any:
                return x + amount * d.on(x)

            handles.append(blocks[op.layer].register_forward_hook(post(add)))
        ablated = [op.vector for op in plan.ops if op.mode == "ablate"]
        if ablated:
            basis = _Direction(_orthonormal(ablated))

            def ablate(x: Any) -> Any:
                return _ablate(x, basis)

            handles.append(model.get_input_embeddings().register_forward_hook(post(ablate)))
            for block in blocks:
                attn = _submodule(block, ("self_attn", "attention", "attn", "self_attention"))
                mlp = _submodule(block, ("mlp", "feed_forward", "ffn"))
                if attn is not None and mlp is not None:
                    handles.append(attn.register_forward_hook(post(ablate)))
                    handles.append(mlp.register_forward_hook(post(ablate)))
                else:
                    handles.append(block.register_forward_hook(post(ablate)))
        yield
