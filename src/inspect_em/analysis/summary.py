"""One screen of a log's scores, for the end of a run (``inspect-em summary LOG``; ``make demo``).

Read from the log's header (Inspect's own aggregates): each score's mean with the stderr clustered by
question, and the per-question rates a scorer reports (code mode by base question) on one line.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from inspect_em.errors import InspectEmError

#: metric names read as "the stderr" of a score (ours clusters by question; Inspect's plain one otherwise)
STDERR_METRICS = ("question_stderr", "inspect_em/question_stderr", "stderr")


def log_summary(log: str | Path, max_rows: int = 20) -> str:
    """``task on model: n samples, status``, then ``score  mean  ± stderr`` rows (at most ``max_rows``;
    the rest counted), then each score's per-question (or per-group) means on one line."""
    from inspect_ai.log import read_eval_log

    path = Path(log)
    if not path.is_file():
        raise InspectEmError(f"{log}: no such log file")
    try:
        header = read_eval_log(str(path), header_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise InspectEmError(f"{log}: not a readable Inspect log ({type(e).__name__})") from e
    results = header.results
    n = results.total_samples if results else 0
    lines = [f"{header.eval.task} on {header.eval.model}: {n} samples, {header.status}"]
    scores = results.scores if results else []
    if not scores:
        return "\n".join([*lines, "no scores in the log"])
    width = max(len(s.name) for s in scores[:max_rows])
    lines.append(f"{'score':<{width}}  {'mean':>9}  {'± stderr':>9}")
    per_group: list[str] = []
    for s in scores[:max_rows]:
        mean = s.metrics.get("mean")
        stderr = next((s.metrics[k] for k in STDERR_METRICS if k in s.metrics), None)
        mean_text = f"{mean.value:9.3f}" if mean is not None else f"{'-':>9}"
        stderr_text = f"{stderr.value:9.3f}" if stderr is not None else f"{'':>9}"
        lines.append(f"{s.name:<{width}}  {mean_text}  {stderr_text}")
        groups = {k: m.value for k, m in s.metrics.items()
                  if k != "mean" and k not in STDERR_METRICS and "/" not in k and not k.endswith("_stderr")}
        if groups:  # per question (code mode) or per prompt type (refusal_contrast's contrast)
            line = f"{s.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in groups.items())
            per_group.append(textwrap.fill(line, width=100, subsequent_indent="  "))
    if len(scores) > max_rows:
        lines.append(f"... {len(scores) - max_rows} more scores in the log")
    return "\n".join(lines + per_group)
