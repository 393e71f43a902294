"""Part 3, start: converting the embedded GGUF vs loading the cached copy in fresh processes (the warm start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parts import common
from parts.common import med, say, target

_FRESH = """
import json, time
t0 = time.perf_counter()
import torch, transformers
from aigc.backends.local import LocalBackend, LocalOptions
t1 = time.perf_counter()
# the modules transformers imports lazily on first use for this model (Llama classes, fast tokenizer)
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.generation import utils as _generation
t2 = time.perf_counter()
c2 = time.process_time()
LocalBackend(LocalOptions(threads=THREADS)).load()
t3, c3 = time.perf_counter(), time.process_time()
print(json.dumps({"import": t1 - t0, "lazy_import": t2 - t1, "load": t3 - t2, "load_cpu": c3 - c2,
                  "threads": torch.get_num_threads()}))
"""


def bench_start(ctx: dict) -> dict:
    from aigc.backends.local import run_on_model_thread
    from aigc.backends.local.embedded import convert_gguf, ensure_converted

    ensure_converted()
    conv, fresh = [], []

    def fresh_load(label: str) -> None:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", f"THREADS = {common.THREADS!r}\n" + _FRESH], capture_output=True, text=True,
                             check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - started
        d = json.loads(out.stdout.strip().splitlines()[-1])
        fresh.append({"process": wall, "import+load": d["import"] + d["lazy_import"] + d["load"], "load": d["load"],
                      "load_cpu": d["load_cpu"], "import": d["import"], "lazy_import": d["lazy_import"]})
        say(f"  {label} fresh process: {wall:.2f} s wall, import {d['import']:.2f} s, transformers' lazy imports "
            f"{d['lazy_import']:.2f} s, load {d['load']:.2f} s ({d['load_cpu']:.2f} s of CPU)")

    for rep in range(ctx["reps"]):
        with tempfile.TemporaryDirectory(prefix="aigc-bench-convert-") as tmp:
            started = time.perf_counter()
            # on the model thread, as aigc converts: torch on this thread would slow the later parts' decoding
            run_on_model_thread(lambda: convert_gguf(Path(tmp) / "model"))
            conv.append(time.perf_counter() - started)
        say(f"  rep {rep + 1} GGUF conversion: {conv[-1]:.1f} s")
        # not timed: the conversion has just written (and deleted) a 540 MB file; without this the fresh process
        # below ran while the kernel still wrote it back, and its load took about 2 s instead of about 1 s
        os.sync()
        fresh_load(f"rep {rep + 1}")
    while len(fresh) < ctx["loads"]:  # more loads than conversions: one load is cheap, and noisy here
        fresh_load(f"load {len(fresh) + 1}")
    f = {k: med([x[k] for x in fresh]) for k in fresh[0]}
    c = med(conv)
    rows = [{"step": "GGUF -> safetensors conversion (convert_gguf, in process)", "seconds": c, "ratio to conversion": 1.0},
            {"step": "cached copy, fresh process: whole process (python start + imports + load)", "seconds": f["process"],
             "ratio to conversion": f["process"] / c},
            {"step": "cached copy: imports (torch, transformers, aigc, the model's classes), then LocalBackend().load()",
             "seconds": f["import+load"], "ratio to conversion": f["import+load"] / c},
            {"step": "  of which: import torch, transformers, aigc", "seconds": f["import"], "ratio to conversion": f["import"] / c},
            {"step": "  of which: transformers' lazy imports of the Llama and tokenizer classes", "seconds": f["lazy_import"],
             "ratio to conversion": f["lazy_import"] / c},
            {"step": "  of which: LocalBackend().load() (read weights, build, pack for oneDNN and fbgemm)", "seconds": f["load"],
             "ratio to conversion": f["load"] / c},
            {"step": "  its CPU time, all threads (what it costs when the cores are shared)", "seconds": f["load_cpu"],
             "ratio to conversion": f["load_cpu"] / c}]
    return {"title": "3. Model start: GGUF conversion vs the cached safetensors copy", "rows": rows,
            "raw": {"conversion": conv, "fresh": fresh},
            "targets": [target("warm model start (load of the cached copy, imports done) < 2 s", f["load"], 2.0, higher=False,
                               unit=" s"),
                        target("warm model start (imports + load) < 2 s", f["import+load"], 2.0, higher=False, unit=" s"),
                        target("warm model start (whole fresh process) < 2 s", f["process"], 2.0, higher=False, unit=" s")]}
