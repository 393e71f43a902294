"""Reading a finished article's Markdown back: its title and ``##`` sections (for evaluation and the judge)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aigc.cleanup import split_words, words

#: Section headings that are navigation, not content.
TOC_TITLES = {"contents", "table of contents", "toc", "in this article", "目录", "目次", "목차"}
_TOC_KEYS = {t.replace(" ", "") for t in TOC_TITLES}  # CJK titles normalise to spaced characters
_HEADING2 = re.compile(r"^##\s+(.*?)\s*#*\s*$")
_NUMBERING = re.compile(r"^\s*(?:\d{1,3}|[ivxlc]{1,6}|[a-z])[.)]\s+", re.I)


@dataclass
class Section:
    """One ``##`` section of an article: its heading as written and its Markdown body."""

    title: str
    body: str
    words: int = field(init=False)

    def __post_init__(self) -> None:
        self.words = words(self.body)


@dataclass
class ParsedArticle:
    """An article's title and content sections (Contents and the footer after ``---`` left out)."""

    title: str
    sections: list[Section]

    @property
    def body(self) -> str:
        """The section bodies, one paragraph block each."""
        return "\n\n".join(s.body for s in self.sections if s.body)

    @property
    def body_words(self) -> int:
        return sum(s.words for s in self.sections)


def norm_title(text: str) -> str:
    """A heading reduced for comparison: no Markdown marks, links or numbering ("1.", "iv)"), lower case."""
    text = re.sub(r"[*_`]+", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = _NUMBERING.sub("", text.strip())
    return " ".join(split_words(text.lower()))


def parse_article(markdown: str) -> ParsedArticle:
    """Split Markdown into the ``#`` title and the ``##`` sections.

    Lines inside fenced code blocks are never headings; a section titled "Contents" (or "Table of
    contents") is left out; a final ``---`` rule with no ``##`` heading after it starts the footer,
    which is dropped. Text before the first ``##`` (title, byline) is not a section; an article with no ``##``
    heading at all is one section titled with its title.
    """
    lines = markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    in_fence, title = False, ""
    heads: list[tuple[int, str]] = []
    rules: list[int] = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if not title and not heads and re.match(r"^#\s+\S", line):
            title = line.lstrip("#").strip()
        elif m := _HEADING2.match(line):
            heads.append((i, m.group(1)))
        elif re.match(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$", line):
            rules.append(i)
    end = len(lines)
    if rules and (not heads or rules[-1] > heads[-1][0]):
        end = rules[-1]
    sections = []
    if not heads:  # a one-section piece (an email, a 100-word note): the text between title/byline and footer
        start = next((i + 1 for i, line in enumerate(lines[:end]) if re.match(r"^#\s+\S", line)), 0)
        rest = [ln for ln in lines[start:end]]
        while rest and (not rest[0].strip() or re.match(r"^\*[^*].*\*\s*$", rest[0])):  # blank lines, the byline
            rest.pop(0)
        body = "\n".join(rest).strip()
        return ParsedArticle(title=title, sections=[Section(title=title, body=body)] if body else [])
    for k, (i, head) in enumerate(heads):
        stop = heads[k + 1][0] if k + 1 < len(heads) else end
        if norm_title(head).replace(" ", "") in _TOC_KEYS:
            continue
        sections.append(Section(title=head, body="\n".join(lines[i + 1 : stop]).strip()))
    return ParsedArticle(title=title, sections=sections)
