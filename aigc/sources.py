"""Sources for grounded writing: folders and tables of documents, read safely and split into passages."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from aigc.errors import InputError

#: File kinds read from a folder, by suffix.
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
PDF_SUFFIXES = {".pdf"}
TABLE_SUFFIXES = {".jsonl", ".csv", ".parquet"}
#: A file larger than this is read only up to it (text, JSONL) or skipped (PDF, CSV, Parquet), with a warning.
MAX_FILE_BYTES = 20 * 1024 * 1024
#: PDF pages read at most per file.
MAX_PDF_PAGES = 1000
#: Passage size in words: paragraphs packed up to MAX_WORDS (the embedding model reads ~190 words of a text);
#: a piece under MIN_WORDS joins its neighbour when they fit.
MIN_WORDS = 100
MAX_WORDS = 200
#: A passage shorter than this many words (a lone heading, a caption) is dropped.
TINY_WORDS = 8
#: Column names looked for as a row's link and title when none is named.
LINK_FIELDS = ("url", "link", "source", "href")
TITLE_FIELDS = ("title", "name", "heading")

Progress = Callable[[int, int, str], None]

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


@dataclass
class FileState:
    """What a source file was when read, to notice a change while indexing."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileState":
        st = path.stat()
        return cls(str(path), st.st_size, st.st_mtime_ns)


@dataclass
class Corpus:
    """Passages of all named sources, the warnings met reading them, and the files read (with their state)."""

    passages: list[Passage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[FileState] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def changed_files(self) -> list[str]:
        """Files whose size or modification time differ from when they were read (or that are gone)."""
        changed = []
        for state in self.files:
            try:
                now = FileState.of(Path(state.path))
            except OSError:
                changed.append(state.path)
                continue
            if (now.size, now.mtime_ns) != (state.size, state.mtime_ns):
                changed.append(state.path)
        return changed


def text_hash(text: str) -> str:
    """The content hash passages carry: first 16 hex digits of SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- splitting


def _words(text: str) -> int:
    return len(text.split())


def _sentences(text: str, max_words: int) -> list[str]:
    """A long paragraph cut at sentence ends into pieces of at most about ``max_words`` words."""
    out: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in _SENTENCE_END.split(text):
        n = _words(sentence)
        if current and count + n > max_words:
            out.append(" ".join(current))
            current, count = [], 0
        current.append(sentence)
        count += n
    if current:
        out.append(" ".join(current))
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

    ``location`` is the heading path and the line range (``where="lines"``) or none (``where=""``).
    """
    out = []
    for headings, paragraphs in markdown_sections(text):
        heading = " > ".join(headings)
        for body, first, last in pack(paragraphs, min_words=min_words, max_words=max_words):
            if _words(body) < TINY_WORDS:
                continue
            span = (f"line {first}" if first == last else f"lines {first}-{last}") if where == "lines" else ""
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


# ---------------------------------------------------------------- reading files


class _Reader:
    """Reads named sources into a Corpus, recording warnings instead of failing on one bad file."""

    def __init__(self, *, text_field: str, link_field: str | None, max_bytes: int, min_words: int,
                 max_words: int, progress: Progress | None):
        self.text_field = text_field
        self.link_field = link_field
        self.max_bytes = max_bytes
        self.min_words = min_words
        self.max_words = max_words
        self.progress = progress
        self.corpus = Corpus()

    def warn(self, message: str) -> None:
        self.corpus.warnings.append(message)

    def split(self, text: str, **kw: Any) -> None:
        self.corpus.passages.extend(split_markdown(text, min_words=self.min_words, max_words=self.max_words, **kw))

    def read_bytes(self, path: Path, label: str, *, whole: bool = False) -> bytes | None:
        """The file's bytes (the first ``max_bytes`` with a warning), or None when it is skipped."""
        self.corpus.files.append(FileState.of(path))
        size = path.stat().st_size
        if size > self.max_bytes:
            mb = f"{size / 2**20:.1f} MB over the {self.max_bytes / 2**20:.0f} MB limit"
            if whole:
                self.warn(f"{label}: skipped, {mb} (split it, or raise max_bytes)")
                return None
            self.warn(f"{label}: only the first {self.max_bytes / 2**20:.0f} MB read, {mb}")
        with open(path, "rb") as fh:
            return fh.read(self.max_bytes)

    def decode(self, data: bytes, label: str, *, truncated: bool) -> str | None:
        if b"\x00" in data[:8192]:
            self.warn(f"{label}: skipped, a binary file (not text)")
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            if truncated and exc.start >= len(data) - 4:
                return data[:exc.start].decode("utf-8-sig")  # the cap cut a character in two
            self.warn(f"{label}: skipped, not UTF-8 (byte {exc.start}); convert it to UTF-8")
            return None

    def read_file(self, path: Path, label: str, link: str) -> None:
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            return self.read_table(path, label)
        if suffix in PDF_SUFFIXES:
            return self.read_pdf(path, label, link)
        data = self.read_bytes(path, label)
        if data is None:
            return
        text = self.decode(data, label, truncated=path.stat().st_size > self.max_bytes)
        if text is None:
            return
        before = len(self.corpus.passages)
        if suffix in HTML_SUFFIXES:
            body, title, canonical = html_to_markdown(text)
            self.split(body, document=label, link=canonical or link, title=title or path.stem, where="")
        else:
            title, body = _title_and_body(text, path)
            self.split(body, document=label, link=link, title=title)
        if len(self.corpus.passages) == before:
            self.warn(f"{label}: skipped, no text")

    def read_pdf(self, path: Path, label: str, link: str) -> None:
        if self.read_bytes(path, label, whole=True) is None:
            return
        try:
            pages, total = pdf_pages(path)
        except ValueError as exc:
            self.warn(f"{label}: skipped, {exc}")
            return
        if total > len(pages):
            self.warn(f"{label}: only the first {len(pages)} of {total} pages read")
        before = len(self.corpus.passages)
        for number, page in enumerate(pages, 1):
            for p in split_markdown(page, document=label, link=link, title=path.stem, where="",
                                    min_words=self.min_words, max_words=self.max_words):
                self.corpus.passages.append(_replace(p, location=f"page {number}"))
        if len(self.corpus.passages) == before:
            self.warn(f"{label}: skipped, a PDF without a text layer (scanned?); run OCR on it first")

    def rows(self, path: Path, label: str) -> Iterator[tuple[int, dict[str, Any], str]]:
        """``(number, row, 'line'|'row')`` of a JSONL (read here, so lines are named), CSV or Parquet file."""
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            data = self.read_bytes(path, label)
            if data is None:
                return
            truncated = path.stat().st_size > self.max_bytes
            text = self.decode(data, label, truncated=truncated)
            if text is None:
                return
            lines = text.splitlines()
            if truncated and lines:
                lines = lines[:-1]  # the cap may have cut the last line
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{label} line {number}: not valid JSON ({exc.msg}, column {exc.colno})") \
                        from None
                if not isinstance(row, dict):
                    raise InputError(f"{label} line {number}: a JSON object is expected, got {type(row).__name__}")
                yield number, row, "line"
            return
        if self.read_bytes(path, label, whole=True) is None:
            return
        from datasets import Dataset

        try:
            loader = Dataset.from_csv if suffix == ".csv" else Dataset.from_parquet
            dataset = loader(str(path), keep_in_memory=True)
        except Exception as exc:
            raise InputError(f"{label}: could not read it as {suffix[1:].upper()} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        yield from self.dataset_rows(dataset, label)

    def dataset_rows(self, dataset: Any, label: str) -> Iterator[tuple[int, dict[str, Any], str]]:
        if self.text_field not in dataset.column_names:
            raise InputError(f"{label}: no {self.text_field!r} column (columns: {', '.join(dataset.column_names)});"
                             f" name the text column with text_field")
        for number, row in enumerate(dataset, 1):
            yield number, row, "row"

    def read_rows(self, rows: Iterable[tuple[int, dict[str, Any], str]], label: str, default_link: str) -> None:
        before = len(self.corpus.passages)
        empty = 0
        for number, row, unit in rows:
            if self.text_field not in row:
                fields = ", ".join(map(str, row)) or "none"
                raise InputError(f"{label} {unit} {number}: no {self.text_field!r} field (its fields: {fields}); "
                                 f"name the text field with text_field (--text-field)")
            value = row[self.text_field]
            if value is None or not str(value).strip():
                empty += 1
                continue
            link_key = self.link_field or next((k for k in LINK_FIELDS if row.get(k)), None)
            link = str(row[link_key]) if link_key and row.get(link_key) else default_link
            title_key = next((k for k in TITLE_FIELDS if row.get(k)), None)
            title = str(row[title_key]) if title_key else ""
            for p in split_markdown(str(value), document=label, link=link, title=title,
                                    min_words=self.min_words, max_words=self.max_words):
                where = f"{unit} {number}" + (f", {p.heading}" if p.heading else "")
                self.corpus.passages.append(_replace(p, location=where))
        if empty:
            self.warn(f"{label}: {empty} rows with an empty {self.text_field!r} skipped")
        if len(self.corpus.passages) == before and not empty:
            self.warn(f"{label}: skipped, no rows")

    def read_table(self, path: Path, label: str) -> None:
        self.read_rows(self.rows(path, label), label, str(path))

    def read_dataset(self, folder: Path, label: str) -> None:
        from datasets import DatasetDict, load_from_disk

        for f in sorted(folder.rglob("*")):
            if f.is_file() and not f.is_symlink():
                self.corpus.files.append(FileState.of(f))
        try:
            loaded = load_from_disk(str(folder), keep_in_memory=True)
        except Exception as exc:
            raise InputError(f"{label}: could not load the saved dataset ({type(exc).__name__}: {exc})") from None
        splits = loaded.items() if isinstance(loaded, DatasetDict) else [("", loaded)]
        for name, dataset in splits:
            where = f"{label}[{name}]" if name else label
            self.read_rows(self.dataset_rows(dataset, where), where, str(folder))

    def read_folder(self, root: Path, label: str) -> None:
        files: list[Path] = []
        unsupported: list[str] = []
        real_root = root.resolve()
        for folder, dirs, names in os.walk(root, followlinks=False):
            here = Path(folder)
            self.corpus.files.append(FileState.of(here))  # a folder's mtime changes when a file comes or goes
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for d in list(dirs):
                if (here / d).is_symlink():
                    dirs.remove(d)
                    if not _inside(here / d, real_root):
                        self.warn(f"{_rel(here / d, root, label)}: skipped, a link leading out of {label} "
                                  f"(not followed)")
            for name in sorted(names):
                path = here / name
                if name.startswith("."):
                    continue
                if path.is_symlink() and not _inside(path, real_root):
                    self.warn(f"{_rel(path, root, label)}: skipped, a link leading out of {label} (not followed)")
                    continue
                suffix = path.suffix.lower()
                if suffix in TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | TABLE_SUFFIXES:
                    files.append(path)
                else:
                    unsupported.append(_rel(path, root, label))
        if unsupported:
            shown = ", ".join(unsupported[:3]) + (f" and {len(unsupported) - 3} more" if len(unsupported) > 3 else "")
            self.warn(f"{label}: {len(unsupported)} files of unsupported types skipped ({shown}); "
                      f"sources are .md, .txt, .html, .pdf, .jsonl, .csv, .parquet")
        if not files:
            raise InputError(f"{label}: no source files in this folder (looked for .md, .txt, .html, .pdf, "
                             f".jsonl, .csv, .parquet)")
        for i, path in enumerate(files):
            if self.progress:
                self.progress(i, len(files), "read")
            self.read_file(path, _rel(path, root, label), str(path))

    def read(self, source: str | os.PathLike) -> None:
        path = Path(source).expanduser()
        label = str(source)
        if not path.exists():
            hint = " (a broken link)" if path.is_symlink() else ""
            raise InputError(f"source {label}: no such file or folder{hint}")
        self.corpus.sources.append(label)
        if path.is_dir():
            if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
                self.read_dataset(path, label)
            else:
                self.read_folder(path, label)
        elif path.suffix.lower() in TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | TABLE_SUFFIXES:
            self.read_file(path, label, str(path))
        else:
            raise InputError(f"source {label}: unsupported file type {path.suffix or '(none)'!r}; sources are "
                             f"folders, .md, .txt, .html, .pdf, .jsonl, .csv, .parquet or a saved dataset folder")


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` (a link) resolves inside ``real_root``, without reading its target."""
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a loop
        return False


def _rel(path: Path, root: Path, label: str) -> str:
    return str(Path(label) / path.relative_to(root))


def _replace(p: Passage, **changes: Any) -> Passage:
    from dataclasses import replace

    return replace(p, **changes)


def _title_and_body(text: str, path: Path) -> tuple[str, str]:
    """A text's title: its first ``#`` heading, else a short first line (FreshWiki's), else the file name."""
    lines = text.lstrip().splitlines()
    if lines:
        first = lines[0].strip()
        if first.startswith("# ") and sum(1 for ln in lines if ln.startswith("# ")) == 1:
            return first[2:].strip(), text
        if first and not first.startswith("#") and len(first.split()) <= 12 and \
                (len(lines) == 1 or not lines[1].strip()) and not first.endswith((".", ":")):
            return first.replace("_", " "), "\n".join(lines[1:])
    return path.stem.replace("_", " "), text


def load_sources(sources: Sequence[str | os.PathLike], *, text_field: str = "text", link_field: str | None = None,
                 max_bytes: int = MAX_FILE_BYTES, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS,
                 progress: Progress | None = None) -> Corpus:
    """Read every named source (folder, .md/.txt/.html/.pdf, .jsonl/.csv/.parquet, saved dataset folder).

    Returns a :class:`Corpus`: passages in source order (duplicates by hash kept once), the warnings
    (skipped files and why), and the files read. Raises :class:`InputError` (one line) for a missing
    path, a folder without sources, a table without the text field (line or row named), or no passages.
    Only the named files, and files inside the named folders, are read; links out of a folder are not followed.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise InputError("no sources named")
    reader = _Reader(text_field=text_field, link_field=link_field, max_bytes=max_bytes, min_words=min_words,
                     max_words=max_words, progress=progress)
    for source in sources:
        try:
            reader.read(source)
        except OSError as exc:
            raise InputError(f"source {source}: could not be read ({exc.strerror or exc})") from None
    corpus = reader.corpus
    seen: set[str] = set()
    unique = []
    for p in corpus.passages:
        if p.hash not in seen:
            seen.add(p.hash)
            unique.append(p)
    corpus.passages = unique
    if not unique:
        raise InputError(f"sources {', '.join(map(str, sources))}: no text found"
                         + (f" ({corpus.warnings[0]})" if corpus.warnings else ""))
    return corpus
