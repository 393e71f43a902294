"""Parts 4, 4b and 5, flow: an article through the Prefect flow vs direct, its cached re-run, and a batch through batch_flow."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from parts import common
from parts.common import TOPICS, med, say, target, warm
from parts.prefect_server import _drain_prefect, _settle, _tree_cpu, start_prefect, stop


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
        params = lambda i: dict(topic=TOPICS[i % len(TOPICS)], sections=n, words=words, seed=100 + i, **common.same_work())
        if common.THREADS:  # the flow builds its backend from the spec: give it the same options
            base = params
            params = lambda i: {**base(i), "backend_options": common.threads_option()}
        backend = pipeline.backend_for(ArticleSpec(**params(0)))
        backend.load()
        warm(backend)
        started = time.perf_counter()  # first flow call in the process: client start-up, flow registration
        with in_process_run():
            article_flow(topic="Warm-up article", sections=1, words=50, seed=1, outline=["Warm up"],
                         outputs_dir=str(tmp / "warm"), **({"backend_options": common.threads_option()} if common.THREADS else {}))
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
    """The batch flow on a few nightly-style items: one local article at a time (``concurrency=1``) vs aigc's default.

    By default a batch writes as many local articles together as fill one call with their sections (all
    four here): one outline call for all of them, then one sections call.
    """
    import yaml

    from aigc.backends.local import LocalBackend
    from flows.batch import batch_flow
    from flows.common import in_process_run

    n, sections, words = ctx["batch_items"], ctx["batch_sections"], ctx["batch_words"]
    at_once = LocalBackend.from_options(**common.threads_option()).concurrent_articles(sections)
    modes = {"one article at a time": 1, f"aigc's default: {min(at_once, n)} together, sharing calls": None}
    runs: dict[str, list] = {m: [] for m in modes}
    say(f"batch: {n} items x {sections} sections, {words} words, through batch_flow: one local article at a time "
        f"vs {min(at_once, n)} together")
    for rep in range(ctx["reps"]):
        order = list(modes) if rep % 2 == 0 else list(modes)[::-1]
        for k, mode in enumerate(order):
            defaults = {"sections": sections, "words": words, "backend": "local", "seed": 500 + 10 * rep + k,
                        **common.same_work()}
            if common.THREADS:
                defaults["backend_options"] = common.threads_option()
            items = [{"topic": TOPICS[(rep + i) % len(TOPICS)], "style": ("article", "report", "blog")[i % 3]}
                     for i in range(n)]
            path = tmp / f"batch-{rep}-{k}.yaml"  # a new seed each run: nothing cached, nothing already written
            path.write_text(yaml.safe_dump({"name": f"bench-{rep}-{k}", "defaults": defaults, "items": items}))
            started = time.perf_counter()
            with in_process_run():  # as `aigc batch` runs it, an item that fails included
                state = batch_flow(batch_file=str(path), outputs_dir=str(tmp / "batches"), concurrency=modes[mode],
                                   return_state=True)
            seconds = time.perf_counter() - started
            summary = state.result(raise_on_failure=False)
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
            "note": f"aigc's default ({min(at_once, n)} local articles together, sharing generate() calls): "
                    f"{seq / par:.2f}x the speed of one at a time (per repetition {per_rep}; each run has its own "
                    f"seeds, so that nothing is cached, and its own outlines and retries; items written and failed "
                    f"per run: {counts_per_run})."}
