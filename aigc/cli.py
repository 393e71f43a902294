"""The ``aigc`` command line: write articles through the Prefect flow, inspect templates, and more."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from aigc import __version__
from aigc.errors import AigcError, InputError

STYLE_HELP = "Style pack: a folder of templates/ (article, report, news, blog, or your own)."


def _fail(err: Exception) -> NoReturn:
    raise click.ClickException(str(err)) from None


def _read_outline(value: str | None) -> tuple[str, ...] | None:
    """--outline: a file (one title per line) or '-' for stdin; '1.'/'-' list marks are fine."""
    if value is None:
        return None
    if value == "-":
        text, source = sys.stdin.read(), "--outline (stdin)"
    else:
        path = Path(value)
        if not path.is_file():
            raise InputError(f"--outline {value}: no such file (give a file with one section title per line)")
        try:
            text, source = path.read_text("utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--outline {value}: cannot read it as UTF-8 text ({err})") from None
    from aigc.outline import given_outline

    return tuple(given_outline(text.splitlines(), source=source))


def parse_option_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-o KEY=VALUE`` pairs; VALUE is read as JSON when it parses (true, 8, 0.5), else as text."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"-o {pair!r}: give KEY=VALUE, e.g. -o max_batch_size=8")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


class _NoAigcTracebacks(logging.Filter):
    """Log an aigc error as its one line, without the traceback (Prefect logs failed runs with one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AigcError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_tracebacks() -> None:
    """Install the filter on every handler of the root and Prefect loggers (after Prefect set them up)."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, _NoAigcTracebacks) for f in handler.filters):
                handler.addFilter(_NoAigcTracebacks())


def backend_options(backend: str, model: str | None, base_url: str | None, api_key_env: str | None,
                    concurrency: int | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Backend options from CLI flags; only those given are set."""
    options: dict[str, Any] = parse_option_pairs(extra)
    if model:
        options["model"] = model
    if base_url:
        options["base_url"] = base_url
    if api_key_env:
        options["api_key_env"] = api_key_env
    if concurrency:
        options["concurrency"] = concurrency
    return options


def preflight(spec, templates_dir: str | None) -> None:
    """Check style, templates and backend options before any Prefect or model start-up."""
    from aigc.backends import create_backend
    from aigc.sections import section_context
    from aigc.templates import TemplateStore

    store = TemplateStore(templates_dir)
    store.check_style(spec.style)
    store.render_messages(store.template_name(spec.style, "outline"), spec.template_context())
    titles = [f"Section {i + 1}" for i in range(spec.sections)]
    store.render_messages(store.template_name(spec.style, "section"), section_context(spec, titles, 0))
    from aigc.assemble import render_document

    render_document(spec, [{"title": t, "body": "Text."} for t in titles], store, model_id="check")
    create_backend(spec.backend, **spec.backend_options)  # validates options and keys; loads nothing


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="aigc")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """aigc: template-driven long-form writing with language models, orchestrated by Prefect.

    \b
    Examples:
      aigc write "Urban heat islands" --style report --sections 5 --words 1200
      aigc write "Urban heat islands" --backend openai --model gpt-4o-mini
      aigc templates list
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Prefect's temporary server (no PREFECT_API_URL) can take over 20 s to start on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # aigc runs offline: no anonymous usage report from the temporary server (it also raced its SQLite writes).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for noisy in ("httpx", "httpcore", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.argument("topic")
@click.option("--style", "-s", default="article", show_default=True, envvar="AIGC_STYLE", help=STYLE_HELP)
@click.option("--sections", "-n", type=click.IntRange(1, 20), default=5, show_default=True, help="Number of sections.")
@click.option("--words", "-w", type=click.IntRange(30, 20000), default=800, show_default=True,
              help="Words for the whole body; each section gets an equal share.")
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
def write(topic: str, outline_file: str | None, outputs_dir: str | None, templates_dir: str | None,
          model: str | None, base_url: str | None, api_key_env: str | None, concurrency: int | None,
          extra_options: tuple[str, ...], overwrite: bool, **params: Any) -> None:
    """Write one article or report about TOPIC through the Prefect flow.

    \b
    Files go to outputs/<topic-slug>/article.md, article.html and article.json.
    Running the same command again reuses cached steps (start a Prefect server
    and set PREFECT_API_URL to avoid the temporary server's start-up each time).
    """
    from aigc.spec import ArticleSpec

    try:
        options = backend_options(params["backend"], model, base_url, api_key_env, concurrency, extra_options)
        outline = _read_outline(outline_file)
        spec = ArticleSpec.build(source="aigc write", topic=topic, outline=outline, backend_options=options,
                                 **{k: params[k] for k in ("style", "sections", "words", "seed", "backend",
                                                           "temperature", "top_p")})
        if outline:
            spec = spec.model_copy(update={"sections": len(outline)})
        preflight(spec, templates_dir)
        click.echo(f"Writing {spec.style} '{spec.topic}' ({spec.sections} sections, ~{spec.words} words) "
                   f"with {spec.backend}{' / ' + options['model'] if options.get('model') else ''}...", err=True)
        from flows.article import article_flow
        from flows.common import in_process_run

        quiet_tracebacks()
        with in_process_run():
            result = article_flow(
                topic=spec.topic, style=spec.style, sections=spec.sections, words=spec.words, seed=spec.seed,
                backend=spec.backend, outline=list(spec.outline) if spec.outline else None,
                temperature=spec.temperature, top_p=spec.top_p, outputs_dir=outputs_dir,
                templates_dir=templates_dir, overwrite=overwrite, backend_options=options,
            )
    except AigcError as err:
        _fail(err)
    steps = ", ".join(f"{k} {v.lower()}" for k, v in result.get("steps", {}).items())
    verb = {"unchanged": "Already written (same inputs)", "renamed": "Written (name taken, new folder)",
            "replaced": "Replaced"}.get(result["status"], "Written")
    click.echo(f"{verb}: {result['folder']}/  [{result['words']} words; {steps}]")
    for name, path in result["files"].items():
        click.echo(f"  {path}")


@main.command()
def prepare() -> None:
    """Convert the embedded default model to a cached safetensors folder (once; about 20-40 s)."""
    from aigc.backends.local.embedded import converted_folder, ensure_converted, is_converted

    try:
        fresh = not is_converted()
        if fresh:
            click.echo(f"Converting the embedded model (SmolLM2-135M-Instruct) to {converted_folder()} ...", err=True)
        folder = ensure_converted()
    except AigcError as err:
        _fail(err)
    click.echo(f"Embedded model {'ready' if fresh else 'already prepared'}: {folder}")


@main.group()
def templates() -> None:
    """List style packs and render their prompts without a model."""


@templates.command("list")
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False))
def templates_list(templates_dir: str | None) -> None:
    """List the style packs and the template file each step uses."""
    from aigc.templates import STEPS, TemplateStore

    try:
        store = TemplateStore(templates_dir)
        click.echo(f"Style packs in {store.root}:")
        for style in store.styles():
            files = ", ".join(f"{step}={store.template_name(style, step)}" for step in STEPS)
            click.echo(f"  {style:<10} {files}")
    except AigcError as err:
        _fail(err)


@templates.command("render")
@click.argument("style")
@click.option("--topic", "-t", required=True, help="The topic to render the prompts for.")
@click.option("--sections", "-n", type=click.IntRange(1, 20), default=5, show_default=True)
@click.option("--words", "-w", type=click.IntRange(30, 20000), default=800, show_default=True)
@click.option("--outline", "outline_file", metavar="FILE", help="Section titles for the section prompts.")
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False))
def templates_render(style: str, topic: str, sections: int, words: int, outline_file: str | None,
                     templates_dir: str | None) -> None:
    """Print the outline prompt and every section prompt of STYLE for a topic; no model runs."""
    from aigc.sections import section_context
    from aigc.spec import ArticleSpec
    from aigc.templates import TemplateStore

    try:
        outline = _read_outline(outline_file)
        spec = ArticleSpec.build(source="aigc templates render", topic=topic, style=style,
                                 sections=len(outline) if outline else sections, words=words)
        store = TemplateStore(templates_dir)
        store.check_style(style)
        name = store.template_name(style, "outline")
        _echo_prompt(f"outline ({name})", store.render_messages(name, spec.template_context()))
        titles = list(outline or [f"<section {i + 1} title>" for i in range(spec.sections)])
        name = store.template_name(style, "section")
        for i in range(len(titles)):
            _echo_prompt(f"section {i + 1} ({name})", store.render_messages(name, section_context(spec, titles, i)))
    except AigcError as err:
        _fail(err)


def _echo_prompt(label: str, rendered) -> None:
    click.secho(f"=== {label}  sha256:{rendered.template_hash}", bold=True)
    for m in rendered.messages:
        click.secho(f"[{m.role}]", fg="cyan")
        click.echo(m.content)
    click.echo()


def _add_optional_commands() -> None:
    """Commands whose modules live beside this one."""
    from aigc.eval_cli import eval_command
    from aigc.finetune_cli import finetune_command

    main.add_command(finetune_command)
    from aigc.batch_cli import batch_command, serve_command

    main.add_command(batch_command)
    main.add_command(serve_command)
    main.add_command(eval_command)


_add_optional_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
