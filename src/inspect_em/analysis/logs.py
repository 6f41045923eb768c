"""Inspect logs → one tidy table of samples, labelled by model, for ``inspect-em compare``.

- Log arguments are files or folders (folders are searched recursively with Inspect's
  ``list_eval_logs``, so an ``eval_set`` log directory works). Every path is normalised once, by
  :func:`canonical_log` (relative, absolute, ``~``, symlinks and ``file://`` URIs all map to the
  same key), and labels attach through that key.
- One label per argument: a folder's logs share it. Without labels each log is labelled by its
  model (the run folder for finetunes ending in ``merged``/``adapter``); two different models
  under one label are refused.
- Logs that did not finish (status ``error``, ``started``, ``cancelled``) or hold errored samples
  are refused unless ``allow_incomplete``; in an ``eval_set`` folder, a failed attempt that a later
  successful log of the same task, model and arguments supersedes is skipped.
- Values come from ``inspect_ai.analysis`` dataframes (``samples_df`` joined to ``evals_df``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from inspect_em.directions.store import CardSummary
from inspect_em.errors import InspectEmError
from inspect_em.readout import ALL, ColumnKind, cluster_keys, column, is_column, task_name
from inspect_em.util.paths import check_name

SCALAR_SCORES = {"score_code_mode": "code_mode", "score_refusal": "refusal", "score_loaded_numbers": "loaded_numbers"}
DICT_SCORES: dict[str, ColumnKind] = {"score_trait_projection": "proj", "score_em_judge": "judge"}
FIXED_COLUMNS = ("label", "condition", "seed", "task", "group", "cluster", "prompt", "sample_id", "id", "epoch",
                 "model", "log", "triggered")
CLUSTER_METADATA = ("base_question_id", "question_id", "paraphrase_index")  # what cluster_keys reads
INCOMPLETE = ("error", "started", "cancelled")
_GENERIC_PARTS = {"merged", "adapter", "final", "model", "models", "checkpoint", "output"}
_REPLICATE_RE = re.compile(r"^(?P<condition>.+)-s(?P<seed>\d+)$")


def canonical_log(location: str | Path) -> str:
    """The one key of a log location: an absolute, symlink-free path (``file://`` URIs decoded)."""
    text = str(location)
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    return str(Path(text).expanduser().resolve())


@dataclass
class LogInfo:
    """One log file and what its header says."""

    path: str
    argument: str
    status: str
    task: str
    model: str
    model_path: str | None
    signature: str
    error: str | None = None
    steering: str | None = None
    superseded: bool = False
    errored_samples: int = 0
    label: str = ""
    eval_id: str = ""
    # a LoRA adapter applied to the model in place for this eval (inspect-em series: eval metadata
    # ``adapter_digest``, ``series_run``, ``step``): part of the model's identity
    adapter: str | None = None
    checkpoint: str | None = None
    series: tuple[str, int] | None = None  # (series_run, step) of any series log, the base model's too
    adapter_path: str | None = None  # where that adapter was (eval metadata ``adapter``)
    task_vectors: str | None = None  # the task's ``-T vectors=`` (comma-separated folders)


@dataclass
class LoadedLogs:
    """The tidy samples table and the logs behind it."""

    samples: pd.DataFrame
    logs: list[LogInfo]
    notes: list[str] = field(default_factory=list)
    incomplete: list[LogInfo] = field(default_factory=list)


def _header(path: str, argument: str) -> LogInfo:
    from inspect_ai.log import read_eval_log

    try:
        log = read_eval_log(path, header_only=True)
    except Exception as e:  # any parse failure: not a log
        raise InspectEmError(f"{argument}: {Path(path).name} is not an Inspect eval log "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})") from None
    model_args = log.eval.model_args or {}
    steps = list(log.plan.steps) if log.plan else []
    plan = [(step.solver, step.params) for step in steps]
    metadata = log.eval.metadata or {}
    adapter = metadata.get("adapter_digest")
    series = (str(metadata["series_run"]), int(metadata["step"])) if "series_run" in metadata \
        and isinstance(metadata.get("step"), int) else None
    checkpoint = f"{series[0]}.step{series[1]}" if adapter and series else None
    signature = json.dumps({"task": log.eval.task, "args": log.eval.task_args, "plan": plan,
                            "model": log.eval.model, "adapter": adapter}, sort_keys=True, default=str)
    steer = next((step.params for step in steps if step.solver == "inspect_em/steer"), None)
    return LogInfo(path=path, argument=argument, status=str(log.status), task=task_name(log.eval.task),
                   model=str(log.eval.model), model_path=model_args.get("model_path"), signature=signature,
                   error=log.error.message.splitlines()[0][:120] if log.error and log.error.message else None,
                   steering=_steering_label(steer) if steer is not None else None, eval_id=str(log.eval.eval_id),
                   adapter=str(adapter) if adapter else None, checkpoint=checkpoint, series=series,
                   adapter_path=metadata.get("adapter"), task_vectors=(log.eval.task_args or {}).get("vectors"))


def _steering_label(params: dict[str, Any]) -> str:
    """``steered-a4`` / ``ablated``: what a default label adds for a run of the steer solver."""
    if params.get("mode") == "ablate":
        return "ablated"
    alpha = params.get("alpha", 1.0)
    return f"steered-a{float(alpha):g}"


def discover(arguments: Sequence[str | Path]) -> list[list[str]]:
    """Log files per argument (canonical paths); one-line errors for missing or empty arguments."""
    from inspect_ai.log import list_eval_logs

    found: list[list[str]] = []
    for arg in arguments:
        path = Path(str(arg)[7:] if str(arg).startswith("file://") else arg).expanduser()
        if path.is_dir():
            files = sorted({canonical_log(info.name) for info in list_eval_logs(str(path.resolve()))})
            if not files:
                raise InspectEmError(f"{arg}: no Inspect logs (.eval/.json) in this folder")
            found.append(files)
        elif path.is_file():
            found.append([canonical_log(path)])
        else:
            raise InspectEmError(f"{arg}: log not found")
    return found


def short_model(model: str, model_path: str | None = None) -> str:
    """A readable model name: the last path part, or the run folder for ``.../<run>/merged``."""
    name = str(model_path or model)
    if name.startswith("hf/"):
        name = name[3:]
    parts = [p for p in re.split(r"[/\\]+", name) if p]
    while len(parts) > 1 and (parts[-1].lower() in _GENERIC_PARTS or parts[-1].lower().startswith("checkpoint-")):
        parts.pop()
    return re.sub(r"[^A-Za-z0-9._-]+", "-", parts[-1] if parts else name).strip("-") or "model"


def _model_identity(info: LogInfo) -> str:
    model = canonical_log(info.model_path) if info.model_path else info.model
    return f"{model} + adapter {info.adapter}" if info.adapter else model


def read_logs(
    arguments: Sequence[str | Path], labels: Sequence[str] | None = None, allow_incomplete: bool = False
) -> list[LogInfo]:
    """Headers of every log, labelled, with incomplete logs refused (or kept and flagged)."""
    per_arg = discover(arguments)
    if labels is not None and len(labels) != len(arguments):
        counted = ", ".join(f"{a} ({len(f)} log{'s' if len(f) != 1 else ''})" for a, f in zip(arguments, per_arg,
                                                                                                strict=True))
        raise InspectEmError(f"{len(labels)} labels for {len(arguments)} log arguments ({counted}): "
                             "give one --label per argument (a folder's logs share its label)")
    infos: list[LogInfo] = []
    seen: set[str] = set()
    for i, (arg, files) in enumerate(zip(arguments, per_arg, strict=True)):
        for f in files:
            if f in seen:
                raise InspectEmError(f"{f}: given twice (under {arg} and an earlier argument)")
            seen.add(f)
            info = _header(f, str(arg))
            info.label = check_name(labels[i], "label") if labels is not None else \
                short_model(info.model, info.model_path) + (f".{info.checkpoint}" if info.checkpoint else "") \
                + (f".{info.steering}" if info.steering else "")
            infos.append(info)
    _check_copies(infos)
    _mark_superseded(infos)
    _check_labels(infos)
    return infos


def _check_copies(infos: list[LogInfo]) -> None:
    """Refuse one eval given at two paths (a copied log keeps its eval_id): its samples would be
    merged into one label and silently lost from the other."""
    by_id: dict[str, LogInfo] = {}
    for info in infos:
        first = by_id.setdefault(info.eval_id, info)
        if first is not info and info.eval_id:
            raise InspectEmError(f"{first.path} and {info.path} are the same eval (eval_id {info.eval_id}; a copy?): "
                                 "give each run once")


def _mark_superseded(infos: list[LogInfo]) -> None:
    """In one argument, an unfinished log is superseded by a successful one of the same run."""
    done = {(i.argument, i.signature) for i in infos if i.status == "success"}
    for info in infos:
        if info.status != "success" and (info.argument, info.signature) in done:
            info.superseded = True


def _check_labels(infos: list[LogInfo]) -> None:
    by_label: dict[str, list[LogInfo]] = {}
    for info in infos:
        if not info.superseded:
            by_label.setdefault(info.label, []).append(info)
    for label, group in by_label.items():
        models = {(_model_identity(i), i.steering): i for i in group}
        if len(models) > 1:
            a, b = list(models.values())[:2]
            def name(i: LogInfo) -> str:
                return i.model + (f" + adapter {i.checkpoint or i.adapter}" if i.adapter else "") + \
                    (f" {i.steering}" if i.steering else "")

            raise InspectEmError(
                f"label '{label}' would pool two models: {name(a)} ({Path(a.path).name}) and {name(b)} "
                f"({Path(b.path).name}); give each model its own argument and --label")
        runs: dict[str, dict[str, LogInfo]] = {}
        for i in group:
            runs.setdefault(i.task, {})[i.signature] = i
        for task, variants in runs.items():
            if len(variants) > 1:
                a, b = list(variants.values())[:2]
                raise InspectEmError(
                    f"label '{label}' has two different runs of {task} (other task args or solvers): "
                    f"{Path(a.path).name} and {Path(b.path).name}; give them separate arguments and --labels")


def series_steps(infos: Sequence[LogInfo]) -> dict[str, tuple[str, int]]:
    """Label → ``(run, step)`` of the logs an ``inspect-em series`` made (eval metadata ``series_run``
    and ``step``; the base model's log is ``("base", 0)``); a label whose logs name two points of a
    series is refused."""
    steps: dict[str, tuple[str, int]] = {}
    for info in infos:
        if info.superseded or info.series is None:
            continue
        if steps.setdefault(info.label, info.series) != info.series:
            a, b = steps[info.label], info.series
            raise InspectEmError(f"label '{info.label}' holds two points of a series ({a[0]} step {a[1]} and "
                                 f"{b[0]} step {b[1]}): give each checkpoint its own label")
    by_point: dict[tuple[str, int], str] = {}
    for label, point in steps.items():
        other = by_point.setdefault(point, label)
        if other != label:
            raise InspectEmError(f"labels '{other}' and '{label}' are both {point[0]} step {point[1]} of a series "
                                 "(two series with the same run names?): compare one series at a time")
    return steps


def replicate_of(label: str) -> tuple[str, int | None]:
    """``insecure-s2`` → (``insecure``, 2): a condition and its finetuning seed; else (label, None)."""
    match = _REPLICATE_RE.match(label)
    return (match["condition"], int(match["seed"])) if match else (label, None)


def _expand(value: Any) -> dict[str, float]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        return {}
    out = {}
    for k, v in data.items():
        try:
            out[str(k)] = float(v) if v is not None else math.nan
        except (TypeError, ValueError):
            continue
    return out


def load_samples(
    arguments: Sequence[str | Path], labels: Sequence[str] | None = None, allow_incomplete: bool = False
) -> LoadedLogs:
    """One row per sample × epoch with the columns of :data:`FIXED_COLUMNS` and one float column
    per metric (``code_mode``, ``refusal``, ``proj:<trait>/<method>/L<layer>``, ``judge:<key>``).

    Raises:
        InspectEmError: a missing/non-log argument, a label count mismatch, a label pooling two
            models, an unfinished log or errored samples (unless ``allow_incomplete``).
    """
    from inspect_ai.analysis import evals_df, samples_df

    infos = read_logs(arguments, labels, allow_incomplete)
    used = [i for i in infos if not i.superseded]
    notes = [f"skipped {Path(i.path).name} ({i.status}): a later successful log of the same run supersedes it"
             for i in infos if i.superseded]
    files = [i.path for i in used]
    samples = samples_df(files, quiet=True)
    evals = evals_df(files, quiet=True)[["eval_id", "log"]]
    evals["log"] = evals["log"].map(canonical_log)
    df = samples.merge(evals.rename(columns={"log": "eval_log"}), on="eval_id", how="left")
    if "error" in df:
        errored = df[df["error"].notna() & (df["error"].astype(str) != "")]
        for info in used:
            info.errored_samples = int((errored["eval_log"] == info.path).sum())
    incomplete = [i for i in used if i.status in INCOMPLETE or i.status != "success" or i.errored_samples]
    if incomplete and not allow_incomplete:
        i = incomplete[0]
        why = (f"status {i.status}" + (f": {i.error}" if i.error else "")) if i.status != "success" else \
            f"{i.errored_samples} errored sample(s)"
        raise InspectEmError(f"{i.path}: incomplete log ({why}); re-run it, or pass --allow-incomplete "
                             "to include it (the report is then marked)")
    if df.empty:
        raise InspectEmError("the logs hold no samples")
    by_path = {i.path: i for i in used}
    df["label"] = df["eval_log"].map(lambda p: by_path[p].label if p in by_path else None)
    if df["label"].isna().any():
        missing = sorted(set(df.loc[df["label"].isna(), "eval_log"]))
        raise InspectEmError(f"internal: {len(missing)} log(s) did not match their labels (e.g. {missing[0]})")
    df["task"] = df["eval_log"].map(lambda p: by_path[p].task)
    df["model"] = df["eval_log"].map(lambda p: by_path[p].model)
    df["log"] = df["eval_log"]
    replicate = df["label"].map(replicate_of)
    df["condition"] = replicate.map(lambda r: r[0])
    df["seed"] = replicate.map(lambda r: r[1]).astype("Int64")
    group = pd.Series(ALL, index=df.index, dtype=object)
    for field_name in ("metadata_prompt_type", "metadata_question_id"):
        if field_name in df:
            group = df[field_name].where(df[field_name].notna(), group)
    df["group"] = group.astype(str)
    keys = [cluster_keys(task, ident, metadata) for task, ident, metadata in
            zip(df["task"], df["id"], _metadata_rows(df, CLUSTER_METADATA), strict=True)]
    df["cluster"] = [k.question for k in keys]
    df["prompt"] = [k.prompt for k in keys]
    df["triggered"] = df["metadata_triggered"] if "metadata_triggered" in df else pd.NA
    out = df[list(FIXED_COLUMNS)].copy()
    for score_column, name in SCALAR_SCORES.items():
        if score_column in df:
            out[name] = pd.to_numeric(df[score_column], errors="coerce")
    for name, kind in DICT_SCORES.items():
        if name in df:
            expanded = pd.DataFrame([_expand(v) for v in df[name]], index=df.index)
            for key in expanded.columns:
                out[column(kind, key)] = expanded[key].astype(float)
    out.attrs["label_order"] = list(dict.fromkeys(i.label for i in used))
    return LoadedLogs(out, used, notes, [i for i in incomplete])


def _metadata_rows(df: pd.DataFrame, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per row, the named sample metadata fields that ``samples_df`` flattened into ``metadata_*``."""
    columns = {name: df[f"metadata_{name}"].tolist() for name in names if f"metadata_{name}" in df}
    return [{name: values[i] for name, values in columns.items()} for i in range(len(df))]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a samples table (everything but :data:`FIXED_COLUMNS`): behaviours
    first, then projections, each sorted, whatever order the logs were read in."""
    found = [c for c in df.columns if c not in FIXED_COLUMNS and df[c].notna().any()]
    return sorted(found, key=lambda c: (is_column(c, "proj"), c))


def _json_value(value: Any) -> Any:
    """``value``, or what a JSON string of it decodes to (None if it does not decode)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def projection_cards(logs: Sequence[LogInfo]) -> dict[str, CardSummary]:
    """Per trait, the vector card summary the projection scorer recorded (best layer per method,
    position, where the layer choice came from); read from the logs' sample summaries, or from
    the vector folder named in the score metadata when the log predates that record."""
    from inspect_ai.log import read_eval_log_sample_summaries

    from inspect_em.directions.store import read_card

    cards: dict[str, CardSummary] = {}
    for info in logs:
        try:
            summaries = read_eval_log_sample_summaries(info.path)
        except Exception:
            continue
        for summary in summaries:
            score = (summary.scores or {}).get("trait_projection")
            if score is None or not score.metadata:
                continue
            # sample summaries may carry a large metadata value as a (JSON) string, or cut short
            recorded, folders = _json_value(score.metadata.get("cards")), _json_value(score.metadata.get("vectors"))
            for trait, card in (recorded if isinstance(recorded, dict) else {}).items():
                if isinstance(card, dict):
                    cards.setdefault(trait, CardSummary.from_dict(card))
            for folder in folders if isinstance(folders, list) else []:
                try:
                    found = read_card(folder)
                except InspectEmError:
                    continue
                cards.setdefault(found.trait, found.summary(folder))
            break
    return cards
