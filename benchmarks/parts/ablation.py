"""Part 2c, ablation: aigc's defaults against each part of the CPU fast path turned off in turn, and all of them."""

from __future__ import annotations

from parts.common import local_backend, measure, say, section_set, warm

#: The parts of aigc's CPU fast path that the ablation turns off one at a time (FastPath fields, not user options).
FAST_PATH = {
    "prepack": "pre-packed linear weights (float16 for fbgemm by default; without it the fused step is off too)",
    "fp16_weights": "float16 MLP weights for fbgemm (float32 weights packed for oneDNN instead)",
    "share_prefix": "prompt prefix computed once per group of rows",
    "reserve_cache": "KV cache reserved ahead, written in place",
    "fused_decode": "q/k/v and gate/up fused, aigc's own decode step",
}


def bench_ablation(ctx: dict) -> dict:
    """Two articles' 16 sections in one call: aigc's defaults against each part of the fast path turned off, and all of them."""
    from aigc.backends.local import FastPath

    new, reps = ctx["new_tokens"], ctx["reps"]
    n = max(ctx["batches"])
    requests = section_set(n, new)
    configs = {"aigc defaults": (local_backend(n), requests, False)}
    for part in FAST_PATH:
        configs[f"without {part}"] = (local_backend(n, fastpath=FastPath(**{part: False})), requests, False)
    everything = f"without all {len(FAST_PATH)} (fast=false)"
    configs[everything] = (local_backend(n, fast=False), requests, False)
    for backend, _, _ in configs.values():
        warm(backend)
    say(f"ablation: batch {n}, {new} new tokens, each part of the fast path off in turn")
    res = measure(configs, reps)
    full = res["aigc defaults"]["tps"]
    off = {"aigc defaults": "-", **{f"without {p}": what for p, what in FAST_PATH.items()},
           everything: "all of them: plain transformers generate()"}
    rows = [{"config": name, "what is off": off[name], "tokens/s": v["tps"], "seconds": v["seconds"],
             "defaults' speed-up over it": full / v["tps"]} for name, v in res.items()]
    return {"title": f"2c. What each part of the CPU fast path gives (batch {n}, two articles' sections, sampled)",
            "settings": {"new_tokens": new, "requests": n}, "rows": rows, "raw": res,
            "note": "Each part stays only if the defaults beat the run without it.", "targets": []}
