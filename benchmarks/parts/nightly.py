"""Part 2b, nightly: two articles (fixed outlines) one after the other vs written together by ``pipeline.write_articles``."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from parts.common import TITLES, TOPICS, local_backend, med, same_work, say, warm

SEQUENTIAL = "one article at a time (write_article, twice)"
TOGETHER = "together (write_articles: one outline call, one sections call)"


def bench_nightly(ctx: dict) -> dict:
    """Two 8-section articles: ``write_article(a); write_article(b)`` vs ``write_articles([a, b])``, alternating."""
    from aigc import pipeline
    from aigc.spec import ArticleSpec

    write_articles = getattr(pipeline, "write_articles", None)
    if write_articles is None:
        return {"title": "2b. A nightly batch", "rows": [], "targets": [],
                "note": "pipeline.write_articles is not in this tree: not measured."}
    single = same_work()  # one row per section in every tree
    backend = local_backend()
    warm(backend)
    n, words = ctx["nightly_sections"], ctx["nightly_words"]
    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-nightly-"))
    say(f"nightly: 2 articles x {n} sections, {words} words each: one after the other vs together")
    runs: dict[str, list] = {SEQUENTIAL: [], TOGETHER: []}
    words_out: dict[str, list] = {SEQUENTIAL: [], TOGETHER: []}
    try:
        for rep in range(ctx["reps"]):
            specs = [ArticleSpec(topic=TOPICS[(2 * rep + k) % len(TOPICS)], sections=n, words=words, seed=300 + k,
                                 outline=tuple(TITLES[:n]), **single) for k in range(2)]  # a fixed outline: sections only

            def sequential(root: Path) -> list:
                return [pipeline.write_article(spec, backend=backend, root=root, evaluate=False) for spec in specs]

            def together(root: Path) -> list:
                results = write_articles(specs, backend=backend, root=root, evaluate=False)
                for r in results:
                    if isinstance(r, BaseException):
                        raise r
                return results

            order = [(SEQUENTIAL, sequential, "seq"), (TOGETHER, together, "par")]
            for name, fn, folder in (order if rep % 2 == 0 else order[::-1]):
                started = time.perf_counter()
                results = fn(tmp / f"{folder}{rep}")
                runs[name].append(time.perf_counter() - started)
                words_out[name].append([r.record.get("body_words") or 0 for r in results])
                say(f"  rep {rep + 1} {name}: {runs[name][-1]:.1f} s, words {words_out[name][-1]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seq, par = med(runs[SEQUENTIAL]), med(runs[TOGETHER])
    return {"title": "2b. A nightly batch: two articles one after the other vs together (local backend, direct steps)",
            "settings": {"sections": n, "words": words, "backend": backend.describe(), **single},
            "rows": [{"mode": k, "seconds": med(v), "speed-up": seq / med(v)} for k, v in runs.items()],
            "raw": {"seconds": runs, "words": words_out}, "targets": [],
            "note": f"Together, the two articles' sections share one generate() call: {seq / par:.2f}x faster."}
