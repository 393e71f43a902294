"""--against REV: the benchmark of this tree and of a git revision side by side in one run, alternating fresh processes.

The revision is checked out into a temporary ``git worktree``. For each part, each of ``--reps`` rounds
runs ``python <tree>/benchmarks/bench.py --only PART --reps 1`` once in each tree, in alternating order
(old first in even rounds), each in a fresh process with the same Python and ``PYTHONPATH`` at that
tree, so that both see the same machine load. Only flags that every bench.py has had are passed on
(``--quick``, ``--threads``, ``--new-tokens``, ``--batches``, ``--flow-reps``, ``--loads``). The headline
figures of each run's results.json (each target, and the tokens/s and speed-up rows) are tabulated as
the median over rounds, old against new, with new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parts.common import med, say

#: Row columns reported beside the targets: (column, higher is better).
ROW_FIGURES = {"tokens/s": True, "speed-up": True, "defaults' speed-up over it": True}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def _row_label(part: str, row: dict, index: int, count: int) -> str:
    """A row's label, the same in both trees where its wording changed (modes named by what they do)."""
    key, value = next(iter(row.items()))
    label = f"{key} {value}" if isinstance(value, (int, float)) else str(value)
    if part in ("nightly", "batch"):  # one-at-a-time first, then written together: named by position
        return "one at a time" if index == 0 else "together" if index == 1 else label
    if part == "ablation" and label.startswith("without all"):
        return "without every part"
    if part == "llamacpp" and label.startswith("aigc batch 16"):
        return "aigc batch 16, alternating with llama.cpp"
    return label


def headlines(results: dict) -> dict[str, tuple[float, bool]]:
    """``{figure: (value, higher is better)}`` of one results.json: every target, and the rows' rates and speed-ups."""
    out: dict[str, tuple[float, bool]] = {}
    for part, sec in results.get("sections", {}).items():
        for t in sec.get("targets", []):
            out[f"{part}: {t['target']}"] = (float(t["value"]), "<" not in t["target"])
        rows = sec.get("rows") or []
        for i, row in enumerate(rows):
            for column, higher in ROW_FIGURES.items():
                value = row.get(column)
                if isinstance(value, (int, float)) and not (i == 0 and column == "speed-up"):
                    out[f"{part}: {_row_label(part, row, i, len(rows))} ({column})"] = (float(value), higher)
    return out


def _passed_on(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The flags every bench.py takes, as given on this command line."""
    given = {a.split("=", 1)[0] for a in argv}
    flags = ["--quick"] if args.quick else []
    for flag, value in (("--threads", args.threads), ("--new-tokens", args.new_tokens), ("--batches", args.batches),
                        ("--flow-reps", args.flow_reps), ("--loads", args.loads)):
        if flag in given and value is not None:
            flags += [flag, str(value)]
    return flags


def _run(tree: Path, part: str, flags: list[str], out: Path, log: Path) -> dict:
    """One fresh process of ``tree``'s bench.py for one part; its results.json (or the error)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)  # each run's flow part starts its own server
    command = [sys.executable, str(tree / "benchmarks" / "bench.py"), "--only", part, "--reps", "1", "--out", str(out),
               *flags]
    started = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(command, cwd=tree, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        results = {"sections": {part: {"error": f"no results.json (exit {code}); see {log}"}}}
    results["wall_s"] = time.perf_counter() - started
    return results


def _fmt(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def compare(args: argparse.Namespace, names: list[str], argv: list[str]) -> int:
    """Run ``names`` in the worktree of ``args.against`` and in this tree, alternating; write against.md/.json."""
    new_tree = Path(__file__).resolve().parents[2]
    old_sha = _git(new_tree, "rev-parse", "--verify", f"{args.against}^{{commit}}")
    new_sha = _git(new_tree, "rev-parse", "HEAD")
    dirty = bool(_git(new_tree, "status", "--porcelain", "--untracked-files=no"))
    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-against-"))
    old_tree = tmp / "old"
    _git(new_tree, "worktree", "add", "--detach", str(old_tree), old_sha)
    rounds = 1 if args.quick else args.reps
    flags = _passed_on(args, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trees = {"old": old_tree, "new": new_tree}
    figures: dict[str, dict[str, list[float]]] = {}
    higher: dict[str, bool] = {}
    errors: list[str] = []
    say(f"against: old {old_sha[:9]} ({args.against}) in {old_tree}, new {new_sha[:9]}{' + changes' if dirty else ''}; "
        f"parts {', '.join(names)}, {rounds} round(s) each, flags {' '.join(flags) or '-'}")
    try:
        for part in names:
            for r in range(rounds):
                for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    run_dir = tmp / f"{part}-{r}-{side}"
                    run_dir.mkdir()
                    results = _run(trees[side], part, flags, run_dir / "out", run_dir / "log.txt")
                    for name, sec in results.get("sections", {}).items():
                        if sec.get("error"):
                            errors.append(f"{side} {name} round {r + 1}: {sec['error']}")
                    found = headlines(results)
                    for key, (value, up) in found.items():
                        figures.setdefault(key, {"old": [], "new": []})[side].append(value)
                        higher[key] = up
                    say(f"  {part} round {r + 1} {side}: {results['wall_s']:.0f} s, {len(found)} figures")
    finally:
        logs = out / "against-logs"
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(tmp, logs, ignore=shutil.ignore_patterns("old"), dirs_exist_ok=True)
        subprocess.run(["git", "-C", str(new_tree), "worktree", "remove", "--force", str(old_tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for key, sides in figures.items():
        old, new = med(sides["old"]), med(sides["new"])
        ratio = new / old if old and old == old and new == new else float("nan")
        better = "-" if ratio != ratio else ("yes" if (ratio > 1) == higher[key] else "no") if ratio != 1 else "same"
        rows.append({"figure": key, "old": old, "new": new, "new / old": ratio, "new better": better,
                     "higher is better": higher[key], "old runs": sides["old"], "new runs": sides["new"]})
    report = {"old": {"rev": args.against, "sha": old_sha}, "new": {"sha": new_sha, "uncommitted_changes": dirty},
              "parts": names, "rounds": rounds, "flags": flags, "figures": rows, "errors": errors,
              "logs": str(out / "against-logs")}
    (out / "against.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# aigc benchmark: {new_sha[:9]}{' + changes' if dirty else ''} (new) against {old_sha[:9]} "
             f"({args.against}, old)", "",
             f"Parts {', '.join(names)}; {rounds} round(s), each a fresh process per tree, in alternating order; "
             "figures are medians over rounds.", "",
             "| figure | old | new | new / old | new better |", "|---|---|---|---|---|"]
    lines += [f"| {r['figure']} | {_fmt(r['old'])} | {_fmt(r['new'])} | {_fmt(r['new / old'])} | {r['new better']} |"
              for r in rows]
    if errors:
        lines += ["", "Errors:", *["- " + re.sub(r"\s+", " ", e)[:300] for e in errors]]
    (out / "against.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    say(f"wrote {out / 'against.md'} and {out / 'against.json'}")
    return 1 if errors else 0
