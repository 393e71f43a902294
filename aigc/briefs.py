"""Briefs: a short title asked of the model when a piece is requested by its brief alone, and the numbered points a brief asks to cover."""

from __future__ import annotations

import logging
import re
from typing import Sequence

from aigc.backends.base import Backend, GenerationRequest, generate_with_prefill
from aigc.errors import AigcError
from aigc.points import _content_words, brief_points, point_covered, point_titles  # noqa: F401  (re-exported)
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore

log = logging.getLogger(__name__)

TITLE_TEMPLATE = "title.j2"
MAX_TITLE_WORDS = 12
MAX_TITLE_CHARACTERS = 30  # Chinese, Japanese, Korean


def title_template(store: TemplateStore, lang: str) -> str:
    """``base/<lang>/title.j2`` when the language has one, else ``base/title.j2``."""
    code = lang.split("-", 1)[0].lower()
    own = f"base/{code}/{TITLE_TEMPLATE}"
    return own if code != "en" and (store.root / own).is_file() else f"base/{TITLE_TEMPLATE}"


def clean_model_title(text: str, spec: ArticleSpec) -> str | None:
    """The title in a model's reply (first line, no quotes, marks or "Title:"), or None if it is not one."""
    from aigc.cleanup import words
    from aigc.outline_parse import clean_title

    line = next((ln for ln in text.replace("\r", "").split("\n") if any(c.isalnum() for c in ln)), "")
    line = re.sub(r"^\s*(?:title|标题|題名|제목)\s*[:：]\s*", "", line.strip(), flags=re.I)
    title = clean_title(line).strip("\"'“”‘’「」『』《》*#").strip()
    limit = MAX_TITLE_CHARACTERS if spec.counts_characters else MAX_TITLE_WORDS
    if not title or not any(c.isalpha() for c in title) or words(title) > limit or len(title) > 100:
        return None
    if re.match(r"(?i)^(?:sure|here|certainly|okay|i )", title) or _META_TITLE.search(title) or "[" in title:
        return None
    # a title that shares no word with what was asked is the model's own story ("It would be: BEEFBISHOPPERY")
    if not _content_words(title) & _content_words(f"{spec.brief or ''} {spec.topic}"):
        return None
    return title


#: A reply that talks about the request, not a title: "Your response should be formatted as follows",
#: "To improve this sentence", "What's Your Title? ...".
_META_TITLE = re.compile(r"(?i)\b(?:your (?:response|title|request\w*)|response should|formatted|as follows|"
                         r"this sentence|the title|it would be|here'?s|looking for)\b|[:：]\s*$")


def derive_titles(backend: Backend, specs: Sequence[ArticleSpec], store: TemplateStore) -> list[str | None]:
    """Titles for the pieces asked for by a brief alone, in one batched call; None for the others.

    A reply that is no usable title (or a backend failure) gives the topic derived from the brief.
    """
    wanted = [i for i, spec in enumerate(specs) if spec.topic_from_brief]
    titles: list[str | None] = [None] * len(specs)
    if not wanted:
        return titles
    requests = []
    for i in wanted:
        spec = specs[i]
        rendered = store.render_messages(title_template(store, spec.lang), spec.template_context())
        requests.append(GenerationRequest(messages=rendered.messages, max_new_tokens=32, temperature=spec.temperature,
                                          top_p=spec.top_p, seed=spec.seed, purpose="title"))
    try:
        completions = generate_with_prefill(backend, requests)
    except AigcError as err:
        log.warning("no titles from the model (%s); using the topics derived from the briefs", err)
        completions = [None] * len(wanted)
    for i, completion in zip(wanted, completions):
        titles[i] = (clean_model_title(completion.text, specs[i]) if completion else None) or specs[i].topic
    return titles
