"""``aigc templates``: list the style packs, render their prompts without a model, list the variables they may use."""

from __future__ import annotations

from typing import Any

import click

from aigc.cli.common import one_line_errors, read_outline

#: What each template variable holds (``aigc templates vars``); the variables themselves come from the code.
VARIABLE_HELP = {
    "topic": "the topic, as the user gave it (data, never template source)",
    "brief": "the user's brief (free-text instructions; data, never template source), \"\" when none",
    "lang": "the language code of the text (en, zh, ...; a pack's <lang>/ folder holds its templates)",
    "language": "the language's English name (\"Write in {{ language }}\")",
    "continuation": "in a long section's later steps: the end of the text so far",
    "continue_words": "in a long section's later steps: words this step adds",
    "style": "the style pack's name",
    "n_sections": "how many sections the article has",
    "words": "words asked for the whole body",
    "section_words": "words asked for each section",
    "outline": "every section title, in order",
    "section_title": "the title of the section being written",
    "section_index": "its number, from 1",
    "is_first": "true for the first section",
    "is_last": "true for the last section",
    "title": "the document's title (the topic)",
    "date": "today, YYYY-MM-DD",
    "model": "the model that wrote the text",
    "sections": "each section's title and body; {{ s.title | anchor }} gives its link id",
}
_SAMPLE_TOPIC = "Urban heat islands"


def step_contexts(spec) -> dict[str, dict[str, Any]]:
    """The context each step's template is rendered with, for ``spec``, built by the steps' own functions."""
    from aigc.assemble import document_context
    from aigc.sections import section_context

    titles = [f"<section {i + 1} title>" for i in range(spec.sections)]
    return {
        "outline": spec.template_context(),
        "section": section_context(spec, titles, 0),
        "document": document_context(spec, [{"title": t, "body": "<text>"} for t in titles], model_id="<model>"),
    }


@click.group("templates")
def templates_group() -> None:
    """List style packs, render their prompts without a model, and list the variables templates may use."""


@templates_group.command("list")
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False))
def templates_list(templates_dir: str | None) -> None:
    """List the style packs and the template file each step uses."""
    from aigc.templates import STEPS, TemplateStore

    with one_line_errors():
        store = TemplateStore(templates_dir)
        click.echo(f"Style packs in {store.root}:")
        for style in store.styles():
            files = ", ".join(f"{step}={store.template_name(style, step)}" for step in STEPS)
            click.echo(f"  {style:<10} {files}")


@templates_group.command("render")
@click.argument("style")
@click.option("--topic", "-t", required=True, help="The topic to render the prompts for.")
@click.option("--sections", "-n", type=click.IntRange(1, 20), default=5, show_default=True)
@click.option("--words", "-w", type=click.IntRange(50, 10000), default=800, show_default=True)
@click.option("--outline", "outline_file", metavar="FILE", help="Section titles for the section prompts.")
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False))
def templates_render(style: str, topic: str, sections: int, words: int, outline_file: str | None,
                     templates_dir: str | None) -> None:
    """Print the outline prompt and every section prompt of STYLE for a topic; no model runs."""
    from aigc.sections import section_context
    from aigc.spec import ArticleSpec
    from aigc.templates import TemplateStore

    with one_line_errors():
        outline = read_outline(outline_file)
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


def _echo_prompt(label: str, rendered) -> None:
    click.secho(f"=== {label}  sha256:{rendered.template_hash}", bold=True)
    for m in rendered.messages:
        click.secho(f"[{m.role}]", fg="cyan")
        click.echo(m.content)
    click.echo()


@templates_group.command("vars")
@click.argument("style", required=False)
@click.option("--templates-dir", envvar="AIGC_TEMPLATES_DIR", type=click.Path(file_okay=False))
def templates_vars(style: str | None, templates_dir: str | None) -> None:
    """List the variables each template of STYLE (default: every style pack) may use, with example values.

    \b
    "used" marks those the style's template (or a template it extends) reads; a variable
    a template reads that the step does not provide is flagged: rendering it fails, unless the
    template tests it with `is defined` (optional variables some requests set).
    Example:
      aigc templates vars report
    """
    from aigc.spec import ArticleSpec
    from aigc.templates import STEPS, TemplateStore

    with one_line_errors():
        store = TemplateStore(templates_dir)
        if style is not None:
            store.check_style(style)
        for name in [style] if style else store.styles():
            contexts = step_contexts(ArticleSpec.build(source="aigc templates vars", topic=_SAMPLE_TOPIC,
                                                       style=name, sections=3))
            for step in STEPS:
                template = store.template_name(name, step)
                used, optional = store.variables(template)
                chain = ", ".join(sorted(store.sources(template) - {template}))
                click.secho(f"{name} / {step}: {template}" + (f" (with {chain})" if chain else ""), bold=True)
                for var, value in contexts[step].items():
                    click.echo(f"  {var:<14} {'used' if var in used else '    '}  {_example(value):<28} "
                               f"{VARIABLE_HELP.get(var, '')}".rstrip())
                for var in sorted(used - set(contexts[step]) - set(store.env.globals)):
                    click.echo(f"  {var:<14} " + ("optional: set by aigc only for some requests (tested with "
                                                  "`is defined`)" if var in optional else
                                                  "NOT PROVIDED: this template fails to render; use a variable above"))
                click.echo()
        click.echo("Filters beyond Jinja's built-ins: anchor (the link id of a heading's text).")


def _example(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 28 else text[:25] + "..."
