"""Batch files (YAML, CSV, JSONL): load, validate and turn every item into an ArticleSpec."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigc.errors import InputError, OutputError
from aigc.outputs import read_record, slugify, write_text_atomic  # noqa: F401  (read_record, write_text_atomic: re-exported)
from aigc.paths import REPO_ROOT
from aigc.spec import ArticleSpec

#: Fields an item (or the defaults) may set. model and base_url go into backend_options.
FIELDS = ("topic", "brief", "lang", "style", "backend", "model", "base_url", "sections", "words", "seed", "outline",
          "temperature", "top_p", "backend_options", "outline_candidates", "section_candidates", "sources",
          "text_field")
TOP_KEYS = ("name", "defaults", "items")
BACKEND_FIELDS = ("model", "base_url", "backend_options")
SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: In a CSV cell, the titles of a given outline are separated by this character.
OUTLINE_SEPARATOR = "|"


@dataclass(frozen=True)
class BatchItem:
    """One article of a batch: its position in the file and its validated inputs."""

    index: int  # 1-based
    line: int | None
    spec: ArticleSpec
    where: str  # "file:line: item N", used in messages


@dataclass
class Batch:
    """A validated batch file."""

    name: str
    path: Path
    items: list[BatchItem] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: With ``skip_invalid``: one line per item left out (file:line: item N: field: what is wrong).
    skipped: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return slugify(self.name, fallback="batch")


def resolve_batch_path(path: str | os.PathLike) -> Path:
    """``path`` as given, or relative to the repository when it is not found from here (deployments)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def load_batch(path: str | os.PathLike, *, max_items: int | None = None, skip_invalid: bool = False,
               templates_dir: str | None = None) -> Batch:
    """Read and validate a batch file; raise InputError naming the file, the item, the field and the fix.

    Every item is checked: a bad one is reported by its line (with how many others are bad), or, with
    ``skip_invalid``, left out and listed in ``Batch.skipped`` while the valid ones are kept.
    ``templates_dir``: the style packs that choose the number of sections an item leaves out.
    """
    p = resolve_batch_path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown batch file type {p.suffix!r}; use .yaml, .yml, .csv or .jsonl")
    if not p.is_file():
        raise InputError(f"{path}: no such batch file; give a .yaml, .csv or .jsonl file of topics")
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it as UTF-8 text ({err})") from None
    name, defaults, raw = {"yaml": _read_yaml, "csv": _read_csv, "jsonl": _read_jsonl}[kind](text, str(path))
    defaults = _check_fields(defaults, f"{path}: defaults", allow_topic=False)
    if not raw:
        raise InputError(f"{path}: the batch has no items; add at least one topic")
    items, bad = [], []
    for n, (line, values) in enumerate(raw, 1):
        try:
            items.append(_item(str(path), n, line, values, defaults, templates_dir))
        except InputError as err:
            bad.append(str(err))
    items, duplicates = _no_duplicates(items)
    bad += duplicates
    if bad and not skip_invalid:
        more = f" ({len(bad) - 1} more bad item(s))" if len(bad) > 1 else ""
        raise InputError(f"{bad[0]}{more}; fix it, or pass --skip-invalid to write the valid items")
    if not items:
        raise InputError(f"{path}: no valid items ({len(bad)} bad, the first: {bad[0]})")
    if max_items is not None:
        items = items[:max_items]
    return Batch(name=name or p.stem, path=p, items=items, defaults=defaults, skipped=bad)


# -- formats ------------------------------------------------------------------------------------
def _read_yaml(text: str, source: str) -> tuple[str | None, dict, list[tuple[int | None, Any]]]:
    import yaml

    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{where}: not valid YAML ({problem}); check indentation and quoting") from None
    if data is None:
        raise InputError(f"{source}: the file is empty; add 'items:' with a list of topics")
    items_node = root
    if isinstance(data, dict):
        unknown = [k for k in data if k not in TOP_KEYS]
        if unknown:
            raise InputError(f"{source}: unknown top-level key {unknown[0]!r}; use {', '.join(TOP_KEYS)}")
        name, defaults, items = data.get("name"), data.get("defaults") or {}, data.get("items")
        if items is None:
            raise InputError(f"{source}: no 'items:' list; add 'items:' with one '- topic: ...' per article")
        items_node = next((v for k, v in root.value if k.value == "items"), None)
        if name is not None and not isinstance(name, (str, int)):
            raise InputError(f"{source}: 'name' must be text, e.g. name: nightly")
        if not isinstance(defaults, dict):
            raise InputError(f"{source}: 'defaults' must be a mapping of field: value")
    else:
        name, defaults, items = None, {}, data
    if not isinstance(items, list):
        raise InputError(f"{source}: 'items' must be a list, one '- topic: ...' per article")
    lines = [n.start_mark.line + 1 for n in getattr(items_node, "value", [])]
    lines += [None] * (len(items) - len(lines))
    return (str(name) if name is not None else None), defaults, list(zip(lines, items))


def _read_csv(text: str, source: str) -> tuple[None, dict, list[tuple[int | None, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise InputError(f"{source}: the CSV file is empty; its first line must name the columns, e.g. topic,style")
    for column in header:
        if column not in FIELDS:
            raise InputError(f"{source}:1: unknown column {column!r}; columns may be: {', '.join(FIELDS)}")
    if "topic" not in header:
        raise InputError(f"{source}:1: no 'topic' column; the first line must name the columns, e.g. topic,style")
    reader.fieldnames = header
    rows, start = [], reader.line_num + 1
    try:
        for row in reader:
            if None in row:
                raise InputError(f"{source}:{start}: more cells than columns; quote cells that contain commas")
            values = {k: v.strip() for k, v in row.items() if v is not None and v.strip() != ""}
            if values:
                if "outline" in values:
                    values["outline"] = [t.strip() for t in values["outline"].split(OUTLINE_SEPARATOR) if t.strip()]
                if "sources" in values:  # several paths: a|b, as the outline's titles
                    values["sources"] = [t.strip() for t in values["sources"].split(OUTLINE_SEPARATOR) if t.strip()]
                if "backend_options" in values:
                    values["backend_options"] = _json_cell(values["backend_options"], f"{source}:{start}")
                rows.append((start, values))
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"{source}:{reader.line_num}: not valid CSV ({err})") from None
    return None, {}, rows


def _json_cell(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise InputError(f'{where}: backend_options must be a JSON object, e.g. {{"max_retries": 2}}') from None


def _read_jsonl(text: str, source: str) -> tuple[str | None, dict, list[tuple[int | None, Any]]]:
    rows: list[tuple[int | None, Any]] = []
    name, defaults = None, {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            raise InputError(f"{source}:{number}: not valid JSON ({err.args[0].split(':')[0]}); "
                             "write one JSON object per line") from None
        if isinstance(value, dict) and not rows and "topic" not in value and set(value) <= {"name", "defaults"}:
            name, defaults = value.get("name", name), value.get("defaults", defaults)  # a header line
            if not isinstance(defaults, dict):
                raise InputError(f"{source}:{number}: 'defaults' must be a JSON object of field: value")
            continue
        rows.append((number, value))
    return name, defaults, rows


# -- validation ---------------------------------------------------------------------------------
def _check_fields(values: Any, where: str, *, allow_topic: bool = True) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise InputError(f"{where}: expected a mapping such as {{topic: ..., style: report}}, got {values!r:.60}")
    for key in values:
        if key not in FIELDS or (key == "topic" and not allow_topic):
            known = ", ".join(f for f in FIELDS if allow_topic or f != "topic")
            raise InputError(f"{where}: unknown field {key!r}; fields are: {known}")
    return dict(values)


def _item(source: str, index: int, line: int | None, raw: Any, defaults: dict[str, Any],
          templates_dir: str | None = None) -> BatchItem:
    where = f"{source}:{line}: item {index}" if line else f"{source}: item {index}"
    if isinstance(raw, str):
        raw = {"topic": raw}
    values = _check_fields(raw, where)
    if "topic" not in values and not values.get("brief"):
        raise InputError(f"{where}: topic: missing; every item needs a topic or a brief, e.g. topic: Urban heat "
                         "islands")
    backend = values.get("backend", defaults.get("backend", "local"))
    # the defaults' model, base_url and backend_options belong to the defaults' backend only
    same = backend == defaults.get("backend", "local")
    base = {k: v for k, v in defaults.items() if same or k not in BACKEND_FIELDS}
    options: dict[str, Any] = {}
    for layer, name in ((base, "defaults"), (values, "item")):
        extra = layer.get("backend_options") or {}
        if not isinstance(extra, dict):
            raise InputError(f"{where}: backend_options ({name}): must be a mapping of option: value")
        options.update(extra)
        options.update({k: layer[k] for k in ("model", "base_url") if layer.get(k) is not None})
    if isinstance(options.get("base_url"), str):  # user:password@ moves to the environment (aigc.credentials)
        from aigc.credentials import stash

        options["base_url"] = stash(options["base_url"])
    merged = {k: v for k, v in {**base, **values}.items() if k not in BACKEND_FIELDS}
    merged["backend_options"] = options
    if merged.get("sources") is not None:
        merged["sources"] = _source_paths(merged["sources"], source, where)
    outline = merged.get("outline")
    if outline is not None:
        if isinstance(outline, str):
            outline = [t for t in outline.splitlines() if t.strip()]
        if not isinstance(outline, list) or not all(isinstance(t, str) for t in outline):
            raise InputError(f"{where}: outline: must be a list of section titles")
        from aigc.outline_parse import given_outline

        merged["outline"] = tuple(given_outline(outline, source=f"{where}: outline"))
        if "sections" in values and int(values["sections"]) != len(merged["outline"]):
            raise InputError(f"{where}: sections: {values['sections']} but the outline has "
                             f"{len(merged['outline'])} titles; drop 'sections' or make them agree")
        merged["sections"] = len(merged["outline"])
    return BatchItem(index=index, line=line, spec=ArticleSpec.build(source=where, templates_dir=templates_dir,
                                                                    **merged), where=where)


def _source_paths(sources: Any, batch_file: str, where: str) -> list[str]:
    """An item's sources (a path or a list of them), relative paths taken from the batch file's folder."""
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) and s.strip() for s in sources):
        raise InputError(f"{where}: sources: must be a path or a list of paths, e.g. sources: [notes/, briefs.jsonl]")
    base = resolve_batch_path(batch_file).parent
    return [s if Path(s).expanduser().is_absolute() else str(base / s) for s in (s.strip() for s in sources)]


def _no_duplicates(items: list[BatchItem]) -> tuple[list[BatchItem], list[str]]:
    """The items without repeats of an earlier one, and one line per repeat."""
    seen: dict[str, BatchItem] = {}
    kept, repeats = [], []
    for item in items:
        key = item.spec.key()
        if key in seen:
            repeats.append(f"{item.where}: the same article as {seen[key].where.rsplit(': ', 1)[-1]} "
                           "(same topic and settings); remove one or change its seed")
            continue
        seen[key] = item
        kept.append(item)
    return kept, repeats


# -- the batch's folder -------------------------------------------------------------------------
def clean_stray(folder: Path) -> list[str]:
    """Remove temporary files and folders a killed run left in ``folder``; returns their names."""
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith((".tmp-", ".old-")):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
    return removed


class BatchLock:
    """One run of a batch at a time per output folder: a ``.lock`` file holding host and pid."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.me = f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self) -> "BatchLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text("utf-8", errors="replace").strip()
                if not self._stale(holder):
                    raise OutputError(f"{self.path.parent}: this batch is already running ({holder}); wait for it, "
                                      f"or delete {self.path} if no run is active") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(self.me + "\n")
            return self
        raise OutputError(f"cannot take the batch lock {self.path}; delete it if no run is active")

    def _stale(self, holder: str) -> bool:
        host, _, pid = holder.rpartition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            return not holder  # another machine's lock is respected; an empty one is stale
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.path.read_text("utf-8").strip() == self.me:
                self.path.unlink()
        except OSError:
            pass


# -- planning and the index ---------------------------------------------------------------------
@dataclass
class Plan:
    """What a run will do with one item: its expected inputs key, its backend group, and any finished copy."""

    item: BatchItem
    key: str
    #: Items with the same lane share a backend and are written together, at most ``limit`` at a time.
    lane: tuple
    limit: int
    done: Path | None


def plan_item(item: BatchItem, folder: Path, templates_dir: str | None = None) -> Plan:
    """Work out, without a model call, whether ``item`` is already written under ``folder``."""
    from aigc.assemble import inputs_key
    from aigc.outputs import find_existing
    from aigc.pipeline import backend_for, backend_key, template_info
    from aigc.templates import TemplateStore

    spec = item.spec
    store = TemplateStore(templates_dir)
    store.check_style(spec.style)
    hashes = {step: info["sha256"] for step, info in template_info(spec, store).items()}
    backend = backend_for(spec)  # validates options; loads no model
    if spec.sources:  # the documents are inputs too (read and split here, not embedded)
        from aigc.index import source_key

        hashes["sources"] = source_key(list(spec.sources), text_field=spec.text_field)
    key = inputs_key(spec, hashes, backend.describe().get("model", ""))
    done = find_existing(folder, slugify(spec.topic), key)
    return Plan(item, key, backend_key(spec), backend.concurrent_articles(spec.sections), done)


def _cell(value: Any) -> str:
    text = "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


#: Evaluation keys already shown by other columns.
_SHOWN = {"words", "requested_words", "sections"}


def evaluation_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Numeric evaluation metrics present in any row (length_score, coverage, ...), in the evaluator's order."""
    seen: dict[str, None] = {}
    for r in rows:
        for k, v in (r.get("evaluation") or {}).items():
            if k not in _SHOWN and isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.setdefault(k)
    return list(seen)


def render_index(name: str, rows: list[dict[str, Any]], *, link_ext: str = "md", when: str = "") -> str:
    """The batch's index as Markdown: one table row per item with status, words, time, link and metrics."""
    metrics = evaluation_columns(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    head = ["#", "topic", "style", "status", "words", "seconds", "link", *metrics]
    lines = [f"# Batch: {_cell(name)}", "",
             f"{len(rows)} items: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + (f" ({when})" if when else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        link = f"[{r['slug']}]({r['slug']}/article.{link_ext})" if r.get("slug") else _cell(r.get("error"))
        evaluation = r.get("evaluation") or {}
        cells = [r["index"], _cell(r["topic"]), r["style"], f"**{r['status']}**" if r["status"] == "failed" else r["status"],
                 r.get("words", ""), f"{r.get('seconds', 0):.1f}", link, *(_cell(evaluation.get(m)) for m in metrics)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    scored = [{**r["evaluation"], "name": r.get("slug") or r["topic"]} for r in rows if r.get("evaluation")]
    if scored:
        from aigc.evaluate import format_table

        lines += ["", "## Evaluation", "", "Per article, then the mean over the batch.", "", format_table(scored).rstrip()]
    return "\n".join(lines) + "\n"
