"""Generation that records trait projections on the way (no extra forward pass afterwards).

Our tasks use it instead of ``generate()`` when they project: with an ``hf/`` model the hooked
blocks project each token as the model reads it (:mod:`inspect_em.model.capture`) and the
``trait_projection`` scorer with the same arguments finds the values in the sample's store; with
any other provider it is plain ``generate()`` and the scorer reads the transcript itself.
"""

from __future__ import annotations

from inspect_ai.model import get_model
from inspect_ai.solver import Generate, Solver, TaskState, solver

from inspect_em.inspect_adapter import one_line_errors
from inspect_em.readout import Method, Position


@solver
@one_line_errors
def generate_with_projections(
    vectors: str | list[str] | None = None,
    method: Method = "mean_diff",
    layers: str | int | list[int] = "best",
    position: Position = "response_mean",
    trace: bool = False,
    max_trace: int = 256,
) -> Solver:
    """Generate, capturing the projections ``trait_projection`` (same arguments) will report.

    Args:
        vectors, method, layers, position, trace, max_trace: as for ``trait_projection``.
    """
    from inspect_em.model.projection import projection_setup

    setup = projection_setup(vectors, method, layers, position, trace, max_trace)
    checked: set[int] = set()

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        from inspect_em.inspect_adapter import generation, hf_api
        from inspect_em.model.projection import check_vectors

        api = hf_api(get_model())
        if api is None:
            return await generate(state)
        if id(api.model) not in checked:  # vectors of another model never reach its forward pass
            check_vectors(setup.sets, api.model, source=f"model {api.model_name}")
            checked.add(id(api.model))
        with generation(api, capture=setup.spec):
            return await generate(state)

    return solve
