"""Writing an article's files: safe folder names, atomic writes, and no silent overwrite."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from aigc.errors import OutputError

FILES = ("article.md", "article.html", "article.json")
MAX_SLUG = 60
#: Most bytes of a folder name in UTF-8 (file systems allow 255; "-2" and temporary prefixes are added).
MAX_SLUG_BYTES = 150
#: In an outputs folder: held (flock) while an article is checked for and moved into place, so that two
#: processes or machines writing the same article never both write it (released when a process dies).
WRITE_LOCK = ".aigc-write.lock"


def slugify(text: str, fallback: str = "article") -> str:
    """A folder name from any text: letters, digits and hyphens only (``../x`` -> ``x``).

    Latin letters lose their accents (``Café`` -> ``cafe``); other scripts are kept as they are
    (``城市热岛效应`` stays readable); text with no letter or digit at all (emoji) gets ``fallback``
    and a short hash of the text, so two such topics do not share a name.
    """
    kept = []
    for ch in unicodedata.normalize("NFKD", text):
        if unicodedata.category(ch) in ("Mn", "Mc"):
            if kept and not kept[-1].isascii():
                kept.append(ch)  # a mark on a non-Latin letter (kana voicing, Devanagari vowels) is part of it
            continue
        kept.append(ch if ch.isalnum() else "-")
    value = unicodedata.normalize("NFC", "".join(kept)).lower()
    value = re.sub(r"-+", "-", value).strip("-")
    value = value[:MAX_SLUG].rstrip("-")
    while len(value.encode()) > MAX_SLUG_BYTES:
        value = value[:-1].rstrip("-")
    if value:
        return value
    if any(unicodedata.category(c) in ("So", "Sk", "Cs", "Co") for c in text):
        return f"{fallback}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:6]}"
    return fallback


def ascii_slug(text: str, fallback: str = "article") -> str:
    """:func:`slugify` limited to ASCII (for Prefect artifact keys): non-Latin text becomes a short hash."""
    value = slugify(text, fallback)
    if value.isascii():
        return value
    latin = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", value)).strip("-")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{latin[:40]}-{digest}" if latin else f"{fallback}-{digest}"


def read_record(folder: str | Path | None) -> dict[str, Any]:
    """An article's JSON record ({} if it cannot be read)."""
    try:
        return json.loads((Path(folder) / "article.json").read_text("utf-8")) if folder else {}
    except (OSError, ValueError):
        return {}


def existing_key(folder: Path) -> str | None:
    """The inputs key of the article in ``folder``, if it is complete."""
    if not all((folder / f).is_file() for f in FILES):
        return None
    return read_record(folder).get("inputs_key")


def find_existing(root: Path, slug: str, inputs_key: str) -> Path | None:
    """A folder under ``root`` that already holds this very article (same inputs key)."""
    if not root.is_dir():
        return None
    pattern = re.compile(re.escape(slug) + r"(?:-\d+)?$")
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and pattern.fullmatch(folder.name) and existing_key(folder) == inputs_key:
            return folder
    return None


def _reason(err: OSError) -> str:
    """What an OSError means for the user, in a few words."""
    if err.errno == errno.ENOSPC:
        return "no space left on the device; free some space and run again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable (permissions or a read-only file system); choose another --outputs folder"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way of the folder; choose another --outputs folder"
    return err.strerror or str(err)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove files can be made in it (before any model runs); OutputError if not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write to the outputs folder {folder}: {_reason(err)}") from None


@contextlib.contextmanager
def write_lock(root: Path):
    """Hold ``root``'s write lock (an flock, so a crashed holder never blocks the others)."""
    fd = os.open(Path(root) / WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_article_files(
    root: Path, slug: str, files: dict[str, str], *, inputs_key: str, overwrite: bool = False
) -> tuple[Path, str]:
    """Write ``files`` into ``root/slug`` atomically; returns (folder, status).

    status is ``written``, ``unchanged`` (the same article is already there), ``renamed``
    (``slug`` holds a different article, so ``slug-2`` etc. was used) or ``replaced``
    (``overwrite``). Files appear all at once: they are written to a hidden temporary folder
    that is renamed into place.
    """
    root = Path(root)
    slug = slugify(slug)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the outputs folder {root}: {err.strerror}") from None
    same = find_existing(root, slug, inputs_key)
    if same is not None and not overwrite:
        return same, "unchanged"
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{slug}-", dir=root))
        for name, text in files.items():
            _write_synced(os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), text)
        os.chmod(tmp, 0o755)
        with write_lock(root):
            return _move_into_place(root, slug, tmp, inputs_key, overwrite)
    except OSError as err:
        raise OutputError(f"cannot write the article {slug!r} under {root}: {_reason(err)}") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(root: Path, slug: str, tmp: Path, inputs_key: str, overwrite: bool) -> tuple[Path, str]:
    """Rename the finished temporary folder ``tmp`` to ``root/slug`` (or ``slug-N``); the caller holds the lock."""
    same = find_existing(root, slug, inputs_key)  # written by another process while this one generated
    if same is not None and not overwrite:
        return same, "unchanged"
    target = root / slug
    if overwrite and target.exists():
        trash = root / f".old-{slug}-{os.getpid()}"
        os.replace(target, trash)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
        return target, "replaced"
    for n in range(1, 1000):
        candidate = root / (slug if n == 1 else f"{slug}-{n}")
        if candidate.exists():
            continue
        try:
            os.rename(tmp, candidate)
        except OSError:
            continue  # created by someone else in the meantime
        return candidate, "written" if n == 1 else "renamed"
    raise OutputError(f"no free folder name for {slug!r} under {root}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` all at once: a temporary file beside it, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        _write_synced(fd, text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_synced(fd: int, text: str) -> None:
    """Write UTF-8 ``text`` to the open file ``fd``, flush it to disk and close it."""
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
