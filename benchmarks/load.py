"""Load: a batch of N items (default 200) with a fake backend through the Prefect batch flow: items/s, per-item overhead, memory.

Each measurement runs in a fresh process, so its peak resident memory is its own:

- ``direct``: the same articles through ``aigc.pipeline.write_articles`` (no Prefect), in waves of the same size;
- ``flow``: ``aigc batch`` (the batch flow, in process) against a Prefect server, for N items and for N/4, so
  that memory growing with the batch would show;
- ``rerun``: the same batch again (every item ``unchanged``: planning and the index only).

Per-item overhead is (flow - direct) / N. The index must list every item as written, then as unchanged.
Uses PREFECT_API_URL when set, else starts ``prefect server start`` on 127.0.0.1 with a temporary SQLite home.

    python benchmarks/load.py                 # 200 items
    python benchmarks/load.py --items 50 --json load.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKEND = "tests.plugins.worker_fake:WorkerFake"


def _batch(path: Path, name: str, n: int) -> Path:
    items = "\n".join(f'  - topic: "Topic {i}: a day in the life of the city, number {i}"' for i in range(1, n + 1))
    path.write_text(f"name: {name}\ndefaults: {{backend: \"{BACKEND}\", sections: 3, words: 120}}\nitems:\n{items}\n")
    return path


def child(kind: str, batch: str, outputs: str) -> dict:
    """One measurement in this process; returns seconds, peak RSS and the index's counts."""
    sys.path.insert(0, str(REPO))
    from aigc.batch import load_batch

    loaded = load_batch(batch)
    started = time.perf_counter()
    if kind == "direct":
        from aigc.pipeline import write_articles

        specs = [i.spec for i in loaded.items]
        folder = Path(outputs) / loaded.slug
        results = []
        for k in range(0, len(specs), 2):  # the batch flow's waves: the fake backend writes 2 articles together
            results += write_articles(specs[k : k + 2], root=folder)
        counts = {"written": sum(not isinstance(r, Exception) for r in results)}
    else:
        from flows.batch import batch_flow
        from flows.common import in_process_run

        with in_process_run():
            summary = batch_flow(batch_file=batch, outputs_dir=outputs)
        counts = summary["counts"]
        index = Path(summary["index_md"]).read_text()
        table = index.split("| # |", 1)[1].split("\n\n", 1)[0]  # the items' table (an evaluation table follows)
        rows = [ln for ln in table.splitlines() if ln.startswith("| ")]
        assert len(rows) == len(loaded.items), f"the index lists {len(rows)} of {len(loaded.items)} items"
    seconds = time.perf_counter() - started
    return {"kind": kind, "items": len(loaded.items), "seconds": round(seconds, 2), "counts": counts,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _run_child(kind: str, batch: Path, outputs: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(batch), str(outputs)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _server(tmp: Path) -> tuple[str, subprocess.Popen | None]:
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"], None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp / "server"), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return url, proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the Prefect server did not start in 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "BATCH", "OUTPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="aigc-load-"))
    url, server = _server(tmp)
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp / "client"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "PREFECT_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / "results"), "AIGC_TEMPLATES_DIR": str(REPO / "templates")}
    n, small = args.items, max(1, args.items // 4)
    try:
        figures = {
            "direct": _run_child("direct", _batch(tmp / "direct.yaml", "direct", n), tmp / "out", env),
            "flow_small": _run_child("flow", _batch(tmp / "small.yaml", "small", small), tmp / "out", env),
            "flow": _run_child("flow", _batch(tmp / "load.yaml", "load", n), tmp / "out", env),
            "rerun": _run_child("flow", tmp / "load.yaml", tmp / "out", env),
        }
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    flow, direct = figures["flow"], figures["direct"]
    assert flow["counts"] == {"written": n}, flow["counts"]
    assert figures["rerun"]["counts"] == {"unchanged": n}, figures["rerun"]["counts"]
    summary = {
        "items": n,
        "flow_items_per_s": round(n / flow["seconds"], 2),
        "direct_items_per_s": round(n / direct["seconds"], 2),
        "overhead_per_item_s": round((flow["seconds"] - direct["seconds"]) / n, 3),
        "rerun_per_item_s": round(figures["rerun"]["seconds"] / n, 3),
        "peak_rss_mb": {f"flow {small} items": figures["flow_small"]["peak_rss_mb"],
                        f"flow {n} items": flow["peak_rss_mb"], f"direct {n} items": direct["peak_rss_mb"]},
        "runs": figures,
    }
    print(f"{n} items through the Prefect batch flow: {flow['seconds']:.1f} s, {summary['flow_items_per_s']} items/s "
          f"(direct, no Prefect: {direct['seconds']:.1f} s, {summary['direct_items_per_s']} items/s)")
    print(f"per-item overhead of the flow: {summary['overhead_per_item_s'] * 1000:.0f} ms; re-run (all unchanged): "
          f"{figures['rerun']['seconds']:.1f} s")
    print("peak resident memory: " + ", ".join(f"{k} {v} MB" for k, v in summary["peak_rss_mb"].items()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
