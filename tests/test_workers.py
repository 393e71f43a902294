"""A batch spread over two Prefect workers, for real: PostgreSQL, a Prefect server on it, a process work pool.

Starts a throwaway PostgreSQL cluster on 127.0.0.1 (Debian's package; ``.ci/run`` installs it), a Prefect
server on it, the ``aigc`` process work pool with the ``items`` deployment from ``prefect.yaml``, the
crashed-run automation from ``prefect-automations.yaml`` and two ``prefect worker`` processes. Then
``aigc batch --distribute`` writes 12 articles with a fake backend the workers import
(``tests.plugins.worker_fake``): both workers write, each article once. Then one worker's machine "dies"
(the worker and its flow-run process SIGKILLed) mid-batch: its run is marked Crashed by the heartbeat
automation, submitted again, written by the other worker; the index is complete and nothing is duplicated.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers import free_port, healthy, kill_tree, wait_until

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BACKEND = "tests.plugins.worker_fake:WorkerFake"
HEARTBEAT = 30  # seconds: the least Prefect allows; prefect-automations.yaml waits 60 s without one

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(dirs[-1]) if dirs else None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()


class Cluster:
    """The processes of the set-up and their environment."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_url = ""
        self.server_env: dict[str, str] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AIGC_"))}
        env.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.tmp / "client-home"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO", HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(REPO), AIGC_TEMPLATES_DIR=str(REPO / "templates"), OMP_NUM_THREADS="1")
        env.update(extra)
        return env

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def prefect(self, *args: str, timeout: float = 180) -> str:
        run = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=self.env(AIGC_REPO_DIR=str(REPO)),
                             capture_output=True, text=True, timeout=timeout)
        assert run.returncode == 0, f"prefect {' '.join(args)}: {run.stdout[-3000:]}{run.stderr[-3000:]}"
        return run.stdout

    def worker(self, name: str, wrap: list[str] = ()) -> subprocess.Popen:
        """A `prefect worker` on the aigc pool; ``wrap``: a command line to start it under (another mount namespace)."""
        env = self.env(PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT), PREFECT_WORKER_QUERY_SECONDS="2",
                       PREFECT_HOME=str(self.tmp / f"{name}-home"), AIGC_FAKE_WORKER=name,
                       AIGC_FAKE_LOG=str(self.tmp / f"{name}.fake"),
                       PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(self.tmp / f"{name}-results"))
        return self.start(name, [*wrap, str(BIN / "prefect"), "worker", "start", "--pool", "aigc", "--type", "process",
                                 "--limit", "1", "--name", name], env)

    def only_workers(self, *names: str) -> None:
        """Exactly these (plain) workers running: others killed, missing ones started; waits for new ones."""
        workers = [n for n, p in self.procs.items() if n.startswith("w") and p.poll() is None]
        for name in workers:
            if name not in names:
                kill_tree(self.procs[name].pid)
        started = [n for n in names if n not in workers]
        for name in started:
            self.worker(name)
        wait_until(lambda: all("started" in self.log(n).lower() for n in started), 120, f"workers {started}")

    def start_server(self) -> subprocess.Popen:
        """The Prefect server on the cluster's PostgreSQL database and port (again, after it was killed)."""
        server = self.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                       self.api_url.split(":")[-1].split("/")[0]], self.server_env)
        wait_until(lambda: healthy(self.api_url) or (server.poll() is not None and pytest.fail(self.log("server")[-3000:])),
              180, "the Prefect server on PostgreSQL")
        return server

    def fake_log(self, name: str) -> list[list[str]]:
        path = self.tmp / f"{name}.fake"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pg = _pg_bin()
    if pg is None:
        if os.environ.get("AIGC_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed: apt-get install postgresql (CI's .ci/run does)")
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    tmp = tmp_path_factory.mktemp("workers")
    os.chmod(tmp, 0o755)
    c = Cluster(tmp)
    # PostgreSQL refuses to run as root: as root, the cluster belongs to the package's 'postgres' user
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # outside pytest's private (0700) temporary folders, where the postgres user could not reach it
    pg_home = Path(tempfile.mkdtemp(prefix="aigc-pg-"))
    os.chmod(pg_home, 0o755)
    data = pg_home / "data"
    data.mkdir()
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60",
                    "-o", f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=200", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
                       check=True, capture_output=True, timeout=60)
        api_port = free_port()
        c.api_url = f"http://127.0.0.1:{api_port}/api"
        c.server_env = c.env(PREFECT_HOME=str(tmp / "server-home"), PREFECT_UI_ENABLED="false",
                             PREFECT_SERVER_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect")
        c.start_server()
        c.prefect("work-pool", "create", "aigc", "--type", "process")
        c.prefect("--no-prompt", "deploy", "--name", "items")
        c.prefect("automation", "create", "--from-file", "prefect-automations.yaml")
        c.worker("w1")
        c.worker("w2")
        wait_until(lambda: "started" in c.log("w1").lower() and "started" in c.log("w2").lower(), 120, "two workers")
        yield c
    finally:
        for proc in reversed(list(c.procs.values())):
            _stop(proc)
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(pg_home, ignore_errors=True)


def _batch_file(tmp: Path, name: str, n: int, delay: float) -> Path:
    items = "\n".join(f'  - topic: "Topic {i}: street life in a small city, part {i}"' for i in range(1, n + 1))
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\ndefaults: {{backend: \"{BACKEND}\", sections: 2, words: 80, "
                    f"backend_options: {{delay: {delay}}}}}\nitems:\n{items}\n")
    return path


def _aigc_batch(c: Cluster, path: Path, outputs: Path, name: str, *extra: str) -> subprocess.Popen:
    start = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from aigc.cli import main; main()"
    return c.start(name, [sys.executable, "-c", start, "batch", str(path), "--distribute", "--outputs", str(outputs),
                          *extra], c.env(PREFECT_HOME=str(c.tmp / f"{name}-home")))


def _check_written_once(folder: Path, n: int, *, rerun: bool = False) -> dict:
    entries = sorted(p.name for p in folder.iterdir())
    slugs = [e for e in entries if (folder / e).is_dir()]
    assert len(slugs) == n, entries  # no "-2" copies, no half-written ".tmp-" folders
    assert not [e for e in entries if e.startswith((".tmp-", ".old-"))], entries
    for slug in slugs:
        assert sorted(p.name for p in (folder / slug).iterdir()) == ["article.html", "article.json", "article.md"]
        assert json.loads((folder / slug / "article.json").read_text())["backend"]["backend"] == "worker-fake"
    index = (folder / "index.md").read_text()
    if rerun:  # items written by the first run are "unchanged" in the second one's index
        counts = re.search(rf"{n} items: ([^(\n]*)", index)
        assert counts and "failed" not in counts.group(1), index
    else:
        assert f"{n} items: {n} written" in index, index
    return {"slugs": slugs}


def test_two_workers_share_a_batch_and_a_killed_worker_loses_nothing(cluster, tmp_path):
    """12 items in runs of 2 over two workers; w1 dies (SIGKILL, with its flow run) in the middle of its second run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    c = cluster
    path = _batch_file(tmp_path, "shared", 12, delay=3.0)
    started = time.monotonic()
    proc = _aigc_batch(c, path, tmp_path / "out", "batch", "--items-per-run", "2")

    def outlined(worker: str) -> list[str]:
        return [line[3] for line in c.fake_log(worker) if line[2] == "outline"]

    # w1 finished one run (two articles) and has made the outlines of its second: kill it now
    wait_until(lambda: len(set(outlined("w1"))) >= 3 or proc.poll() is not None, 300, "w1's second run", interval=0.3)
    victims = sorted(set(outlined("w1")) - set(_written_by_w1_before(c)))
    killed = kill_tree(c.procs["w1"].pid)
    killed_at = time.time()
    assert len(killed) >= 2, killed  # the worker and the flow run it was running
    wait_until(lambda: proc.poll() is not None, 420, "the batch to finish without w1", interval=1)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, c.log("batch")[-4000:] + c.log("w2")[-3000:]
    folder = tmp_path / "out" / "shared"
    _check_written_once(folder, 12)
    # both workers wrote articles; w1's unfinished ones were written again by w2 after the crash
    assert _written_by_w1_before(c), c.fake_log("w1")
    assert victims and set(victims) <= set(outlined("w2")), (victims, outlined("w2"))
    log = c.log("batch")
    assert "crashed" in log and "submitting it again" in log, log[-3000:]
    with temporary_settings(updates={PREFECT_API_URL: c.api_url}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="items-")))
    crashed = [r for r in runs if r.state and r.state.is_crashed()]
    assert len(crashed) == 1, [(r.name, r.state_name) for r in runs]
    detected = crashed[0].state.timestamp.timestamp() - killed_at
    assert 0 < detected < 150, detected
    completed = [r for r in runs if r.state and r.state.is_completed()]
    assert len(completed) == 6, [(r.name, r.state_name) for r in runs]  # 6 parts, the crashed one run again
    print(f"12 items over 2 workers in {seconds:.0f} s; w1 killed in a run, marked Crashed {detected:.0f} s later "
          f"(heartbeat every {HEARTBEAT} s, automation within 60 s); its items {victims} written by w2")


def _written_by_w1_before(c: Cluster) -> list[str]:
    """Topics whose sections w1 generated (its finished run: the run in progress was killed before its sections)."""
    return sorted({line[3] for line in c.fake_log("w1") if line[2] == "section"})


def test_a_cli_run_killed_with_sigkill_is_marked_crashed(cluster, tmp_path):
    """`aigc write` runs its flow in its own process, without Prefect's heartbeat thread (it cost up to 1 s a
    run): aigc's own heartbeat lets the crashed-run automation mark the run Crashed when the process dies."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    c = cluster
    topic = f"Night buses in a small city {os.getpid()}"
    start = "from aigc.cli import main; main()"
    proc = c.start("cli-write", [sys.executable, "-c", start, "write", topic, "--backend", BACKEND, "-o", "delay=600",
                             "--sections", "2", "--words", "80", "--outputs", str(tmp_path / "out")],
                   c.env(PREFECT_HOME=str(c.tmp / "write-home")))

    def runs(client) -> list:
        found = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["aigc-article"])))
        return [r for r in found if r.parameters.get("topic") == topic]

    with temporary_settings(updates={PREFECT_API_URL: c.api_url}):
        with get_client(sync_client=True) as client:
            wait_until(lambda: any(r.state and r.state.is_running() for r in runs(client))
                  or (proc.poll() is not None and pytest.fail(c.log("cli-write")[-3000:])), 180, "the write run to start")
            time.sleep(3)  # its first heartbeat, sent as the flow's body starts, reaches the server
            assert kill_tree(proc.pid), "the aigc write process was not running"
            killed_at = time.time()
            wait_until(lambda: all(r.state and r.state.is_crashed() for r in runs(client)), 180,
                  "the killed run to be marked Crashed", interval=2)
            [run] = runs(client)
    detected = run.state.timestamp.timestamp() - killed_at
    assert 0 < detected < 150, detected
    assert "heartbeat" in (run.state.message or "").lower(), run.state.message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("article.md"))
    print(f"aigc write killed with SIGKILL: its run marked Crashed {detected:.0f} s later (heartbeat every 30 s, "
          "automation within 60 s)")


def test_a_worker_on_another_outputs_path_fails_its_items_with_one_line(cluster, tmp_path):
    """A worker whose machine does not share the outputs folder (here: its own empty tmpfs mounted over it, in a
    mount namespace) writes nothing there and fails its items, saying what to mount; the batch says so."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to give a worker a mount namespace of its own")
    c = cluster
    outputs = tmp_path / "out"
    outputs.mkdir()
    c.only_workers()  # only the worker on the other path takes the runs
    c.worker("w-other", wrap=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f'mount -t tmpfs aigc-other "{outputs}" && exec "$0" "$@"'])
    try:
        wait_until(lambda: "started" in c.log("w-other").lower() or c.procs["w-other"].poll() is not None, 120,
              "the worker on the other path")
        assert c.procs["w-other"].poll() is None, c.log("w-other")[-3000:]
        proc = _aigc_batch(c, _batch_file(tmp_path, "elsewhere", 2, delay=0.2), outputs, "elsewhere",
                           "--items-per-run", "2")
        wait_until(lambda: proc.poll() is not None, 300, "the batch on the other path")
    finally:
        c.only_workers("w2")
    log = c.log("elsewhere")
    assert proc.returncode == 1, log[-3000:]
    assert "is not the batch's folder on this machine" in log and "mount the shared outputs location" in log, log
    assert log.rstrip().splitlines()[-1].startswith("Error: 2 item(s) failed"), log[-2000:]
    folder = outputs / "elsewhere"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [], list(folder.iterdir())
    assert "2 items: 2 failed" in (folder / "index.md").read_text()


def test_the_server_going_away_under_a_distributed_batch_loses_nothing(cluster, tmp_path):
    """The Prefect server is killed mid-batch: the batch gives up after AIGC_SERVER_PATIENCE with one line and
    what was written stays; with the server back (same database), the same command writes the rest, each once."""
    c = cluster
    c.only_workers("w2")
    path = _batch_file(tmp_path, "vanish", 6, delay=2.0)
    outputs = tmp_path / "out"
    patience = 20
    start = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from aigc.cli import main; main()"
    env = c.env(PREFECT_HOME=str(c.tmp / "vanish-home"), AIGC_SERVER_PATIENCE=str(patience))
    proc = c.start("vanish", [sys.executable, "-c", start, "batch", str(path), "--distribute", "--outputs",
                              str(outputs), "--items-per-run", "1"], env)
    folder = outputs / "vanish"
    written = lambda: sorted(p.name for p in folder.iterdir() if (p / "article.md").is_file()) if folder.is_dir() else []
    wait_until(lambda: written() or proc.poll() is not None, 300, "the first article", interval=0.3)
    kill_tree(c.procs["server"].pid)
    killed_at = time.monotonic()
    try:
        wait_until(lambda: proc.poll() is not None, patience + 240, "the batch to give up", interval=1)
        gave_up = time.monotonic() - killed_at
        log = c.log("vanish")
        assert proc.returncode == 1, log[-3000:]
        last = log.rstrip().splitlines()[-1]
        assert last.startswith("Error:") and "Prefect server" in last and "again" in last, log[-3000:]
        kept = written()
        assert kept, log[-2000:]
    finally:
        c.start_server()
    c.only_workers("w2")
    again = c.start("vanish-again", [sys.executable, "-c", start, "batch", str(path), "--distribute", "--outputs",
                                     str(outputs), "--items-per-run", "1"], env)
    wait_until(lambda: again.poll() is not None, 420, "the batch run again")
    assert again.returncode == 0, c.log("vanish-again")[-3000:]
    _check_written_once(folder, 6, rerun=True)
    print(f"server killed with {len(kept)} of 6 articles written; the batch gave up {gave_up:.0f} s later "
          f"(AIGC_SERVER_PATIENCE={patience}): {last}; run again after a restart: 6 written once")
