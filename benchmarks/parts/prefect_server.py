"""The benchmark's own Prefect server on 127.0.0.1: start, stop, and wait until it is quiet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from parts.common import say


def prefect_env() -> dict:
    """Point this process at the benchmark's own Prefect server: must run before prefect is first imported."""
    from aigc.serving import free_port

    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-prefect-"))
    port = free_port()
    env = {"PREFECT_HOME": str(tmp / "home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / "results")}
    os.environ.update(env)
    return {"tmp": tmp, "port": port, **env}


def start_prefect(home: Path, port: int) -> tuple[subprocess.Popen, str, float, Path]:
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    started = time.perf_counter()
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    while time.perf_counter() - started < 180:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, api, time.perf_counter() - started, log_path
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"prefect server did not become healthy; log {log_path}:\n{log_path.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its living descendants, from /proc (0 without it)."""
    tick, total, todo = os.sysconf("SC_CLK_TCK"), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def _drain_prefect() -> None:
    """Send this process's queued Prefect logs and events before the server stops (else they are retried at exit)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception as exc:  # noqa: BLE001 - the figures are measured already
        say(f"flow: could not flush Prefect's logs and events before stopping the server: {exc}")


def _settle(pid: int, quiet: float = 0.02, limit: float = 10.0) -> float:
    """Wait (at most ``limit`` s) until the Prefect server uses under ``quiet`` s of CPU in 0.5 s; the seconds waited.

    A flow run leaves the server work to do after it returns (events, logs); without this the next timed run,
    direct or flow, paid for it at random.
    """
    started, before = time.perf_counter(), _tree_cpu(pid)
    while time.perf_counter() - started < limit:
        time.sleep(0.5)
        now = _tree_cpu(pid)
        if now - before < quiet:
            break
        before = now
    return time.perf_counter() - started
