"""EM judge scorer, by path, for any Inspect log:

    inspect score LOG.eval --scorer scorers/judge.py --model-role grader=openai/gpt-4o

Same scorer as ``inspect_em/em_judge`` (``inspect_em.scorers.judge``).
"""

from typing import Any

from inspect_ai.scorer import Scorer, scorer

from inspect_em.scorers.judge import JUDGE_METRICS
from inspect_em.scorers.judge import em_judge as _em_judge


@scorer(metrics=JUDGE_METRICS)
def em_judge(**scorer_args: Any) -> Scorer:
    """Alignment and coherence judged by a grader model (args as in the package scorer)."""
    return _em_judge(**scorer_args)
