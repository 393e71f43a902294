"""``aigc index``: build or refresh the index of source documents ahead of writing (the writing finds it saved)."""

from __future__ import annotations

import sys

import click

from aigc.cli.common import one_line_errors


@click.command("index")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--text-field", default="text", show_default=True, help="The text field of JSONL/CSV/Parquet sources.")
@click.option("--search", "query", metavar="QUERY", help="Then show the passages that best match QUERY.")
@click.option("-k", "top_k", type=click.IntRange(1, 50), default=5, show_default=True, help="Passages --search shows.")
def index_command(paths: tuple[str, ...], text_field: str, query: str | None, top_k: int) -> None:
    """Index the documents at PATH... (folders, .md .txt .html .pdf, .jsonl .csv .parquet, saved datasets).

    \b
    Passages are embedded once and kept under the cache (AIGC_CACHE_DIR); an
    unchanged corpus is never embedded again, a changed file re-embeds only what changed.
    `aigc write TOPIC --sources PATH...` uses the same index.
    Examples:
      aigc index notes/ briefings.jsonl
      aigc index notes/ --search "flood defences"
    """
    from aigc.index import build_index

    shown: dict[str, int] = {}

    def progress(done: int, total: int, stage: str) -> None:
        if stage != "embed" or not total or not sys.stderr.isatty() and 10 * done // total == shown.get(stage, -1):
            return
        shown[stage] = 10 * done // total
        click.echo(f"\rEmbedding passages: {done}/{total}", err=True, nl=not sys.stderr.isatty() or done == total)

    with one_line_errors():
        index = build_index(list(paths), text_field=text_field, progress=progress)
        hits = index.search(query, k=top_k) if query else []
    stats = index.stats
    how = "loaded (unchanged)" if stats.get("from_saved_index") else \
        f"{stats.get('embedded', 0)} passages embedded, {stats.get('cached', 0)} from the cache"
    click.echo(f"Indexed {stats.get('passages', len(index))} passages of {stats.get('documents', '?')} documents: "
               f"{how}, in {stats.get('seconds', 0):.1f} s")
    if index.folder:
        click.echo(f"  {index.folder}")
    for warning in index.warnings:
        click.echo(f"Warning: {warning}", err=True)
    for n, p in enumerate(hits, 1):
        text = " ".join(p.text.split())
        click.echo(f"[{n}] {p.score:.3f} {p.document}, {p.location}\n    {text[:200]}{'...' if len(text) > 200 else ''}")
