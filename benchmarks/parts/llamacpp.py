"""Part 7, llamacpp (optional): llama.cpp on the same GGUF at batch 1-16, and at batch 16 side by side with aigc."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from parts import common
from parts.common import local_backend, med, run_generate, say, section_set, target, warm

#: Repetitions of the batch-16 pair (llama.cpp, then aigc) at least: the target's ratio rests on them.
PAIR_REPS = 7

_LLM: dict = {}  # the child process's llama.cpp model and prompts (see _llamacpp_start)


def _llamacpp_start(max_batch: int, new: int, threads: int | None) -> None:
    """Child-process initializer: load the GGUF into llama.cpp once and render the 16 section prompts."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from llamacpp_batched import chat_prompt_ids, make_llm, run_batched

    from aigc.backends.local.embedded import GGUF_FILE, gguf_folder

    llm = make_llm(gguf_folder() / GGUF_FILE, n_ctx_per_seq=512, max_batch=max_batch, threads=threads)
    prompts = [chat_prompt_ids(llm, [m.model_dump() for m in r.without_prefill().messages])
               for r in section_set(16, new)]
    run_batched(llm, prompts[:2], 4, 2)  # warm-up
    _LLM.update(llm=llm, prompts=prompts, run=run_batched)


def _llamacpp_run(b: int, n: int, new: int) -> dict:
    """In the child: the first ``n`` section prompts, ``b`` sequences per llama_decode call."""
    r = _LLM["run"](_LLM["llm"], _LLM["prompts"][:n], new, b, temperature=0.7, top_p=0.9, top_k=50,
                    repeat_penalty=1.15)
    return {"requests": n, "tokens": r["tokens"], "seconds": r["seconds"], "tps": r["tokens"] / r["seconds"]}


def bench_llamacpp(ctx: dict) -> dict:
    """llama.cpp at batch 1/4/8/16 in a child process; at batch 16 each repetition alternates with aigc's batch 16."""
    title = "7. llama.cpp (llama-cpp-python) on the same GGUF, sequences decoded in parallel"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {"title": title, "rows": [], "targets": [],
                "note": "llama-cpp-python is not installed, so it was not measured. Build it (about 7 minutes) with "
                        "CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
                        "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" pip install llama-cpp-python"}
    import multiprocessing

    new, reps = ctx["new_tokens"], ctx["reps"]
    sizes = sorted({1, *ctx["batches"]} & {1, 4, 8, 16})
    paired = 16 in sizes
    if paired:  # aigc's side of the pair: its defaults at batch 16, the sweep's requests
        backend, requests = local_backend(16, "float32"), section_set(16, new)
        warm(backend)
    runs: dict[int, list] = {b: [] for b in sizes}
    aigc_runs: list = []
    # In a child process: llama.cpp's threads, once started in this process, slowed torch's decoding 1.5x afterwards.
    pair_reps = max(reps, PAIR_REPS) if paired else 0
    with multiprocessing.get_context("spawn").Pool(1, _llamacpp_start, (max(sizes), new, common.THREADS)) as pool:
        if paired:  # one untimed pair at full size first: neither side's first big call is timed
            pool.apply(_llamacpp_run, (16, 16, new))
            run_generate(backend, requests)
        for rep in range(max(reps, pair_reps)):
            for b in sizes:
                if rep >= (pair_reps if b == 16 else reps):
                    continue
                n = ctx["b1_requests"] if b == 1 else max(b, 8)
                runs[b].append(pool.apply(_llamacpp_run, (b, n, new)))
                say(f"  rep {rep + 1} llama.cpp batch {b}: {runs[b][-1]['tokens']} tokens in "
                    f"{runs[b][-1]['seconds']:.1f} s = {runs[b][-1]['tps']:.1f} tokens/s")
                if b == 16:
                    aigc_runs.append(run_generate(backend, requests))
                    say(f"  rep {rep + 1} aigc batch 16 (right after): {aigc_runs[-1]['tokens']} tokens in "
                        f"{aigc_runs[-1]['seconds']:.1f} s = {aigc_runs[-1]['tps']:.1f} tokens/s")
    tps = {b: med([x["tps"] for x in rs]) for b, rs in runs.items()}
    rows = [{"path": f"llama.cpp batch {b}", "requests": runs[b][0]["requests"], "tokens/s": tps[b],
             "ratio to llama.cpp batch 1": tps[b] / tps[1]} for b in sizes]
    out = {"title": title, "settings": {"quantization": "Q4_1 (the embedded GGUF)", "threads": common.THREADS or os.cpu_count(),
                                        "sampler": "penalties 1.15, top-k 50, top-p 0.9, temperature 0.7, per sequence"},
           "rows": rows, "raw": {str(b): rs for b, rs in runs.items()}, "targets": [],
           "note": "Each sequence has its own seq_id and sampler chain and shares every llama_decode call "
                   "(benchmarks/llamacpp_batched.py, after llama.cpp's examples/batched). llama.cpp runs in a child "
                   "process."}
    if paired:
        pairs = [a["tps"] / l["tps"] for a, l in zip(aigc_runs, runs[16])]
        aigc_tps = med([a["tps"] for a in aigc_runs])
        rows.append({"path": "aigc batch 16 (its defaults: float32, float16 linear weights), alternating with llama.cpp batch 16", "requests": 16,
                     "tokens/s": aigc_tps, "ratio to llama.cpp batch 1": aigc_tps / tps[1]})
        out["raw"]["aigc b16"] = aigc_runs
        out["note"] += (" At batch 16 every repetition runs llama.cpp and then aigc on the same 16 section requests, "
                        f"so both see the same load; aigc / llama.cpp per repetition: "
                        f"{', '.join(f'{x:.2f}x' for x in pairs)}.")
        ctx["llamacpp_target"] = True
        out["targets"].append(target("batch 16 sampled >= 2x llama.cpp (side by side, median of per-repetition ratios)",
                                     med(pairs), 2.0, higher=True))
    return out
