"""Deployments: ``nightly`` (the batch flow on a cron schedule), ``single-report`` (one report on demand) and
``items`` (some items of a batch, submitted by ``aigc batch --distribute`` to the workers).

``aigc serve`` serves them from one process; ``prefect.yaml`` declares the same two for a work pool. The
constants below are the one source of both (a test checks that ``prefect.yaml`` matches them).
"""

from __future__ import annotations

import os
from typing import Any

from aigc.errors import ConfigError

NIGHTLY = "nightly"
SINGLE_REPORT = "single-report"
ITEMS = "items"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_BATCH = "data/batches/nightly.yaml"
SINGLE_REPORT_PARAMETERS = {"style": "report"}
TAGS = ["aigc"]
#: The flows the deployments run, as ``prefect.yaml`` entrypoints.
ENTRYPOINTS = {NIGHTLY: "flows/batch.py:batch_flow", SINGLE_REPORT: "flows/article.py:article_flow",
               ITEMS: "flows/distribute.py:items_flow"}


def schedule_settings(cron: str | None = None, timezone: str | None = None,
                      batch_file: str | None = None) -> dict[str, str]:
    """The nightly schedule: arguments, else AIGC_NIGHTLY_CRON / AIGC_TIMEZONE / AIGC_NIGHTLY_BATCH, else 02:00 UTC."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import validate_cron_string

    cron = cron or os.environ.get("AIGC_NIGHTLY_CRON") or DEFAULT_CRON
    timezone = timezone or os.environ.get("AIGC_TIMEZONE") or DEFAULT_TIMEZONE
    batch_file = batch_file or os.environ.get("AIGC_NIGHTLY_BATCH") or DEFAULT_BATCH
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone / AIGC_TIMEZONE: unknown time zone {timezone!r}; use an IANA name such as "
                          "UTC or Europe/Berlin") from None
    try:
        validate_cron_string(cron)
    except ValueError:
        raise ConfigError(f"--cron / AIGC_NIGHTLY_CRON: {cron!r} is not a cron expression; e.g. '0 2 * * *' "
                          "(minute hour day month weekday)") from None
    return {"cron": cron, "timezone": timezone, "batch_file": batch_file}


def deployments(cron: str | None = None, timezone: str | None = None, batch_file: str | None = None) -> list[Any]:
    """The runner deployments (nightly, single-report, items), loaded by module path so they run from any folder."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from aigc.batch import load_batch
    from flows.article import article_flow
    from flows.batch import batch_flow
    from flows.distribute import items_flow

    settings = schedule_settings(cron, timezone, batch_file)
    load_batch(settings["batch_file"])  # a broken batch file is an error now, not at 02:00
    nightly = batch_flow.to_deployment(
        name=NIGHTLY,
        schedule=Cron(settings["cron"], timezone=settings["timezone"]),
        parameters={"batch_file": settings["batch_file"]},
        description=f"aigc batch {settings['batch_file']} at '{settings['cron']}' ({settings['timezone']})",
        tags=TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    single = article_flow.to_deployment(
        name=SINGLE_REPORT,
        parameters=dict(SINGLE_REPORT_PARAMETERS),
        description="One report on demand: prefect deployment run 'aigc-article/single-report' -p topic=...",
        tags=TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    items = items_flow.to_deployment(
        name=ITEMS,
        description="Some items of a batch, submitted by `aigc batch --distribute`; run by any worker or serve process",
        tags=TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [nightly, single, items]
