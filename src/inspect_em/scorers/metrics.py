"""Metrics shared by inspect_em scorers: per-group means that never fail on foreign logs."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from inspect_ai.scorer import Metric, SampleScore, metric, stderr

UNGROUPED = "(none)"


def _group_means(scores: list[SampleScore], key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s in scores:
        metadata = s.sample_metadata or {}
        groups[str(metadata.get(key, UNGROUPED))].append(s.score.as_float())
    return {name: float(np.mean(values)) for name, values in sorted(groups.items())}


@metric
def question_stderr(cluster: str = "base_question_id") -> Metric:
    """Standard error of the mean, clustered by question (Inspect's ``stderr(cluster=...)``) when
    every sample carries ``cluster`` in its metadata (our tasks do), else the plain standard error
    (a foreign log scored with ``inspect score``)."""
    clustered, plain = stderr(cluster=cluster), stderr()

    def compute(scores: list[SampleScore]) -> float:
        has_cluster = all((s.sample_metadata or {}).get(cluster) is not None for s in scores)
        # Inspect's Metric type is a union with its deprecated list[Score] form: these take SampleScores
        value = (clustered if has_cluster and scores else plain)(scores)  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]  # stderr gives a float

    return compute


@metric
def mean_by_question() -> Metric:
    """Mean score per ``question_id`` (samples without one fall in ``(none)``)."""

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        return _group_means(scores, "question_id")

    return compute


def _stderr(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


@metric
def contrast(positive: str = "harmful", negative: str = "benign") -> Metric:
    """Per ``prompt_type`` mean and standard error, plus the ``positive − negative`` gap.

    Returns nothing for samples without ``prompt_type`` metadata (other tasks), so it can sit
    beside any scorer.
    """

    def compute(scores: list[SampleScore]) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for s in scores:
            prompt_type = (s.sample_metadata or {}).get("prompt_type")
            if prompt_type is not None:
                groups[str(prompt_type)].append(s.score.as_float())
        out: dict[str, float] = {}
        for name, values in sorted(groups.items()):
            out[name] = float(np.mean(values))
            out[f"{name}_stderr"] = _stderr(values)
        if positive in groups and negative in groups:
            out["gap"] = out[positive] - out[negative]
            out["gap_stderr"] = float(np.hypot(out[f"{positive}_stderr"], out[f"{negative}_stderr"]))
        return out

    return compute
