"""The article flow: outline -> sections -> assembly -> files, each a Prefect task around an aigc step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from aigc import pipeline
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore
from aigc.version import steps_version
from flows.common import CACHE_POLICY, retry_if_retryable

RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_retryable)


def _store(templates_dir: str | None) -> TemplateStore:
    return TemplateStore(templates_dir)


@task(name="outline", cache_policy=CACHE_POLICY, persist_result=True, **RETRIES)
def outline_task(spec: dict, templates_dir: str | None, template_sha: str, version: str) -> dict:
    """Generate (or validate the given) outline. Cached on the spec and the outline template's content."""
    s = ArticleSpec(**spec)
    return pipeline.make_outline(s, _store(templates_dir), pipeline.backend_for(s))


@task(name="sections", cache_policy=CACHE_POLICY, persist_result=True, **RETRIES)
def sections_task(spec: dict, titles: list[str], templates_dir: str | None, template_sha: str, version: str) -> list[dict]:
    """Expand every section in one batch. Cached on the spec, the outline and the section template's content."""
    s = ArticleSpec(**spec)
    return pipeline.make_sections(s, titles, _store(templates_dir), pipeline.backend_for(s))


@task(name="assemble")
def assemble_task(spec: dict, outline: dict, sections: list[dict], templates_dir: str | None) -> dict:
    """Markdown, HTML and JSON record from the outline and sections."""
    s = ArticleSpec(**spec)
    timings = {
        "outline": outline.get("seconds", 0.0),
        "sections": max((x["seconds"] for x in sections), default=0.0),
    }
    return pipeline.assemble_article(
        s, outline, sections, _store(templates_dir),
        backend_info=pipeline.backend_for(s).describe(), timings=timings,
    )


@task(name="evaluate")
def evaluate_task(article: dict) -> dict:
    """Cheap metrics of the finished text (length score, outline coverage, repetition) into its record."""
    return pipeline.evaluate_article_files(article)


@task(name="write-files")
def write_task(article: dict, outputs_dir: str | None, overwrite: bool) -> dict:
    """Write the three files atomically; never silently overwrite another article."""
    result = pipeline.save_article(article, Path(outputs_dir) if outputs_dir else None, overwrite=overwrite)
    return {"folder": str(result.folder), "status": result.status, "files": {k: str(v) for k, v in result.files.items()}}


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
    return ArticleSpec.build(source="flow parameters", backend_options=options, **params)


@flow(name="aigc-article", log_prints=True, validate_parameters=True)
def article_flow(
    topic: str,
    style: str = "article",
    sections: int = 5,
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
) -> dict:
    """Write one article or report: outline -> sections -> assembly -> outputs/<slug>/article.{md,html,json}."""
    logger = get_run_logger()
    started = time.perf_counter()
    spec = build_spec(
        topic=topic, style=style, sections=sections, words=words, seed=seed, backend=backend, model=model,
        base_url=base_url, outline=outline, temperature=temperature, top_p=top_p, backend_options=backend_options,
    )
    store = _store(templates_dir)
    store.check_style(spec.style)
    hashes = {step: info["sha256"] for step, info in pipeline.template_info(spec, store).items()}
    data = spec.model_dump(mode="json")
    logger.info("Outline: %s, %d sections, style %s, backend %s", spec.topic, spec.sections, spec.style, spec.backend)
    steps = {}
    backend = pipeline.backend_for(spec)
    with backend.article():  # articles of a batch written side by side share calls, kept in step
        state = outline_task(data, templates_dir, hashes["outline"], steps_version(), return_state=True)
        outline_result, steps["outline"] = state.result(), state.name
        titles = outline_result["titles"]
        backend.article_step("sections")
        logger.info("Sections: expanding %d sections in one batch: %s", len(titles), " | ".join(titles))
        state = sections_task(data, titles, templates_dir, hashes["section"], steps_version(), return_state=True)
        section_results, steps["sections"] = state.result(), state.name
    logger.info("Assembly: %d words", sum(s["words"] for s in section_results))
    article = assemble_task(data, outline_result, section_results, templates_dir)
    if evaluate:
        article = evaluate_task(article)
        ev = article["record"]["evaluation"]
        logger.info("Evaluation: %s", ", ".join(
            f"{k} {v:.3g}" for k, v in ev.items()
            if k in ("length_score", "coverage", "distinct_2", "repeated_4gram_within") and v is not None))
    written = write_task(article, outputs_dir, overwrite)
    logger.info("Outputs: %s (%s) in %.1f s; steps: %s", written["folder"], written["status"],
                time.perf_counter() - started, ", ".join(f"{k} {v}" for k, v in steps.items()))
    _artifact(spec, written, article["record"])
    return {**written, "topic": spec.topic, "words": article["record"]["body_words"], "steps": steps,
            "evaluation": article["record"].get("evaluation")}


def _artifact(spec: ArticleSpec, written: dict, record: dict) -> None:
    from aigc.outputs import slugify

    files = "\n".join(f"- [{name}](file://{Path(path).resolve()})" for name, path in written["files"].items())
    sections = "\n".join(f"| {s['title']} | {s['words']} | {s['finish_reason']} |" for s in record["sections"])
    create_markdown_artifact(
        key=f"article-{slugify(spec.topic)}"[:100],
        description=f"aigc article: {spec.topic}",
        markdown=(
            f"# {spec.topic}\n\nStatus: **{written['status']}** in `{written['folder']}`\n\n{files}\n\n"
            f"| section | words | finish |\n|---|---|---|\n{sections}\n\n"
            f"Model: `{record['model']}` ({record['backend'].get('backend')}), seed {record['generation']['seed']}\n"
        ),
    )
