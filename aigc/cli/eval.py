"""``aigc eval``: score articles (a Markdown file, an article folder or a folder of them) in a table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from aigc.cli.common import backend_options, one_line_errors


@click.command("eval")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--words", "-w", type=click.IntRange(1), help="Requested words, for articles without an article.json.")
@click.option("--min-section-words", type=click.IntRange(0), default=20, show_default=True,
              help="Words a section needs to count as covered.")
@click.option("--perplexity", "with_perplexity", is_flag=True, help="Also score perplexity under a local model (slower).")
@click.option("--perplexity-model", help="Local model for perplexity: 'embedded', a folder or a cached hub id "
              "[--model when --backend is local, else embedded].")
@click.option("--judge", "with_judge", is_flag=True, help="Also ask a model to rate coherence, meaningfulness, truthfulness.")
@click.option("--backend", "-b", default="local", show_default=True, envvar="AIGC_BACKEND", help="Judge backend.")
@click.option("--model", "-m", envvar="AIGC_MODEL", help="Judge model (and perplexity model for a local backend).")
@click.option("--base-url", envvar="OPENAI_BASE_URL", help="openai: server URL, e.g. http://127.0.0.1:8000/v1")
@click.option("--api-key-env", help="openai: name of the environment variable holding the key [OPENAI_API_KEY].")
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False),
              help="Folder of templates holding eval/judge.j2 [./templates].")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def eval_command(path: Path, words: int | None, min_section_words: int, with_perplexity: bool,
                 perplexity_model: str | None, with_judge: bool, backend: str, model: str | None,
                 base_url: str | None, api_key_env: str | None, templates_dir: str | None,
                 json_file: Path | None) -> None:
    """Score the article(s) at PATH: an article .md, an article folder, or an outputs folder of them.

    \b
    Length score S_l (against the requested words), outline coverage, distinct-2 and
    repeated 4-grams always; perplexity and an LLM judge when asked. Prints a Markdown table
    with a row per article and the means.
    \b
    Examples:
      aigc eval outputs/
      aigc eval outputs/urban-heat-islands --perplexity
      aigc eval draft.md --words 800 --judge --backend openai --model gpt-4o-mini --json scores.json
    """
    from aigc import evaluate as ev

    with one_line_errors():
        judge_backend = None
        if with_judge:
            from aigc.backends import create_backend

            judge_backend = create_backend(backend, **backend_options(model, base_url, api_key_env))
        ppl_model = None
        if with_perplexity:
            ppl_model = perplexity_model or (model if backend == "local" and model else "embedded")
        results = ev.evaluate_path(path, words=words, min_section_words=min_section_words,
                                   perplexity_model=ppl_model, judge_backend=judge_backend,
                                   templates_dir=templates_dir, echo=lambda msg: click.echo(msg, err=True))
    summary = ev.summarize(results)
    click.echo(ev.format_table(results, summary), nl=False)
    if json_file is not None:
        try:
            json_file.write_text(json.dumps({"articles": results, "means": summary}, indent=2) + "\n", "utf-8")
        except OSError as err:
            raise click.ClickException(f"--json {json_file}: cannot write it ({err.strerror or err})") from None
        click.echo(f"Results written to {json_file}", err=True)
