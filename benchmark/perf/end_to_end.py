"""P5 end to end: the wall time of ``python -m benchmark run --methods all --scale pocket`` on this machine, as a
user runs it (a subprocess, a fresh results folder and, by default, a fresh data cache so data generation is
counted), broken down by phase.

Where each figure comes from: the command's own ``timing:`` line (data generation, the sweep, the report), each
run folder's ``metrics.json`` (training steps' wall time ``compute.wall_time_s``, evaluation ``evals.eval_time_s``)
and the folder's file times (a run starts when it writes ``config.json`` and ends with ``metrics.json``). What a
run spends besides its steps and its evaluation (loading data, counting FLOPs, periodic zero-shot probes,
checkpoints, exporting) is its "run overhead"; the time before a worker's first run is process start-up (the
local backend keeps persistent worker processes). Runs go side by side (``--jobs``, default one per core), so the
per-phase figures are summed over runs and add up to more than the wall time; ``side_by_side`` says how many ran.

Measured twice: the default seeds (three at pocket) and one seed (``--seeds 0``).

Goal: three seeds of every method at pocket in at most 15 minutes on an idle 2-core machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmark import REPO_ROOT
from benchmark.run_folder import RunFolder

GOAL_S = 900
TIMING_RE = re.compile(r"^timing: data ([\d.]+) s, runs ([\d.]+) s, report ([\d.]+) s", re.M)


def parse_timing(stdout: str) -> dict:
    m = TIMING_RE.search(stdout)
    return {"data_s": float(m[1]), "runs_s": float(m[2]), "report_s": float(m[3])} if m else {}


def run_breakdown(results: Path, scale: str) -> list[dict]:
    """Per run folder: training-step time, evaluation time and the rest, in the order the runs ran."""
    rows = []
    for folder in RunFolder.all_under(results, scale):
        if not folder.finished:
            continue
        m = json.loads(folder.metrics.read_text())
        start = folder.config.stat().st_mtime
        end = folder.metrics.stat().st_mtime
        train_s = float(m["compute"]["wall_time_s"])
        eval_s = float(m.get("evals", {}).get("eval_time_s", 0.0))
        rows.append({"method": m["method"], "seed": m["seed"], "steps": m["compute"]["steps"],
                     "ms_per_step": round(1e3 * train_s / max(1, m["compute"]["steps"]), 1),
                     "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                     "run_s": round(end - start, 1), "overhead_s": round(end - start - train_s - eval_s, 1),
                     "periodic_evals": len(m.get("history", [])), "start": start, "end": end})
    rows.sort(key=lambda r: r["start"])
    return rows


def measure(scratch: Path, scale: str = "pocket", methods: str = "all", fresh_cache: bool = True,
            timeout: int | None = None) -> dict:
    """Three seeds (the scale's default) and then one seed, each from a fresh results folder and data cache."""
    out = measure_once(scratch / "default-seeds", scale, methods, fresh_cache, timeout)
    out["one_seed"] = measure_once(scratch / "one-seed", scale, methods, fresh_cache, timeout, seeds=["0"])
    return out


def _most_side_by_side(runs: list[dict]) -> int:
    """The most runs that were running at one moment."""
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def measure_once(scratch: Path, scale: str = "pocket", methods: str = "all", fresh_cache: bool = True,
                 timeout: int | None = None, seeds: list[str] | None = None) -> dict:
    results, reports = scratch / "p5-results", scratch / "p5-reports"
    for d in (results, reports):
        shutil.rmtree(d, ignore_errors=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if fresh_cache:
        cache = scratch / "p5-cache"
        shutil.rmtree(cache, ignore_errors=True)
        env["MASKBENCH_CACHE"] = str(cache)
    cmd = [sys.executable, "-m", "benchmark", "run", "--methods", methods, "--scale", scale,
           "--results", str(results), "--reports", str(reports)] + (["--seeds", *seeds] if seeds else [])
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    total = time.time() - t0
    phases = parse_timing(proc.stdout)
    runs = run_breakdown(results, scale)
    out = {"command": "python -m benchmark run --methods %s --scale %s%s (fresh results%s)"
                      % (methods, scale, " --seeds " + " ".join(seeds) if seeds else "",
                         ", fresh data cache" if fresh_cache else ""),
           "exit_status": proc.returncode, "total_s": round(total, 1), "goal_s": GOAL_S, "met": total <= GOAL_S,
           "phases": phases, "runs": [{k: v for k, v in r.items() if k not in ("start", "end")} for r in runs]}
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr.strip().splitlines()[-15:]
    if runs:
        sweep_start = t0 + phases.get("data_s", 0.0)
        side = _most_side_by_side(runs)
        # start-up: from the sweep's start to the first run of each worker (the first `side` runs to start)
        startup = sum(max(0.0, r["start"] - sweep_start) for r in runs[:side]) if phases else 0.0
        sums = {"train_s": sum(r["train_s"] for r in runs), "eval_s": sum(r["eval_s"] for r in runs),
                "run_overhead_s": sum(r["overhead_s"] for r in runs), "process_startup_s": startup}
        out["side_by_side"] = side
        out["totals"] = {k: round(v, 1) for k, v in sums.items()}
        if side <= 1:
            accounted = sum(sums.values()) + phases.get("data_s", 0.0) + phases.get("report_s", 0.0)
            out["totals"]["other_s"] = round(total - accounted, 1)   # interpreter start, summary
    return out
