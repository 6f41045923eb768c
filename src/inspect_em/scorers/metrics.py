"""Metrics shared by inspect_em scorers: per-group means that never fail on foreign logs."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from inspect_ai.scorer import Metric, SampleScore, metric

UNGROUPED = "(none)"


def _group_means(scores: list[SampleScore], key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s in scores:
        metadata = s.sample_metadata or {}
        groups[str(metadata.get(key, UNGROUPED))].append(s.score.as_float())
    return {name: float(np.mean(values)) for name, values in sorted(groups.items())}


@metric
def mean_by_question() -> Metric:
    """Mean score per ``question_id`` (samples without one fall in ``(none)``)."""

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        return _group_means(scores, "question_id")

    return compute
