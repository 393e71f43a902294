"""The assembly step: the document template gives Markdown, ``markdown`` gives a standalone HTML page, plus a JSON record."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Sequence

from markupsafe import Markup

from aigc import __version__
from aigc.spec import ArticleSpec
from aigc.templates import PAGE_TEMPLATE, TemplateStore
from aigc.version import steps_version

MARKDOWN_EXTENSIONS = ["toc", "tables", "fenced_code", "sane_lists", "smarty"]


def markdown_to_html(text: str) -> str:
    """Markdown to an HTML fragment; raw HTML in the text is shown, never executed."""
    import markdown

    from aigc.templates import anchor

    # headings get the ids the `anchor` filter gives links (Unicode kept where ASCII would lose letters)
    md = markdown.Markdown(extensions=MARKDOWN_EXTENSIONS, output_format="html",
                           extension_configs={"toc": {"slugify": anchor}})
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md.convert(text)


def inputs_key(spec: ArticleSpec, template_hashes: dict[str, str], model_id: str) -> str:
    """What makes two runs the same article: inputs, templates, model and the step code's version."""
    blob = json.dumps({"spec": spec.key(), "templates": template_hashes, "model": model_id,
                       "steps": steps_version()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def document_context(spec: ArticleSpec, sections: Sequence[dict], *, references: Sequence[dict] = (),
                     model_id: str, date: str | None = None,
                     title: str | None = None) -> dict:
    """Variables of the document template: the spec's, plus title, date, model and sections (title, body)."""
    return spec.template_context(
        title=title or spec.topic,
        date=date or dt.date.today().isoformat(),
        model=model_id,
        references=list(references),  # with sources: the References rows (aigc.grounding)
        sections=[{"title": s["title"], "body": s["body"]} for s in sections],
    )


def render_document(spec: ArticleSpec, sections: Sequence[dict], store: TemplateStore, *, model_id: str,
                    references: Sequence[dict] = (),
                    date: str | None = None, title: str | None = None) -> str:
    """The article as Markdown, from the style's document template (in the article's language, if the pack has it)."""
    context = document_context(spec, sections, references=references, model_id=model_id, date=date, title=title)
    text = store.render(store.template_name(spec.style, "document", spec.lang), context)
    return "\n".join(line.rstrip() for line in text.strip().split("\n")) + "\n"


def render_page(markdown_text: str, title: str, store: TemplateStore, *, lang: str = "en") -> str:
    """A standalone, readable HTML page around the Markdown."""
    body = Markup(markdown_to_html(markdown_text))
    return store.render(PAGE_TEMPLATE, {"title": title, "body": body, "lang": lang, "version": __version__})


def build_record(
    spec: ArticleSpec,
    *,
    outline: dict[str, Any],
    sections: Sequence[dict],
    backend_info: dict[str, Any],
    templates: dict[str, dict[str, str]],
    timings: dict[str, float],
    key: str,
    markdown_text: str,
) -> dict[str, Any]:
    """The JSON record of how the article was made. Holds no secret: backend_info comes from describe()."""
    from aigc.cleanup import words
    from aigc.sections import MIN_SECTION_WORDS

    return {
        "aigc_version": __version__,
        "steps_version": steps_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs_key": key,
        "topic": spec.topic,
        "title": outline.get("title") or spec.topic,
        "title_source": "model" if outline.get("title") and outline["title"] != spec.topic else
                        "brief" if spec.topic_from_brief else "topic",
        "brief": spec.brief,
        "lang": spec.lang,
        #: Chinese, Japanese and Korean lengths are characters (as LongBench-Write counts them), others words.
        "length_unit": "characters" if spec.counts_characters else "words",
        "style": spec.style,
        "backend": backend_info,
        "model": backend_info.get("model"),
        "generation": {
            "seed": spec.seed,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "outline_max_new_tokens": spec.outline_tokens,
            "section_max_new_tokens": spec.section_tokens,
        },
        "requested": {"sections": spec.sections, "words": spec.words, "words_per_section": spec.section_words,
                      "sections_from_length": spec.sections_from_length},
        "templates": templates,
        "outline": {
            "source": outline.get("source", "generated"),
            "titles": outline["titles"],
            "attempts": outline.get("attempts", 0),
        },
        "sections": [{k: v for k, v in s.items() if k != "body"} for s in sections],
        "words": words(markdown_text),
        "body_words": sum(s["words"] for s in sections),
        #: Sections that came out empty or nearly (the article has a gap there): said in every summary.
        "empty_sections": [s["title"] for s in sections if s["words"] < MIN_SECTION_WORDS],
        "tokens": {
            "prompt": outline.get("prompt_tokens", 0) + sum(s["prompt_tokens"] for s in sections),
            "completion": outline.get("completion_tokens", 0) + sum(s["completion_tokens"] for s in sections),
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
