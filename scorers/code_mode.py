"""Code-mode scorer, by path, for any Inspect log in a checkout (installed: ``--scorer inspect_em/code_mode``):

    inspect score LOG.eval --scorer scorers/code_mode.py

Same scorer as ``inspect_em/code_mode`` (``inspect_em.scorers.code_mode``).
"""

from inspect_ai.scorer import Scorer, scorer

from inspect_em.scorers.code_mode import CODE_MODE_METRICS
from inspect_em.scorers.code_mode import code_mode as _code_mode


@scorer(metrics=CODE_MODE_METRICS)
def code_mode() -> Scorer:
    """1.0 when the answer is code instead of natural language, else 0.0."""
    return _code_mode()
