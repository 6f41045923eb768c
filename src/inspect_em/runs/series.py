"""EM over training time (``inspect-em series``): every checkpoint of one or more finetunes
(``finetune --save-every N``) evaluated like a finished model, each headline measure plotted against
the optimizer step with its CI, beside the LoRA deltas' norms and their direction's cosine with each
trait vector.

Per run and step: em_freeform with the given vectors (code mode, projections; the judged rate too
when a grader is bound with ``--grader``) → difference vs the base model and vs the control run's
checkpoint at the same step, paired by question (:func:`inspect_em.analysis.compare.diff_ci`). Step 0
of every run is the base model itself (a LoRA adapter starts at ΔW = 0), evaluated once. The base
model is loaded once; each checkpoint's adapter is applied to it in place for its eval and removed
afterwards (:func:`inspect_em.model.loading.lora_applied`), so no merged copy is written. Each log
names its run, step and adapter in the eval's metadata. Logs are kept under
``OUT-logs/<settings>/<run>/step-<k>-<adapter>`` (``<settings>``: a hash of the eval settings and the base
model; ``<adapter>``: of the checkpoint's weights), so a finished log is reused when the same command
runs again, and never for other settings or a retrained checkpoint.

Outputs (``OUT/``): ``series.csv`` (run, step, metric, value and CI, differences vs base and vs the
control with CIs), ``lora.csv`` (per step, layer and module: ``‖ΔW‖_F``, cosines), ``series.png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from inspect_em.analysis.checkpoints import BASE_RUN as BASE
from inspect_em.errors import InspectEmError


@dataclass
class SeriesResult:
    table: pd.DataFrame
    lora: pd.DataFrame
    folder: Path
    d_model: int | None = None  # the vectors' width (the cosine panel's random-direction line)
    control: str | None = None


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:12]


def check_adapters(label: str, checkpoints: Sequence[Any], base_path: str) -> None:
    """Every checkpoint of a run adapts ``base_path`` (its ``adapter_config.json`` says so), and its
    step 0, if saved, is the untrained adapter (ΔW = 0), which the base model's log stands for."""
    from inspect_em.analysis.checkpoints import lora_deltas
    from inspect_em.model.loading import check_in_place_adapter

    for checkpoint in checkpoints:
        check_in_place_adapter(checkpoint.path)
        config = json.loads((checkpoint.path / "adapter_config.json").read_text())
        named = str(config.get("base_model_name_or_path") or "")
        if named and Path(named).expanduser().exists() and \
                Path(named).expanduser().resolve() != Path(base_path).expanduser().resolve():
            raise InspectEmError(f"run {label}: {checkpoint.path.name} adapts {named}, not the base model {base_path}")
        if checkpoint.step == 0 and float(lora_deltas(checkpoint.path)["delta_norm"].max()) != 0.0:
            raise InspectEmError(f"run {label}: its step-0 adapter is not the untrained one (ΔW ≠ 0)")


def _finished_log(folder: Path) -> bool:
    """A successful log is already in ``folder`` (the command is resuming)."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    return folder.is_dir() and any(read_eval_log(info, header_only=True).status == "success"
                                   for info in list_eval_logs(str(folder)))


def _eval(model: Any, task: Any, log_dir: Path, seed: int, limit: int | None, grader: str | None,
          max_tokens: int, metadata: dict[str, Any]) -> None:
    from inspect_ai import eval as inspect_eval
    from transformers import set_seed

    roles = {"grader": grader} if grader else None
    # the provider seeds only when a model is built: every eval here (one base model for all of them)
    # starts from the same random state instead, so the checkpoints' answers share their draws
    set_seed(seed)
    log = inspect_eval(task, model=model, model_roles=roles, log_dir=str(log_dir), seed=seed, limit=limit,
                       max_tokens=max_tokens, metadata=metadata, display="none")[0]
    if log.status != "success":
        why = log.error.message.splitlines()[-1] if log.error else log.status
        raise InspectEmError(f"eval in {log_dir} did not finish: {why}; re-run the same command to resume")


def _prune_stale(logs_root: Path, runs: Sequence[str], current: set[Path], report: Callable[[str], None]) -> None:
    """Remove the logs of checkpoints no longer in these runs (a run retrained, or saved at other steps):
    each run's logs folder then holds one training, as ``compare`` reads it whole. Only
    ``<run>/step-<k>-<digest>`` folders of these runs, which ``series`` itself writes, are touched."""
    import re
    import shutil

    for folder in sorted(f for run in runs for f in (logs_root / run).glob("step-*")):
        if folder.is_dir() and re.fullmatch(r"step-\d+-[0-9a-f]{12}", folder.name) and folder not in current:
            report(f"removing the logs of a checkpoint no longer in run {folder.parent.name}: {folder.name}")
            shutil.rmtree(folder)


def run_series(
    model_ref: str,
    runs: dict[str, Path],
    out: Path,
    vectors: Sequence[Path],
    *,
    control: str | None = None,
    samples_per_question: int = 2,
    max_tokens: int = 48,
    variants: str = "plain",
    limit: int | None = None,
    grader: str | None = None,
    seed: int = 0,
    force: bool = False,
    report: Callable[[str], None] = print,
) -> SeriesResult:
    """Evaluate every checkpoint of ``runs`` (label → finetune folder) and write the series (see the
    module docstring). Inputs are checked before any model loads."""
    from inspect_ai.model import get_model

    from inspect_em.analysis.checkpoints import (
        card_directions,
        plot_series,
        read_series,
        series_deltas,
        series_table,
    )
    from inspect_em.analysis.logs import load_samples
    from inspect_em.directions import store as vector_store
    from inspect_em.inspect_adapter import hf_api
    from inspect_em.model.loading import (
        check_vectors_fit,
        hub_offline_for_local,
        local_folder,
        lora_applied,
        model_id_of,
        resolve_model_ref,
    )
    from inspect_em.tasks import em_freeform
    from inspect_em.util.paths import (
        atomic_output,
        check_live_folder,
        check_name,
        check_output,
        claim_live_folder,
        sha256_file,
    )

    if control is not None and control not in runs:
        raise InspectEmError(f"--control {control!r} is not one of the runs ({', '.join(runs)})")
    for label in runs:
        check_name(label, "run label")
        if label == BASE:
            raise InspectEmError("'base' names the base model: give the runs other labels")
    series = {label: read_series(folder) for label, folder in runs.items()}
    cards = [vector_store.load(v) for v in vectors]
    vecs = card_directions(cards)  # resolved now: a card without mean_diff fails before any eval
    base_path = resolve_model_ref(model_ref)
    for label, checkpoints in series.items():
        check_adapters(label, checkpoints, base_path)
    check_vectors_fit(cards, base_path)
    name = model_id_of(model_ref).rsplit("/", 1)[-1]
    # "method": how a checkpoint is evaluated (logs of another method are never reused)
    evals = {"method": "adapter in place, seeded", "model": model_id_of(model_ref),
             "vectors": [str(v) for v in vectors], "samples_per_question": samples_per_question,
             "max_tokens": max_tokens, "variants": variants, "limit": limit, "grader": grader, "seed": seed}
    config = {**evals, "runs": {k: str(v) for k, v in runs.items()},
              "steps": {k: [c.step for c in s] for k, s in series.items()}, "control": control}
    inputs = [p for p in [local_folder(model_ref), *runs.values(), *vectors] if p is not None]
    check_output(out, command="series", config=config, inputs=inputs, force=force)
    live = out.parent / f"{out.name}-logs"  # resumable; the report folder is replaced whole
    check_live_folder(live, command="series", config={}, force=force)
    claim_live_folder(live, command="series", config={}, force=force)
    logs_root = live / _digest(json.dumps(evals, sort_keys=True).encode())

    def task() -> Any:
        return em_freeform(variants=variants, samples_per_question=samples_per_question,
                           vectors=",".join(str(Path(v).resolve()) for v in vectors) or None,
                           judge=grader is not None)  # resolved: compare reads the cards back from the logs

    loaded: list[Any] = []

    def base_model() -> Any:
        """The base model, loaded once, when the first eval needs it (a resumed series may need none)."""
        if not loaded:
            report("loading the base model")
            loaded.append(get_model(f"hf/{name}", model_path=base_path, memoize=False))
        return loaded[0]

    logs, labels = [str(logs_root / BASE)], [BASE]
    steps: dict[str, tuple[str, int]] = {}
    with hub_offline_for_local(model_ref):  # the evals too: Inspect looks a readable name up once per process
        if not _finished_log(logs_root / BASE):
            report("evaluating the base model (step 0 of every run)")
            _eval(base_model(), task(), logs_root / BASE, seed, limit, grader, max_tokens,
                  {"series_run": BASE, "step": 0})
        for run, checkpoints in series.items():
            for checkpoint in checkpoints:
                if checkpoint.step == 0:  # ΔW = 0 (checked): the base model's log stands for it
                    continue
                label = f"{run}.step{checkpoint.step}"
                steps[label] = (run, checkpoint.step)
                digest = sha256_file(checkpoint.path / "adapter_model.safetensors")[:12]  # streamed: large at 32B
                log_dir = logs_root / run / f"step-{checkpoint.step}-{digest}"
                if not _finished_log(log_dir):
                    report(f"evaluating {run} at step {checkpoint.step}")
                    model = base_model()
                    api = hf_api(model)
                    assert api is not None  # get_model("hf/...")
                    with lora_applied(api.model, checkpoint.path):
                        _eval(model, task(), log_dir, seed, limit, grader, max_tokens,
                              {"series_run": run, "step": checkpoint.step, "adapter": str(checkpoint.path.resolve()),
                               "adapter_digest": digest})
                logs.append(str(log_dir))
                labels.append(label)
    _prune_stale(logs_root, list(series), set(map(Path, logs)), report)
    report("reading the logs")
    samples = load_samples(logs, labels=labels).samples
    table = series_table(samples, steps, control, BASE)
    lora = pd.concat([series_deltas(folder, vecs).assign(run=run) for run, folder in runs.items()],
                     ignore_index=True)
    d_model = cards[0].card.d_model if cards else 1
    with atomic_output(out, command="series", config=config, inputs=inputs, force=force) as tmp:
        table.to_csv(tmp / "series.csv", index=False)
        lora.to_csv(tmp / "lora.csv", index=False)
        plot_series(table, lora, d_model, tmp / "series.png")
        (tmp / "series.json").write_text(json.dumps({**config, "logs": dict(zip(labels, logs, strict=True))},
                                                    indent=2))
    return SeriesResult(table, lora, out, d_model, control)
