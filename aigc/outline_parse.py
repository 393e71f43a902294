"""Reading outlines: section titles from whatever a model wrote (numbered lists, headings, bullets), and the user's own."""

from __future__ import annotations

import re
from typing import Sequence

from aigc.errors import InputError, OutlineError

MAX_TITLE_WORDS = 14
MAX_TITLE_CHARS = 100

_CJK_NUMERAL = "一二三四五六七八九十"
#: "1. Title", "iv) Title", "Part 2 - Title"; and the Chinese forms "1、标题", "一、标题", "第二部分：标题", "（三）标题"
#: (CJK punctuation needs no space after it).
_NUMBERED = re.compile(
    r"^\s*(?:(?:section|part|chapter)\s+)?[(（]?(?:\d{1,2}|[ivxlc]{1,5}|[a-z]"
    rf"|第?[{_CJK_NUMERAL}\d]{{1,3}}(?:部分|节|章)?)"
    r"\s*(?:[.):\-–—]\s+|[、．。）)：:]\s*)(?P<t>.+)$",
    re.I,
)
_SECTION_WORD = re.compile(
    r"^\s*(?:section|part|chapter)\s+(?:\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|[ivx]{1,4})\b\s*[:.\-–—]?\s*(?P<t>.*)$",
    re.I,
)
_HEADING = re.compile(r"^\s*#{1,6}\s+(?P<t>.+?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*[-*•+]\s+(?P<t>.+)$")
_BOLD_LINE = re.compile(r"^\s*\*\*(?P<t>[^*]{2,}?)\*\*:?\s*$")
_PREFIX_NOISE = re.compile(r"^(?:title|outline|heading|section title|topic)\s*\d{0,2}\s*[:.\-–—]\s*", re.I)


def clean_title(raw: str) -> str:
    """Strip list markers, emphasis, quotes, trailing punctuation and 'Section 2:' prefixes."""
    t = raw.strip()
    for _ in range(3):
        m = _SECTION_WORD.match(t)
        if m and m.group("t").strip():
            t = m.group("t")
        m = _NUMBERED.match(t)
        if m:
            t = m.group("t")
        t = re.sub(r"^[#*_`\s]+|[*_`\s]+$", "", t)
        t = _PREFIX_NOISE.sub("", t)
    t = re.sub(r"\*\*|__|`", "", t)
    # "Title: a long description of it" -> keep the title part
    if len(t.split()) > MAX_TITLE_WORDS and ":" in t:
        t = t.partition(":")[0]
    t = t.strip(" \t\"'“”‘’.:;,-–—。：；，「」《》")
    return re.sub(r"\s+", " ", t)


_CHATTER = re.compile(
    r"^(?:here(?:'s| is| are)|sure|certainly|okay|of course|below (?:is|are)|the following|i hope|let me)\b"
    r"|\b(?:outline|section titles?)\s+(?:for|of|about)\b",
    re.I,
)


def _is_title(t: str) -> bool:
    words = t.split()
    return (bool(words) and len(words) <= MAX_TITLE_WORDS and len(t) <= MAX_TITLE_CHARS
            and any(c.isalpha() for c in t) and not _CHATTER.search(t))


def parse_outline(text: str) -> list[str]:
    """Section titles from a model's outline: numbered lists, headings, bullets or short lines.

    Indented sub-items and prose around the list are ignored; duplicates are dropped.
    """
    lines = [ln.rstrip() for ln in text.replace("\r", "").split("\n")]
    kinds: dict[str, list[str]] = {"numbered": [], "heading": [], "bullet": [], "bold": [], "plain": []}
    for ln in lines:
        if not ln.strip():
            continue
        indent = len(ln) - len(ln.lstrip())
        if _HEADING.match(ln):
            kinds["heading"].append(_HEADING.match(ln).group("t"))
        elif (_NUMBERED.match(ln) or _SECTION_WORD.match(ln)) and indent < 2:
            kinds["numbered"].append(ln)
        elif _BULLET.match(ln) and indent < 2:
            kinds["bullet"].append(_BULLET.match(ln).group("t"))
        elif _BOLD_LINE.match(ln):
            kinds["bold"].append(_BOLD_LINE.match(ln).group("t"))
        elif indent < 2 and not ln.rstrip().endswith((".", "?", "!")) or len(ln.split()) <= 6:
            kinds["plain"].append(ln)
    for kind in ("numbered", "heading", "bold", "bullet", "plain"):
        titles = _dedupe(clean_title(t) for t in kinds[kind])
        titles = [t for t in titles if _is_title(t)]
        if len(titles) >= 2:
            return titles
    return []


def _dedupe(titles) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in titles:
        key = re.sub(r"\W+", " ", t.lower()).strip()
        if key and key not in seen:
            seen.add(key)
            out.append(t)
    return out


def validate_outline(titles: Sequence[str], n_sections: int, *, topic: str = "") -> list[str]:
    """Check and normalise an outline; raise OutlineError saying what is wrong."""
    cleaned = [clean_title(t) for t in titles]
    topic_key = re.sub(r"\W+", " ", topic.lower()).strip()
    kept = [t for t in _dedupe(cleaned) if _is_title(t) and re.sub(r"\W+", " ", t.lower()).strip() != topic_key]
    if any(not t for t in cleaned):
        raise OutlineError("the outline has an empty section title")
    if len(kept) < n_sections:
        raise OutlineError(f"the outline has {len(kept)} usable section titles, {n_sections} were asked for")
    return kept[:n_sections]


def given_outline(titles: Sequence[str], *, source: str = "--outline") -> list[str]:
    """Validate an outline the user supplied (no model call); errors name where it came from."""
    cleaned = [clean_title(t) for t in titles if t.strip()]
    if not cleaned:
        raise InputError(f"{source}: the outline is empty; give one section title per line")
    for i, t in enumerate(cleaned, 1):
        if not _is_title(t):
            raise InputError(f"{source}: section {i} title {t!r} is not a usable title (1-{MAX_TITLE_WORDS} words)")
    if len(_dedupe(cleaned)) != len(cleaned):
        raise InputError(f"{source}: the outline repeats a section title; titles must be unique")
    return cleaned
