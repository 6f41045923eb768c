"""Steering solver: generate with trait directions added to (or ablated from) the residual stream.

Works on any task of any suite whose model is on Inspect's ``hf/`` provider; it replaces the
task's solver with one steered generation, using the task's generate config:

    inspect eval inspect_em/em_freeform --model hf/<model> --solver inspect_em/steer \\
        -S vectors=vectors/SmolLM2-135M-Instruct/code -S alpha=4
    inspect eval inspect_em/refusal_contrast --model hf/<model> --solver inspect_em/steer \\
        -S vectors=vectors/SmolLM2-135M-Instruct/refusal -S mode=ablate

The hooks live only for this sample's generation batches (see :mod:`inspect_em.inspect_adapter`):
samples with the same steering may share a batch, different steering never does, and other
forward passes on the model (unsteered samples, the projection scorer) never see them. Each
sample's metadata records the steering (``steering``).
"""

from __future__ import annotations

from inspect_ai.model import get_model
from inspect_ai.solver import Generate, Solver, TaskState, solver

from inspect_em.errors import InspectEmError
from inspect_em.inspect_adapter import one_line_errors
from inspect_em.model.steering import SteerMode
from inspect_em.readout import Method


@solver
@one_line_errors
def steer(
    vectors: str | list[str] | None = None,
    layer: str | int | list[int] = "best",
    alpha: float = 1.0,
    method: Method = "mean_diff",
    mode: SteerMode = "add",
) -> Solver:
    """Generate with trait vectors added at one layer or several together, or ablated at every layer.

    Args:
        vectors: Vector folder(s) (``vectors/<model>/<trait>``), comma-separated or a list.
        layer: ``best`` (each card's chosen layer), a layer number, or several layers
            (``12,14,16,18`` or ``12-18``: each layer's own vector is added there, at ``alpha``
            times that layer's fit norm). ``ablate`` removes the direction(s) everywhere; this
            only picks which layer's vector.
        alpha: Multiple of the fit mean-difference norm at that layer to add (1 adds the
            positive − negative mean difference; negative values subtract).
        method: Extraction method whose vectors to use.
        mode: ``add`` or ``ablate`` (directional ablation, Arditi et al. 2024).
    """
    from inspect_em.inspect_adapter import hf_api, inside_eval
    from inspect_em.model.hooks import find_layers, hidden_size
    from inspect_em.model.steering import build_plan, check_plan

    if vectors is None:
        raise InspectEmError("steer needs vectors= (a vectors/<model>/<trait> folder, or several)")
    plan = build_plan(vectors, layer=layer, alpha=alpha, method=method, mode=mode)
    checked: set[int] = set()
    api = hf_api() if inside_eval() else None  # `inspect eval` builds us for its model: check it now
    if api is not None:
        check_plan(plan, len(find_layers(api.model)), hidden_size(api.model))
        checked.add(id(api.model))

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        from inspect_em.inspect_adapter import generation, hf_api
        from inspect_em.model.hooks import find_layers, hidden_size

        api = hf_api(get_model())
        if api is None:
            raise InspectEmError(f"steer needs a model on Inspect's hf/ provider, not {get_model()}")
        if id(api.model) not in checked:
            check_plan(plan, len(find_layers(api.model)), hidden_size(api.model))
            checked.add(id(api.model))
        state.metadata["steering"] = plan.describe()
        with generation(api, plan):
            return await generate(state)

    return solve
