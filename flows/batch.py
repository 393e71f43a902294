"""The batch flow: items grouped by backend into waves written together (shared outline and section calls), then an index.

Waves run in this flow's process, or, with ``distribute``, on a work pool's workers (:mod:`flows.distribute`).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from aigc import batch as batches
from aigc.errors import AigcError
from aigc.outputs import check_writable, slugify
from aigc.paths import outputs_dir as default_outputs_dir
from flows.article import write_group
from flows.common import publish, sends_heartbeats
from flows.distribute import run_parts

#: Threads of the batch's task runner: the per-article tasks (assembly, evaluation, files) of a group run side by side.
MAX_WORKERS = 16


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


@flow(name="aigc-batch", log_prints=True, validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
@sends_heartbeats
def batch_flow(
    batch_file: str = "data/batches/nightly.yaml",
    outputs_dir: str | None = None,
    concurrency: int | None = None,
    max_items: int | None = None,
    templates_dir: str | None = None,
    distribute: bool = False,
    items_per_run: int | None = None,
    skip_invalid: bool = False,
) -> dict:
    """Write every article of a batch file into outputs/<batch-name>/, skipping those already written, then index them.

    ``distribute``: send the items to the work pool's workers as runs of the ``aigc-batch-items/items``
    deployment, ``items_per_run`` at a time (default: as many as are written together), and wait for them.
    """
    logger = get_run_logger()
    batch = batches.load_batch(batch_file, max_items=max_items, skip_invalid=skip_invalid, templates_dir=templates_dir)
    for line in batch.skipped:  # bad items left out (skip_invalid)
        logger.warning("Skipped: %s", line)
    folder = Path(outputs_dir) if outputs_dir else default_outputs_dir()
    folder = folder / batch.slug
    check_writable(folder)  # before any model call
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
        if distribute:
            run_parts(_waves(queue, items_per_run or concurrency), rows, folder, templates_dir, logger, _row)
        else:
            _run_queue(queue, rows, folder, templates_dir, concurrency, logger)
        ordered = [rows[i.index] for i in batch.items]
        summary = _finish(batch, folder, ordered, time.perf_counter() - started, templates_dir)
    failed = summary["counts"].get("failed", 0)
    logger.info("Batch %s done in %.1f s: %s; index %s", batch.name, summary["seconds"],
                ", ".join(f"{n} {s}" for s, n in summary["counts"].items()), summary["index_md"])
    if failed:
        return Failed(message=f"{failed} of {len(ordered)} items failed; see {summary['index_md']}", data=summary)
    return summary


def _waves(queue: list[batches.Plan], concurrency: int | None) -> list[list[batches.Plan]]:
    """Groups of items written together: same backend, at most ``concurrency`` or the backend's own bound each."""
    lanes: dict[Any, list[batches.Plan]] = {}
    for plan in queue:
        lanes.setdefault(plan.lane, []).append(plan)
    waves = []
    for plans in lanes.values():
        size = max(1, concurrency or min(p.limit for p in plans))
        waves += [plans[k : k + size] for k in range(0, len(plans), size)]
    return waves


def _run_queue(queue: list[batches.Plan], rows: dict[int, dict], folder: Path, templates_dir: str | None,
               concurrency: int | None, logger: Any) -> None:
    """Write the items wave by wave: each wave's outlines share a backend call, then its sections; never stop on a failure."""
    waves = _waves(queue, concurrency)
    for number, wave in enumerate(waves, 1):
        logger.info("Wave %d/%d: items %s (%s)", number, len(waves), ", ".join(str(p.item.index) for p in wave),
                    wave[0].item.spec.backend)
        t0 = time.perf_counter()
        results, _ = write_group([p.item.spec for p in wave], templates_dir=templates_dir, outputs_dir=str(folder),
                                 names=[f"item-{p.item.index}" for p in wave], logger=logger)
        seconds = time.perf_counter() - t0
        for plan, result in zip(wave, results):
            item = plan.item
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
    publish(create_table_artifact, table=table, key=f"batch-{slugify(batch.name, 'batch')}"[:100],
            description=f"aigc batch {batch.name}: {counts} -> {md_path}")
    return {"name": batch.name, "batch_file": str(batch.path), "folder": str(folder), "index_md": str(md_path),
            "index_html": str(html_path), "counts": counts, "seconds": round(seconds, 1), "items": rows}
