"""Briefs: a short title asked of the model when a piece is requested by its brief alone, and the numbered points a brief asks to cover."""

from __future__ import annotations

import logging
import re
from typing import Sequence

from aigc.backends.base import Backend, GenerationRequest, generate_with_prefill
from aigc.errors import AigcError
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


# -- numbered points ------------------------------------------------------------------------------
_POINT = re.compile(r"(?:^|(?<=[\s：:，,；;]))(?:\(?(\d{1,2})[.)、](?!\d)|[（(](\d{1,2})[)）]|([一二三四五六七八九十])[、.．])\s*")
_STOP = set("""a an the and or of to in on for with by at from about as is are be this that these those it its
your our their you we they how what why when which who whom into over under more most some any each all can
will should would could may might must do does did not no than then so such very just also""".split())


def brief_points(brief: str | None) -> list[str]:
    """The numbered points of a brief ("1. cost 2. timing", one per line or inline, "1)", "(1)", "一、")."""
    if not brief:
        return []
    marks = list(_POINT.finditer(brief))
    points = []
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(brief)
        text = brief[m.end():end].strip()
        text = re.split(r"\n\s*\n", text)[0]
        if k + 1 == len(marks):  # the last point ends at its line or sentence
            text = re.split(r"\n|(?<=[.!?。！？])\s", text)[0]
        text = " ".join(text.split()).strip(" ;,.；，。")
        if text and any(c.isalnum() for c in text):
            points.append(text)
    return points if len(points) >= 2 else []


def point_titles(brief: str | None) -> list[str]:
    """Section titles from a brief's numbered points, in order ("the defects we logged" -> "The defects we
    logged"): the point up to its first comma or clause, at most 8 words; points that make no usable title
    are left out (their words still reach every prompt through the brief)."""
    from aigc.outline_parse import clean_title
    from aigc.outline_pool import unusable_reason

    titles: list[str] = []
    for point in brief_points(brief):
        head = re.split(r"\s*[,;:(–—，；：（]\s*|\s+-\s+|(?<=[.!?。！？])\s", point)[0]
        title = clean_title(" ".join(head.split()[:8])).rstrip(".!?。！？")
        title = title[:1].upper() + title[1:]
        if title and unusable_reason(title) is None and title.lower() not in {t.lower() for t in titles}:
            titles.append(title)
    return titles


def _content_words(text: str) -> set[str]:
    from aigc.cleanup import split_words

    out = set()
    for w in split_words(text.lower()):
        if w in _STOP or (len(w) < 3 and w.isascii()):
            continue
        out.add(w[:5] if w.isascii() else w)  # a crude stem: "policies" and "policy" meet at "polic"
    return out


def point_covered(point: str, titles: Sequence[str], text: str, *, share: float = 0.5) -> bool:
    """Whether a brief's point appears as a section title or in the text: at least ``share`` of its content words
    (first five letters; Chinese characters one by one) are in one title, or in one paragraph of the text."""
    want = _content_words(point)
    if not want:
        return True
    places = list(titles) + [p for p in text.split("\n\n") if p.strip()]
    return any(len(want & _content_words(place)) >= share * len(want) for place in places)
