"""The EM judge: grader replies read as numbers or categories, the judge prompts and score keys
(``readings``), and the ``em_judge`` scorer (``scorer``: :class:`GraderReader` asks the graders,
:func:`judge_values` turns their readings into score values)."""

from inspect_em.scorers.judge.scorer import (
    GraderReader,
    JudgeValues,
    em_judge,
    grader_role,
    judge_agreement,
    judge_values,
    resolve_graders,
)

__all__ = ["GraderReader", "JudgeValues", "em_judge", "grader_role", "judge_agreement", "judge_values",
           "resolve_graders"]
