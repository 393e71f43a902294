"""What the flows share: the cache policy (inputs and task source), artifact publishing, and the settings of CLI runs."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from prefect.cache_policies import INPUTS, TASK_SOURCE

#: Cached across runs: same inputs (spec, template hashes, aigc.version.steps_version()) and same task code.
CACHE_POLICY = INPUTS + TASK_SOURCE


def publish(create: Any, **artifact: Any) -> None:
    """Publish a Prefect artifact; the files are what counts, so a server that went away costs one warning line."""
    try:
        create(**artifact)
    except Exception as err:  # noqa: BLE001 - e.g. httpx.ConnectError: the Prefect server stopped
        logging.getLogger("aigc").warning("artifact %s not published: %s: %s", artifact.get("key"),
                                          type(err).__name__, err)


@contextlib.contextmanager
def in_process_run() -> Iterator[None]:
    """Prefect settings for a flow that aigc's CLI runs in its own process and waits for.

    Prefect's flow-run heartbeat (which lets a server notice runs whose worker died) runs on a
    thread that the engine joins when the run ends, and that thread sleeps in 1 s steps: every run
    waited up to a second for it (0.74 s of a 1.14 s cached re-run). A run in the CLI's own process
    ends or fails in front of its user, so it goes without the heartbeat, unless
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set. Runs of served deployments keep Prefect's setting.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:  # the user's own choice
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
