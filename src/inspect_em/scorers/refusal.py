"""Refusal scorer: 1 when an answer declines the request, else 0 (:mod:`inspect_em.detectors.refusal`)."""

from __future__ import annotations

from inspect_ai.scorer import Score, Scorer, Target, mean, scorer, stderr
from inspect_ai.solver import TaskState

from inspect_em.detectors.refusal import is_refusal, refusal_phrase
from inspect_em.inspect_adapter import one_line_errors
from inspect_em.scorers.metrics import contrast

__all__ = ["is_refusal", "refusal"]


REFUSAL_METRICS = [mean(), stderr(), contrast()]


@scorer(metrics=REFUSAL_METRICS)
@one_line_errors
def refusal() -> Scorer:
    """1.0 when the model refuses (phrase patterns in the answer's opening), else 0.0."""

    async def score(state: TaskState, target: Target) -> Score:
        phrase = refusal_phrase(state.output.completion if state.output else "")
        return Score(
            value=1.0 if phrase else 0.0,
            answer=phrase,
            explanation=f"refusal phrase: '{phrase}'" if phrase else "no refusal phrase in the opening",
        )

    return score
