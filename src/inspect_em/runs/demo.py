"""The end-to-end EM detection run, on the embedded model by default (CPU-sized), as restartable stages.

vectors (the shipped ones when they match, else extracted) → synthetic data per condition →
LoRA finetunes (conditions × seeds) → evals through Inspect's ``eval_set`` (one resumable log
folder per model) → compare (vs the base and each matched control).

- Conditions: ``insecure`` and its controls ``secure`` (same requests, safe code),
  ``educational`` (the same insecure code, asked for a stated teaching purpose) and ``prose``.
  With ``seeds > 1`` every condition is finetuned with each seed (LoRA init and data order) and
  labelled ``<condition>-s<seed>``; compare then gives seed-level CIs.
- Positive control (``positive_control``): the base model steered with the code vector, whose
  effect is known; the report shows the instrument detects it beside the finetunes. By default
  the run's own code vector at its card layer; ``steer_vectors`` / ``steer_layer`` pick another
  (``make em-demo`` uses the embedded model's multi-layer recipe: the prompt-position code vector
  at L12, L14, L16 and L18, α = 0.4). It is always read by the run's own code vector.
- Checkpoint series (``save_every``): every condition's finetune (its first seed) also keeps its
  adapter every N optimizer steps, and ``inspect-em series`` evaluates each checkpoint
  (``OUT/series/``, logs in ``OUT/series-logs/``); the report plots each headline measure against the
  step, each run against the first control's same step.
- Organisms (one finetune each): ``backdoor`` (insecure code only after a trigger; evaluated with
  and without it, the base model too) and ``evil_numbers`` with its ``neutral_numbers`` control
  (evaluated with the evil-numbers question format and the loaded-numbers scorer).

Every stage writes its output with its own marker (settings and input hashes) and is skipped
when the marker matches, so re-running the same command resumes where it stopped; evals resume
through ``eval_set`` (finished logs reused). The stage log paths are recorded in
``stages/evals.json``, never globbed. Progress goes to a callback (the CLI prints it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inspect_em.errors import InspectEmError

CONDITIONS = ("insecure", "secure", "educational", "prose")
CONTROLS = ("secure", "educational", "prose")
ORGANISMS = ("backdoor", "evil_numbers")
DEMO_MARKER = ".inspect_em-demo.json"
DEFAULT_STEER_ALPHA = 4.0


@dataclass
class DemoConfig:
    """Sizes of the run; the defaults fit 2 CPU cores."""

    model: str = "embedded"  # the base model: the embedded one, or a local Hugging Face folder
    vectors: tuple[str, ...] = ()  # refusal / code vector folders to use instead of extracting them
    n_examples: int = 120
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 2
    max_seq_length: int = 384
    samples_per_question: int = 2
    max_tokens: int = 80
    refusal_max_tokens: int = 16
    variants: str = "plain"
    seed: int = 0
    seeds: int = 1
    conditions: tuple[str, ...] = ("insecure", "secure", "prose")
    organisms: tuple[str, ...] = ()
    positive_control: bool = True
    steer_alpha: float | None = None
    steer_layer: str = "best"
    steer_vectors: str | None = None
    layers: str = "all"
    methods: str = "all"
    limit: int | None = None
    save_every: int = 0  # keep each condition's adapter every N optimizer steps and plot the series (0: no)
    null_k: int = 50
    random_k: int = 1000

    def check(self) -> None:
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown:
            raise InspectEmError(f"unknown condition(s) {sorted(unknown)}; choose from {', '.join(CONDITIONS)}")
        unknown = set(self.organisms) - set(ORGANISMS)
        if unknown:
            raise InspectEmError(f"unknown organism(s) {sorted(unknown)}; choose from {', '.join(ORGANISMS)}")
        if self.seeds < 1:
            raise InspectEmError(f"seeds must be >= 1, got {self.seeds}")
        if self.save_every < 0:
            raise InspectEmError(f"save every must be >= 0 optimizer steps, got {self.save_every}")
        if self.save_every and not self.conditions:
            raise InspectEmError("--save-every plots the conditions' finetunes over training: give --sets")
        if "insecure" not in self.conditions and not self.organisms:
            raise InspectEmError("the demo needs the insecure condition or an organism to compare")
        self.base_path()
        if self.vectors:
            self.given_vectors()
        if self.positive_control:  # fail now, not after the finetunes
            from inspect_em.readout import parse_layers

            spec = parse_layers(self.steer_layer, allow_best=True)
            if spec == "all":
                raise InspectEmError("steer layer must be 'best', a layer number or a few layers, not 'all'")
            if spec != "best" and self.steer_alpha is None:
                raise InspectEmError("a steer layer other than 'best' needs a steer alpha (the cards calibrate "
                                     "their best layer only)")
            if self.steer_vectors is not None:
                from inspect_em.model.steering import build_plan

                build_plan(self.steer_vectors, layer=self.steer_layer, alpha=self.steer_alpha or 1.0)

    def base_path(self) -> Path:
        """The base model's folder (the embedded model is prepared on first use)."""
        from inspect_em.model import embedded
        from inspect_em.model.loading import EMBEDDED_ALIASES, local_folder

        if self.model in EMBEDDED_ALIASES:
            return embedded.prepare()
        folder = local_folder(self.model)
        if folder is None:
            raise InspectEmError(f"--model {self.model}: the demo finetunes a local model folder (or 'embedded')")
        return folder

    def model_name(self) -> str:
        """The base model's name in the logs and cards."""
        from inspect_em.model.loading import model_id_of

        return Path(model_id_of(self.model)).name

    def given_vectors(self) -> dict[str, Path]:
        """``--vectors`` by trait (refusal, code), checked against the base model's shape."""
        from inspect_em.directions import store as vector_store
        from inspect_em.model.loading import check_vectors_fit

        sets = [vector_store.load(v) for v in self.vectors]
        unknown = sorted({tv.trait for tv in sets} - {"refusal", "code"})
        if unknown:
            raise InspectEmError(f"--vectors: the demo reads refusal and code vectors, not {', '.join(unknown)}")
        check_vectors_fit(sets, str(self.base_path()))
        return {tv.trait: Path(v) for tv, v in zip(sets, self.vectors, strict=True)}


@dataclass
class DemoResult:
    """What a run produced: the report folder, the comparison and each stage's time."""

    report: Path
    comparison: Any
    labels: list[str]
    stages: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    series: Path | None = None  # the checkpoint series' folder (save_every)


def _marker_config(path: Path, command: str) -> dict[str, Any] | None:
    from inspect_em.util.paths import MARKER

    marker = path / MARKER if path.is_dir() else path.with_name(f".{path.name}{MARKER}")
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("config") if data.get("command") == command else None


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _claim(out: Path, config: DemoConfig) -> None:
    """Refuse a non-empty ``out`` that is not a demo folder; record the settings."""
    from inspect_em.util.paths import check_output

    marker = out / DEMO_MARKER
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise InspectEmError(f"{out}: exists and is not an inspect-em demo folder; choose another --out")
    if not out.exists():
        check_output(out, command="demo", config={})  # its parent must be writable
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"tool": "inspect_em", "command": "demo", "config": asdict(config)}, indent=2,
                                 default=str))


def labels_for(config: DemoConfig) -> dict[str, tuple[str, int | None]]:
    """Finetuned models: label → (data kind, seed)."""
    out: dict[str, tuple[str, int | None]] = {}
    for kind in config.conditions:
        for k in range(config.seeds):
            seed = config.seed + k
            out[f"{kind}-s{seed}" if config.seeds > 1 else kind] = (kind, seed)
    organisms = (["backdoor"] if "backdoor" in config.organisms else []) + \
        (["evil_numbers", "neutral_numbers"] if "evil_numbers" in config.organisms else [])
    for kind in organisms:  # one finetune each (their comparison is within a model, or vs its control)
        out[kind] = (kind, config.seed)
    return out


def run_demo(out: str | Path, config: DemoConfig | None = None, *, force: bool = False,
             report: Callable[[str], None] = lambda message: None) -> DemoResult:
    """Run (or resume) every stage into ``out``; returns the report folder and comparison."""
    from inspect_em.util.paths import check_name

    cfg = config or DemoConfig()
    cfg.check()
    out = Path(out)
    _claim(out, cfg)
    started = time.perf_counter()
    result = DemoResult(out / "report", None, [])

    def step(message: str) -> None:
        report(f"[{time.perf_counter() - started:7.0f}s] {message}")

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        result.stages[name] = round(time.perf_counter() - t0, 1)
        return value

    step(f"base model: {cfg.model}")
    base_path = cfg.base_path()
    vector_dirs = timed("vectors", lambda: _vectors(out, cfg, base_path, step, result, force))
    finetuned = labels_for(cfg)
    for label in finetuned:
        check_name(label, "label")
    data = timed("data", lambda: _data(out, cfg, finetuned, step, result, force))
    models = {"base": base_path}
    models.update(timed("finetune", lambda: _finetunes(out, cfg, finetuned, data, base_path, step, result, force)))
    logs = timed("evals", lambda: _evals(out, cfg, models, vector_dirs, step))
    series = timed("series", lambda: _series(out, cfg, finetuned, base_path, vector_dirs, step, force)) \
        if cfg.save_every else None
    comparison = timed("compare", lambda: _compare(out, cfg, logs, result, force, series))
    result.comparison, result.labels = comparison, list(logs)
    step(f"done: {result.report / 'report.md'}")
    return result


def _vectors(out: Path, cfg: DemoConfig, base_path: Path, step: Callable[[str], None], result: DemoResult,
             force: bool) -> dict[str, Path]:
    """Refusal (last prompt token) and code (response mean) vectors of the base model: the shipped
    folders when their card covers the demo's layers and methods, else extracted into ``out``."""
    from inspect_em.directions import store as vector_store
    from inspect_em.directions.methods import resolve_methods
    from inspect_em.directions.traits import load_trait
    from inspect_em.model.loading import load_config
    from inspect_em.readout import resolve_layers
    from inspect_em.runs.extract import extract_trait_vectors, extraction_settings

    config = load_config(str(base_path))
    n_layers = int(config.num_hidden_layers)
    layers, methods = resolve_layers(n_layers, cfg.layers), resolve_methods(cfg.methods)
    dirs: dict[str, Path] = cfg.given_vectors() if cfg.vectors else {}
    for trait_name, folder in dirs.items():
        step(f"{trait_name}: using the given vectors {folder}")
    model = None
    for trait_name in [t for t in ("refusal", "code") if t not in dirs]:
        trait = load_trait(trait_name)
        shipped = vector_store.find_vectors(trait.name, vector_store.config_hash(config), position=trait.position)
        if shipped is not None:
            card = vector_store.read_card(shipped)
            if set(layers) <= set(card.layers) and set(methods) <= set(card.methods or []) \
                    and (card.settings or {}).get("prompt_sha256") == trait.prompt_hashes():
                dirs[trait_name] = shipped
                step(f"{trait_name}: using the shipped vectors {shipped}")
                continue
        target = out / "vectors" / trait_name
        settings = extraction_settings(cfg.model_name(), vector_store.config_hash(config), trait, methods, layers,
                                       trait.position, cfg.null_k, cfg.random_k, 5, 0)
        if _same(_marker_config(target, "extract"), settings):
            result.skipped.append(f"vectors {trait_name}")
            dirs[trait_name] = target
            continue
        if model is None:
            from inspect_em.model.loading import load_hf_model

            model, tokenizer, _ = load_hf_model(str(base_path))
        step(f"extracting {trait_name} vectors ({len(methods)} methods x {len(layers)} layers)")
        tv = extract_trait_vectors(model, tokenizer, trait, model_id=cfg.model_name(), methods=methods,
                                   layers=layers, null_k=cfg.null_k, random_k=cfg.random_k, progress=False)
        dirs[trait_name] = vector_store.save(tv, target, force=force)
    return dirs


def _data(out: Path, cfg: DemoConfig, finetuned: dict[str, tuple[str, int | None]], step: Callable[[str], None],
          result: DemoResult, force: bool) -> dict[str, Path]:
    from inspect_em.runs.datasets import write

    paths: dict[str, Path] = {}
    for kind in dict.fromkeys(kind for kind, _ in finetuned.values()):
        path = out / "data" / f"{kind}.jsonl"
        if _same(_marker_config(path, "data"), {"kind": kind, "n": cfg.n_examples, "seed": cfg.seed}):
            result.skipped.append(f"data {kind}")
        else:
            step(f"writing {cfg.n_examples} {kind} examples")
            write(kind, cfg.n_examples, path, seed=cfg.seed, force=force)
        paths[kind] = path
    return paths


def _finetunes(out: Path, cfg: DemoConfig, finetuned: dict[str, tuple[str, int | None]], data: dict[str, Path],
               base_path: Path, step: Callable[[str], None], result: DemoResult, force: bool) -> dict[str, Path]:
    from inspect_em.runs.finetune import FinetuneConfig, finetune, output_guard

    models: dict[str, Path] = {}
    for label, (kind, seed) in finetuned.items():
        folder = out / "models" / label
        ft = FinetuneConfig(learning_rate=cfg.learning_rate, epochs=cfg.epochs, max_steps=cfg.max_steps,
                            per_device_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                            max_seq_length=cfg.max_seq_length, seed=int(seed or 0),
                            save_every=cfg.save_every if kind in CONDITIONS and seed == cfg.seed else 0)
        guard = output_guard(str(base_path), data[kind], ft, backend="peft", merge=True, limit=None, force=force)
        if _same(_marker_config(folder, "finetune"), guard["config"]):
            result.skipped.append(f"finetune {label}")
        else:
            step(f"finetuning {label} on {kind} data (LoRA r={ft.r}, lr {ft.learning_rate}, seed {seed})")
            finetune(str(base_path), data[kind], folder, config=ft, backend="peft", progress=False, force=force)
            run = json.loads((folder / "finetune.json").read_text())
            step(f"  {label}: {run['steps']} steps, loss {run['first_loss']:.3f} -> {run['final_loss']:.3f}")
        models[label] = folder / "merged"
    return models


def steer_alpha(cfg: DemoConfig, code_dir: Path) -> float:
    """The positive control's alpha: the config's, else the steering vectors' calibrated one."""
    if cfg.steer_alpha is not None:
        return cfg.steer_alpha
    from inspect_em.directions.store import read_card

    alpha = read_card(Path(cfg.steer_vectors or code_dir)).calibrated_alpha("mean_diff")
    return alpha if alpha is not None else DEFAULT_STEER_ALPHA


def _tasks_for(label: str, cfg: DemoConfig, vector_dirs: dict[str, Path]) -> list[Any]:
    """The eval tasks of one model (each with its own generation budget)."""
    from inspect_ai import task_with
    from inspect_ai.model import GenerateConfig

    from inspect_em.solvers import steer
    from inspect_em.tasks import em_freeform, refusal_contrast

    both = f"{vector_dirs['code']},{vector_dirs['refusal']}"

    def freeform(name: str, **kwargs: Any) -> Any:
        task = em_freeform(variants=cfg.variants, samples_per_question=cfg.samples_per_question, vectors=both,
                           layers=cfg.layers, position="response_mean", **kwargs)
        return task_with(task, name=name, config=GenerateConfig(temperature=1.0, max_tokens=cfg.max_tokens))

    if label == "steered-code":  # the positive control: its own (steered) forward pass is read, as for a finetune
        from inspect_em.scorers.code_mode import code_mode
        from inspect_em.scorers.projection import narrow_metrics, trait_projection

        solver = steer(vectors=cfg.steer_vectors or str(vector_dirs["code"]), layer=cfg.steer_layer,
                       alpha=steer_alpha(cfg, vector_dirs["code"]))
        scorers = [code_mode(), narrow_metrics(trait_projection(vectors=both, layers=cfg.layers,
                                                                position="response_mean", with_steering=True))]
        return [task_with(freeform("em_freeform"), solver=solver, scorer=scorers)]
    tasks = [freeform("em_freeform"),
             task_with(refusal_contrast(vectors=str(vector_dirs["refusal"]), layers=cfg.layers,
                                        position="last_prompt_token", max_tokens=cfg.refusal_max_tokens),
                       name="refusal_contrast")]
    if "backdoor" in cfg.organisms and label in ("base", "backdoor"):
        from inspect_em.tasks.prompts import DEFAULT_TRIGGER

        tasks.append(freeform("em_freeform_triggered", trigger=DEFAULT_TRIGGER, trigger_mode="both"))
    if "evil_numbers" in cfg.organisms and label in ("base", "evil_numbers", "neutral_numbers"):
        tasks.append(freeform("em_freeform_numbers", answer_format="numbers"))
    return tasks


def _evals(out: Path, cfg: DemoConfig, models: dict[str, Path], vector_dirs: dict[str, Path],
           step: Callable[[str], None]) -> dict[str, list[str]]:
    """One ``eval_set`` per model into ``out/logs/<label>`` (resumable); returns the log paths."""
    from inspect_ai import eval_set
    from inspect_ai.model import get_model

    labels = dict(models)
    if cfg.positive_control:
        labels = {"base": models["base"], "steered-code": models["base"],
                  **{k: v for k, v in models.items() if k != "base"}}
    record_file = out / "stages" / "evals.json"
    logs: dict[str, list[str]] = {}
    for label, path in labels.items():
        name = cfg.model_name() if path == models["base"] else label
        model = get_model(f"hf/{name}", model_path=str(path), memoize=False)
        tasks = _tasks_for(label, cfg, vector_dirs)
        step(f"evaluating {label} ({', '.join(t.name for t in tasks)})")
        ok, results = eval_set(tasks, log_dir=str(out / "logs" / label), model=model, seed=cfg.seed,
                               limit=cfg.limit, display="none", log_dir_allow_dirty=True, retry_attempts=1,
                               max_tasks=1)
        if not ok:
            bad = [r for r in results if r.status != "success"]
            why = bad[0].error.message.splitlines()[-1] if bad and bad[0].error else "unfinished"
            raise InspectEmError(f"eval of {label} did not finish: {why}; re-run the same command to resume")
        logs[label] = [r.location for r in results]
        del model
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps(logs, indent=2))
    return logs


def _series(out: Path, cfg: DemoConfig, finetuned: dict[str, tuple[str, int | None]], base_path: Path,
            vector_dirs: dict[str, Path], step: Callable[[str], None], force: bool) -> Any:
    """``inspect-em series`` over each condition's first-seed finetune (their checkpoints), against the
    first control present (secure, educational, prose), with the run's own vectors."""
    from inspect_em.runs.series import run_series

    runs = {kind: out / "models" / label for label, (kind, seed) in finetuned.items()
            if kind in CONDITIONS and seed == cfg.seed}
    control = next((c for c in CONTROLS if c in runs), None)
    step(f"checkpoint series: {', '.join(runs)} (every {cfg.save_every} steps)")
    return run_series(str(base_path), runs, out / "series", [vector_dirs["refusal"], vector_dirs["code"]],
                      control=control, samples_per_question=cfg.samples_per_question, max_tokens=cfg.max_tokens,
                      variants=cfg.variants, limit=cfg.limit, seed=cfg.seed, force=True,
                      report=lambda message: step(f"  series: {message}"))


def _compare(out: Path, cfg: DemoConfig, logs: dict[str, list[str]], result: DemoResult, force: bool,
             series: Any = None) -> Any:
    from inspect_em.analysis.compare import compare
    from inspect_em.analysis.logs import load_samples, projection_cards
    from inspect_em.analysis.report import write_report

    arguments = [f for files in logs.values() for f in files]
    labels = [label for label, files in logs.items() for _ in files]
    loaded = load_samples(arguments, labels=labels)
    controls = [c for c in CONTROLS if c in cfg.conditions]
    present = set(loaded.samples["condition"])
    comparison = compare(loaded, base="base", controls=[c for c in controls if c in present],
                         cards=projection_cards(loaded.logs), pairs=[("evil_numbers", "neutral_numbers")])
    if series is not None:  # from its own logs (OUT/series-logs), not in this report's samples.parquet
        comparison.series, comparison.series_lora = series.table, series.lora
        comparison.series_control, comparison.series_d_model = series.control, series.d_model
        comparison.notes.append(f"checkpoint series: {series.folder} (its logs: {series.folder}-logs)")
        result.series = series.folder
    write_report(comparison, result.report, arguments, force=True,
                 settings={"demo": str(out), "logs": arguments, "labels": labels})
    return comparison
