"""Where a report's numbers come from: the header every report opens with (commit, command, date, machine, wall
time) and the run files shipped beside it, so that each number can be traced to its run and re-reported with
``python -m benchmark report --results <report>/runs``."""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from benchmark.report.collect import Results
from benchmark.results import code_version

RUN_FILES = ("config.json", "metrics.json", "train.jsonl", "error.json")    # + evals/*.json; never weights


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def ship_runs(res: Results, out: Path) -> Path | None:
    """Copy every run's small files (and results.csv) to ``out/runs/<scale>/``; None when the report sits inside
    the results folder (the files are already beside it) or is being re-made from that very copy."""
    dest = out / "runs" / res.scale
    if _inside(out, res.root.parent) or _inside(res.root, out):
        return None
    tmp = out / "runs" / f".{res.scale}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for run in sorted(p for p in res.root.glob("*/seed*") if p.is_dir() and p.name[4:].isdigit()):
        target = tmp / run.parent.name / run.name
        target.mkdir(parents=True)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        for ev in sorted((run / "evals").glob("*.json")):
            (target / "evals").mkdir(exist_ok=True)
            shutil.copy2(ev, target / "evals" / ev.name)
    if (res.root / "results.csv").is_file():
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copy2(res.root / "results.csv", tmp / "results.csv")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def _machines(res: Results) -> list[str]:
    seen = []
    for m in res.runs["machine"]:
        if isinstance(m, dict):
            text = (f"{m.get('cpu_count')} CPU cores, {m.get('torch_threads')} torch threads, "
                    f"{m.get('gpu') or m.get('device')}")
            if text not in seen:
                seen.append(text)
    return seen


def header(res: Results, out: Path, shipped: Path | None, command: str | None = None,
           wall_time_s: float | None = None, commit: str | None = None) -> dict:
    """The facts a report states first; also written as ``provenance.json``. ``commit``: the code version taken
    before the report wrote anything (its own files would otherwise mark a committed report's tree dirty)."""
    done = res.runs[res.runs["status"] == "done"]
    train_s = pd.to_numeric(done["wall_time_s"], errors="coerce").sum()
    eval_s = pd.to_numeric(done["eval_time_s"], errors="coerce").sum()
    return {"report_commit": commit or code_version(),
            "run_commits": sorted({str(c) for c in res.runs["code_version"].dropna()}),
            "command": command or f"python -m benchmark report --scale {res.scale} --results {res.root.parent}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machines": _machines(res),
            "command_wall_time_s": None if wall_time_s is None else round(wall_time_s, 1),
            "runs": int(len(done)), "train_wall_time_s": round(float(train_s), 1),
            "eval_wall_time_s": round(float(eval_s), 1),
            "run_files": str(shipped) if shipped else str(res.root),
            "rereport": f"python -m benchmark report --scale {res.scale} --results "
                        f"{shipped.parent if shipped else res.root.parent} --reports DIR"}


def header_lines(h: dict) -> list[str]:
    commits = h["run_commits"]
    same = commits == [h["report_commit"]]
    wall = (f"command {h['command_wall_time_s']:.0f} s; " if h["command_wall_time_s"] is not None else "")
    return [f"Generated {h['date']} by commit `{h['report_commit']}` with `{h['command']}`.",
            "Runs made by " + ("the same commit." if same else
                               f"commit(s) {', '.join(f'`{c}`' for c in commits) or 'unknown'}."),
            f"Machine: {'; '.join(h['machines']) or 'not recorded'}.",
            f"Wall time: {wall}{h['train_wall_time_s']:.0f} s training + {h['eval_wall_time_s']:.0f} s evaluation "
            f"summed over {h['runs']} finished run(s).",
            f"Run files (config.json, metrics.json, evals/*.json, train.jsonl; no weights): `{h['run_files']}`; "
            f"re-report with `{h['rereport']}`."]
