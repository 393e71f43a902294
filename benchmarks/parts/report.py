"""The benchmark's report: results.md from the results of every part."""

from __future__ import annotations


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
        lines += ["", f"_{sec.get('wall_s', 0):.0f} s, load average after: {sec.get('load_after')}_", ""]
    return "\n".join(lines)
