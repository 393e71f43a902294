"""Part 2, sweep: the local backend at batch 1, 4, 8 and 16, bf16 against fp32, greedy against sampled."""

from __future__ import annotations

from parts.common import ISSUE_LLAMACPP_B16, local_backend, measure, say, section_set, target, warm


def bench_sweep(ctx: dict) -> dict:
    """Batch sizes, fp32 vs bf16, greedy vs sampled."""
    new, reps, sizes = ctx["new_tokens"], ctx["reps"], ctx["batches"]
    big = max(sizes)
    configs, rows_def = {}, []
    for b in sizes:
        name = f"fp32 sampled b{b}"
        n = 8 if name in ctx["shared"] else (max(b, 8) if b > 1 else ctx["b1_requests"])
        rows_def.append((name, "float32", "sampled", b, n))
        if name not in ctx["shared"]:
            configs[name] = (local_backend(b, "float32"), section_set(n, new), False)
    for name, dtype, mode, b, n in [(f"bf16 sampled b{big}", "bfloat16", "sampled", big, big),
                                    (f"fp32 greedy b{big}", "float32", "greedy", big, big)]:
        rows_def.append((name, dtype, mode, b, n))
        configs[name] = (local_backend(b, dtype), section_set(n, new, greedy=mode == "greedy"), False)
    for backend, _, _ in configs.values():
        warm(backend)
    say(f"sweep: batch sizes {sizes}, fp32/bf16, greedy/sampled, {new} new tokens")
    res = {**ctx["shared"], **measure(configs, reps)}
    smallest = min(sizes)  # the ratio column's reference (batch 1 unless --batches leaves it out)
    b1 = res[f"fp32 sampled b{smallest}"]["tps"]
    rows = []
    for name, dtype, mode, b, n in rows_def:
        v = res[name]
        rows.append({"config": name, "dtype": dtype, "decoding": mode, "batch": b, "requests": n, "new tokens": v["tokens"],
                     "seconds": v["seconds"], "tokens/s": v["tps"], f"ratio to fp32 b{smallest}": v["tps"] / b1})
    out = {"title": "2. Batch size, dtype and decoding sweep (local backend, max_batch_size = batch)",
           "settings": {"new_tokens": new, "batch_1_requests": ctx["b1_requests"]}, "rows": rows,
           "raw": {k: v for k, v in res.items() if k in configs}, "targets": []}
    if 16 in sizes and not ctx.get("llamacpp_target"):
        ref, src = ISSUE_LLAMACPP_B16, "issue 5's hand measurement"
        out["targets"].append(target(f"batch 16 sampled >= 2x llama.cpp ({ref:.1f} tokens/s, {src})",
                                     res["fp32 sampled b16"]["tps"] / ref, 2.0, higher=True))
    if 8 in sizes and 16 in sizes:  # section_set(16) is two articles' sections: what a nightly batch could share
        gain = res["fp32 sampled b16"]["tps"] / res["fp32 sampled b8"]["tps"]
        out["note"] = (f"Two articles' 16 sections in one call (batch 16) vs one article's 8 (batch 8): {gain:.2f}x the "
                       "tokens/s, the gain a nightly batch gets from sharing generate() calls across articles.")
        out["cross_article_gain"] = gain
    if 16 in sizes and ctx.get("llamacpp_target"):
        out["note"] = (out.get("note", "") + " The batch 16 target against llama.cpp is in part 7, where both are "
                       "measured side by side.").strip()
    return out
