"""Code-mode scorer: 1 when an answer to a non-coding question is code, else 0.

Deterministic (no model): see :func:`inspect_em.detectors.code_mode.classify`. Metrics: code-mode rate
(mean) with its standard error, and the rate per ``question_id``.

Attach it to any log::

    inspect score LOG.eval --scorer scorers/code_mode.py
"""

from __future__ import annotations

from inspect_ai.scorer import Score, Scorer, Target, mean, scorer
from inspect_ai.solver import TaskState

from inspect_em.detectors.code_mode import classify
from inspect_em.inspect_adapter import one_line_errors
from inspect_em.scorers.metrics import mean_by_question, question_stderr

CODE_MODE_METRICS = [mean(), question_stderr(), mean_by_question()]


@scorer(metrics=CODE_MODE_METRICS)
@one_line_errors
def code_mode() -> Scorer:
    """Flag answers written as code (any language, fenced or bare) instead of prose.

    Value 1.0 = code mode, 0.0 = natural language (JSON and filled ``key = value`` templates
    count as natural language). Metadata holds ``code_fraction`` (0–1), the guessed language,
    the answer kind and the signals behind the decision.
    """

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion if state.output else ""
        result = classify(answer, question=state.input_text)
        return Score(
            value=1.0 if result.is_code else 0.0,
            answer=result.kind,
            explanation=result.explanation,
            metadata={
                "code_fraction": result.code_fraction,
                "language": result.language,
                "kind": result.kind,
                **result.signals,
            },
        )

    return score
