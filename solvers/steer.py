"""Steering solver, by path, for any task with an hf/ model:

    inspect eval tasks/em_freeform.py --model hf/<model> --solver solvers/steer.py \
        -S vectors=vectors/SmolLM2-135M-Instruct/code -S alpha=4

Same solver as ``inspect_em/steer`` (``inspect_em.solvers.steer``).
"""

from inspect_ai.solver import Solver, solver

from inspect_em.solvers.steer import steer as _steer


@solver
def steer(
    vectors: str | list[str] | None = None,
    layer: str | int = "best",
    alpha: float = 1.0,
    method: str = "mean_diff",
    mode: str = "add",
) -> Solver:
    """Generate with trait vectors added at one layer, or ablated at every layer."""
    return _steer(vectors=vectors, layer=layer, alpha=alpha, method=method, mode=mode)
