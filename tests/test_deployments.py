"""The deployments on a real Prefect server: `aigc serve`, the nightly cron schedule, and a real single-report run."""

from __future__ import annotations

import datetime as dt
import json
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.servers import free_port, healthy

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TZ = "America/New_York"  # not UTC, so a wrong time zone shows
_TMP = Path(tempfile.mkdtemp(prefix="aigc-deploy-"))
atexit.register(shutil.rmtree, _TMP, True)
if not os.environ.get("PREFECT_API_URL"):  # before Prefect is imported; a session conftest may do it too
    os.environ.setdefault("PREFECT_HOME", str(_TMP / "client-home"))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(_TMP / "results"))
os.environ["HF_HUB_OFFLINE"] = "1"



def test_deployments_are_built_from_settings(monkeypatch):
    from aigc.errors import ConfigError
    from flows.deploy import deployments

    monkeypatch.setenv("AIGC_TIMEZONE", "Europe/Berlin")
    nightly, single, items = deployments()
    assert (nightly.name, single.name, items.name) == ("nightly", "single-report", "items")
    assert nightly.entrypoint == "flows.batch.batch_flow" and single.entrypoint == "flows.article.article_flow"
    assert items.entrypoint == "flows.distribute.items_flow" and not items.schedules
    [sched] = nightly.schedules
    assert (sched.schedule.cron, sched.schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
    assert nightly.tags == single.tags == items.tags == ["aigc"]
    assert nightly.parameters == {"batch_file": "data/batches/nightly.yaml"} and single.parameters == {"style": "report"}
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Base'"):
        deployments(timezone="Mars/Base")
    with pytest.raises(ConfigError, match="not a cron expression"):
        deployments(cron="at two")


def test_prefect_yaml_matches_the_served_deployments():
    """prefect.yaml (work pools) and `aigc serve` (one process) deploy the same three flows with the same settings."""
    import yaml

    from flows import deploy

    declared = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert set(declared) == {deploy.NIGHTLY, deploy.SINGLE_REPORT, deploy.ITEMS}
    nightly, single = declared[deploy.NIGHTLY], declared[deploy.SINGLE_REPORT]
    assert nightly["schedules"] == [{"cron": deploy.DEFAULT_CRON, "timezone": deploy.DEFAULT_TIMEZONE}]
    assert nightly["parameters"] == {"batch_file": deploy.DEFAULT_BATCH}
    assert single["parameters"] == deploy.SINGLE_REPORT_PARAMETERS and not single.get("schedules")
    for name, d in declared.items():
        assert d["entrypoint"] == deploy.ENTRYPOINTS[name] and d["tags"] == deploy.TAGS
        path, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (REPO / path).read_text()


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # with PYTHONFAULTHANDLER: its threads' stacks go to its log
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def api_url():
    """PREFECT_API_URL if CI gives one, else a `prefect server start` on loopback with a temporary SQLite home."""
    given = os.environ.get("PREFECT_API_URL")
    if given:
        yield given.rstrip("/")
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(_TMP / "server-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    log = open(_TMP / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not healthy(url):
            assert server.poll() is None, (_TMP / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Prefect server did not become healthy in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        _stop(server)
        log.close()


@pytest.fixture(scope="module")
def client(api_url):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as c:
            yield c


def _serve(api_url: str, outputs: Path, log_name: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url, "AIGC_OUTPUTS_DIR": str(outputs), "AIGC_TIMEZONE": TZ,
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_HOME": str(_TMP / "serve-home"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(_TMP / "serve-results"), "OMP_NUM_THREADS": "2",
           "PYTHONFAULTHANDLER": "1"}
    out = open(_TMP / log_name, "w")
    # `aigc serve`, with SIGINT handled as Ctrl-C whoever started the tests: a test run started in the
    # background of a script (`bash .ci/run &`) passes SIGINT on as ignored, and Python then never raises
    # KeyboardInterrupt, so the serve process stayed up until killed (exit -9, schedule not paused).
    start = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from aigc.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", start, "serve"], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_served(client, proc: subprocess.Popen, log_name: str, *, paused: bool = False, timeout: float = 120):
    """The two deployments as registered by a serve process (waits for them to exist and be unpaused)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"aigc serve exited: {(_TMP / log_name).read_text()[-3000:]}"
        try:
            nightly = client.read_deployment_by_name("aigc-batch/nightly")
            single = client.read_deployment_by_name("aigc-article/single-report")
            if nightly.paused == paused and (_TMP / log_name).read_text().count("Serving against"):
                return nightly, single
        except Exception:  # not registered yet
            pass
        assert time.monotonic() < deadline, f"deployments not served: {(_TMP / log_name).read_text()[-3000:]}"
        time.sleep(1)


def _runs(client, deployment_id, state_type=None) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType

    states = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state_type]))) if state_type else None
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                 flow_run_filter=states)


def _scheduled_runs(client, deployment_id, want: int = 3, timeout: float = 150):
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    while True:
        runs = _runs(client, deployment_id, StateType.SCHEDULED)
        if len(runs) >= want or time.monotonic() > deadline:
            return sorted(r.expected_start_time for r in runs)
        time.sleep(2)


@pytest.mark.slow
def test_serve_schedule_single_report_and_pause_on_stop(api_url, client, tmp_path):
    outputs = tmp_path / "outputs"
    serve = _serve(api_url, outputs, "serve1.log")
    try:
        nightly, single = _wait_served(client, serve, "serve1.log")
        # nightly: the batch flow on the example batch, at 02:00 in AIGC_TIMEZONE
        assert nightly.parameters == {"batch_file": "data/batches/nightly.yaml"}
        [sched] = nightly.schedules
        assert sched.active and sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == TZ
        assert single.parameters == {"style": "report"} and not single.schedules

        # single-report, for real, through the prefect CLI: the embedded model writes a short report
        started = time.monotonic()
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "aigc-article/single-report", "-p", "topic=Street trees",
             "-p", "style=report", "-p", "sections=2", "-p", "words=60", "--watch", "--watch-timeout", "480"],
            env={**os.environ, "PREFECT_API_URL": api_url}, capture_output=True, text=True, timeout=540)
        seconds = time.monotonic() - started
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + (_TMP / "serve1.log").read_text()[-3000:]
        [flow_run] = _runs(client, single.id)
        assert flow_run.state.is_completed(), flow_run.state
        assert flow_run.parameters["style"] == "report" and flow_run.parameters["topic"] == "Street trees"
        folder = outputs / "street-trees"
        record = json.loads((folder / "article.json").read_text())
        assert record["style"] == "report" and record["requested"]["sections"] == 2
        assert len(record["outline"]["titles"]) == 2 and record["body_words"] > 20
        assert (folder / "article.md").read_text().startswith("#") and "<html" in (folder / "article.html").read_text()
        print(f"single-report run through the deployment: {seconds:.0f} s")

        # the next nightly runs are the cron times: 02:00 New York time, one a day, in the future
        times = _scheduled_runs(client, nightly.id)
        assert len(times) >= 3, times
        local = [t.astimezone(ZoneInfo(TZ)) for t in times]
        assert all((t.hour, t.minute) == (2, 0) for t in local), local
        assert all((b.date() - a.date()).days == 1 for a, b in zip(local, local[1:])), local
        assert times[0] > dt.datetime.now(dt.timezone.utc)
    finally:
        _stop(serve)
    # stopping the serve process pauses the schedule...
    assert client.read_deployment_by_name("aigc-batch/nightly").paused, (
        f"exit code {serve.returncode}; serve log:\n" + (_TMP / "serve1.log").read_text()[-4000:])
    # ...and serving again resumes it
    serve = _serve(api_url, outputs, "serve2.log")
    try:
        nightly, _ = _wait_served(client, serve, "serve2.log", paused=False)
        assert not nightly.paused and nightly.schedules[0].active
    finally:
        _stop(serve)
