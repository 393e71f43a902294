"""Passages: the Passage record, Markdown/plain text split on headings and paragraphs, HTML and PDF text extraction."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from aigc.errors import InputError
from aigc.textstats import pack_sentences

#: PDF pages read at most per file.
MAX_PDF_PAGES = 1000
#: Passage size in words: paragraphs packed up to MAX_WORDS (the embedding model reads ~190 words of a text);
#: a piece under MIN_WORDS joins its neighbour when they fit.
MIN_WORDS = 100
MAX_WORDS = 200
#: A passage shorter than this many words (a lone heading, a caption) is dropped.
TINY_WORDS = 8

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
#: A sentence end: punctuation then space, or a lower-case letter/digit, a full stop and a capital with no space
#: (text pasted from web pages often loses that space: "81 others.No group").
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+(?=\S)|(?<=[a-z0-9][.!?])(?=[A-Z][a-z])")


@dataclass(frozen=True)
class Passage:
    """A piece of a source document: its text, where it is (document, heading path, lines/page/row) and a hash.

    ``hash`` is the SHA-256 (first 16 hex digits) of ``text``; ``score`` is set by a search.
    """

    text: str
    document: str
    location: str
    link: str | None = None
    title: str = ""
    heading: str = ""
    hash: str = ""
    score: float = 0.0

    @property
    def embed_text(self) -> str:
        """What is embedded and indexed: title and heading path before the text (they say what it is about)."""
        title = "" if self.heading == self.title or self.heading.startswith(self.title + " > ") else self.title
        head = " > ".join(p for p in (title, self.heading) if p)
        return f"{head}\n{self.text}" if head else self.text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Passage":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})



def text_hash(text: str) -> str:
    """The content hash passages carry: first 16 hex digits of SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]



# ---------------------------------------------------------------- splitting


def _words(text: str) -> int:
    return len(text.split())


def _sentences(text: str, max_words: int) -> list[str]:
    """A long paragraph cut at sentence ends into pieces of at most about ``max_words`` words."""
    out = pack_sentences(_SENTENCE_END.split(text), max_words)
    cut = []
    for piece in out:  # a "sentence" still far too long (a list without full stops) is cut between words
        words = piece.split()
        cut.extend(" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)) \
            if len(words) > 2 * max_words else cut.append(piece)
    return cut


def pack(paragraphs: Sequence[tuple[str, int, int]], *, min_words: int = MIN_WORDS,
         max_words: int = MAX_WORDS) -> list[tuple[str, int, int]]:
    """Paragraphs ``(text, first, last)`` of one section packed into passages of about min..max words.

    A paragraph longer than ``max_words`` is cut at sentence ends; pieces are then packed greedily
    towards an even size (the section's words over the fewest passages of at most ``max_words``); a
    last passage shorter than ``min_words`` joins the one before when the two fit in 1.25 x ``max_words``.
    """
    pieces: list[tuple[str, int, int]] = []
    for text, first, last in paragraphs:
        if _words(text) > max_words:
            target = max(min_words, max_words * 2 // 3)
            pieces.extend((part, first, last) for part in _sentences(text, target))
        else:
            pieces.append((text, first, last))
    total = sum(_words(t) for t, _, _ in pieces)
    even = total / -(-total // max_words) if total > max_words else max_words
    out: list[tuple[str, int, int]] = []
    current: list[tuple[str, int, int]] = []
    count = 0
    for text, first, last in pieces:
        n = _words(text)
        if current and (count + n > max_words or (count + n > even and count >= min_words)):
            out.append(("\n\n".join(t for t, _, _ in current), current[0][1], current[-1][2]))
            current, count = [], 0
        current.append((text, first, last))
        count += n
    if current:
        out.append(("\n\n".join(t for t, _, _ in current), current[0][1], current[-1][2]))
    if len(out) > 1 and _words(out[-1][0]) < min_words and \
            _words(out[-2][0]) + _words(out[-1][0]) <= max_words * 5 // 4:
        last_piece = out.pop()
        prev = out.pop()
        out.append((prev[0] + "\n\n" + last_piece[0], prev[1], last_piece[2]))
    return out


def markdown_sections(text: str) -> Iterator[tuple[list[str], list[tuple[str, int, int]]]]:
    """``(heading path, paragraphs)`` of a Markdown or plain text, paragraphs as ``(text, first line, last line)``.

    ATX headings (``#`` .. ``######``) open sections; blank lines end paragraphs; fenced code stays whole.
    """
    path: list[tuple[int, str]] = []
    paragraphs: list[tuple[str, int, int]] = []
    lines: list[str] = []
    start = 0
    fenced = False

    def flush_paragraph(end: int) -> None:
        nonlocal lines
        body = " ".join(" ".join(lines).split()) if not fenced else "\n".join(lines)
        if body.strip():
            paragraphs.append((body, start, end))
        lines = []

    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            if not fenced:
                flush_paragraph(number - 1)
                start = number
            lines.append(line)
            fenced = not fenced
            if not fenced:
                flush_paragraph(number)
            continue
        if fenced:
            lines.append(line)
            continue
        heading = _HEADING.match(line)
        if heading:
            flush_paragraph(number - 1)
            if paragraphs:
                yield [h for _, h in path], paragraphs
                paragraphs = []
            level = len(heading.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, heading.group(2).strip())]
            continue
        if not line.strip():
            flush_paragraph(number - 1)
            continue
        if not lines:
            start = number
        lines.append(line)
    flush_paragraph(len(text.splitlines()))
    if paragraphs:
        yield [h for _, h in path], paragraphs


def split_markdown(text: str, *, document: str, link: str | None = None, title: str = "",
                   min_words: int = MIN_WORDS, max_words: int = MAX_WORDS,
                   where: str = "lines") -> list[Passage]:
    """Passages of a Markdown/plain text: split on headings, then packed paragraphs (see :func:`pack`).

    ``location`` is the heading path and the line range (``where="lines"``) or none (``where=""``); the
    pieces of a paragraph too long for one passage say which part they are ("line 10, part 2").
    """
    out = []
    for headings, paragraphs in markdown_sections(text):
        heading = " > ".join(headings)
        packed = [(body, first, last) for body, first, last in pack(paragraphs, min_words=min_words, max_words=max_words)
                  if _words(body) >= TINY_WORDS]
        spans = [(f"line {first}" if first == last else f"lines {first}-{last}") if where == "lines" else ""
                 for _, first, last in packed]
        parts: dict[str, int] = {}
        for (body, _, _), span in zip(packed, spans):
            if span and spans.count(span) > 1:  # pieces of one long paragraph: "line 10, part 2"
                parts[span] = parts.get(span, 0) + 1
                span = f"{span}, part {parts[span]}"
            location = ", ".join(p for p in (heading, span) if p) or "whole"
            out.append(Passage(text=body, document=document, location=location, link=link, title=title,
                               heading=heading, hash=text_hash(body)))
    return out


# ---------------------------------------------------------------- extraction

_HTML_DROP = ["script", "style", "noscript", "nav", "header", "footer", "aside", "form", "svg", "template",
              "button", "iframe"]
_HTML_BLOCKS = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "div", "section", "article",
                "main", "td", "th", "dd", "dt", "figcaption", "caption", "body"]


def html_to_markdown(html: str) -> tuple[str, str, str | None]:
    """``(markdown text, title, canonical link)`` of an HTML page, through BeautifulSoup (stdlib parser).

    Scripts, styles, navigation, headers, footers and forms are dropped; each innermost block element
    (heading, paragraph, list item, cell, div with text) becomes a paragraph, headings ``#`` lines.
    """
    try:
        from bs4 import BeautifulSoup
    except ImportError as exc:  # a declared dependency; say how to get it
        raise InputError("reading HTML sources needs beautifulsoup4; run: pip install beautifulsoup4") from exc
    soup = BeautifulSoup(html, "html.parser")
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    link = None
    canonical = soup.find("link", rel="canonical") or soup.find("meta", property="og:url")
    if canonical is not None:
        link = canonical.get("href") or canonical.get("content") or None
    for tag in soup(_HTML_DROP):
        tag.decompose()
    if soup.head:
        soup.head.decompose()
    blocks = []
    for el in soup.find_all(_HTML_BLOCKS):
        if el.find(_HTML_BLOCKS):
            continue  # only innermost blocks, so no text is taken twice
        text = " ".join(el.get_text().split())
        if not text:
            continue
        if el.name in ("h1", "h2", "h3", "h4", "h5", "h6"):
            blocks.append("#" * int(el.name[1]) + " " + text)
        else:
            blocks.append(text)
    return "\n\n".join(blocks), title, link


def pdf_pages(path: Path, *, max_pages: int = MAX_PDF_PAGES) -> tuple[list[str], int]:
    """Text of each page of a PDF (pypdf) and the page count; raises ValueError for an unreadable PDF."""
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise InputError("reading PDF sources needs pypdf; run: pip install pypdf") from exc
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf logs every odd object it repairs
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception as exc:
                raise ValueError("it is encrypted") from exc
        total = len(reader.pages)
        return [(page.extract_text() or "") for page in reader.pages[:max_pages]], total
    except ValueError:
        raise
    except Exception as exc:  # pypdf raises many kinds for a damaged file
        raise ValueError(f"pypdf could not read it ({type(exc).__name__}: {exc})") from exc
