"""``aigc batch FILE`` (run a batch of articles now) and ``aigc serve`` (serve the Prefect deployments)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from aigc.cli.common import _fail, check_local_model, one_line_errors, prefect_server_lost, quiet_tracebacks
from aigc.errors import AigcError, ConfigError
from flows.deploy import DEFAULT_BATCH, DEFAULT_CRON, DEFAULT_TIMEZONE, ITEMS, NIGHTLY, SINGLE_REPORT


@click.command("batch")
@click.argument("batch_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--outputs", "outputs_dir", envvar="AIGC_OUTPUTS_DIR", type=click.Path(file_okay=False),
              help="Root of the outputs; the batch goes to <outputs>/<batch-name>/ [./outputs].")
@click.option("--concurrency", type=click.IntRange(1, 64),
              help="Articles at once per backend [an API's own bound, e.g. 4; a local model: as many as share "
                   "one call, 5 of 3 sections on a CPU, and no more].")
@click.option("--max-items", type=click.IntRange(1), help="Only the first N items of the file.")
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False),
              help="Folder of style packs [./templates].")
@click.option("--distribute", is_flag=True,
              help="Send the items to a work pool's workers (deployment aigc-batch-items/items) and wait for them; "
                   "needs PREFECT_API_URL and workers that see the outputs folder at the same path.")
@click.option("--items-per-run", type=click.IntRange(1, 64),
              help="With --distribute: items per flow run [as many as are written together, e.g. 1 for an API].")
@click.option("--skip-invalid", is_flag=True,
              help="Write the valid items of a file with bad ones (each bad item is listed by its line).")
def batch_command(batch_file: str, outputs_dir: str | None, concurrency: int | None, max_items: int | None,
                  templates_dir: str | None, distribute: bool, items_per_run: int | None, skip_invalid: bool) -> None:
    """Write every article of a batch FILE (.yaml, .csv or .jsonl) now, through the Prefect batch flow.

    \b
    Articles already written with the same inputs are skipped, so running the
    same batch again (after a failure or a kill) writes only what is missing.
    Example:
      aigc batch data/batches/nightly.yaml --max-items 2
    """
    from aigc.batch import load_batch
    from aigc.paths import outputs_dir as default_outputs

    from aigc.outputs import check_writable

    with one_line_errors():
        batch = load_batch(batch_file, max_items=max_items, skip_invalid=skip_invalid, templates_dir=templates_dir)
        folder = Path(outputs_dir) / batch.slug if outputs_dir else default_outputs() / batch.slug
        for item in batch.items:
            check_local_model(item.spec, item.where)
        check_writable(folder)
        if distribute and not os.environ.get("PREFECT_API_URL"):
            raise ConfigError("--distribute needs a Prefect server that the workers share: export PREFECT_API_URL="
                              "http://server-host:4200/api (see docs/deployments.md)")
        if distribute:
            from flows.distribute import server_patience

            server_patience()  # a bad AIGC_SERVER_PATIENCE is said now, not after the items are submitted
    for line in batch.skipped:
        click.echo(f"Skipped: {line}", err=True)
    click.echo(f"Batch '{batch.name}': {len(batch.items)} items -> {folder}/"
               + (f" ({len(batch.skipped)} bad item(s) skipped)" if batch.skipped else "")
               + (" (distributed to the work pool's workers)" if distribute else ""), err=True)
    from flows.batch import batch_flow
    from flows.common import in_process_run

    quiet_tracebacks()
    with prefect_server_lost(), in_process_run():
        state = batch_flow(batch_file=str(batch.path), outputs_dir=outputs_dir, concurrency=concurrency,
                           max_items=max_items, templates_dir=templates_dir, distribute=distribute,
                           items_per_run=items_per_run, skip_invalid=skip_invalid, return_state=True)
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, BaseException) or not isinstance(summary, dict):
        if isinstance(summary, AigcError):
            _fail(summary)
        raise click.ClickException(f"the batch flow failed: {state.message or summary}")
    from aigc.batch import read_record

    gaps = 0
    for row in summary["items"]:
        where = row["folder"] + "/" if row.get("folder") else row.get("error") or ""
        empty = read_record(row.get("folder")).get("empty_sections") or []
        gaps += bool(empty)
        note = f"  WARNING: {len(empty)} empty section(s)" if empty else ""
        click.echo(f"  {row['index']:>3} {row['status']:<9} {row['topic'][:50]:<50} {where}{note}")
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items())
    warn = f"; WARNING: {gaps} article(s) with an empty section" if gaps else ""
    skipped = f"; {len(batch.skipped)} bad item(s) skipped" if batch.skipped else ""
    click.echo(f"Done in {summary['seconds']} s ({counts}{skipped}{warn}). Index: {summary['index_md']}  "
               f"{summary['index_html']}")
    if summary["counts"].get("failed"):
        raise click.ClickException(f"{summary['counts']['failed']} item(s) failed; run the same command again "
                                   "to retry only those")


@click.command("serve")
@click.option("--timezone", envvar="AIGC_TIMEZONE", default=DEFAULT_TIMEZONE, show_default=True,
              help="Time zone of the nightly schedule (IANA name, e.g. Europe/Berlin).")
@click.option("--cron", envvar="AIGC_NIGHTLY_CRON", default=DEFAULT_CRON, show_default=True,
              help="When the nightly batch runs.")
@click.option("--batch-file", envvar="AIGC_NIGHTLY_BATCH", default=DEFAULT_BATCH, show_default=True,
              help="The batch file the nightly deployment runs.")
@click.option("--limit", type=click.IntRange(1), help="Most flow runs at once in this process [no limit].")
def serve_command(timezone: str, cron: str, batch_file: str, limit: int | None) -> None:
    """Serve the `nightly` and `single-report` deployments until Ctrl-C.

    \b
    Needs a Prefect server (prefect server start; export PREFECT_API_URL=...).
    Stopping this command pauses the nightly schedule; serving again resumes it.
    Trigger a report:
      prefect deployment run 'aigc-article/single-report' -p topic="Urban heat islands" -p style=report
    """
    from aigc.paths import outputs_dir
    from flows.deploy import deployments

    with one_line_errors():
        served = deployments(cron=cron, timezone=timezone, batch_file=batch_file)
    api = os.environ.get("PREFECT_API_URL") or "(none set: a temporary server that stops with this command)"
    click.echo(f"Serving against {api}:")
    click.echo(f"  aigc-batch/{NIGHTLY}          {batch_file} at '{cron}' ({timezone})")
    click.echo(f"  aigc-article/{SINGLE_REPORT}  on demand")
    click.echo(f"  aigc-batch-items/{ITEMS}     items sent by aigc batch --distribute")
    click.echo(f"Outputs go to {outputs_dir().resolve()}/ (nightly: <outputs>/<batch-name>/index.html)")
    click.echo(f"Trigger:\n  prefect deployment run 'aigc-article/{SINGLE_REPORT}' -p topic=\"...\" -p style=report\n"
               f"  prefect deployment run 'aigc-batch/{NIGHTLY}'\nStop with Ctrl-C (pauses the nightly schedule).")
    from prefect import serve

    serve(*served, limit=limit, print_starting_message=False)
