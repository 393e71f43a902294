"""Requests benchmark: realistic writing requests (briefs, forms, lengths, languages) through the pipeline.

    python benchmarks/requests.py                                   # data/requests/requests.jsonl, embedded model
    python benchmarks/requests.py --every 7 --group 4               # a quick estimate (7 requests of every form)
    python benchmarks/requests.py --lengths 100,400,1500            # the length table only (reduced)
    python benchmarks/requests.py --lengths 100,400,1500,3000,6000,10000 --skip-requests   # the full length table
    python benchmarks/requests.py --zh-stub                         # the Chinese requests through a loopback server

Measures what issue 19 asks: requests refused (the batch loader's bad items), failed (no article), the mean length
score (LongWriter's S_l; characters for Chinese), the share of a brief's numbered points that appear as a section
title or in the text (aigc.briefs.point_covered), articles with an empty section, repetition (distinct-2, repeated
4-grams) and wall time; and a table by requested length. Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Topics and briefs of the length table: one everyday subject and one with numbered points.
LENGTH_REQUESTS = [
    {"topic": "Why cities plant street trees", "brief": "Explain to general readers why cities plant trees along "
     "streets: shade, cooler air, cleaner water and wellbeing."},
    {"topic": "Learning a language as an adult", "brief": "For busy adults: 1. a daily habit 2. listening first "
     "3. apps 4. conversation partners."},
]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 2) if values else None


def run_specs(specs: list, backend_name: str, options: dict, group: int, root: Path) -> list[dict]:
    """Write the specs ``group`` at a time (batch-first: one outline and one sections call per group)."""
    from aigc.pipeline import write_articles
    from aigc.templates import TemplateStore

    store = TemplateStore()
    rows = []
    for start in range(0, len(specs), group):
        part = specs[start:start + group]
        t0 = time.perf_counter()
        results = write_articles(part, store=store, root=root)
        seconds = time.perf_counter() - t0
        for spec, result in zip(part, results):
            rows.append(measure(spec, result, seconds / len(part)))
            print(json.dumps({k: rows[-1][k] for k in ("style", "words", "produced", "length_score", "points",
                                                       "error")}, ensure_ascii=False), flush=True)
    return rows


def measure(spec, result: Any, seconds: float) -> dict:
    """One request's figures."""
    from aigc.briefs import brief_points, point_covered

    row = {"topic": spec.topic, "style": spec.style, "words": spec.words, "lang": spec.lang,
           "sections": spec.sections, "seconds": round(seconds, 1), "error": None}
    if isinstance(result, Exception):
        return {**row, "error": f"{type(result).__name__}: {result}", "length_score": None, "points": None,
                "produced": 0}
    record = result.record
    evaluation = record.get("evaluation") or {}
    md = result.files["article.md"].read_text("utf-8")
    points = brief_points(spec.brief)
    titles = [s["title"] for s in record["sections"]]
    covered = [point_covered(p, titles, md) for p in points]
    return {**row, "folder": result.folder.name, "title": record.get("title"), "produced": record["body_words"],
            "unit": record.get("length_unit", "words"), "length_score": evaluation.get("length_score"),
            "distinct_2": evaluation.get("distinct_2"), "repeated_4gram_within": evaluation.get("repeated_4gram_within"),
            "empty_sections": record.get("empty_sections", []), "steps": max(s.get("steps", 1) for s in record["sections"]),
            "points": len(points), "points_covered": sum(covered),
            "anchors_ok": "(#-)" not in md and "(#)" not in md}


def summarize(rows: list[dict], refused: list[str]) -> dict:
    done = [r for r in rows if not r["error"]]
    with_points = [r for r in done if r["points"]]
    return {
        "requests": len(rows) + len(refused), "refused": len(refused), "failed": len(rows) - len(done),
        "mean_length_score": _mean([r["length_score"] for r in done]),
        "points_share": (round(sum(r["points_covered"] for r in with_points) / sum(r["points"] for r in with_points), 3)
                         if with_points else None),
        "briefs_with_points": len(with_points),
        "with_empty_section": sum(bool(r["empty_sections"]) for r in done),
        "mean_distinct_2": _mean([r["distinct_2"] for r in done]),
        "mean_repeated_4gram_within": _mean([r["repeated_4gram_within"] for r in done]),
        "seconds": round(sum(r["seconds"] for r in rows), 1),
    }


def by_length(rows: list[dict]) -> list[dict]:
    table = []
    for words in sorted({r["words"] for r in rows}):
        at = [r for r in rows if r["words"] == words and not r["error"]]
        table.append({"words": words, "articles": len(at), "failed": sum(1 for r in rows if r["words"] == words
                                                                         and r["error"]),
                      "sections": _mean([r["sections"] for r in at]), "produced": _mean([r["produced"] for r in at]),
                      "length_score": _mean([r["length_score"] for r in at]), "max_steps": max((r["steps"] for r in at),
                                                                                            default=None),
                      "distinct_2": _mean([r["distinct_2"] for r in at]),
                      "repeated_4gram_within": _mean([r["repeated_4gram_within"] for r in at]),
                      "seconds": _mean([r["seconds"] for r in at])})
    return table


def load_requests(path: Path, max_items: int | None, backend: str, options: dict) -> tuple[list, list[str]]:
    """The specs of a request file (every item is tried: bad ones are 'refused') with the chosen backend."""
    from aigc.batch import load_batch
    from aigc.spec import ArticleSpec

    batch = load_batch(path, skip_invalid=True)
    specs = [ArticleSpec.build(source=i.where, **{**i.spec.model_dump(exclude={"backend", "backend_options"}),
                                                  "backend": backend, "backend_options": options})
             for i in batch.items]
    return specs[:max_items] if max_items else specs, batch.skipped


def zh_stub() -> tuple[str, Any]:
    """A loopback OpenAI-compatible server answering in Chinese, as long as each prompt asks ("约N字")."""
    import re
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    facts = ["城市的建筑和道路白天吸收热量，夜里慢慢放出", "绿地和水面能让周围的空气凉快下来", "人们用电越多，排出的热量就越多",
             "社区可以一起种树、修建屋顶花园", "老人和孩子在高温天气里最需要照顾", "规划城市时要留出通风的走廊"]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            prompt = body["messages"][-1]["content"] if body["messages"][-1]["role"] == "user" else \
                body["messages"][-2]["content"]
            if "请写" in prompt and "字" in prompt:
                n = int((re.findall(r"约(\d+)字", prompt) or ["200"])[-1])
                text, k = "", 0
                while len(re.findall(r"[\u4e00-\u9fff]", text)) < n:
                    k += 1
                    text += f"第{k}，{facts[k % len(facts)]}。"
            elif "大纲" in prompt or "标题" in prompt and "个简短" in prompt:
                text = "\n".join(f"{i}. {t}" for i, t in enumerate(["背景和成因", "主要影响", "现有做法", "存在的问题",
                                                                     "改进建议", "公众参与", "未来展望"], 1))
            else:
                text = "一个简短的标题"
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 9, "completion_tokens": len(text), "total_tokens": 9}},
                              ensure_ascii=False).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1", server


def markdown(results: dict) -> str:
    lines = ["# Requests benchmark", "", f"Backend: {results['backend']}  ", f"Run: {results['when']}", ""]
    for name, summary in results["summaries"].items():
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in summary.items()] + [""]
    if results.get("lengths"):
        keys = list(results["lengths"][0])
        lines += ["## By length", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in results["lengths"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=str(REPO / "data" / "requests" / "requests.jsonl"))
    parser.add_argument("--max-items", type=int)
    parser.add_argument("--every", type=int, default=1, help="Every Nth request only (a spread-out sample).")
    parser.add_argument("--skip-requests", action="store_true", help="Only the length table.")
    parser.add_argument("--lengths", default="", help="Comma-separated lengths for the table, e.g. 100,400,1500.")
    parser.add_argument("--per-length", type=int, default=len(LENGTH_REQUESTS))
    parser.add_argument("--zh-stub", action="store_true", help="The Chinese requests through a loopback server.")
    parser.add_argument("--backend", default="local")
    parser.add_argument("--model")
    parser.add_argument("--base-url")
    parser.add_argument("--group", type=int, default=4, help="Articles written together (one batched call).")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench-requests"))
    args = parser.parse_args(argv)

    from aigc.spec import ArticleSpec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in {"model": args.model, "base_url": args.base_url}.items() if v}
    results: dict[str, Any] = {"backend": f"{args.backend} {options}", "when": time.strftime("%Y-%m-%d %H:%M"),
                               "summaries": {}, "rows": {}}
    if not args.skip_requests:
        specs, refused = load_requests(Path(args.file), None, args.backend, options)
        specs = specs[::args.every][:args.max_items]
        rows = run_specs(specs, args.backend, options, args.group, out / "requests")
        results["rows"]["requests"], results["summaries"]["requests"] = rows, summarize(rows, refused)
        results["summaries"]["requests"]["refused_lines"] = refused
    if args.zh_stub:
        url, server = zh_stub()
        try:
            specs, refused = load_requests(REPO / "data" / "requests" / "requests-zh.jsonl", None, "openai",
                                           {"model": "stub", "base_url": url})
            rows = run_specs(specs, "openai", {}, args.group, out / "zh")
        finally:
            server.shutdown()
        summary = summarize(rows, refused)
        summary["folders"] = [r.get("folder") for r in rows]
        summary["anchors_ok"] = all(r.get("anchors_ok") for r in rows if not r["error"])
        results["rows"]["zh"], results["summaries"]["zh (stub server)"] = rows, summary
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
        specs = [ArticleSpec.build(source="length table", **req, words=w, backend=args.backend, backend_options=options)
                 for w in lengths for req in LENGTH_REQUESTS[:args.per_length]]
        rows = run_specs(specs, args.backend, options, args.group, out / "lengths")
        results["rows"]["lengths"], results["lengths"] = rows, by_length(rows)
        results["summaries"]["lengths"] = summarize(rows, [])
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (out / "results.md").write_text(markdown(results), "utf-8")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
