"""What every part of the benchmark shares: logging, medians, targets, section requests and local backends."""

from __future__ import annotations

import os
import statistics
import time

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
#: --threads: LocalOptions(threads=...) for every local backend of the run (None: aigc's default); set by bench.py.
THREADS: int | None = None


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


def threads_option() -> dict:
    """``{"threads": N}`` when --threads was given, else nothing (for backend_options and LocalOptions)."""
    return {"threads": THREADS} if THREADS else {}


def same_work() -> dict:
    """One outline and one section candidate where this tree has candidates (issue 17), else nothing.

    The house parts (nightly, flow, batch) compare trees side by side: both must do the same work.
    What candidates cost is benchmarks/candidates.py's figure.
    """
    from aigc.spec import ArticleSpec

    fields = ArticleSpec.model_fields
    return {k: 1 for k in ("outline_candidates", "section_candidates") if k in fields}


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


def local_backend(batch: int | None = None, dtype: str = "auto", fastpath=None, **options):
    """A loaded local backend; ``fastpath``: a FastPath (the ablation's per-part switches), else all parts on."""
    from aigc.backends.local import LocalBackend, LocalOptions

    backend = LocalBackend(LocalOptions(max_batch_size=batch, dtype=dtype, threads=THREADS, **options),
                           fastpath=fastpath)
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
