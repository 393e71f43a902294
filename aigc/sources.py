"""Sources for grounded writing: folders and tables of documents, read safely and split into passages."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from aigc.errors import InputError
from aigc.passages import (MAX_PDF_PAGES, MAX_WORDS, MIN_WORDS, TINY_WORDS, Passage, html_to_markdown, pack,
                           pdf_pages, split_markdown, text_hash)

__all__ = ["Corpus", "FileState", "Passage", "Progress", "load_sources", "split_markdown", "pack", "text_hash",
           "MAX_FILE_BYTES", "MAX_PDF_PAGES", "MAX_WORDS", "MIN_WORDS", "TINY_WORDS"]

#: File kinds read from a folder, by suffix.
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
PDF_SUFFIXES = {".pdf"}
TABLE_SUFFIXES = {".jsonl", ".csv", ".parquet"}
#: A file larger than this is read only up to it (text, JSONL) or skipped (PDF, CSV, Parquet), with a warning.
MAX_FILE_BYTES = 20 * 1024 * 1024
#: Column names looked for as a row's link and title when none is named.
LINK_FIELDS = ("url", "link", "source", "href")
TITLE_FIELDS = ("title", "name", "heading")

Progress = Callable[[int, int, str], None]


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
