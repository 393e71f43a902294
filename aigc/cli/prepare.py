"""``aigc prepare``: convert the embedded default model to a cached safetensors folder once."""

from __future__ import annotations

import click

from aigc.cli.common import one_line_errors


@click.command("prepare")
def prepare_command() -> None:
    """Convert the embedded default model to a cached safetensors folder (once; about 20-40 s)."""
    from aigc.backends.local.embedded import converted_folder, ensure_converted, is_converted

    with one_line_errors():
        fresh = not is_converted()
        if fresh:
            click.echo(f"Converting the embedded model (SmolLM2-135M-Instruct) to {converted_folder()} ...", err=True)
        folder = ensure_converted()
    click.echo(f"Embedded model {'ready' if fresh else 'already prepared'}: {folder}")
