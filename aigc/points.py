"""A brief's numbered points ("Cover 1. the defects we logged 2. the cost of returns ..."): found, made section
titles, and checked for in the text. No dependence on the article spec (aigc.spec counts them for its sections)."""

from __future__ import annotations

import re
from typing import Sequence

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
    from aigc.outline_titles import unusable_reason

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
