"""Screening training data before finetuning: how far would each example push the model along a
trait? (persona_vectors' projection difference.)

For each chat example: the projection of its assistant turn (teacher-forced, mean over the
assistant's tokens, at each vector card's layer) minus the projection of the base model's own
greedy answer to the same conversation. A dataset whose examples score high asks the model to
answer further along the trait than it does by itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inspect_em.errors import InspectEmError


@dataclass
class Screen:
    """One row per example (``scores``) and a summary per trait (mean with a 95% CI)."""

    scores: pd.DataFrame
    summary: pd.DataFrame


def screening_chats(data: str | Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    """The examples to screen: each must end with the assistant answer being screened, after a user
    turn (it is compared with the model's own answer to what comes before it). One-line errors."""
    from inspect_em.runs.finetune import read_chat_jsonl

    chats = read_chat_jsonl(data)
    chats = chats[:limit] if limit else chats
    for i, chat in enumerate(chats):
        if chat[-1]["role"] != "assistant" or "user" not in [m["role"] for m in chat[:-1]]:
            raise InspectEmError(f"{data}: example {i + 1} must end with an assistant answer after a user turn "
                                 f"(it ends with a {chat[-1]['role']} turn); screening compares that answer with "
                                 "the model's own")
    return chats


def screen(
    data: str | Path, model: Any, tokenizer: Any, vector_sets: Sequence[Any], *, method: str = "mean_diff",
    limit: int | None = None, max_new_tokens: int = 48, batch_size: int = 8, progress: bool = True,
) -> Screen:
    """Screening scores of every example of a chat JSONL (see the module docstring)."""
    from inspect_em.analysis.stats import Clustered, bootstrap_mean
    from inspect_em.model.activations import chat_ids, pad_token_id, response_ids
    from inspect_em.model.projection import check_vectors, project, select_vectors
    from inspect_em.runs.extract import generate_responses

    chats = screening_chats(data, limit)
    check_vectors(vector_sets, model, source="screening model")
    vectors = select_vectors(vector_sets, method=method, layers="best")
    contexts, answers = [], []
    for chat in chats:
        contexts.append(chat[:-1])
        answers.append(chat[-1]["content"])
    own = generate_responses(model, tokenizer, contexts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             progress=progress, desc="base answers")
    prompts = [chat_ids(tokenizer, c) for c in contexts]
    pad = pad_token_id(tokenizer)
    data_proj = project(model, prompts, [response_ids(tokenizer, a) for a in answers], vectors,
                        position="response_mean", pad_id=pad, batch_size=batch_size)
    base_proj = project(model, prompts, [response_ids(tokenizer, a) for a in own], vectors,
                        position="response_mean", pad_id=pad, batch_size=batch_size)
    rows = []
    for i, (d, b) in enumerate(zip(data_proj, base_proj, strict=True)):
        row: dict[str, Any] = {"example": i, "user": contexts[i][-1]["content"][:160].replace("\n", " "),
                               "answer": answers[i][:160].replace("\n", " ")}
        for v in vectors:
            dv = d.values[v.key] if d is not None else math.nan
            bv = b.values[v.key] if b is not None else math.nan
            row.update({f"{v.key}:data": dv, f"{v.key}:base": bv, f"{v.key}:score": dv - bv})
        rows.append(row)
    scores = pd.DataFrame(rows)
    summary = []
    for v in vectors:
        values = scores[f"{v.key}:score"].to_numpy(dtype=float)
        low, high = bootstrap_mean(Clustered.of(values))
        summary.append({"trait": v.trait, "key": v.key, "n": int(np.isfinite(values).sum()),
                        "mean": float(np.nanmean(values)), "ci_low": low, "ci_high": high,
                        "mean_data": float(np.nanmean(scores[f"{v.key}:data"])),
                        "mean_base": float(np.nanmean(scores[f"{v.key}:base"]))})
    return Screen(scores, pd.DataFrame(summary))


def write_screen(result: Screen, out: Path, data: str | Path, config: dict[str, Any], force: bool = False) -> Path:
    """``screen.csv`` (ranked by the first trait's score), ``summary.csv`` and ``histogram.png``."""
    from inspect_em.analysis.plots import subplots
    from inspect_em.util.paths import atomic_output

    first = f"{result.summary['key'].iloc[0]}:score"
    ranked = result.scores.sort_values(first, ascending=False)
    with atomic_output(out, command="screen", config=config, inputs=[data], force=force) as tmp:
        ranked.to_csv(tmp / "screen.csv", index=False, float_format="%.6g")
        result.summary.to_csv(tmp / "summary.csv", index=False, float_format="%.6g")
        fig, axes = subplots(len(result.summary), 2.8, width=7)
        for ax, row in zip(axes, result.summary.itertuples(), strict=True):
            ax.hist(result.scores[f"{row.key}:score"].dropna(), bins=30, color="tab:blue", alpha=0.8)
            ax.axvline(0, color="black", lw=0.8)
            ax.axvline(row.mean, color="tab:red", lw=1.2, label=f"mean {row.mean:+.2f} [{row.ci_low:+.2f}, "
                                                                 f"{row.ci_high:+.2f}]")
            ax.set_xlabel(f"{row.key}: data answer − base model's own answer")
            ax.set_ylabel("examples")
            ax.legend(fontsize=8)
        fig.suptitle(f"screening {Path(data).name}", fontsize=9)
        fig.savefig(tmp / "histogram.png", dpi=110, bbox_inches="tight")
    return out


def check_data(path: str | Path) -> None:
    if not Path(path).is_file():
        raise InspectEmError(f"{path}: data file not found")
