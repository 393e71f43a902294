"""Grounded-writing benchmark: indexing time, retrieval quality and latency on FreshWiki; articles with/without sources.

    python benchmarks/grounded.py                          # index (cold, warm, one file changed) + retrieval
    python benchmarks/grounded.py --cache /tmp/gidx        # keep the index between runs (cold is then not cold)
    python benchmarks/grounded.py --write --limit 3        # + articles with and without sources (needs the wiring)

Corpus: all 49 FreshWiki dev articles (``../shared/data/freshwiki-dev/txt``). Retrieval: for every topic
and each of its human ``#``/``##`` headings, the query is "topic heading"; a hit is a passage of the right
article whose heading path holds that heading (section hit) or any passage of the right article (article
hit), in the top k. Modes: dense (FAISS), bm25, hybrid (reciprocal-rank fusion). Writes results.json and
results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "freshwiki-dev"
STOP_HEADINGS = {"references", "external links", "see also", "notes", "further reading", "bibliography"}


def human_headings(path: Path) -> list[str]:
    """The ``#``/``##`` headings of a FreshWiki article, up to References / External links / See also / Notes."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            if title.lower() in STOP_HEADINGS:
                break
            if title:
                out.append(title)
    return out


def topics(data: Path) -> list[dict[str, Any]]:
    with open(data / "topics.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def measure_indexing(corpus_dir: Path, work: Path, root: Path) -> tuple[dict[str, Any], Any]:
    """Cold build, warm build (saved index), and a rebuild after one file gained a paragraph."""
    from aigc.index import build_index

    out: dict[str, Any] = {}
    marks: list[tuple[float, int, int, str]] = []

    def progress(done: int, total: int, stage: str) -> None:
        marks.append((time.perf_counter(), done, total, stage))

    t = time.perf_counter()
    index = build_index([corpus_dir], progress=progress, root=root)
    out["cold"] = {**index.stats, "seconds": round(time.perf_counter() - t, 2),
                   "progress_calls": len(marks), "warnings": index.warnings}
    t = time.perf_counter()
    again = build_index([corpus_dir], root=root)
    out["warm"] = {**again.stats, "seconds": round(time.perf_counter() - t, 3)}
    copy = work / "corpus-copy"
    shutil.copytree(corpus_dir, copy)
    first = sorted(copy.glob("*.txt"))[0]
    with open(first, "a", encoding="utf-8") as fh:
        fh.write("\n\n# Added for the benchmark\n\nA new paragraph that was not in the article before, written "
                 "to check that only changed passages are embedded again when a source file changes.\n")
    t = time.perf_counter()
    changed = build_index([copy], root=root)
    out["one_file_changed"] = {**changed.stats, "seconds": round(time.perf_counter() - t, 2)}
    return out, index


def measure_retrieval(index: Any, data: Path, ks: tuple[int, ...] = (1, 5, 8), latency_queries: int = 30
                      ) -> dict[str, Any]:
    """Section and article hit rates at each k and MRR, per mode (queries in batches); then the latency of
    single searches (wall and CPU milliseconds: on a shared machine CPU time is the steadier figure)."""
    from aigc.embeddings import embed

    queries = []
    for t in topics(data):
        name = Path(t["file"]).name
        for h in human_headings(data / t["file"]):
            queries.append((f"{t['topic']} {h}", name, h))
    embed(["warm up"])
    out: dict[str, Any] = {"queries": len(queries)}
    depth = max(ks)
    for mode in ("dense", "bm25", "hybrid"):
        section = {k: 0 for k in ks}
        article = {k: 0 for k in ks}
        rr = 0.0
        results = []
        for start in range(0, len(queries), 64):
            results += index.search_many([q for q, _, _ in queries[start:start + 64]], depth, mode=mode)
        for (query, name, heading), hits in zip(queries, results):
            right = [Path(p.document).name == name and heading in p.heading.split(" > ") for p in hits]
            same = [Path(p.document).name == name for p in hits]
            for k in ks:
                section[k] += any(right[:k])
                article[k] += any(same[:k])
            rr += next((1 / (i + 1) for i, ok in enumerate(right) if ok), 0.0)
        n = len(queries)
        out[mode] = {**{f"section_hit@{k}": round(section[k] / n, 3) for k in ks},
                     **{f"article_hit@{k}": round(article[k] / n, 3) for k in ks},
                     f"section_mrr@{depth}": round(rr / n, 3)}
        wall, cpu = [], []
        for query, _, _ in queries[::max(1, len(queries) // latency_queries)][:latency_queries]:
            t, c = time.perf_counter(), time.process_time()
            index.search(query, depth, mode=mode)
            wall.append(1000 * (time.perf_counter() - t))
            cpu.append(1000 * (time.process_time() - c))
        out[mode].update({"ms_p50": round(statistics.median(wall), 1), "ms_p95": round(pct(wall, 0.95), 1),
                          "cpu_ms_p50": round(statistics.median(cpu), 1)})
    return out


def write_articles(data: Path, corpus_dir: Path, limit: int, sections: int) -> dict[str, Any]:
    """Articles with and without sources, scored for citations and entity recall.

    TODO(wiring): needs ``aigc.pipeline.write_article(spec)`` with a ``sources`` field on the spec and the
    citation report in the result record (``record["citations"]``). Until then this reports what is missing.
    """
    from aigc.citations import entity_recall

    try:
        from aigc.pipeline import write_article
        from aigc.spec import ArticleSpec
    except ImportError as exc:
        return {"skipped": f"pipeline not importable: {exc}"}
    if "sources" not in ArticleSpec.model_fields:
        return {"skipped": "ArticleSpec has no 'sources' field yet (the pipeline wiring is pending)"}
    rows = []
    for t in topics(data)[:limit]:
        reference = (data / t["file"]).read_text(encoding="utf-8")
        row: dict[str, Any] = {"topic": t["topic"]}
        for label, extra in (("plain", {}), ("grounded", {"sources": [str(corpus_dir)]})):
            spec = ArticleSpec(topic=t["topic"], style="report", sections=sections, **extra)
            start = time.perf_counter()
            result = write_article(spec)
            seconds = time.perf_counter() - start
            text = (result.folder / "article.md").read_text(encoding="utf-8")
            text = re.split(r"(?m)^#{1,3} (?:References|Sources)\s*$", text)[0]  # its list names the sources
            row[label] = {"seconds": round(seconds, 1), "entity_recall": entity_recall(text, reference),
                          "citations": result.record.get("citations")}  # TODO(wiring): the record's key
        row["time_ratio"] = round(row["grounded"]["seconds"] / max(row["plain"]["seconds"], 1e-9), 2)
        rows.append(row)
    return {"articles": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Grounded-writing benchmark", ""]
    idx = results.get("indexing", {})
    if idx:
        lines += ["| build | seconds | cpu s | passages | embedded |", "|---|---|---|---|---|"]
        for name in ("cold", "warm", "one_file_changed"):
            r = idx.get(name, {})
            lines.append(f"| {name} | {r.get('seconds')} | {r.get('cpu_seconds', '')} | {r.get('passages', '')} | "
                         f"{r.get('embedded', '')} |")
        lines.append("")
    ret = results.get("retrieval", {})
    if ret:
        keys = [k for k in ret.get("dense", {})]
        lines += [f"Retrieval, {ret.get('queries')} queries (topic + human heading):", "",
                  "| mode | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for mode in ("dense", "bm25", "hybrid"):
            lines.append(f"| {mode} | " + " | ".join(str(ret[mode][k]) for k in keys) + " |")
        lines.append("")
    if "articles" in results:
        lines += ["```", json.dumps(results["articles"], indent=1)[:4000], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("/tmp/grounded-bench"))
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the measured index and vector cache (default: a fresh one, so cold is cold)")
    parser.add_argument("--write", action="store_true", help="also write articles with and without sources")
    parser.add_argument("--limit", type=int, default=3, help="topics written with --write")
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the embeddings (default: as set; on a shared, busy machine 1 is "
                             "much faster than 2)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="aigc-grounded-"))
    os.environ.setdefault("AIGC_OUTPUTS_DIR", str(work / "outputs"))
    root = args.cache or work / "index"  # the measured index lives here, not in the user's cache
    corpus_dir = args.data / "txt"
    results: dict[str, Any] = {"corpus": str(corpus_dir), "cpu_count": os.cpu_count(), "threads": args.threads,
                               "load_average": os.getloadavg()}
    try:
        results["indexing"], index = measure_indexing(corpus_dir, work, root)
        print(json.dumps(results["indexing"], indent=1), flush=True)
        results["retrieval"] = measure_retrieval(index, args.data)
        print(json.dumps(results["retrieval"], indent=1), flush=True)
        if args.write:
            results["articles"] = write_articles(args.data, corpus_dir, args.limit, args.sections)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (args.out / "results.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
