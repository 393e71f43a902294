"""One command that measures where aigc spends its time (issue 5) and writes results.md and results.json."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTIONS = ["local", "sweep", "ablation", "nightly", "start", "flow", "api"]
OPTIONAL = ["serve", "llamacpp"]
TITLES = [
    "What an urban heat island is", "How cities trap heat", "Measuring the effect", "Health risks",
    "Energy and water costs", "Trees and green roofs", "Cool pavements and roofs", "What residents can do",
]
TOPICS = ["Urban heat islands", "Community solar gardens", "Rainwater harvesting at home",
          "Night trains in Europe", "Repair cafes", "Soil health for gardeners", "Bike lanes and safety"]
ISSUE_LLAMACPP_B16 = 87.6  # llama.cpp at batch 16, hand-measured in issue 5 (used when not measured here)
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f} s] {msg}", flush=True)


def med(values):
    return statistics.median(values) if values else float("nan")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def target(name: str, value: float, goal: float, *, higher: bool, unit: str = "x") -> dict:
    """Whether ``value`` meets ``goal`` (at least it when ``higher``, else under it) and by how much it misses."""
    met = value >= goal if higher else value < goal
    if met:
        line = f"**met**: {value:.2f}{unit} ({'>=' if higher else '<'} {goal:g}{unit})"
    else:
        miss = (goal - value) / goal * 100 if higher else (value - goal) / goal * 100
        line = f"**missed**: {value:.2f}{unit}, {miss:.0f}% {'short of' if higher else 'over'} {goal:g}{unit}"
    return {"target": name, "value": round(value, 4), "goal": goal, "met": met, "line": f"Target: {name} - {line}"}


# -- the local backend ---------------------------------------------------------------------------

def section_set(n: int, new_tokens: int, *, greedy: bool = False) -> list:
    """``n`` real section requests (8 per article, same seed), each asking for ``new_tokens`` new tokens."""
    from aigc.sections import section_requests
    from aigc.spec import ArticleSpec
    from aigc.templates import TemplateStore

    store, requests = TemplateStore(), []
    for a in range((n + 7) // 8):
        spec = ArticleSpec(topic=TOPICS[a], sections=8, words=8 * 90, seed=7, outline=tuple(TITLES))
        requests += section_requests(spec, TITLES, store)
    update = {"max_new_tokens": new_tokens, **({"temperature": 0.0} if greedy else {})}
    return [r.model_copy(update=update) for r in requests[:n]]


THREADS: int | None = None  # --threads: LocalOptions(threads=...) for every local backend here (None: aigc's default)


def local_backend(batch: int | None = None, dtype: str = "auto", **options):
    from aigc.backends.local import LocalBackend, LocalOptions

    backend = LocalBackend(LocalOptions(max_batch_size=batch, dtype=dtype, threads=THREADS, **options))
    backend.load()
    return backend


def warm(backend) -> None:
    backend.generate(section_set(2, 4))


def run_generate(backend, requests, *, one_by_one: bool = False) -> dict:
    started = time.perf_counter()
    if one_by_one:
        done = [backend.generate([r])[0] for r in requests]
    else:
        done = backend.generate(requests)
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in done)
    return {"seconds": seconds, "tokens": tokens, "tps": tokens / seconds}


def measure(configs: dict, reps: int) -> dict:
    """Run every config once per repetition (interleaved, so load drift hits all alike); medians per config."""
    runs: dict[str, list] = {name: [] for name in configs}
    for rep in range(reps):
        for name, (backend, requests, one_by_one) in configs.items():
            r = run_generate(backend, requests, one_by_one=one_by_one)
            runs[name].append(r)
            say(f"  rep {rep + 1}/{reps} {name}: {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tps']:.1f} tokens/s")
    return {name: {"tps": med([r["tps"] for r in rs]), "seconds": med([r["seconds"] for r in rs]),
                   "tokens": med([r["tokens"] for r in rs]), "runs": rs} for name, rs in runs.items()}


class PlainGenerate:
    """The baseline every peer uses: the same model as plain transformers (nn.Linear, fp32) and ``generate(do_sample=True)``.

    Same prompts (aigc's chat formatting and prefill), same settings: temperature, top_p, top_k 50,
    repetition_penalty 1.15; several requests share one left-padded ``generate()`` call. Its torch work
    runs on aigc's model thread, as aigc's does: in one process, torch on a second thread (a second
    OpenMP team) slowed both models' decoding.
    """

    def __init__(self):
        from aigc.backends.local import run_on_model_thread

        run_on_model_thread(self._load)

    def _load(self):
        import torch
        import transformers

        from aigc.backends.local.embedded import ensure_converted
        from aigc.backends.local import LocalBackend, _prepare_tokenizer

        path = ensure_converted()
        self.torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        _prepare_tokenizer(self.tokenizer)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.prompt_ids = LocalBackend()._prompt_ids  # the backend's own prompt formatting (no model is loaded)

    def generate(self, requests) -> list:
        from aigc.backends.local import run_on_model_thread

        return run_on_model_thread(lambda: self._generate(requests))

    def _generate(self, requests) -> list:
        from types import SimpleNamespace

        torch, tok = self.torch, self.tokenizer
        ids = [self.prompt_ids(tok, r) for r in requests]
        width, r = max(map(len, ids)), requests[0]
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
        torch.manual_seed(r.seed or 0)
        sampling = dict(do_sample=True, temperature=r.temperature, top_p=r.top_p, top_k=50) if r.temperature > 0 else dict(
            do_sample=False, temperature=1.0, top_p=1.0)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=r.max_new_tokens,
                                      repetition_penalty=1.15, pad_token_id=pad, eos_token_id=tok.eos_token_id, **sampling)
        done = []
        for row in out[:, width:].tolist():
            n = next((k for k, t in enumerate(row) if t in (tok.eos_token_id, pad)), len(row))
            done.append(SimpleNamespace(completion_tokens=n))
        return done


def bench_local(ctx: dict) -> dict:
    """One plain generate() per section (every peer's baseline) vs aigc's batched path, 8 sections."""
    n, new = 8, ctx["new_tokens"]
    backend = local_backend()  # aigc's defaults: auto batch size, auto dtype, CPU fast path
    plain = PlainGenerate()
    warm(backend)
    warm(plain)
    say(f"local: 8 sections x {new} new tokens, sampled, {backend.describe()}")
    requests = section_set(n, new)
    base_name = "plain generate(), one per section (baseline)"
    res = measure({base_name: (plain, requests, True),
                   "plain generate(), all 8 in one batch": (plain, requests, False),
                   "aigc batched (one call)": (backend, requests, False)}, ctx["reps"])
    base, batched = res[base_name], res["aigc batched (one call)"]
    ratio = batched["tps"] / base["tps"]
    ctx["shared"]["fp32 sampled b8"] = batched
    import torch
    return {"title": "1. Section expansion, 8 sections (embedded SmolLM2-135M): plain transformers vs aigc's local backend",
            "settings": {"new_tokens": new, "sections": n, "decoding": "temperature 0.7, top_p 0.9, top_k 50, "
                         "repetition_penalty 1.15", "backend": backend.describe(), "torch_threads": torch.get_num_threads()},
            "rows": [{"path": k, "new tokens": v["tokens"], "seconds": v["seconds"], "tokens/s": v["tps"],
                      "ratio to baseline": v["tps"] / base["tps"]} for k, v in res.items()],
            "raw": res, "targets": [target("batch 8 >= 4x one generate() per section", ratio, 4.0, higher=True)]}


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


#: The parts of aigc's CPU fast path that the ablation turns off one at a time (LocalOptions fields).
FAST_PATH = {
    "prepack": "pre-packed linear weights (float16 for fbgemm by default; without it the fused step is off too)",
    "fp16_weights": "float16 MLP weights for fbgemm (float32 weights packed for oneDNN instead)",
    "share_prefix": "prompt prefix computed once per group of rows",
    "reserve_cache": "KV cache reserved ahead, written in place",
    "decode_attention": "attention of one new token as two matrix products",
    "fused_decode": "q/k/v and gate/up fused, aigc's own decode step",
}


def bench_ablation(ctx: dict) -> dict:
    """Two articles' 16 sections in one call: aigc's defaults against each part of the fast path turned off, and all of them."""
    new, reps = ctx["new_tokens"], ctx["reps"]
    n = max(ctx["batches"])
    requests = section_set(n, new)
    configs = {"aigc defaults": (local_backend(n), requests, False)}
    for option in FAST_PATH:
        configs[f"without {option}"] = (local_backend(n, **{option: False}), requests, False)
    everything = f"without all {len(FAST_PATH)}"
    configs[everything] = (local_backend(n, **{o: False for o in FAST_PATH}), requests, False)
    for backend, _, _ in configs.values():
        warm(backend)
    say(f"ablation: batch {n}, {new} new tokens, each part of the fast path off in turn")
    res = measure(configs, reps)
    full = res["aigc defaults"]["tps"]
    off = {"aigc defaults": "-", **{f"without {o}": what for o, what in FAST_PATH.items()}, everything: "all of them"}
    rows = [{"config": name, "what is off": off[name], "tokens/s": v["tps"], "seconds": v["seconds"],
             "defaults' speed-up over it": full / v["tps"]} for name, v in res.items()]
    return {"title": f"2c. What each part of the CPU fast path gives (batch {n}, two articles' sections, sampled)",
            "settings": {"new_tokens": new, "requests": n}, "rows": rows, "raw": res,
            "note": "Each part stays only if the defaults beat the run without it.", "targets": []}


def bench_nightly(ctx: dict) -> dict:
    """Two articles (fixed outlines), one after the other vs side by side on two threads, sharing generate() calls."""
    import threading

    from aigc import pipeline
    from aigc.spec import ArticleSpec

    backend = local_backend()
    warm(backend)
    n, words = ctx["nightly_sections"], ctx["nightly_words"]
    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-nightly-"))
    say(f"nightly: 2 articles x {n} sections, {words} words each: sequential vs side by side (shared calls)")
    runs: dict[str, list] = {"one article at a time": [], "two side by side, shared generate() calls": []}
    try:
        for rep in range(ctx["reps"]):
            specs = [ArticleSpec(topic=TOPICS[(2 * rep + k) % len(TOPICS)], sections=n, words=words, seed=300 + k,
                                 outline=tuple(TITLES[:n])) for k in range(2)]  # a fixed outline: sections only
            words_out: dict[str, int] = {}

            def write(spec, root):
                res = pipeline.write_article(spec, backend=backend, root=root, evaluate=False)
                words_out[f"{root.name}/{spec.topic}"] = res.record.get("body_words") or 0

            def sequential():
                for spec in specs:
                    write(spec, tmp / f"seq{rep}")

            def shared():
                threads = [threading.Thread(target=write, args=(spec, tmp / f"par{rep}")) for spec in specs]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            order = [("one article at a time", sequential), ("two side by side, shared generate() calls", shared)]
            for name, fn in (order if rep % 2 == 0 else order[::-1]):
                started = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - started)
                say(f"  rep {rep + 1} {name}: {runs[name][-1]:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seq, par = med(runs["one article at a time"]), med(runs["two side by side, shared generate() calls"])
    return {"title": "2b. A nightly batch: two articles one after the other vs side by side (local backend, direct steps)",
            "settings": {"sections": n, "words": words, "backend": backend.describe()},
            "rows": [{"mode": k, "seconds": med(v), "speed-up": seq / med(v)} for k, v in runs.items()],
            "raw": runs, "targets": [],
            "note": f"Side by side, the two articles' outlines and sections share generate() calls: {seq / par:.2f}x faster."}


# -- model start ---------------------------------------------------------------------------------

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
    from aigc.backends.local.embedded import convert_gguf, ensure_converted
    from aigc.backends.local import run_on_model_thread

    ensure_converted()
    conv, fresh = [], []

    def fresh_load(label: str) -> None:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", f"THREADS = {THREADS!r}\n" + _FRESH], capture_output=True, text=True,
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


# -- Prefect flow --------------------------------------------------------------------------------

def prefect_env() -> dict:
    """Point this process at the benchmark's own Prefect server: must run before prefect is first imported."""
    from aigc.serving import free_port

    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-prefect-"))
    port = free_port()
    env = {"PREFECT_HOME": str(tmp / "home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp / "results")}
    os.environ.update(env)
    return {"tmp": tmp, "port": port, **env}


def start_prefect(home: Path, port: int) -> tuple[subprocess.Popen, str, float, Path]:
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    started = time.perf_counter()
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    while time.perf_counter() - started < 180:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, api, time.perf_counter() - started, log_path
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"prefect server did not become healthy; log {log_path}:\n{log_path.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its living descendants, from /proc (0 without it)."""
    tick, total, todo = os.sysconf("SC_CLK_TCK"), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def _drain_prefect() -> None:
    """Send this process's queued Prefect logs and events before the server stops (else they are retried at exit)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception as exc:  # noqa: BLE001 - the figures are measured already
        say(f"flow: could not flush Prefect's logs and events before stopping the server: {exc}")


def _settle(pid: int, quiet: float = 0.02, limit: float = 10.0) -> float:
    """Wait (at most ``limit`` s) until the Prefect server uses under ``quiet`` s of CPU in 0.5 s; the seconds waited.

    A flow run leaves the server work to do after it returns (events, logs); without this the next timed run,
    direct or flow, paid for it at random.
    """
    started, before = time.perf_counter(), _tree_cpu(pid)
    while time.perf_counter() - started < limit:
        time.sleep(0.5)
        now = _tree_cpu(pid)
        if now - before < quiet:
            break
        before = now
    return time.perf_counter() - started


def bench_flow(ctx: dict) -> dict:
    """A whole article through the Prefect flow vs pipeline.write_article; then the flow's cached re-run."""
    pe = ctx["prefect"]
    tmp = pe["tmp"]
    say("flow: starting prefect server (not timed)")
    proc, api, startup, _log = start_prefect(Path(pe["PREFECT_HOME"]), pe["port"])
    say(f"flow: server healthy in {startup:.1f} s at {api}")
    try:
        from prefect.settings import get_current_settings

        if get_current_settings().api.url != api:
            raise RuntimeError(f"prefect is not pointed at the benchmark's server ({get_current_settings().api.url})")
        from aigc import pipeline
        from aigc.errors import OutlineError
        from aigc.spec import ArticleSpec
        from flows.article import article_flow
        from flows.common import in_process_run

        n, words = ctx["article_sections"], ctx["article_words"]
        params = lambda i: dict(topic=TOPICS[i % len(TOPICS)], sections=n, words=words, seed=100 + i)
        if THREADS:  # the flow builds its backend from the spec: give it the same options
            base = params
            params = lambda i: {**base(i), "backend_options": {"threads": THREADS}}
        backend = pipeline.backend_for(ArticleSpec(**params(0)))
        backend.load()
        warm(backend)
        started = time.perf_counter()  # first flow call in the process: client start-up, flow registration
        with in_process_run():
            article_flow(topic="Warm-up article", sections=1, words=30, seed=1, outline=["Warm up"],
                         outputs_dir=str(tmp / "warm"), **({"backend_options": {"threads": THREADS}} if THREADS else {}))
        first_call = time.perf_counter() - started
        say(f"flow: warm-up flow call {first_call:.1f} s (not counted)")
        gen_seconds: list[float] = []  # time inside the model's generate() calls: the same work on both paths
        generate = backend.generate

        def timed_generate(requests):
            t = time.perf_counter()
            try:
                return generate(requests)
            finally:
                gen_seconds.append(time.perf_counter() - t)

        backend.generate = timed_generate  # the flow's tasks get this same backend (pipeline.backend_for)
        server_pid = proc.pid

        def run(step, r) -> None:
            """One timed run, started once the server is quiet; its server CPU during and after it."""
            r[f"{step.__name__}_settle_before"] = _settle(server_pid)
            gen_seconds.clear()
            c0, m0 = _tree_cpu(server_pid), time.process_time()
            step()
            c1, m1 = _tree_cpu(server_pid), time.process_time()
            r[f"{step.__name__}_generate"] = sum(gen_seconds)
            r[f"{step.__name__}_cpu"] = m1 - m0  # this process, all its threads
            r[f"{step.__name__}_server_cpu"] = c1 - c0
            r[f"{step.__name__}_settle_after"] = _settle(server_pid)
            r[f"{step.__name__}_server_cpu_after"] = _tree_cpu(server_pid) - c1

        reps, skipped = [], []
        i = 0
        while len(reps) < ctx["flow_reps"] and i < ctx["flow_reps"] + 4:
            p, r = params(i), {}
            i += 1

            def direct():
                t = time.perf_counter()
                res = pipeline.write_article(ArticleSpec(**p), root=tmp / "direct")
                r["direct"], r["direct_words"] = time.perf_counter() - t, res.record.get("body_words")

            def flow():
                t = time.perf_counter()
                with in_process_run():  # as `aigc write` runs it
                    res = article_flow(**p, outputs_dir=str(tmp / "flow"))
                r["flow"], r["flow_words"], r["flow_steps"] = time.perf_counter() - t, res["words"], res["steps"]

            try:
                for step in ((direct, flow) if len(reps) % 2 == 0 else (flow, direct)):
                    run(step, r)
            except OutlineError as exc:  # the model's outline for this topic and seed is unusable: another one
                skipped.append(f"{p['topic']!r} seed {p['seed']}: {exc}")
                say(f"  skipped {p['topic']!r} (seed {p['seed']}): {str(exc)[:100]}")
                continue
            t = time.perf_counter()  # the server is quiet: each run above ended by waiting for it
            with in_process_run():
                res = article_flow(**p, outputs_dir=str(tmp / "flow"))
            r["cached"], r["cached_steps"], r["cached_status"] = time.perf_counter() - t, res["steps"], res["status"]
            r["overhead"] = (r["flow"] - r["direct"]) / r["direct"]
            r["outside_generate"] = ((r["flow"] - r["flow_generate"]) - (r["direct"] - r["direct_generate"])) / r["direct"]
            r["generate_change"] = (r["flow_generate"] - r["direct_generate"]) / r["direct_generate"]
            r["cached_ratio"] = r["cached"] / r["flow"]
            r["topic"], r["seed"] = p["topic"], p["seed"]
            reps.append(r)
            say(f"  rep {len(reps)} {p['topic']!r}: direct {r['direct']:.1f} s ({r['direct_words']} words), flow "
                f"{r['flow']:.1f} s ({r['flow_words']} words), overhead {100 * r['overhead']:+.1f}% (outside generate() "
                f"{100 * r['outside_generate']:+.1f}%, generate() {100 * r['generate_change']:+.1f}%); server CPU "
                f"{r['direct_server_cpu']:.2f} / {r['flow_server_cpu']:.2f} s (+{r['flow_server_cpu_after']:.2f} s after the "
                f"flow); cached re-run {r['cached']:.2f} s ({100 * r['cached_ratio']:.1f}%), steps {r['cached_steps']}")
        backend.generate = generate
        if not reps:
            raise RuntimeError(f"no article could be written through both paths: {skipped}")
        batch_runs = _batch_runs(ctx, tmp)
    finally:
        _drain_prefect()
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    d, f, c = (med([r[k] for r in reps]) for k in ("direct", "flow", "cached"))
    overhead = med([r["overhead"] for r in reps])
    cached_ratio = med([r["cached_ratio"] for r in reps])
    outside, gen_change = med([r["outside_generate"] for r in reps]), med([r["generate_change"] for r in reps])
    server_extra = med([r["flow_server_cpu"] - r["direct_server_cpu"] for r in reps])
    server_after = med([r["flow_server_cpu_after"] for r in reps])
    settings = {"sections": n, "words": words, "pairs": len(reps), "skipped": skipped,
                "prefect_server_startup_s": round(startup, 1), "first_flow_call_in_process_s": round(first_call, 2),
                "load_note": "same warm model for both paths",
                "settle_note": "each timed run starts once the Prefect server has used under 0.02 s of CPU in 0.5 s (at most 10 s)"}
    flow_out = {"title": f"4. Whole article ({n} sections, {words} words, generated outline): Prefect flow vs direct",
                "settings": settings,
                "rows": [{"path": "pipeline.write_article (direct)", "seconds": d, "ratio to direct": 1.0},
                         {"path": "article_flow (Prefect server on 127.0.0.1)", "seconds": f, "ratio to direct": f / d},
                         {"path": "overhead (median of per-rep (flow - direct) / direct)", "seconds": f - d,
                          "ratio to direct": overhead},
                         {"path": "  of which outside generate() (median of per-rep differences, as a share of direct)",
                          "seconds": outside * d, "ratio to direct": outside},
                         {"path": "  of which inside generate(): the same tokens, timed in each path (median change)",
                          "seconds": gen_change * med([r["direct_generate"] for r in reps]), "ratio to direct": gen_change},
                         {"path": "Prefect server CPU during the flow run, beyond what it used during the direct run (s)",
                          "seconds": server_extra, "ratio to direct": server_extra / d},
                         {"path": "Prefect server CPU after the flow run returned (s, not in either time)",
                          "seconds": server_after, "ratio to direct": server_after / d},
                         {"path": "cached flow re-run (an upper bound on fixed orchestration cost)", "seconds": c,
                          "ratio to direct": c / d}],
                "raw": reps,
                "targets": [target("orchestration overhead < 10% of the article's time", 100 * overhead, 10.0,
                                   higher=False, unit="%")]}
    cached_out = {"title": "5. Cached re-run vs first run (same flow call twice, Prefect server)",
                  "rows": [{"run": "first flow run", "seconds": f, "ratio to first": 1.0},
                           {"run": "second run (outline and sections cached)", "seconds": c, "ratio to first": cached_ratio}],
                  "raw": [{k: r[k] for k in ("flow", "cached", "cached_steps", "cached_status")} for r in reps],
                  "targets": [target("cached re-run < 5% of the first run", 100 * cached_ratio, 5.0, higher=False,
                                     unit="%")]}
    ctx["extra"].append(("cached", cached_out))
    ctx["extra"].append(("batch", batch_runs))
    return flow_out


def _batch_runs(ctx: dict, tmp: Path) -> dict:
    """The batch flow on a few nightly-style items: one local article at a time vs aigc's default.

    aigc writes as many local articles at once as fill one call with their sections (all four here),
    kept in step: their outlines share a call, then their sections. For the first mode the local
    backend's bound is lowered to 1 for the run.
    """
    import yaml

    from aigc.backends.local import LocalBackend
    from flows.batch import batch_flow
    from flows.common import in_process_run

    n, sections, words = ctx["batch_items"], ctx["batch_sections"], ctx["batch_words"]
    at_once = LocalBackend.from_options(**({"threads": THREADS} if THREADS else {})).concurrent_articles(sections)
    modes = {"one article at a time": 1,
             f"aigc's default: {min(at_once, n)} at once, kept in step, sharing calls": LocalBackend.max_concurrent_articles}
    runs: dict[str, list] = {m: [] for m in modes}
    say(f"batch: {n} items x {sections} sections, {words} words, through batch_flow: one local article at a time "
        f"vs {min(at_once, n)} at once")
    for rep in range(ctx["reps"]):
        order = list(modes) if rep % 2 == 0 else list(modes)[::-1]
        for k, mode in enumerate(order):
            defaults = {"sections": sections, "words": words, "backend": "local", "seed": 500 + 10 * rep + k}
            if THREADS:
                defaults["backend_options"] = {"threads": THREADS}
            items = [{"topic": TOPICS[(rep + i) % len(TOPICS)], "style": ("article", "report", "blog")[i % 3]}
                     for i in range(n)]
            path = tmp / f"batch-{rep}-{k}.yaml"  # a new seed each run: nothing cached, nothing already written
            path.write_text(yaml.safe_dump({"name": f"bench-{rep}-{k}", "defaults": defaults, "items": items}))
            bound = LocalBackend.max_concurrent_articles
            LocalBackend.max_concurrent_articles = modes[mode]
            try:
                started = time.perf_counter()
                with in_process_run():  # as `aigc batch` runs it, an item that fails included
                    state = batch_flow(batch_file=str(path), outputs_dir=str(tmp / "batches"), return_state=True)
                seconds = time.perf_counter() - started
                summary = state.result(raise_on_failure=False)
            finally:
                LocalBackend.max_concurrent_articles = bound
            counts = summary["counts"] if isinstance(summary, dict) else {"failed": "?"}
            runs[mode].append({"seconds": seconds, "counts": counts})
            say(f"  rep {rep + 1} {mode}: {seconds:.1f} s, {counts}")
    seconds = {m: med([r["seconds"] for r in v]) for m, v in runs.items()}
    seq, par = seconds.values()
    one, default = runs.values()
    per_rep = ", ".join(f"{a['seconds'] / b['seconds']:.2f}x" for a, b in zip(one, default))
    counts_per_run = "; ".join(f"{m}: {[r['counts'] for r in v]}" for m, v in runs.items())
    return {"title": f"4b. A nightly batch through the Prefect batch flow ({n} local articles, {sections} sections, "
                     f"{words} words)",
            "rows": [{"mode": m, "seconds": s, "speed-up": seq / s} for m, s in seconds.items()],
            "raw": runs, "targets": [],
            "note": f"aigc's default ({min(at_once, n)} local articles at once, kept in step, sharing generate() calls): "
                    f"{seq / par:.2f}x the speed of one at a time (per repetition {per_rep}; each run has its own "
                    f"seeds, so that nothing is cached, and its own outlines and retries; items written and failed "
                    f"per run: {counts_per_run})."}


# -- the openai backend --------------------------------------------------------------------------

class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that takes ``delay`` seconds per request."""

    delay = 0.5
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "bench"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        time.sleep(self.delay)
        text = "Cities hold heat because stone and asphalt store it. " * 4
        self._send({"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
                    "model": request.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}})


def api_runs(base_url: str, model: str, requests, concurrencies, reps: int) -> dict:
    from aigc.backends.base import generate_with_prefill
    from aigc.backends.openai import OpenAIBackend, OpenAIOptions

    out = {c: [] for c in concurrencies}
    for rep in range(reps):
        for c in concurrencies:
            backend = OpenAIBackend(OpenAIOptions(model=model, base_url=base_url, concurrency=c, max_retries=0))
            started = time.perf_counter()
            done = generate_with_prefill(backend, requests)
            out[c].append({"seconds": time.perf_counter() - started, "tokens": sum(x.completion_tokens for x in done)})
            backend.close()
            say(f"  rep {rep + 1} concurrency {c}: {len(requests)} requests in {out[c][-1]['seconds']:.2f} s")
    return out


def bench_api(ctx: dict) -> dict:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    say(f"api: stub server at {url}, {_Stub.delay} s per request, 16 section requests")
    try:
        runs = api_runs(url, "stub", section_set(16, 128), (1, 8), ctx["reps"])
    finally:
        server.shutdown()
        server.server_close()
    seq, conc = med([r["seconds"] for r in runs[1]]), med([r["seconds"] for r in runs[8]])
    return {"title": "6. openai backend, 16 section requests, stub server taking 0.5 s per request",
            "rows": [{"concurrency": 1, "seconds": seq, "speed-up": 1.0},
                     {"concurrency": 8, "seconds": conc, "speed-up": seq / conc}],
            "raw": {str(k): v for k, v in runs.items()},
            "targets": [target("concurrency 8 >= 5x sequential", seq / conc, 5.0, higher=True)]}


def bench_serve(ctx: dict) -> dict:
    from aigc.backends.local.embedded import ensure_converted
    from aigc.serving import start_transformers_serve

    say("serve: starting transformers serve (not timed)")
    n, new = 4, ctx["serve_tokens"]
    with start_transformers_serve(ensure_converted()) as server:
        say(f"serve: up in {server.startup_seconds:.1f} s; {n} requests x {new} tokens")
        api_runs(server.base_url, server.model_name, section_set(1, 4), (1,), 1)  # warm-up
        runs = api_runs(server.base_url, server.model_name, section_set(n, new), (1, 4), ctx["reps"])
    seq, conc = med([r["seconds"] for r in runs[1]]), med([r["seconds"] for r in runs[4]])
    return {"title": f"6b. openai backend against a real `transformers serve` ({n} requests x {new} tokens, CPU)",
            "settings": {"startup_s": round(server.startup_seconds, 1)},
            "rows": [{"concurrency": 1, "seconds": seq, "speed-up": 1.0},
                     {"concurrency": 4, "seconds": conc, "speed-up": seq / conc}],
            "raw": {str(k): v for k, v in runs.items()}, "targets": []}


#: Repetitions of the batch-16 pair (llama.cpp, then aigc) at least: the target's ratio rests on them.
PAIR_REPS = 7

_LLM: dict = {}  # the child process's llama.cpp model and prompts (see _llamacpp_start)


def _llamacpp_start(max_batch: int, new: int, threads: int | None) -> None:
    """Child-process initializer: load the GGUF into llama.cpp once and render the 16 section prompts."""
    sys.path.insert(0, str(Path(__file__).parent))
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
    with multiprocessing.get_context("spawn").Pool(1, _llamacpp_start, (max(sizes), new, THREADS)) as pool:
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
    out = {"title": title, "settings": {"quantization": "Q4_1 (the embedded GGUF)", "threads": THREADS or os.cpu_count(),
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


# -- report --------------------------------------------------------------------------------------

def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = ["# aigc benchmark results", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; {meta['machine']}; "
             f"torch {meta['torch']}, transformers {meta['transformers']}, prefect {meta['prefect']}  ",
             f"Torch threads: {meta['threads']}  ",
             f"Repetitions: {meta['reps']} (figures are medians; ratios are of medians unless said otherwise)  ",
             f"Load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']} "
             f"on {meta['cpus']} CPUs: other work shared the machine, so absolute figures are noisy; ratios matter.", ""]
    for name, sec in results["sections"].items():
        lines += [f"## {sec['title']}", ""]
        if sec.get("error"):
            lines += [f"Failed: `{sec['error']}`", ""]
            continue
        if sec.get("settings"):
            lines += ["Settings: " + ", ".join(f"{k} = {v}" for k, v in sec["settings"].items()), ""]
        if sec.get("rows"):
            cols = list(sec["rows"][0])
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in sec["rows"]]
            lines.append("")
        if sec.get("note"):
            lines += [sec["note"], ""]
        for t in sec.get("targets", []):
            lines += [f"- {t['line']}"]
        lines += [f"", f"_{sec.get('wall_s', 0):.0f} s, load average after: {sec.get('load_after')}_", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog="example: python benchmarks/bench.py --quick")
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or (
        SECTIONS + (["serve"] if args.serve else []) + (["llamacpp"] if args.llamacpp else []))
    unknown = set(names) - set(SECTIONS + OPTIONAL)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS + OPTIONAL)}")
    if "llamacpp" in names:  # before the sweep, so its batch-16 target can use the measured figure
        names = ["llamacpp"] + [n for n in names if n != "llamacpp"]
    q = args.quick
    global THREADS
    THREADS = args.threads
    ctx = {"reps": 1 if q else args.reps, "flow_reps": 1 if q else args.flow_reps, "loads": 1 if q else args.loads, "new_tokens": args.new_tokens or (16 if q else 128), "b1_requests": 2 if q else 4,
           "batches": [int(b) for b in args.batches.split(",")], "article_sections": 2 if q else 4,
           "article_words": 60 if q else 240,
           "nightly_sections": 2 if q else 8, "nightly_words": 60 if q else 720,
           "batch_items": 2 if q else 4, "batch_sections": 2 if q else 3, "batch_words": 60 if q else 240,
           "serve_tokens": 8 if q else 32, "shared": {}, "extra": []}
    if "flow" in names:
        ctx["prefect"] = prefect_env()
    import prefect
    import torch
    import transformers

    results = {"meta": {"command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
                        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {platform.system()}",
                        "cpus": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
                        "prefect": prefect.__version__, "reps": ctx["reps"], "flow_reps": ctx["flow_reps"],
                        "loads": ctx["loads"], "quick": q, "threads": THREADS or "aigc default", "load_start": load()},
               "sections": {}}
    funcs = {"local": bench_local, "sweep": bench_sweep, "ablation": bench_ablation, "nightly": bench_nightly, "start": bench_start, "flow": bench_flow, "api": bench_api,
             "serve": bench_serve, "llamacpp": bench_llamacpp}
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
