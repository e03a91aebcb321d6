"""``python -m benchmark status``: where every run of a scale stands.

Per run: the Slurm state (from sacct, when the run folder records a job id in slurm.json; ``local`` otherwise),
step / total (train.jsonl and metrics.json), the last checkpoint, and why it failed (error.json, or for a job
that died without one, the Slurm state and the job's log).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark import checkpoint
from benchmark.errors import UserError
from benchmark.results import read_json
from benchmark.slurm import RECORD, job_logs, job_states

_DIED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


@dataclass
class RunStatus:
    run: str
    slurm: str
    step: str
    checkpoint: str
    detail: str


def _progress(run_dir: Path) -> tuple[int | None, int | None]:
    """(last logged step, planned steps) from train.jsonl; metrics.json's step count once finished."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        steps = read_json(metrics).get("compute", {}).get("steps")
        return steps, steps
    step = total = None
    log = run_dir / "train.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue                          # a line being written
            if row.get("type") == "eval" or "step" not in row:
                continue
            step, total = row["step"], row.get("steps_total", total)
    return step, total


def _checkpoint(run_dir: Path) -> tuple[str, int | None]:
    last = checkpoint.latest(run_dir / "checkpoints")
    if last is None:
        return "-", None
    step = int(last.stem.split("_")[1])
    age = time.time() - last.stat().st_mtime
    return f"step {step} ({_ago(age)} ago)", step


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _last_error_line(path: Path) -> str:
    if not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln or "CANCELLED" in ln]
    return (errors or lines or [""])[-1][:200]


def collect(results: Path, scale: str) -> list[RunStatus]:
    root = Path(results) / scale
    if not root.is_dir():
        raise UserError(f"no runs under {root}: check --results and --scale (runs are written to "
                        "<results>/<scale>/<method>/seed<k>)")
    run_dirs = sorted(d for d in root.glob("*/seed*") if d.is_dir()
                      and any((d / f).exists() for f in ("config.json", RECORD, "train.jsonl")))
    records = {d: read_json(d / RECORD) if (d / RECORD).exists() else None for d in run_dirs}
    states = job_states([r["job_id"] for r in records.values() if r and r.get("job_id")])
    out = []
    for d in run_dirs:
        rec = records[d]
        job = rec.get("job_id") if rec else None
        error = read_json(d / "error.json").get("error", "") if (d / "error.json").exists() else ""
        if not job:
            slurm = "local"
        elif states is None:
            slurm = f"job {job}: sacct unavailable"
        else:
            info = states.get(job)
            slurm = f"{info['state'] if info else 'UNKNOWN'} (job {job})"
            restarts = len(rec.get("starts", [])) - 1
            if restarts > 0:
                slurm += f", {restarts} requeue{'s' if restarts > 1 else ''}"
            if info and info["state"] in _DIED and not error:
                logs = job_logs(d)
                reason = info["reason"] if info["reason"] not in ("", "None") else f"exit code {info['exit_code']}"
                error = f"job ended {info['state']} ({reason})"
                if logs:
                    last = _last_error_line(logs[1])
                    error += f"; {last}" if last else ""
                    error += f"; log: {logs[1]}"
        step, total = _progress(d)
        ckpt, ckpt_step = _checkpoint(d)
        if step is None and ckpt_step is not None:
            step = ckpt_step
        progress = "-" if step is None else f"{step}/{total if total is not None else '?'}"
        if (d / "metrics.json").exists():
            detail = "done"
        elif error:
            detail = error
        else:
            detail = ""
        out.append(RunStatus(f"{d.parent.name}/{d.name}", slurm, progress, ckpt, detail))
    return out


def render(rows: list[RunStatus]) -> str:
    header = RunStatus("run", "slurm", "step", "last checkpoint", "detail")
    table = [header] + rows
    widths = [max(len(getattr(r, f)) for r in table) for f in ("run", "slurm", "step", "checkpoint")]
    lines = []
    for r in table:
        cells = [getattr(r, f).ljust(w) for f, w in zip(("run", "slurm", "step", "checkpoint"), widths)]
        lines.append("  ".join(cells + [r.detail]).rstrip())
    return "\n".join(lines)


def main(results: Path, scale: str) -> int:
    rows = collect(results, scale)
    if not rows:
        print(f"no runs under {Path(results) / scale}")
        return 0
    print(render(rows))
    return 0
