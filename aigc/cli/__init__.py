"""The ``aigc`` command line (click): the group ``main`` and its commands, one module each.

This package is the only part of ``aigc`` that imports ``flows/``: commands that run work start the Prefect flows.
"""

from __future__ import annotations

import logging
import os

import click

from aigc import __version__
from aigc.cli.batch import batch_command, serve_command
from aigc.cli.eval import eval_command
from aigc.cli.finetune import finetune_command
from aigc.cli.index import index_command
from aigc.cli.prepare import prepare_command
from aigc.cli.templates import templates_group
from aigc.cli.write import write_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="aigc")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """aigc: template-driven long-form writing with language models, orchestrated by Prefect.

    \b
    Examples:
      aigc write "Urban heat islands" --style report --sections 5 --words 1200
      aigc write "Urban heat islands" --backend openai --model gpt-4o-mini
      aigc write "Flood defences" --style report --sources notes/
      aigc templates list
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Prefect's temporary server (no PREFECT_API_URL) can take over 20 s to start on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # aigc runs offline: no anonymous usage report from the temporary server (it also raced its SQLite writes).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "transformers", "faiss", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


for _command in (write_command, prepare_command, templates_group, batch_command, serve_command, eval_command,
                 finetune_command, index_command):
    main.add_command(_command)
