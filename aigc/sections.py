"""The sections step: expand every section of every article in one batch, then clean the prose."""

from __future__ import annotations

import logging
from typing import Sequence

from aigc.backends.base import Backend, GenerationRequest, generate_with_prefill
from aigc.cleanup import clean_section, fit_length, words
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore

log = logging.getLogger(__name__)

#: A section shorter than this after cleaning is generated again once, with another seed.
MIN_SECTION_WORDS = 12
RETRY_SEED_OFFSET = 1000


def section_context(spec: ArticleSpec, titles: Sequence[str], index: int) -> dict:
    """Template variables of section ``index`` (0-based)."""
    return spec.template_context(
        outline=list(titles),
        section_title=titles[index],
        section_index=index + 1,
        is_first=index == 0,
        is_last=index == len(titles) - 1,
    )


def section_requests(
    spec: ArticleSpec, titles: Sequence[str], store: TemplateStore, *, seed_offset: int = 0
) -> list[GenerationRequest]:
    """One request per section; all share the generation settings so a backend can batch them."""
    name = store.template_name(spec.style, "section")
    requests = []
    for i in range(len(titles)):
        rendered = store.render_messages(name, section_context(spec, titles, i))
        requests.append(
            GenerationRequest(
                messages=rendered.messages,
                max_new_tokens=spec.section_tokens,
                temperature=spec.temperature,
                top_p=spec.top_p,
                seed=spec.seed + seed_offset,
                purpose="section",
            )
        )
    return requests


def expand_sections(
    backend: Backend, specs: Sequence[ArticleSpec], outlines: Sequence[Sequence[str]], store: TemplateStore
) -> list[list[dict]]:
    """Write every section of every article: one batched backend call, plus one for any that came out empty.

    ``outlines[i]`` holds the section titles of ``specs[i]``; returns each article's sections in order.
    """
    rows = [(a, i) for a, titles in enumerate(outlines) for i in range(len(titles))]
    per_article = [section_requests(spec, titles, store) for spec, titles in zip(specs, outlines)]
    completions = generate_with_prefill(backend, [per_article[a][i] for a, i in rows])
    results = {(a, i): _result(specs[a], outlines[a], i, c, attempts=1) for (a, i), c in zip(rows, completions)}
    short = [(a, i) for a, i in rows if results[a, i]["words"] < MIN_SECTION_WORDS]
    if short:
        log.warning("%d section(s) came out empty or too short; generating them again", len(short))
        retry = {a: section_requests(specs[a], outlines[a], store, seed_offset=RETRY_SEED_OFFSET) for a, _ in short}
        again = generate_with_prefill(backend, [retry[a][i] for a, i in short])
        for (a, i), c in zip(short, again):
            first, second = results[a, i], _result(specs[a], outlines[a], i, c, attempts=2)
            for key in ("prompt_tokens", "completion_tokens", "seconds"):
                second[key] += first[key]
            if second["words"] >= first["words"]:
                results[a, i] = second
        for a, i in short:
            if results[a, i]["words"] < MIN_SECTION_WORDS:
                log.warning("%s: section %d %r is still empty after a retry: the article has a gap there "
                            "(try another --seed, or a larger model)", specs[a].topic, i + 1, outlines[a][i])
    return [[results[a, i] for i in range(len(titles))] for a, titles in enumerate(outlines)]


def _result(spec: ArticleSpec, titles: Sequence[str], i: int, completion, *, attempts: int) -> dict:
    others = [t for j, t in enumerate(titles) if j != i]
    body = clean_section(
        completion.text, title=titles[i], other_titles=others, truncated=completion.finish_reason == "length"
    )
    body = fit_length(body, spec.section_words)
    return {
        "title": titles[i],
        "body": body,
        "words": words(body),
        "target_words": spec.section_words,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "seconds": round(completion.seconds, 3),
        "attempts": attempts,
    }
