"""Prefill benchmark: one article's section requests (8 sections x 2 candidates, plain and with FreshWiki sources)
prefilled with the nested layout (the article's common start once, each section's own part once) against the best
two-level one (the common start, or whole prompts of a section's candidates), interleaved in one run.

    python benchmarks/prefill_layout.py --cache /tmp/gidx --reps 3 --threads 1

Each request asks for one new token, so the time is the prefill (and one step). Prints each run and the median
ratio nested / two-level for both kinds of prompt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TITLES = ["Early life and education", "Career", "Death", "Investigation", "Reactions", "Russian reaction", "Funeral",
          "Legacy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "freshwiki-dev" / "txt")
    parser.add_argument("--cache", type=Path, default=None, help="index folder (default: aigc's cache)")
    parser.add_argument("--topic", default="Darya Dugina")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import aigc.index
    from aigc.backends import create_backend
    from aigc.backends.local.fastpath import prefix
    from aigc.grounding import SectionSources
    from aigc.sections import CANDIDATE_SEED_STRIDE, section_requests
    from aigc.spec import ArticleSpec
    from aigc.templates import TemplateStore

    if args.cache:
        aigc.index.index_root = lambda: args.cache
    store = TemplateStore()
    grounded = ArticleSpec(topic=args.topic, style="report", sections=8, words=800, sources=[str(args.data)])
    plain = ArticleSpec(topic=args.topic, style="report", sections=8, words=800)
    extra = SectionSources.find([grounded], [TITLES], store).extra()[0]

    def requests(spec, ex):
        rows = [section_requests(spec, TITLES, store, seed_offset=c * CANDIDATE_SEED_STRIDE, extra=ex)
                for c in range(2)]
        return [rows[c][i].model_copy(update={"max_new_tokens": 1}) for i in range(len(TITLES)) for c in range(2)]

    kinds = {"grounded": requests(grounded, extra), "plain": requests(plain, None)}
    backend = create_backend("local", threads=args.threads)
    backend.load()
    backend.generate(kinds["plain"][:2])  # warm-up
    nested = prefix.nested_prefill_layout
    times: dict[tuple[str, bool], list[float]] = {}
    try:
        for _ in range(args.reps):
            for kind, reqs in kinds.items():
                for on in (True, False):
                    prefix.nested_prefill_layout = nested if on else (lambda *a, **k: None)
                    t = time.perf_counter()
                    out = backend.generate(reqs)
                    times.setdefault((kind, on), []).append(time.perf_counter() - t)
                    print(f"{kind:8} {'nested' if on else 'two-level':9} {times[kind, on][-1]:6.2f} s  prompt tokens "
                          f"{sum(c.prompt_tokens for c in out) // len(out)} per row", flush=True)
    finally:
        prefix.nested_prefill_layout = nested
    for kind in kinds:
        a, b = statistics.median(times[kind, True]), statistics.median(times[kind, False])
        print(f"{kind}: nested {a:.2f} s, two-level {b:.2f} s, ratio {a / b:.2f} (median of {args.reps}, load "
              f"{os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
