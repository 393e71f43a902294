"""The batch flow: one article subflow per batch item, bounded per backend, then an index of what happened."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from aigc import batch as batches
from aigc.errors import AigcError
from aigc.outputs import slugify
from aigc.paths import outputs_dir as default_outputs_dir
from flows.article import article_flow

#: Threads of the batch's task runner; each backend's own bound (lanes below) is usually lower.
MAX_WORKERS = 16


@task(name="article-item", cache_policy=NO_CACHE)
def article_item_task(params: dict[str, Any]) -> dict[str, Any]:
    """Write one item's article through the article flow (its steps are cached across runs)."""
    return article_flow(**params)


def item_params(item: batches.BatchItem, folder: Path, templates_dir: str | None) -> dict[str, Any]:
    """The article flow's parameters for a batch item."""
    s = item.spec
    return dict(topic=s.topic, style=s.style, sections=s.sections, words=s.words, seed=s.seed, backend=s.backend,
                outline=list(s.outline) if s.outline else None, temperature=s.temperature, top_p=s.top_p,
                outputs_dir=str(folder), templates_dir=templates_dir, backend_options=dict(s.backend_options))


def _row(item: batches.BatchItem, status: str, seconds: float, folder: str | None = None,
         error: str | None = None) -> dict[str, Any]:
    record = batches.read_record(folder)
    return {
        "index": item.index, "topic": item.spec.topic, "style": item.spec.style, "backend": item.spec.backend,
        "status": status, "words": record.get("body_words", ""), "seconds": round(seconds, 1),
        "slug": Path(folder).name if folder else None, "folder": folder,
        "error": " ".join(str(error).split())[:300] if error else None,
        "evaluation": record.get("evaluation") or {},
    }


def _lane_limit(plan: batches.Plan, concurrency: int | None) -> int:
    """Articles at once in a plan's lane: --concurrency or the backend's own bound.

    For a backend that merges the articles' calls (a local model), the bound is a ceiling: as many
    articles as fill one call with their sections; more would only queue behind it.
    """
    if plan.ceiling:
        return max(1, min(concurrency or plan.limit, plan.limit))
    return 1 if plan.limit <= 1 else (concurrency or plan.limit)


@flow(name="aigc-batch", log_prints=True, validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
def batch_flow(
    batch_file: str = "data/batches/nightly.yaml",
    outputs_dir: str | None = None,
    concurrency: int | None = None,
    max_items: int | None = None,
    templates_dir: str | None = None,
) -> dict:
    """Write every article of a batch file into outputs/<batch-name>/, skipping those already written, then index them."""
    logger = get_run_logger()
    batch = batches.load_batch(batch_file, max_items=max_items)
    folder = Path(outputs_dir) if outputs_dir else default_outputs_dir()
    folder = folder / batch.slug
    started = time.perf_counter()
    rows: dict[int, dict] = {}
    with batches.BatchLock(folder):
        stray = batches.clean_stray(folder)
        if stray:
            logger.warning("Removed %d half-written folder(s) left by an earlier run: %s", len(stray), ", ".join(stray))
        queue: list[batches.Plan] = []
        for item in batch.items:
            try:
                plan = batches.plan_item(item, folder, templates_dir)
            except AigcError as err:
                logger.error("%s: %s", item.where, err)
                rows[item.index] = _row(item, "failed", 0.0, error=str(err))
                continue
            if plan.done is not None:
                rows[item.index] = _row(item, "unchanged", 0.0, str(plan.done))
            else:
                queue.append(plan)
        logger.info("Batch %s: %d items, %d already written, %d to write -> %s", batch.name, len(batch.items),
                    sum(r["status"] == "unchanged" for r in rows.values()), len(queue), folder)
        _run_queue(queue, rows, folder, templates_dir, concurrency, logger)
        ordered = [rows[i.index] for i in batch.items]
        summary = _finish(batch, folder, ordered, time.perf_counter() - started, templates_dir)
    failed = summary["counts"].get("failed", 0)
    logger.info("Batch %s done in %.1f s: %s; index %s", batch.name, summary["seconds"],
                ", ".join(f"{n} {s}" for s, n in summary["counts"].items()), summary["index_md"])
    if failed:
        return Failed(message=f"{failed} of {len(ordered)} items failed; see {summary['index_md']}", data=summary)
    return summary


def _run_queue(queue: list[batches.Plan], rows: dict[int, dict], folder: Path, templates_dir: str | None,
               concurrency: int | None, logger: Any) -> None:
    """Submit items lane by lane (one lane per backend) without exceeding each lane's bound; never stop on a failure."""
    running: dict[Any, tuple[batches.Plan, float, Any]] = {}
    in_lane: dict[str, int] = {}
    while queue or running:
        for plan in list(queue):
            if in_lane.get(plan.lane, 0) < _lane_limit(plan, concurrency):
                queue.remove(plan)
                in_lane[plan.lane] = in_lane.get(plan.lane, 0) + 1
                logger.info("Item %d: %s (%s)", plan.item.index, plan.item.spec.topic, plan.lane)
                coming = plan.backend.article_coming() if plan.backend is not None else None  # its peers wait for it
                future = article_item_task.with_options(name=f"item-{plan.item.index}").submit(
                    item_params(plan.item, folder, templates_dir))
                running[future] = (plan, time.perf_counter(), coming)
        future = next(as_completed(list(running)))
        plan, t0, coming = running.pop(future)
        if coming is not None:
            coming.cancel()
        in_lane[plan.lane] -= 1
        item, seconds = plan.item, time.perf_counter() - t0
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            logger.error("Item %d (%s) failed: %s", item.index, item.spec.topic, result)
            rows[item.index] = _row(item, "failed", seconds, error=str(result) or type(result).__name__)
        else:
            rows[item.index] = _row(item, result["status"], seconds, result["folder"])


def _finish(batch: batches.Batch, folder: Path, rows: list[dict], seconds: float, templates_dir: str | None) -> dict:
    """Write index.md and index.html atomically, publish the table artifact, and return the summary."""
    from aigc.assemble import render_page
    from aigc.templates import TemplateStore

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md_path, html_path = folder / "index.md", folder / "index.html"
    batches.write_text_atomic(md_path, batches.render_index(batch.name, rows, link_ext="md", when=when))
    html_md = batches.render_index(batch.name, rows, link_ext="html", when=when)
    batches.write_text_atomic(html_path, render_page(html_md, f"Batch: {batch.name}", TemplateStore(templates_dir)))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    metrics = batches.evaluation_columns(rows)
    table = [{**{k: v for k, v in r.items() if k not in ("folder", "evaluation")},
              **{m: (r.get("evaluation") or {}).get(m) for m in metrics}} for r in rows]
    create_table_artifact(table=table, key=f"batch-{slugify(batch.name, 'batch')}"[:100],
                          description=f"aigc batch {batch.name}: {counts} -> {md_path}")
    return {"name": batch.name, "batch_file": str(batch.path), "folder": str(folder), "index_md": str(md_path),
            "index_html": str(html_path), "counts": counts, "seconds": round(seconds, 1), "items": rows}
