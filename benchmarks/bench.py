"""One command that measures where aigc spends its time and writes results.md and results.json (parts in benchmarks/parts/)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the parts package and llamacpp_batched

from parts import common  # noqa: E402
from parts.common import OPTIONAL, SECTIONS, load, say  # noqa: E402


def part_functions() -> dict:
    """Each part's function, by name (imported here so that --against does not import aigc)."""
    from parts.ablation import bench_ablation
    from parts.api import bench_api, bench_serve
    from parts.flow import bench_flow
    from parts.llamacpp import bench_llamacpp
    from parts.local import bench_local
    from parts.nightly import bench_nightly
    from parts.start import bench_start
    from parts.sweep import bench_sweep

    return {"local": bench_local, "sweep": bench_sweep, "ablation": bench_ablation, "nightly": bench_nightly,
            "start": bench_start, "flow": bench_flow, "api": bench_api, "serve": bench_serve, "llamacpp": bench_llamacpp}


def parse(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, epilog="example: python benchmarks/bench.py --quick; "
                                     "python benchmarks/bench.py --against HEAD~1 --only local,nightly")
    parser.add_argument("--quick", action="store_true", help="1 repetition and small sizes: a smoke test")
    parser.add_argument("--out", default="benchmarks/results", help="folder for results.md and results.json")
    parser.add_argument("--only", default="", help=f"comma-separated parts: {','.join(SECTIONS + OPTIONAL)}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure (median); --quick sets 1")
    parser.add_argument("--flow-reps", type=int, default=7,
                        help="article pairs (direct, flow) of the flow part, whose per-pair noise here is about 10%%; --quick sets 1")
    parser.add_argument("--loads", type=int, default=5, help="fresh-process loads of the start part (median); --quick sets 1")
    parser.add_argument("--batches", default="1,4,8,16", help="batch sizes of the sweep")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (LocalOptions.threads); default: aigc's")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per section (default 128, --quick 16)")
    parser.add_argument("--serve", action="store_true", help="also measure a real `transformers serve`")
    parser.add_argument("--llamacpp", action="store_true", help="also measure llama-cpp-python if installed")
    parser.add_argument("--against", metavar="REV", default=None,
                        help="compare with git revision REV side by side: each part runs --reps times in each tree, "
                             "alternating, each time in a fresh process (see parts/against.py)")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or (
        SECTIONS + (["serve"] if args.serve else []) + (["llamacpp"] if args.llamacpp else []))
    unknown = set(names) - set(SECTIONS + OPTIONAL)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS + OPTIONAL)}")
    if "llamacpp" in names:  # before the sweep, so its batch-16 target can use the measured figure
        names = ["llamacpp"] + [n for n in names if n != "llamacpp"]
    if args.against:
        from parts.against import compare

        return compare(args, names, argv if argv is not None else sys.argv[1:])
    q = args.quick
    common.THREADS = args.threads
    ctx = {"reps": 1 if q else args.reps, "flow_reps": 1 if q else args.flow_reps, "loads": 1 if q else args.loads,
           "new_tokens": args.new_tokens or (16 if q else 128), "b1_requests": 2 if q else 4,
           "batches": [int(b) for b in args.batches.split(",")], "article_sections": 2 if q else 4,
           "article_words": 60 if q else 240,
           "nightly_sections": 2 if q else 8, "nightly_words": 60 if q else 720,
           "batch_items": 2 if q else 4, "batch_sections": 2 if q else 3, "batch_words": 60 if q else 240,
           "serve_tokens": 8 if q else 32, "shared": {}, "extra": []}
    if "flow" in names:
        from parts.prefect_server import prefect_env

        ctx["prefect"] = prefect_env()  # before prefect is first imported
    import prefect
    import torch
    import transformers

    from parts.report import markdown

    results = {"meta": {"command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
                        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {platform.system()}",
                        "cpus": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
                        "prefect": prefect.__version__, "reps": ctx["reps"], "flow_reps": ctx["flow_reps"],
                        "loads": ctx["loads"], "quick": q, "threads": common.THREADS or "aigc default",
                        "load_start": load()},
               "sections": {}}
    funcs = part_functions()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        started = time.perf_counter()
        say(f"== {name} (load average {load()})")
        try:
            sec = funcs[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others
            import traceback

            traceback.print_exc()
            sec = {"title": name, "error": f"{type(exc).__name__}: {exc}"[:500]}
        sec["wall_s"], sec["load_after"] = time.perf_counter() - started, load()
        results["sections"][name] = sec
        for key, extra in ctx["extra"]:
            extra["wall_s"], extra["load_after"] = 0.0, load()
            results["sections"][key] = extra
        ctx["extra"].clear()
        for t in sec.get("targets", []):
            say(t["line"])
        results["meta"]["load_end"] = load()
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (out / "results.md").write_text(markdown(results))
    say(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 1 if any(s.get("error") for s in results["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
