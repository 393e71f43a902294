"""``aigc finetune``: fine-tune a local model on a house corpus through the Prefect flow."""

from __future__ import annotations

from pathlib import Path

import click

from aigc.cli.common import one_line_errors, quiet_tracebacks


@click.command("finetune")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Folder for the fine-tuned model (checkpoints go in OUTPUT/checkpoints).")
@click.option("--model", "-m", default="embedded", show_default=True, envvar="AIGC_MODEL",
              help="Base model: 'embedded', a local folder or a cached Hugging Face id.")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True,
              help="LoRA (cheap on CPU, merged into the saved model) or a full fine-tune.")
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in a JSONL corpus.")
@click.option("--block-size", type=click.IntRange(min=8), default=256, show_default=True,
              help="Tokens per training block (capped to the model's context).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of blocks held out for validation (at least one).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps (overrides --epochs).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 3e-4 for lora, 5e-5 for full].")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--save-steps", type=click.IntRange(min=1), default=50, show_default=True, help="Checkpoint every N steps.")
@click.option("--resume/--no-resume", default=None,
              help="Resume from the last checkpoint in OUTPUT/checkpoints [default: automatic when one exists].")
def finetune_command(corpus: Path, output: Path, **settings) -> None:
    """Fine-tune a local causal LM on CORPUS: a folder of .md/.txt files, a JSONL file, or a folder of aigc outputs.

    \b
    Example:
      aigc finetune data/corpus --output models/house --max-steps 60
      (then write with the local backend and --model models/house)
    """
    from aigc import finetune as ft

    with one_line_errors():
        options = ft.make_options(corpus=corpus, output=output, **settings)
        ft.load_corpus(options.corpus, options.text_field)  # fail fast, before the flow's API starts
        from flows.finetune import finetune_flow

        quiet_tracebacks()
        record = finetune_flow(options)
    ppl = record["perplexity"]
    training = record["training"]
    click.echo(f"Fine-tuned model: {record['output']}")
    click.echo(f"Validation perplexity: {ppl['before']:.2f} -> {ppl['after']:.2f}")
    click.echo(f"Trained {training['steps']} steps in {training['seconds']:.0f} s "
               f"({training['steps_per_second']:.3f} steps/s); details in {Path(record['output']) / ft.RESULT_FILE}")
