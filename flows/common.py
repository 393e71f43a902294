"""What the flows share: the cache policy (inputs and task source), artifact publishing, and the settings and heartbeats of CLI runs."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

from prefect.cache_policies import INPUTS, TASK_SOURCE

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between the heartbeats aigc sends for a run in the CLI's own process (Prefect's least:
#: prefect-automations.yaml marks a run Crashed after 60 s without one).
HEARTBEAT_SECONDS = 30
#: Retries of a failed Prefect API call in a CLI run (see :func:`in_process_run`).
CLIENT_RETRIES = 2
#: Set by :func:`in_process_run` when it turned Prefect's heartbeat off: the run's body sends its own.
_OWN_HEARTBEAT: contextvars.ContextVar[bool] = contextvars.ContextVar("aigc_own_heartbeat", default=False)

#: Cached across runs: same inputs (spec, template hashes, aigc.version.steps_version()) and same task code.
CACHE_POLICY = INPUTS + TASK_SOURCE


#: Seconds after an artifact could not be published during which no other is tried (each try waits out
#: the client's retries: a batch whose server died spent ~6 s more per article on them).
PUBLISH_PAUSE = 60.0
_publish_failed_at: float | None = None


def publish(create: Any, **artifact: Any) -> None:
    """Publish a Prefect artifact; the files are what counts, so a server that went away costs one warning line."""
    global _publish_failed_at
    log = logging.getLogger("aigc")
    if _publish_failed_at is not None and time.monotonic() - _publish_failed_at < PUBLISH_PAUSE:
        log.warning("artifact %s not published: the Prefect server did not answer %.0f s ago", artifact.get("key"),
                    time.monotonic() - _publish_failed_at)
        return
    try:
        create(**artifact)
        _publish_failed_at = None
    except Exception as err:  # noqa: BLE001 - e.g. httpx.ConnectError: the Prefect server stopped
        import httpx

        if isinstance(err, httpx.TransportError):
            _publish_failed_at = time.monotonic()
        log.warning("artifact %s not published: %s: %s", artifact.get("key"), type(err).__name__, err)


@contextlib.contextmanager
def in_process_run() -> Iterator[None]:
    """Prefect settings for a flow that aigc's CLI runs in its own process and waits for.

    Prefect's flow-run heartbeat (which lets a server notice runs whose worker died) runs on a
    thread that the engine joins when the run ends, and that thread sleeps in 1 s steps: every run
    waited up to a second for it (0.74 s of a 1.14 s cached re-run). A run in the CLI's own process
    ends or fails in front of its user, so it goes without the heartbeat, unless
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set. Runs of served deployments keep Prefect's setting.
    Instead the flow's body sends the same heartbeat events (:func:`sends_heartbeats`) from a thread
    that stops at once, so that a CLI process killed with SIGKILL still leaves a run the server's
    crashed-run automation marks Crashed.

    The Prefect client retries a failed API call :data:`CLIENT_RETRIES` times here (Prefect's default, 5,
    backs off 2+4+8+16+32 s per call): a server that went away ends the run in about a minute, with one line,
    not in eight. Both are kept when the user set them (PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_CLIENT_MAX_RETRIES).
    """
    from prefect.settings import (PREFECT_CLIENT_MAX_RETRIES, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings,
                                  temporary_settings)

    settings = get_current_settings()
    updates: dict[Any, Any] = {}
    if "max_retries" not in settings.client.model_fields_set:
        updates[PREFECT_CLIENT_MAX_RETRIES] = CLIENT_RETRIES
    own = "heartbeat_frequency" not in settings.flows.model_fields_set
    if own:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    token = _OWN_HEARTBEAT.set(own)
    try:
        with temporary_settings(updates=updates):
            yield
    finally:
        _OWN_HEARTBEAT.reset(token)


def sends_heartbeats(fn: F) -> F:
    """Decorate a flow's function (under ``@flow``): in a CLI run (:func:`in_process_run`) its body sends
    ``prefect.flow-run.heartbeat`` events every :data:`HEARTBEAT_SECONDS`, as Prefect's engine would.

    The thread waits on an event, so it stops as soon as the body returns, before the engine sets the
    final state (a heartbeat after it would get a finished run marked Crashed).
    """
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not _OWN_HEARTBEAT.get():
            return fn(*args, **kwargs)
        with _heartbeats(HEARTBEAT_SECONDS):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


@contextlib.contextmanager
def _heartbeats(seconds: float) -> Iterator[None]:
    from prefect import __version__
    from prefect.context import FlowRunContext
    from prefect.events import emit_event

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    if run is None:
        yield
        return
    resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name or "",
                "prefect.version": __version__}
    related = [{"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow",
                "prefect.resource.name": ctx.flow.name if ctx.flow else ""}] if run.flow_id else []
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            except Exception:  # noqa: BLE001 - a heartbeat lost is a heartbeat lost; the run goes on
                logging.getLogger("aigc").debug("heartbeat not sent", exc_info=True)
            stop.wait(seconds)

    # the thread sees this context's settings (the API URL), as Prefect's own heartbeat thread does
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name="aigc-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
