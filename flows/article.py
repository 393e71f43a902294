"""The article flow: outline -> sections -> one task per article (assembly, evaluation, files), each a Prefect task around an aigc step.

:func:`write_group` runs the batch-first steps of :mod:`aigc.pipeline` for one or many articles that
share a backend; the article flow calls it for one article and the batch flow for each group of items.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from aigc import pipeline
from aigc.errors import AigcError
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore
from aigc.version import steps_version
from flows.common import CACHE_POLICY, publish, sends_heartbeats

#: No Prefect retries on the steps that call a backend: the backend retries single requests itself (the openai
#: backend: max_retries, see aigc/backends/openai.py), so the two layers never multiply.
RETRIES: dict = dict(retries=0)


def _store(templates_dir: str | None) -> TemplateStore:
    return TemplateStore(templates_dir)


@task(name="index")
def index_task(specs: list[dict]) -> list[dict | None]:
    """Index the sources of the articles that name some, with progress (not cached here: the index caches itself)."""
    logger = get_run_logger()
    progress = _Progress()
    summaries = pipeline.index_sources([ArticleSpec(**d) for d in specs], progress=lambda msg: progress(logger, msg))
    for s in summaries:
        if s and "error" in s:
            logger.error("Sources: %s", s["error"])
        elif s:
            logger.info("Sources %s: %d passages of %d documents (%d embedded now) in %.1f s%s", ", ".join(s["paths"]),
                        s["passages"], s["documents"], s["stats"].get("embedded", 0), s["stats"].get("seconds", 0.0),
                        "".join(f"; {w}" for w in s["warnings"][:3]))
    return summaries


class _Progress:
    """Indexing progress as log lines and a Prefect progress artifact (best-effort)."""

    def __init__(self) -> None:
        self.artifact = None

    def __call__(self, logger: Any, message: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        logger.info("Indexing %s", message)
        if "embedding" not in message and "indexed" not in message:
            return
        done, _, total = message.rpartition(" ")[2].partition("/")
        percent = 100.0 * int(done) / int(total) if done.isdigit() and total.isdigit() and int(total) else 100.0
        try:
            if self.artifact is None:
                self.artifact = create_progress_artifact(progress=percent, description="aigc: indexing the sources")
            else:
                update_progress_artifact(self.artifact, progress=percent)
        except Exception as err:  # noqa: BLE001 - a server that went away costs the progress bar, not the index
            logger.warning("indexing progress not published: %s", err)


@task(name="outline", cache_policy=CACHE_POLICY, persist_result=True, **RETRIES)
def outline_task(specs: list[dict], templates_dir: str | None, template_shas: list[str], version: str,
                 source_keys: list[str | None] | None = None) -> list[dict]:
    """Outlines of every article, generated in shared backend calls. Cached on the specs, the outline templates'
    content and the sources' index keys."""
    s = [ArticleSpec(**d) for d in specs]
    return pipeline.make_outlines(s, _store(templates_dir), pipeline.backend_for(s[0]))


@task(name="sections", cache_policy=CACHE_POLICY, persist_result=True, **RETRIES)
def sections_task(specs: list[dict], outlines: list[dict], templates_dir: str | None, template_shas: list[str],
                  version: str, source_keys: list[str | None] | None = None) -> list[dict]:
    """Every section of every article in one batch. Cached on the specs, outlines, the section templates' content
    and the sources' index keys."""
    s = [ArticleSpec(**d) for d in specs]
    return pipeline.make_sections(s, outlines, _store(templates_dir), pipeline.backend_for(s[0]))


@task(name="article")
def article_task(spec: dict, outline: dict, sections: dict, templates_dir: str | None, outputs_dir: str | None,
                 overwrite: bool, evaluate: bool, batch_size: int) -> dict:
    """One article's assembly, evaluation and files (atomic, never silently overwriting another article)."""
    s = ArticleSpec(**spec)
    result = pipeline.finish_article(
        s, outline, sections, _store(templates_dir), backend_info=pipeline.backend_for(s).describe(),
        root=Path(outputs_dir) if outputs_dir else None, overwrite=overwrite, evaluate=evaluate, batch_size=batch_size,
    )
    written = {"folder": str(result.folder), "status": result.status,
               "files": {k: str(v) for k, v in result.files.items()}}
    _artifact(s, written, result.record)
    return {**written, "topic": s.topic, "words": result.record["body_words"],
            "unit": result.record.get("length_unit", "words"), "empty_sections": result.record.get("empty_sections", []),
            "evaluation": result.record.get("evaluation")}


def write_group(specs: Sequence[ArticleSpec], *, templates_dir: str | None = None, outputs_dir: str | None = None,
                overwrite: bool = False, evaluate: bool = True, names: Sequence[str] | None = None,
                logger: Any = None) -> tuple[list[dict | BaseException], dict[str, str]]:
    """Write articles that share a backend: one outline task and one sections task for all, then a task each.

    Returns each article's summary or the exception that stopped it alone, and the state name of the
    shared steps ("Completed", "Cached"). A backend failure that outlasts the retries fails every
    article of the group.
    """
    store = _store(templates_dir)
    data = [s.model_dump(mode="json") for s in specs]
    infos = [pipeline.template_info(s, store) for s in specs]
    steps: dict[str, str] = {}
    keys: dict[str, Any] = {}  # without sources, the steps' inputs are what they always were
    try:
        if any(s.sources for s in specs):  # indexing first, its own task: the steps below load the saved index
            state = index_task(data, return_state=True)
            summaries, steps["index"] = state.result(), state.name
            keys["source_keys"] = [s.get("key") if s else None for s in summaries]
        # the outline step also asks brief-only pieces for their titles: that template is one of its inputs
        outline_hashes = [":".join(i[k]["sha256"] for k in ("outline", "title") if k in i) for i in infos]
        state = outline_task(data, templates_dir, outline_hashes, steps_version(), **keys,
                             return_state=True)
        outlines, steps["outline"] = state.result(), state.name
        if logger:
            logger.info("Sections: %d articles, %d sections in one batch", len(specs),
                        sum(len(o.get("titles", ())) for o in outlines))
        state = sections_task(data, outlines, templates_dir, [i["section"]["sha256"] for i in infos], steps_version(),
                              **keys, return_state=True)
        sections, steps["sections"] = state.result(), state.name
    except AigcError as err:
        return [err] * len(specs), steps
    names = list(names) if names else [f"article-{i + 1}" for i in range(len(specs))]
    futures = [
        article_task.with_options(name=name).submit(d, o, s, templates_dir, outputs_dir, overwrite, evaluate, len(specs))
        for name, d, o, s in zip(names, data, outlines, sections)
    ]
    return [f.result(raise_on_failure=False) for f in futures], steps


def build_spec(**params: Any) -> ArticleSpec:
    """An ArticleSpec from flow parameters (model/base_url folded into backend options)."""
    options = dict(params.pop("backend_options", None) or {})
    for name in ("model", "base_url"):
        value = params.pop(name, None)
        if value:
            options[name] = value
    if params.get("outline"):
        params["outline"] = tuple(params["outline"])
        params["sections"] = len(params["outline"])  # a given outline decides the number of sections
    else:
        params["outline"] = None
    templates_dir = params.pop("templates_dir", None)
    return ArticleSpec.build(source="flow parameters", templates_dir=templates_dir, backend_options=options, **params)


@flow(name="aigc-article", log_prints=True, validate_parameters=True)
@sends_heartbeats
def article_flow(
    topic: str | None = None,
    style: str = "article",
    sections: int | None = None,
    words: int = 800,
    seed: int = 0,
    backend: str = "local",
    model: str | None = None,
    base_url: str | None = None,
    outline: list[str] | None = None,
    temperature: float = 0.7,
    top_p: float = 0.9,
    outputs_dir: str | None = None,
    templates_dir: str | None = None,
    overwrite: bool = False,
    backend_options: dict[str, Any] | None = None,
    evaluate: bool = True,
    brief: str | None = None,
    lang: str | None = None,
    outline_candidates: int | None = None,
    section_candidates: int | None = None,
    topic_from_brief: bool = False,
    sections_from_length: bool = False,
    sources: list[str] | None = None,
    text_field: str = "text",
) -> dict:
    """Write one article or report: outline -> sections -> assembly -> outputs/<slug>/article.{md,html,json}.

    ``brief``: free-text instructions (a topic is derived from it when none is given); ``lang``: the
    language (detected from topic and brief when not given); ``sections``: chosen from the length and
    the style when not given. ``sources``: folders and files to ground it in (docs/sources.md), e.g.
    ``-p sources='["notes/"]'``; relative paths are read from the folder the flow runs in.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    extra = {k: v for k, v in dict(outline_candidates=outline_candidates, section_candidates=section_candidates,
                                   topic_from_brief=topic_from_brief or None,
                                   sections_from_length=sections_from_length or None, sources=sources or None,
                                   text_field=text_field if sources else None).items() if v is not None}
    spec = build_spec(
        topic=topic, style=style, sections=sections, words=words, seed=seed, backend=backend, model=model,
        base_url=base_url, outline=outline, temperature=temperature, top_p=top_p, backend_options=backend_options,
        brief=brief, lang=lang, templates_dir=templates_dir, **extra,
    )
    _store(templates_dir).check_style(spec.style)
    logger.info("Outline: %s, %d sections, style %s, backend %s", spec.topic, spec.sections, spec.style, spec.backend)
    (result,), steps = write_group([spec], templates_dir=templates_dir, outputs_dir=outputs_dir, overwrite=overwrite,
                                   evaluate=evaluate, names=["article"], logger=logger)
    if isinstance(result, BaseException):
        raise result
    ev = result.get("evaluation") or {}
    if ev:
        logger.info("Evaluation: %s", ", ".join(
            f"{k} {v:.3g}" for k, v in ev.items()
            if k in ("length_score", "coverage", "distinct_2", "repeated_4gram_within") and v is not None))
    logger.info("Outputs: %s (%s) in %.1f s; steps: %s", result["folder"], result["status"],
                time.perf_counter() - started, ", ".join(f"{k} {v}" for k, v in steps.items()))
    return {**result, "steps": steps}


def _artifact(spec: ArticleSpec, written: dict, record: dict) -> None:
    from aigc.outputs import ascii_slug

    files = "\n".join(f"- [{name}](file://{Path(path).resolve()})" for name, path in written["files"].items())
    sections = "\n".join(f"| {s['title']} | {s['words']} | {s['finish_reason']} |" for s in record["sections"])
    publish(
        create_markdown_artifact,
        key=f"article-{ascii_slug(spec.topic)}"[:100],  # artifact keys are ASCII
        description=f"aigc article: {spec.topic}",
        markdown=(
            f"# {spec.topic}\n\nStatus: **{written['status']}** in `{written['folder']}`\n\n{files}\n\n"
            f"| section | words | finish |\n|---|---|---|\n{sections}\n\n{_quality_line(record)}{_citations_line(record)}"
            f"Model: `{record['model']}` ({record['backend'].get('backend')}), seed {record['generation']['seed']}\n"
        ),
    )


def _quality_line(record: dict) -> str:
    """The evaluation's headline figures (see docs/evaluation.md), as a line of the artifact."""
    ev = record.get("evaluation") or {}
    shown = [("quality", "quality {:.1f}"), ("length_score", "length score {:.1f}"), ("coverage", "coverage {:.0%}"),
             ("relevance_title", "relevance to titles {:.2f}"), ("relevance_topic", "to the topic {:.2f}"),
             ("meta_rate", "meta-text {:.1%}"), ("redundancy", "redundancy {:.2f}")]
    parts = [fmt.format(ev[k]) for k, fmt in shown if isinstance(ev.get(k), (int, float))]
    return f"Evaluation: {', '.join(parts)}\n\n" if parts else ""


def _citations_line(record: dict) -> str:
    """With sources: the citation figures and the References' size, as a line of the artifact."""
    c = record.get("citations")
    if not c:
        return ""
    rate = "n/a" if c.get("support_rate") is None else f"{c['support_rate']:.0%}"
    share = "n/a" if c.get("cited_share") is None else f"{c['cited_share']:.0%}"
    return (f"Citations: {c['supported']} of {c['markers']} supported ({rate}), {c.get('attributed', 0)} added by aigc, "
            f"{c.get('retargeted', 0)} cited to another note, "
            f"{share} of sentences cited, "
            f"{c['markers_removed']} removed, {len(c['unsupported_claims'])} unsupported claims; "
            f"{len(record.get('references', ()))} references from {record['sources']['documents']} documents\n\n")
