"""What the flows share: retry only retryable backend errors, and cache keyed on inputs and task source."""

from __future__ import annotations

from prefect.cache_policies import INPUTS, TASK_SOURCE

from aigc.errors import BackendError

#: Cached across runs: same inputs (spec, template hashes, aigc.version.steps_version()) and same task code.
CACHE_POLICY = INPUTS + TASK_SOURCE


def retry_if_retryable(task, task_run, state) -> bool:
    """Retry a failed task only when its error says trying again may help (429, 5xx, timeouts)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # pragma: no cover - result not retrievable
        return False
    return isinstance(exc, BackendError) and exc.retryable
