"""Trait-projection scorer, by path, for any Inspect log:

    inspect score LOG.eval --scorer scorers/projection.py \
        -S vectors=vectors/SmolLM2-135M-Instruct/code -S probe_model=embedded

Same scorer as ``inspect_em/trait_projection`` (``inspect_em.scorers.projection``).
"""

from typing import Any

from inspect_ai.scorer import Scorer, scorer

from inspect_em.scorers.projection import PROJECTION_METRICS
from inspect_em.scorers.projection import trait_projection as _trait_projection


@scorer(metrics=PROJECTION_METRICS)
def trait_projection(**scorer_args: Any) -> Scorer:
    """Projections of each transcript onto trait vectors (args as in the package scorer)."""
    return _trait_projection(**scorer_args)
