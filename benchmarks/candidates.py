"""What candidates cost and buy: the default article with outline and section candidates against one of each, side by side.

Each repetition writes the same topic once per mode through ``pipeline.write_articles`` with the
embedded model, warm (model and sentence embeddings loaded before timing), in rotating order:
``defaults`` (``outline_candidates`` 4, the local backend's 2 section candidates) and ``single`` (one
candidate of each: the article aigc wrote before candidates); ``--modes`` adds ``three`` (3 section
candidates). It reports each mode's median wall time ratio to ``single`` (per repetition, then the
median), the outline and sections steps' times, and the mean evaluation of each (quality figure,
relevance, meta-text rate, length score).

    python benchmarks/candidates.py --reps 3 --out /tmp/cand
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["Why libraries lend tools", "Urban heat islands", "How to keep houseplants alive in winter",
          "The history of the bicycle", "Why bread goes stale", "How tides work"]
METRICS = ("quality", "relevance_title", "relevance_topic", "meta_rate", "length_score", "redundancy")


def run(reps: int, out: Path, sections: int, words: int, only: tuple[str, ...] = ("defaults", "single")) -> dict:
    from aigc.backends.local import LocalBackend
    from aigc.embeddings import load_model
    from aigc.pipeline import write_articles
    from aigc.spec import ArticleSpec

    backend = LocalBackend.from_options()
    backend.load()
    load_model()
    modes = {"defaults": {}, "single": {"outline_candidates": 1, "section_candidates": 1},
             "three": {"section_candidates": 3}}
    modes = {m: v for m, v in modes.items() if m in only}
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(reps):
        topic = TOPICS[rep % len(TOPICS)]
        names = list(modes)
        order = names[rep % len(names):] + names[:rep % len(names)]  # each mode first in turn
        for mode in order:
            spec = ArticleSpec(topic=topic, sections=sections, words=words, seed=rep, **modes[mode])
            t0 = time.perf_counter()
            (result,) = write_articles([spec], backend=backend, root=out / f"{mode}-{rep}", overwrite=True)
            wall = time.perf_counter() - t0
            if isinstance(result, Exception):
                rows[mode].append({"topic": topic, "wall": wall, "error": str(result)})
                print(f"{rep} {mode}: failed: {result}", flush=True)
                continue
            ev = result.record["evaluation"]
            steps = {k: result.record["timings"].get(k) for k in ("outline", "sections")}
            rows[mode].append({"topic": topic, "wall": round(wall, 2), **steps, **{m: ev.get(m) for m in METRICS}})
            print(f"{rep} {mode}: {wall:.1f} s (outline {steps['outline']} s, sections {steps['sections']} s), "
                  f"quality {ev.get('quality'):.1f}", flush=True)
    summary: dict = {}
    for mode in [m for m in rows if m != "single" and "single" in rows]:
        pairs = [d["wall"] / s["wall"] for d, s in zip(rows[mode], rows["single"])]
        summary[f"{mode}_cost_ratio_median"] = round(st.median(pairs), 3)
        summary[f"{mode}_pairs"] = [round(p, 3) for p in pairs]
    for mode, found in rows.items():
        ok = [r for r in found if "error" not in r]
        summary[mode] = {m: round(st.mean(r[m] for r in ok if r[m] is not None), 3) for m in METRICS}
        summary[mode]["wall_median"] = round(st.median(r["wall"] for r in found), 2)
        for step in ("outline", "sections"):
            summary[mode][f"{step}_median"] = round(st.median(r[step] for r in ok), 2) if ok else None
        summary[mode]["failed"] = len(found) - len(ok)
    return {"summary": summary, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--sections", type=int, default=5)
    parser.add_argument("--words", type=int, default=800)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--modes", default="defaults,single", help="comma-separated: defaults,single,three")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="aigc-candidates-"))
    out.mkdir(parents=True, exist_ok=True)
    result = run(args.reps, out, args.sections, args.words, tuple(args.modes.split(",")))
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
