"""A batch spread over workers: each part of the queue is a flow run of the ``aigc-batch-items/items`` deployment.

The batch flow (:mod:`flows.batch`) plans the items, then :func:`run_parts` submits every part (a wave:
items that share a backend and are written together) as a run of :func:`items_flow` to the work pool, and
waits. Any number of ``prefect worker start --pool aigc`` processes, on machines that see the batch folder
at the same path, take the runs. A run that crashes (its worker died: Prefect's flow-run heartbeats and
the automation in ``prefect-automations.yaml`` mark it *Crashed*) is submitted again, up to
:data:`ATTEMPTS` times. Each article is written at most once whoever writes it: files are moved into place
under the folder's write lock, after looking for the same article (:func:`aigc.outputs.write_article_files`).
The index is made from what is on disk.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from aigc import batch as batches
from aigc.errors import AigcError, ConfigError, OutputError
from aigc.outputs import find_existing, slugify, write_text_atomic
from aigc.spec import ArticleSpec
from flows.article import write_group

#: The deployment the parts go to (flows/deploy.py and prefect.yaml declare it).
ITEMS_DEPLOYMENT = "aigc-batch-items/items"
#: In the batch folder: the submitting run's id; a worker that does not see it is on another outputs path.
MARKER = ".aigc-batch-run"
#: Runs of one part at most (a crashed run is submitted again).
ATTEMPTS = 3
#: Seconds between looks at the runs' states; seconds the Prefect server may stay silent before the batch gives
#: up (the environment's AIGC_SERVER_PATIENCE when set).
POLL_SECONDS = 2.0
SERVER_PATIENCE = 120.0


@flow(name="aigc-batch-items", log_prints=True, validate_parameters=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def items_flow(items: list[dict], outputs_dir: str, templates_dir: str | None = None, batch_run: str = "") -> list[dict]:
    """Write some items of a batch (written together: one outline call, one sections call) into the batch's folder.

    ``items``: ``{"index", "spec", "key"}`` each, as the submitting batch planned them; an item whose inputs
    key differs here (other templates, model or aigc version on this worker) fails rather than being
    written under another key.
    """
    logger = get_run_logger()
    folder = Path(outputs_dir)
    marker = folder / MARKER
    seen = marker.read_text("utf-8").strip() if marker.is_file() else None
    if batch_run and seen != batch_run:
        raise OutputError(f"worker {socket.gethostname()}: {folder} is not the batch's folder on this machine (no "
                          f"{MARKER} of run {batch_run}); mount the shared outputs location at the same path on "
                          "every worker")
    rows: list[dict | None] = [None] * len(items)
    todo = []
    for n, entry in enumerate(items):
        item = batches.BatchItem(index=entry["index"], line=None, spec=ArticleSpec(**entry["spec"]),
                                 where=f"item {entry['index']}")
        plan = batches.plan_item(item, folder, templates_dir)
        if plan.key != entry["key"]:
            rows[n] = {"index": item.index, "status": "failed", "error": (
                f"worker {socket.gethostname()}: inputs key {plan.key} here, {entry['key']} where the batch was "
                "planned; run the same aigc version, templates and models on every worker")}
        elif plan.done is not None:
            rows[n] = {"index": item.index, "status": "unchanged", "folder": str(plan.done)}
        else:
            todo.append((n, item))
    logger.info("Items %s on %s (pid %d): %d to write", ", ".join(str(i["index"]) for i in items),
                socket.gethostname(), os.getpid(), len(todo))
    if todo:
        results, _ = write_group([item.spec for _, item in todo], templates_dir=templates_dir, outputs_dir=str(folder),
                                 names=[f"item-{item.index}" for _, item in todo], logger=logger)
        for (n, item), result in zip(todo, results):
            rows[n] = ({"index": item.index, "status": "failed", "error": str(result) or type(result).__name__}
                       if isinstance(result, BaseException) else
                       {"index": item.index, "status": result["status"], "folder": result["folder"]})
    failed = [r for r in rows if r and r["status"] == "failed"]
    if failed:
        return Failed(message="; ".join(f"item {r['index']}: {r['error']}" for r in failed)[:1000], data=rows)
    return rows


def run_parts(parts: Sequence[Sequence[batches.Plan]], rows: dict[int, dict], folder: Path, templates_dir: str | None,
              logger: Any, make_row: Any) -> None:
    """Submit every part to the work pool, resubmit crashed runs, wait for all, and fill ``rows`` from the folder."""
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context

    batch_run = str(get_run_context().flow_run.id)
    write_text_atomic(folder / MARKER, batch_run + "\n")
    pending: dict[Any, tuple[int, int, float]] = {}  # flow run id -> (part number, attempt, submitted at)
    done: dict[int, Any] = {}
    with get_client(sync_client=True) as client:
        for number, part in enumerate(parts):
            run = _submit(part, folder, templates_dir, batch_run)
            pending[run.id] = (number, 1, time.monotonic())
        logger.info("Submitted %d run(s) of %s for %d items; waiting for workers", len(parts), ITEMS_DEPLOYMENT,
                    sum(len(p) for p in parts))
        silent_since, patience = None, server_patience()
        while pending:
            time.sleep(POLL_SECONDS)
            try:
                runs = _read_runs(client, list(pending))
                silent_since = None
            except Exception as err:  # noqa: BLE001 - the server is away; wait a while for it
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > patience:
                    written = sum(1 for p in parts for plan in p if _found(folder, plan))
                    raise AigcError(f"the Prefect server has not answered for {patience:.0f} s "
                                    f"({type(err).__name__}); {written} of {sum(len(p) for p in parts)} items are "
                                    "written and kept; run the same batch again to finish the rest") from None
                continue
            for run in runs:
                if run.state is None or not run.state.is_final():
                    continue
                number, attempt, _ = pending.pop(run.id)
                if run.state.is_crashed() and attempt < ATTEMPTS:
                    logger.warning("Run %s (items %s) crashed: %s; submitting it again (attempt %d of %d)", run.name,
                                   _indexes(parts[number]), run.state.message, attempt + 1, ATTEMPTS)
                    again = _submit(parts[number], folder, templates_dir, batch_run)
                    pending[again.id] = (number, attempt + 1, time.monotonic())
                else:
                    done[number] = run
    for number, part in enumerate(parts):
        run = done[number]
        seconds = run.total_run_time.total_seconds() if run.total_run_time else 0.0
        for plan in part:
            found = _found(folder, plan)
            if found is not None:
                rows[plan.item.index] = make_row(plan.item, "written", seconds, str(found))
            else:
                why = f"run {run.name} ended {run.state.name}: {run.state.message or 'no message'}"
                logger.error("Item %d (%s) failed: %s", plan.item.index, plan.item.spec.topic, why)
                rows[plan.item.index] = make_row(plan.item, "failed", seconds, error=why)


def server_patience() -> float:
    """Seconds a distributing batch waits for a silent Prefect server: AIGC_SERVER_PATIENCE, else SERVER_PATIENCE."""
    value = os.environ.get("AIGC_SERVER_PATIENCE")
    if value is None:
        return SERVER_PATIENCE
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"AIGC_SERVER_PATIENCE={value!r}: give the seconds to wait for a silent Prefect server, "
                          f"e.g. 120")
    return seconds


def _submit(part: Sequence[batches.Plan], folder: Path, templates_dir: str | None, batch_run: str) -> Any:
    from prefect.deployments import run_deployment

    from prefect.exceptions import ObjectNotFound

    items = [{"index": p.item.index, "spec": p.item.spec.model_dump(mode="json"), "key": p.key} for p in part]
    try:
        return run_deployment(ITEMS_DEPLOYMENT, timeout=0, flow_run_name=f"items-{_indexes(part).replace(', ', '-')}",
                              parameters={"items": items, "outputs_dir": str(folder), "templates_dir": templates_dir,
                                          "batch_run": batch_run})
    except ObjectNotFound:
        raise ConfigError(f"no deployment {ITEMS_DEPLOYMENT} on the Prefect server; register it once with "
                          "`prefect deploy --all` (a work pool, see docs/deployments.md) or serve it with `aigc serve`"
                          ) from None


def _read_runs(client: Any, ids: list) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = []
    for start in range(0, len(ids), 200):
        runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids[start:start + 200])))
    return runs


def _found(folder: Path, plan: batches.Plan) -> Path | None:
    return find_existing(folder, slugify(plan.item.spec.topic), plan.key)


def _indexes(part: Sequence[batches.Plan]) -> str:
    return ", ".join(str(p.item.index) for p in part)
