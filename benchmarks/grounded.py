"""Grounded-writing benchmark: indexing time, retrieval quality and latency on FreshWiki; articles with/without sources.

    python benchmarks/grounded.py                          # index (cold, warm, one file changed) + retrieval
    python benchmarks/grounded.py --cache /tmp/gidx        # keep the index between runs (cold is then not cold)
    python benchmarks/grounded.py --write --limit 3        # + 8-section reports with and without sources
    python benchmarks/grounded.py --write-only --limit 2 --cache /tmp/gidx   # only the reports (index kept)
    python benchmarks/grounded.py --write-only --limit 6 --passages 3 --passage-words 70   # another prompt size

Corpus: all 49 FreshWiki dev articles (``../shared/data/freshwiki-dev/txt``). Retrieval: for every topic
and each of its human ``#``/``##`` headings, the query is "topic heading"; a hit is a passage of the right
article whose heading path holds that heading (section hit) or any passage of the right article (article
hit), in the top k. Modes: dense (FAISS), bm25, hybrid (reciprocal-rank fusion). Writes results.json and
results.md into --out, and the reports into --out/outputs/{plain,grounded}.
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


def article_body(path: Path) -> str:
    """A FreshWiki article up to its References / External links / See also / Notes (their ISBNs are no facts)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.lstrip("#").strip().lower() in STOP_HEADINGS:
            break
        kept.append(line)
    return "\n".join(kept)


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


def write_articles(data: Path, corpus_dir: Path, limit: int, sections: int, root: Path, words: int = 800,
                   topic_names: list[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Reports with and without sources (all 49 articles, the topic's own included), through ``write_article``.

    Per topic and variant: wall seconds (the model and embeddings warmed up first), the record's step
    timings, citation figures (support rate, share of sentences cited, unsupported claims) and the recall
    of the source article's names and numbers (its References list cut first: it names the sources).
    """
    import aigc.index
    from aigc.citations import entity_recall
    from aigc.pipeline import write_article
    from aigc.spec import ArticleSpec

    aigc.index.index_root = lambda: root  # the index measured above; the user's cache untouched
    outputs = Path(os.environ["AIGC_OUTPUTS_DIR"])
    chosen = [t for t in topics(data) if not topic_names or t["topic"] in topic_names][:limit]
    options = {"backend_options": {"threads": threads}} if threads else {}
    warm = ArticleSpec(topic="Warm-up", style="report", sections=1, words=50, outline=("Warm-up",), **options)
    write_article(warm, overwrite=True)  # loads the model (not timed)
    from aigc.embeddings import embed

    embed(["warm up"])
    aigc.index.build_index([corpus_dir])  # built or loaded before any timing (its cost: "indexing" above)
    rows = []
    for t in chosen:
        reference = article_body(data / t["file"])
        row: dict[str, Any] = {"topic": t["topic"]}
        for label, extra in (("plain", {}), ("grounded", {"sources": [str(corpus_dir)]})):
            spec = ArticleSpec(topic=t["topic"], style="report", sections=sections, words=words, **extra, **options)
            start = time.perf_counter()
            result = write_article(spec, overwrite=True, root=outputs / label)
            seconds = time.perf_counter() - start
            text = (result.folder / "article.md").read_text(encoding="utf-8")
            text = re.split(r"(?m)^#{1,3} (?:References|Sources)\s*$", text)[0]  # its list names the sources
            record = result.record
            c = record.get("citations") or {}
            row[label] = {
                "seconds": round(seconds, 1), "timings": record.get("timings"), "words": record.get("body_words"),
                "entity_recall": entity_recall(text, reference),
                "citations": {k: c.get(k) for k in ("markers", "supported", "support_rate", "sentences",
                                                    "cited_sentences", "cited_share", "markers_removed", "attributed",
                                                    "retargeted")} if c else None,
                "unsupported_claims": len(c.get("unsupported_claims", ())) if c else None,
                "references": len(record.get("references", ())),
                "own_article_cited": sum(Path(r["document"]).name == Path(t["file"]).name
                                         for r in record.get("references", ())),
                "folder": str(result.folder)}
            print(json.dumps({t["topic"]: {label: {k: v for k, v in row[label].items() if k != "timings"}}}), flush=True)
        row["time_ratio"] = round(row["grounded"]["seconds"] / max(row["plain"]["seconds"], 1e-9), 2)
        rows.append(row)
    return {"articles": rows, "summary": summarize_articles(rows)}


def summarize_articles(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the topics: recall with and without sources, citation figures, the time ratio."""
    def mean(values: list[float | None]) -> float | None:
        values = [v for v in values if v is not None]
        return round(statistics.mean(values), 3) if values else None

    out: dict[str, Any] = {"topics": len(rows)}
    for label in ("plain", "grounded"):
        for key in ("recall", "names_recall", "numbers_recall"):
            out[f"{label}_{key}"] = mean([r[label]["entity_recall"].get(key) for r in rows])
        out[f"{label}_seconds"] = mean([r[label]["seconds"] for r in rows])
    cites = [r["grounded"]["citations"] or {} for r in rows]
    markers = sum(c.get("markers") or 0 for c in cites)
    out["support_rate"] = round(sum(c.get("supported") or 0 for c in cites) / markers, 3) if markers else None
    out["cited_share"] = mean([c.get("cited_share") for c in cites])
    out["markers"] = markers
    out["attributed"] = sum(c.get("attributed") or 0 for c in cites)
    out["retargeted"] = sum(c.get("retargeted") or 0 for c in cites)
    out["unsupported_claims_per_article"] = mean([r["grounded"]["unsupported_claims"] for r in rows])
    out["time_ratio"] = mean([r["time_ratio"] for r in rows])
    return out


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
    arts = results.get("articles") or {}
    if arts.get("summary"):
        sm = arts["summary"]
        lines += [f"Reports with and without sources, {sm['topics']} topics (means):", "",
                  "| | entity recall | names | numbers | seconds |", "|---|---|---|---|---|"]
        for label in ("plain", "grounded"):
            lines.append(f"| {label} | {sm[label + '_recall']} | {sm[label + '_names_recall']} | "
                         f"{sm[label + '_numbers_recall']} | {sm[label + '_seconds']} |")
        lines += ["", f"Citations: support rate {sm['support_rate']} ({sm['markers']} markers of the model's; "
                  f"{sm.get('retargeted', 0)} sentences cited to another note, {sm.get('attributed', 0)} by aigc), "
                  f"share of sentences "
                  f"cited {sm['cited_share']}, unsupported claims per article {sm['unsupported_claims_per_article']}; "
                  f"time ratio grounded/plain {sm['time_ratio']}", ""]
        for r in arts["articles"]:
            g, p = r["grounded"], r["plain"]
            lines.append(f"- {r['topic']}: recall {p['entity_recall']['recall']} -> {g['entity_recall']['recall']}, "
                         f"support {(g['citations'] or {}).get('support_rate')}, cited "
                         f"{(g['citations'] or {}).get('cited_share')}, time x{r['time_ratio']}")
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
    parser.add_argument("--words", type=int, default=800, help="words of each report written with --write")
    parser.add_argument("--topic", action="append", help="write this FreshWiki topic (repeatable; default: the first)")
    parser.add_argument("--write-only", action="store_true",
                        help="only the articles (the index measurements skipped; with --cache, a warm index)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the embeddings and the local model (default: as set; on a shared, "
                             "busy machine 1 is much faster than 2)")
    parser.add_argument("--passages", type=int, default=None,
                        help="passages in each section's prompt (default: aigc.grounding.SECTION_PASSAGES)")
    parser.add_argument("--passage-words", type=int, default=None,
                        help="words of each passage in a section's prompt (default: SECTION_PASSAGE_WORDS)")
    args = parser.parse_args(argv)
    from aigc import grounding

    grounding.SECTION_PASSAGES = args.passages or grounding.SECTION_PASSAGES
    grounding.SECTION_PASSAGE_WORDS = args.passage_words or grounding.SECTION_PASSAGE_WORDS
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="aigc-grounded-"))
    # the reports stay under --out (outputs/plain, outputs/grounded) to be read; the rest of work is removed
    os.environ.setdefault("AIGC_OUTPUTS_DIR", str(args.out.resolve() / "outputs"))
    root = args.cache or work / "index"  # the measured index lives here, not in the user's cache
    corpus_dir = args.data / "txt"
    results: dict[str, Any] = {"corpus": str(corpus_dir), "cpu_count": os.cpu_count(), "threads": args.threads,
                               "section_passages": [grounding.SECTION_PASSAGES, grounding.SECTION_PASSAGE_WORDS],
                               "load_average": os.getloadavg()}
    try:
        if args.write_only:  # the index is built (or loaded from --cache) by the first grounded article
            root.mkdir(parents=True, exist_ok=True)
        else:
            results["indexing"], index = measure_indexing(corpus_dir, work, root)
            print(json.dumps(results["indexing"], indent=1), flush=True)
            results["retrieval"] = measure_retrieval(index, args.data)
            print(json.dumps(results["retrieval"], indent=1), flush=True)
        if args.write or args.write_only:
            results["articles"] = write_articles(args.data, corpus_dir, args.limit, args.sections, root,
                                                 words=args.words, topic_names=args.topic, threads=args.threads)
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
