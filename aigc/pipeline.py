"""The article pipeline as plain, batch-first steps: outlines -> sections -> assembly -> files. Prefect tasks wrap these.

Every step takes all the articles of a batch at once, so that one backend call carries the outline
requests of all of them, and the next one all their sections. :func:`write_articles` runs the steps
for one article or many; the Prefect flows (``flows/``) call the same steps as tasks, so the record of
an article is the same whichever way it was written.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aigc.assemble import build_record, inputs_key, render_document, render_page
from aigc.backends import Backend, get_backend
from aigc.errors import AigcError
from aigc.outline import generate_outlines
from aigc.outline_parse import given_outline
from aigc.outputs import find_existing, read_record, slugify, write_article_files
from aigc.paths import outputs_dir
from aigc.sections import expand_sections
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore

log = logging.getLogger(__name__)


@dataclass
class ArticleResult:
    """Where an article went and what it was."""

    folder: Path
    status: str
    record: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def backend_for(spec: ArticleSpec) -> Backend:
    """The (shared, lazily loaded) backend an article asks for."""
    return get_backend(spec.backend, **spec.backend_options)


def backend_key(spec: ArticleSpec) -> tuple:
    """Articles with equal keys use the same backend instance, so they can share its calls."""
    return spec.backend, json.dumps(spec.backend_options, sort_keys=True, default=str)


def template_info(spec: ArticleSpec, store: TemplateStore) -> dict[str, dict[str, str]]:
    """For each step: the template file used and a hash of its content (with what it extends)."""
    info = {}
    for step in ("outline", "section", "document"):
        name = store.template_name(spec.style, step, spec.lang)
        info[step] = {"file": name, "sha256": store.template_hash(name)}
    if spec.topic_from_brief:  # the piece's title is asked of the model (aigc.briefs.derive_titles)
        from aigc.briefs import title_template

        name = title_template(store, spec.lang)
        info["title"] = {"file": name, "sha256": store.template_hash(name)}
    return info


def failure(err: Exception) -> dict[str, Any]:
    """A step's result for an article it could not make: what went wrong, as data (results are persisted)."""
    return {"error": str(err) or type(err).__name__, "error_type": type(err).__name__}


def failed(result: Any) -> bool:
    """Whether a step's per-article result is a :func:`failure`."""
    return isinstance(result, dict) and "error" in result


def step_error(result: dict[str, Any]) -> AigcError:
    """The error of a :func:`failure`, of its own class where that is one of aigc's."""
    from aigc import errors

    cls = getattr(errors, result.get("error_type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, AigcError)) or cls.__init__ is not AigcError.__init__:
        cls = AigcError
    return cls(result["error"])


def index_sources(specs: Sequence[ArticleSpec], progress: Callable[[str], None] = lambda msg: None
                  ) -> list[dict[str, Any] | None]:
    """Build or refresh the index of every article's sources (each corpus once; the index caches itself).

    Returns per spec a summary of its index (``key``, ``documents``, ``passages``, ``warnings``,
    ``stats``), a :func:`failure` when its sources are unusable, or None without sources. ``progress``
    gets a line now and then ("notes/: embedding 320/944 passages").
    """
    if not any(s.sources for s in specs):
        return [None] * len(specs)
    from aigc.grounding import index_sources as build

    shown: dict[tuple[str, str], int] = {}

    def report(name: str, done: int, total: int, stage: str) -> None:
        step = 10 * done // total if total else 10
        if stage == "done" or shown.get((name, stage), -1) < step:  # at most one line per tenth of each stage
            shown[(name, stage)] = step
            verb = {"read": "reading files", "embed": "embedding passages", "done": "indexed"}.get(stage, stage)
            progress(f"{name}: {verb} {done}/{total}")

    return [failure(r) if isinstance(r, AigcError) else r for r in build(specs, report)]


def make_outlines(specs: Sequence[ArticleSpec], store: TemplateStore, backend: Backend) -> list[dict[str, Any]]:
    """The outline of every article: given ones validated, the others generated in shared backend calls.

    Returns per spec ``{"titles", "source", "attempts", ..., "seconds"}`` or a :func:`failure`;
    ``seconds`` is the wall time of the whole step, which the articles of a batch share.
    """
    started = time.perf_counter()
    results: list[dict[str, Any] | None] = [None] * len(specs)
    wanted = []
    for i, spec in enumerate(specs):
        if spec.outline:
            results[i] = {"titles": given_outline(spec.outline), "source": "given", "attempts": 0}
        else:
            wanted.append(i)
    grounded = _outline_sources(specs)
    for i, found in enumerate(grounded):
        if isinstance(found, AigcError):  # the article's sources are unusable: it fails alone
            results[i] = failure(found)
    wanted = [i for i in wanted if results[i] is None]
    if wanted:
        extra = [grounded[i] for i in wanted] if any(grounded[i] for i in wanted) else None
        generated = generate_outlines(backend, [specs[i] for i in wanted], store, extra=extra)
        for i, result in zip(wanted, generated):
            results[i] = failure(result) if isinstance(result, Exception) else {**result, "source": "generated"}
    from aigc.briefs import derive_titles

    for i, title in enumerate(derive_titles(backend, specs, store)):  # pieces asked for by a brief alone
        if title and not failed(results[i]):
            results[i]["title"] = title
            if specs[i].sections_from_length and specs[i].sections == 1 and results[i]["source"] == "given":
                results[i]["titles"] = [title]  # a one-section piece: its one title is the piece's
    seconds = round(time.perf_counter() - started, 3)
    return [r if failed(r) or r["source"] == "given" else {**r, "seconds": seconds} for r in results]


def _outline_sources(specs: Sequence[ArticleSpec]) -> list[Any]:
    """Per spec: the outline template's source variables, the error of its sources, or None without sources."""
    if not any(s.sources for s in specs):
        return [None] * len(specs)
    from aigc.grounding import outline_contexts

    return outline_contexts(specs)


def make_sections(specs: Sequence[ArticleSpec], outlines: Sequence[dict[str, Any]], store: TemplateStore,
                  backend: Backend) -> list[dict[str, Any]]:
    """The sections of every article with an outline, in one batched call; ``{"sections", "seconds"}`` per spec.

    An article whose outline failed keeps that failure.
    """
    started = time.perf_counter()
    ready = [i for i, o in enumerate(outlines) if not failed(o)]
    titles = [outlines[i]["titles"] for i in ready]
    found = None
    if any(specs[i].sources for i in ready):  # each section's passages, retrieved in one batch per corpus
        from aigc.grounding import SectionSources

        found = SectionSources.find([specs[i] for i in ready], titles, store)
    expanded = expand_sections(backend, [specs[i] for i in ready], titles, store,
                               extra=found.extra() if found else None, rescore=found.rescore if found else None)
    if found:  # citations checked: unsupported markers removed, the passages each section had listed
        expanded = [found.finish(k, sections) for k, sections in enumerate(expanded)]
    seconds = round(time.perf_counter() - started, 3)
    results: list[dict[str, Any]] = [dict(o) for o in outlines]  # failures carried over
    for k, (i, sections) in enumerate(zip(ready, expanded)):
        results[i] = {"sections": sections, "seconds": seconds}
        if found and found.error(k):
            results[i] = failure(found.error(k))
        elif found and found.summary(k):
            results[i]["sources"] = found.summary(k)
    return results


def assemble_article(
    spec: ArticleSpec,
    outline: dict[str, Any],
    sections: dict[str, Any],
    store: TemplateStore,
    *,
    backend_info: dict[str, Any],
    batch_size: int = 1,
) -> dict[str, Any]:
    """Markdown, HTML and the record of an article (nothing written yet; the JSON file is made on saving).

    The record's timings are the wall times of the steps; with ``batch_size`` articles written
    together, the outline and sections steps were shared by all of them.
    """
    started = time.perf_counter()
    templates = template_info(spec, store)
    hashes = {k: v["sha256"] for k, v in templates.items()}
    references: list[dict[str, Any]] = []
    if sections.get("sources"):  # the documents are inputs; the sections' [n] become one numbering
        from aigc.grounding import number_citations

        hashes["sources"] = sections["sources"]["key"]
        numbered, references, citations = number_citations(sections["sections"])
        sections = {**sections, "sections": numbered}
    key = inputs_key(spec, hashes, backend_info.get("model", ""))
    title = outline.get("title") or spec.topic
    md = render_document(spec, sections["sections"], store, references=references,
                         model_id=backend_info.get("model", ""), title=title)
    html = render_page(md, title, store, lang=spec.lang)
    if references:
        from aigc.grounding import link_references

        html = link_references(html, len(references))
    timings = {"outline": outline.get("seconds", 0.0), "sections": sections["seconds"],
               "assembly": round(time.perf_counter() - started, 3)}
    timings["total"] = round(sum(timings.values()), 3)
    record = build_record(
        spec, outline=outline, sections=sections["sections"], backend_info=backend_info, templates=templates,
        timings=timings, key=key, markdown_text=md,
    )
    record["articles_together"] = batch_size
    if sections.get("sources"):
        from aigc.grounding import add_to_record

        add_to_record(record, sections["sources"], references, citations)
    if outline.get("selection"):  # the candidates, the pooled titles, the chosen ones and their scores
        record["outline"]["selection"] = outline["selection"]
    record["generation"]["outline_candidates"] = spec.outline_candidates
    record["generation"]["section_candidates"] = max((len(s.get("candidates", ())) or 1
                                                      for s in sections["sections"]), default=1)
    return {
        "slug": slugify(spec.topic),
        "inputs_key": key,
        "record": record,
        "files": {"article.md": md, "article.html": html},
    }


def evaluate_article_files(article: dict[str, Any]) -> dict[str, Any]:
    """Add the evaluation (length, coverage, repetition, quality; with sources, citations) to the article's record."""
    from aigc.evaluate import evaluate_article

    evaluation = evaluate_article(article["files"]["article.md"], article["record"])
    record = {**article["record"], "evaluation": evaluation}
    return {**article, "record": record}


def save_article(article: dict[str, Any], root: Path | None = None, *, overwrite: bool = False) -> ArticleResult:
    """Write the article's Markdown, HTML and JSON record under ``root`` (``outputs/`` by default)."""
    root = Path(root) if root is not None else outputs_dir()
    files = {**article["files"], "article.json": json.dumps(article["record"], indent=2, ensure_ascii=False) + "\n"}
    folder, status = write_article_files(root, article["slug"], files, inputs_key=article["inputs_key"],
                                         overwrite=overwrite)
    return ArticleResult(folder=folder, status=status, record=article["record"], files={n: folder / n for n in files})


def finish_article(spec: ArticleSpec, outline: dict[str, Any], sections: dict[str, Any], store: TemplateStore, *,
                   backend_info: dict[str, Any], root: Path | None = None, overwrite: bool = False,
                   evaluate: bool = True, batch_size: int = 1) -> ArticleResult:
    """Assembly, evaluation and files of one article whose steps are done; raises the step's error if one failed."""
    for result in (outline, sections):
        if failed(result):
            raise step_error(result)
    article = assemble_article(spec, outline, sections, store, backend_info=backend_info, batch_size=batch_size)
    root = Path(root) if root is not None else outputs_dir()
    if not overwrite and (kept := _already_written(article, root)) is not None:
        return kept  # a cached re-run: no evaluation of an article that is already there
    if evaluate:
        article = evaluate_article_files(article)
    return save_article(article, root, overwrite=overwrite)


def _already_written(article: dict[str, Any], root: Path) -> ArticleResult | None:
    """The article as it is on disk when its folder under ``root`` already holds the same inputs key (its
    record, with its evaluation, stands), else None."""
    folder = find_existing(root, slugify(article["slug"]), article["inputs_key"])
    record = read_record(folder)
    if not record:
        return None  # none there, or unreadable: written again as usual
    names = [*article["files"], "article.json"]
    return ArticleResult(folder=folder, status="unchanged", record=record, files={n: folder / n for n in names})


def write_articles(
    specs: Sequence[ArticleSpec],
    *,
    store: TemplateStore | None = None,
    backend: Backend | None = None,
    root: Path | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    progress: Callable[[str], None] = lambda msg: None,
) -> list[ArticleResult | AigcError]:
    """The whole pipeline without Prefect, for one article or many: for notebooks, tests and the benchmark.

    Articles that use the same backend are written together (one outline call, then one sections
    call); returns, in order, each article's result or the error that stopped it alone.
    """
    store = store or TemplateStore()
    results: list[ArticleResult | AigcError | None] = [None] * len(specs)
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        try:
            store.check_style(spec.style)
        except AigcError as err:
            results[i] = err
            continue
        groups.setdefault(backend_key(spec), []).append(i)
    for members in groups.values():
        group = [specs[i] for i in members]
        try:
            use = backend or backend_for(group[0])
            if any(s.sources for s in group):
                progress("index")
                index_sources(group, progress)
            progress(f"outline ({len(group)} articles)" if len(group) > 1 else "outline")
            outlines = make_outlines(group, store, use)
            progress(f"sections ({sum(len(o.get('titles', ())) for o in outlines)})")
            sections = make_sections(group, outlines, store, use)
        except AigcError as err:  # the backend failed for the whole call
            for i in members:
                results[i] = err
            continue
        progress("assembly")
        info = use.describe()
        for i, spec, outline, body in zip(members, group, outlines, sections):
            try:
                results[i] = finish_article(spec, outline, body, store, backend_info=info, root=root,
                                            overwrite=overwrite, evaluate=evaluate, batch_size=len(group))
            except AigcError as err:
                results[i] = err
    return results  # type: ignore[return-value]


def write_article(spec: ArticleSpec, **options: Any) -> ArticleResult:
    """One article through :func:`write_articles`; raises the error that stopped it."""
    result = write_articles([spec], **options)[0]
    if isinstance(result, Exception):
        raise result
    return result
