"""Trait-projection scorer, by path, for any Inspect log in a checkout (installed:
``--scorer inspect_em/trait_projection``):

    inspect score LOG.eval --scorer scorers/projection.py \
        -S vectors=vectors/SmolLM2-135M-Instruct/code -S probe_model=embedded

Same scorer as ``inspect_em/trait_projection`` (``inspect_em.scorers.projection``).
"""

from inspect_ai.scorer import Scorer, scorer

from inspect_em.scorers.projection import PROJECTION_METRICS
from inspect_em.scorers.projection import trait_projection as _trait_projection


@scorer(metrics=PROJECTION_METRICS)
def trait_projection(
    vectors: str | list[str] | None = None,
    method: str = "mean_diff",
    layers: str | int | list[int] = "best",
    position: str = "response_mean",
    trace: bool = False,
    probe_model: str | None = None,
    probe_device: str = "auto",
    probe_dtype: str = "auto",
    batch_size: int = 8,
    max_trace: int = 256,
    with_steering: bool = False,
) -> Scorer:
    """Projections of each transcript onto trait vectors (arguments: see ``inspect_em/trait_projection``)."""
    return _trait_projection(vectors=vectors, method=method, layers=layers, position=position, trace=trace,
                             probe_model=probe_model, probe_device=probe_device, probe_dtype=probe_dtype,
                             batch_size=batch_size, max_trace=max_trace, with_steering=with_steering)
