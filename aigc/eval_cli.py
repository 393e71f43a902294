"""The ``aigc eval`` command: score articles (a Markdown file, an article folder or a folder of them) in a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from aigc.errors import AigcError, InputError


def find_articles(path: Path) -> list[tuple[str, Path, Path | None]]:
    """(name, Markdown file, article.json or None) for an article file, an article folder or an outputs folder."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (give an article .md, an article folder or an outputs folder)")
    if path.is_file():
        record = path.with_suffix(".json")
        name = path.parent.name if path.name == "article.md" and path.parent.name else path.stem
        return [(name or path.stem, path, record if record.is_file() else None)]
    if (path / "article.md").is_file():
        return [(path.resolve().name, path / "article.md", _record(path))]
    found = sorted(p for p in path.rglob("article.md")
                   if not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise InputError(f"{path}: no articles found (looked for article.md files in it and its subfolders)")
    return [(p.parent.relative_to(path).as_posix(), p, _record(p.parent)) for p in found]


def _record(folder: Path) -> Path | None:
    return folder / "article.json" if (folder / "article.json").is_file() else None


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it as UTF-8 text ({type(err).__name__}: {err})") from None


def _read_record(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(_read(path))
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); fix or remove it") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object (an aigc article record)")
    return data


def evaluate_path(path: Path, *, words: int | None = None, min_section_words: int = 20,
                  perplexity_model: str | None = None, judge_backend: Any = None,
                  templates_dir: str | None = None, echo=lambda msg: None) -> list[dict]:
    """Cheap metrics of every article under ``path``; perplexity and judge (batched over articles) when asked."""
    from aigc import evaluate as ev

    items = find_articles(path)
    results, parsed = [], []
    for name, md_path, record_path in items:
        markdown, record = _read(md_path), _read_record(record_path)
        result = ev.evaluate_article(markdown, record, requested_words=words, min_section_words=min_section_words)
        results.append({"name": name, "path": str(md_path), **result})
        parsed.append(ev.parse_article(markdown))
    if perplexity_model is not None:
        lm, tokenizer, model_id = ev.load_lm(perplexity_model)
        echo(f"Perplexity of {len(parsed)} article(s) under {model_id}...")
        for result, ppl in zip(results, ev.perplexity([a.body for a in parsed], lm=lm, tokenizer=tokenizer)):
            result.update(perplexity=ppl, perplexity_model=model_id)
    if judge_backend is not None:
        from aigc import judge
        from aigc.templates import TemplateStore

        echo(f"Judging {len(parsed)} article(s) with {judge_backend.model_id}...")
        verdicts = judge.judge(parsed, judge_backend, store=TemplateStore(templates_dir))
        for result, verdict in zip(results, verdicts):
            result.update(judge.judge_fields(verdict))
    return results


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

    try:
        judge_backend = None
        if with_judge:
            from aigc.backends import create_backend

            options = {k: v for k, v in (("model", model), ("base_url", base_url), ("api_key_env", api_key_env)) if v}
            judge_backend = create_backend(backend, **options)
        ppl_model = None
        if with_perplexity:
            ppl_model = perplexity_model or (model if backend == "local" and model else "embedded")
        results = evaluate_path(path, words=words, min_section_words=min_section_words, perplexity_model=ppl_model,
                                judge_backend=judge_backend, templates_dir=templates_dir,
                                echo=lambda msg: click.echo(msg, err=True))
    except AigcError as err:
        raise click.ClickException(str(err)) from None
    summary = ev.summarize(results)
    click.echo(ev.format_table(results, summary), nl=False)
    if json_file is not None:
        try:
            json_file.write_text(json.dumps({"articles": results, "means": summary}, indent=2) + "\n", "utf-8")
        except OSError as err:
            raise click.ClickException(f"--json {json_file}: cannot write it ({err.strerror or err})") from None
        click.echo(f"Results written to {json_file}", err=True)
