"""``aigc write``: check the inputs, then write one article through the Prefect article flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from aigc.cli.common import (STYLE_HELP, backend_options, check_local_model, one_line_errors,
                             prefect_server_lost, quiet_tracebacks, read_outline)


def preflight(spec, templates_dir: str | None, outputs_dir: str | None = None) -> None:
    """Check model, style, templates, backend options and the outputs folder before any Prefect or model start-up."""
    from aigc.assemble import render_document
    from aigc.backends import create_backend
    from aigc.sections import section_context
    from aigc.templates import TemplateStore

    check_local_model(spec, "--model")
    store = TemplateStore(templates_dir)
    store.check_style(spec.style)
    store.render_messages(store.template_name(spec.style, "outline", spec.lang), spec.template_context())
    titles = [f"Section {i + 1}" for i in range(spec.sections)]
    store.render_messages(store.template_name(spec.style, "section", spec.lang), section_context(spec, titles, 0))
    render_document(spec, [{"title": t, "body": "Text."} for t in titles], store, model_id="check")
    if spec.sources:
        check_sources(spec, store, titles)
    create_backend(spec.backend, **spec.backend_options)  # validates options and keys; loads nothing
    from aigc.outputs import check_writable
    from aigc.paths import outputs_dir as default_outputs

    check_writable(Path(outputs_dir) if outputs_dir else default_outputs())


def check_sources(spec, store, titles: list[str]) -> None:
    """--sources: every path exists, and the templates render with passages and References (nothing read yet)."""
    from aigc.assemble import render_document
    from aigc.errors import InputError
    from aigc.sections import section_context

    for path in spec.sources:
        if not Path(path).expanduser().exists():
            raise InputError(f"--sources {path}: no such file or folder")
    sample = [{"number": 1, "text": "Text.", "title": "Title", "heading": "Heading", "document": "notes/a.md",
               "location": "line 1", "link": None, "hash": "0" * 16}]
    store.render_messages(store.template_name(spec.style, "outline", spec.lang),
                          spec.template_context(source_headings=["Heading"], source_passages=sample))
    store.render_messages(store.template_name(spec.style, "section", spec.lang),
                          {**section_context(spec, titles, 0), "passages": sample})
    render_document(spec, [{"title": t, "body": "Text [1]."} for t in titles], store, model_id="check",
                    references=[{**sample[0], "number": 1, "url": None}])


class SourcesCommand(click.Command):
    """``--sources a b c``: every argument after --sources, up to the next option, is a source (put TOPIC first)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        greedy = False
        for n, arg in enumerate(args):
            if greedy and arg != "--" and not arg.startswith("-") and args[n - 1] != "--sources":
                out += ["--sources", arg]
                continue
            greedy = greedy and not arg.startswith("-") or arg == "--sources" or arg.startswith("--sources=")
            out.append(arg)
        return super().parse_args(ctx, out)


def read_brief(brief: str | None, brief_file: str | None) -> str | None:
    """--brief TEXT or --brief-file FILE ('-' reads stdin): the brief as text, or None; InputError on bad input."""
    from aigc.errors import InputError

    if brief is not None and brief_file is not None:
        raise InputError("give the brief once: --brief TEXT or --brief-file FILE, not both")
    if brief_file is None:
        return brief
    try:
        data = click.get_binary_stream("stdin").read() if brief_file == "-" else Path(brief_file).read_bytes()
    except OSError as err:
        raise InputError(f"--brief-file {brief_file}: cannot read it ({err.strerror or err})") from None
    if len(data) > 4 * 20000:
        raise InputError(f"--brief-file {brief_file}: {len(data):,} bytes; a brief is at most 20,000 characters "
                         "(summarise long material)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"--brief-file {brief_file}: not UTF-8 text (binary data?); give the instructions as a "
                         "text file") from None


def summary_line(result: dict) -> str:
    """The line that says what was written, with a warning when a section came out empty."""
    steps = ", ".join(f"{k} {v.lower()}" for k, v in result.get("steps", {}).items())
    verb = {"unchanged": "Already written (same inputs)", "renamed": "Written (name taken, new folder)",
            "replaced": "Replaced"}.get(result["status"], "Written")
    line = f"{verb}: {result['folder']}/  [{result['words']} {result.get('unit', 'words')}; {steps}]"
    empty = result.get("empty_sections") or []
    if empty:
        line += (f"  WARNING: {len(empty)} section(s) came out empty: " + "; ".join(repr(t) for t in empty[:3])
                 + " (try another --seed or a larger model)")
    return line


@click.command("write", cls=SourcesCommand)
@click.argument("topic", required=False)
@click.option("--brief", help="What to write, in your words (up to 20,000 characters): audience, points to cover "
                              "('1. ... 2. ...'), tone. Without TOPIC a short title is derived from it.")
@click.option("--brief-file", metavar="FILE", help="Read the brief from a UTF-8 text file ('-' reads stdin).")
@click.option("--lang", help="Language to write in (en, zh, ja, fr, ...) [detected from the topic and brief].")
@click.option("--style", "-s", default="article", show_default=True, envvar="AIGC_STYLE", help=STYLE_HELP)
@click.option("--sections", "-n", type=click.IntRange(1, 20),
              help="Number of sections [chosen from the length and style: 100 words is one section].")
@click.option("--words", "-w", type=int, default=800, show_default=True,
              help="Length of the whole body (50-10000; characters for Chinese, Japanese, Korean); each section "
                   "gets an equal share.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same inputs: same text.")
@click.option("--backend", "-b", default="local", show_default=True, envvar="AIGC_BACKEND",
              help="local (Hugging Face model on this machine) or openai (any OpenAI-compatible API).")
@click.option("--model", "-m", envvar="AIGC_MODEL",
              help="local: 'embedded' (default), a folder or a hub id; openai: the model name.")
@click.option("--base-url", envvar="OPENAI_BASE_URL", help="openai: server URL, e.g. http://127.0.0.1:8000/v1")
@click.option("--api-key-env", help="openai: name of the environment variable holding the key [OPENAI_API_KEY].")
@click.option("--concurrency", type=click.IntRange(1, 64), help="openai: requests in flight at once [8].")
@click.option("--option", "-o", "extra_options", multiple=True, metavar="KEY=VALUE",
              help="Any other backend option, e.g. -o max_batch_size=8 (local), -o use_completions=true (openai).")
@click.option("--outline", "outline_file", metavar="FILE",
              help="Use this outline (one section title per line; '-' reads stdin) instead of generating one.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True)
@click.option("--outputs", "outputs_dir", envvar="AIGC_OUTPUTS_DIR", type=click.Path(file_okay=False),
              help="Where article folders go [./outputs].")
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False),
              help="Folder of style packs [./templates].")
@click.option("--overwrite", is_flag=True, help="Replace an existing article of the same name.")
@click.option("--sources", multiple=True, metavar="PATH...",
              help="Ground the text in these documents and cite them: folders (.md .txt .html .pdf), .jsonl/.csv/"
                   ".parquet files, saved datasets; all paths after --sources up to the next option.")
@click.option("--text-field", default="text", show_default=True, help="The text field of JSONL/CSV/Parquet sources.")
@click.option("--outline-candidates", type=click.IntRange(1, 16),
              help="Outlines asked for at once; their titles are pooled and the best chosen [4].")
@click.option("--section-candidates", type=click.IntRange(1, 8),
              help="Candidates written per section, the best kept [local model: 2; APIs: 1].")
def write_command(topic: str | None, brief: str | None, brief_file: str | None, outline_file: str | None,
                  outputs_dir: str | None, templates_dir: str | None, model: str | None, base_url: str | None,
                  api_key_env: str | None, concurrency: int | None, extra_options: tuple[str, ...], overwrite: bool,
                  **params: Any) -> None:
    """Write one article, report, email, story ... about TOPIC (or as a --brief asks) through the Prefect flow.

    \b
    Files go to outputs/<topic-slug>/article.md, article.html and article.json.
    Running the same command again reuses cached steps (start a Prefect server
    and set PREFECT_API_URL to avoid the temporary server's start-up each time).
    Examples:
      aigc write "Urban heat islands" --style report --words 1500
      aigc write --style email --words 100 --brief "Thank the bank teller who helped me open an account."
      aigc write "城市热岛效应" --words 800     # Chinese, counted in characters
      aigc write "2022 Istanbul bombing" --style report --sources notes/ briefings.jsonl
    """
    from aigc.spec import ArticleSpec

    with one_line_errors():
        options = backend_options(model, base_url, api_key_env, concurrency, extra_options)
        outline = read_outline(outline_file)
        if outline:
            params["sections"] = len(outline)
        brief = read_brief(brief, brief_file)
        for name in ("outline_candidates", "section_candidates"):
            if params.get(name) is None:
                params.pop(name, None)  # the spec's default (the backend's, for sections)
        if params.get("sources"):
            params["sources"] = list(params["sources"])
        else:
            params.pop("sources", None)
            params.pop("text_field", None)
        spec = ArticleSpec.build(source="aigc write", templates_dir=templates_dir, topic=topic, brief=brief,
                                 outline=outline, backend_options=options, **params)
        preflight(spec, templates_dir, outputs_dir)
        unit = "characters" if spec.counts_characters else "words"
        click.echo(f"Writing {spec.style} '{spec.topic}' ({spec.sections} section{'s' * (spec.sections > 1)}, "
                   f"~{spec.words} {unit}, {spec.lang}) "
                   f"with {spec.backend}{' / ' + options['model'] if options.get('model') else ''}...", err=True)
        from flows.article import article_flow
        from flows.common import in_process_run

        quiet_tracebacks()
        with prefect_server_lost(), in_process_run():
            # the spec's fields this command set, validated, as the flow's parameters of the same names
            result = article_flow(**spec.model_dump(mode="json", exclude_unset=True), outputs_dir=outputs_dir,
                                  templates_dir=templates_dir, overwrite=overwrite)
    click.echo(summary_line(result))
    for path in result["files"].values():
        click.echo(f"  {path}")
    if not result["words"]:
        raise click.ClickException("the article has no text: every section came out empty; try another --seed, "
                                   "or a model that writes this language (see README, Languages)")
