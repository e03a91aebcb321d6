"""``python -m benchmark status``: where every run of a scale stands.

Per run: the scheduler's view (the Slurm state from sacct when the run folder records a job id in slurm.json;
``local`` otherwise), step / total (train.jsonl and metrics.json), the live figures of an unfinished run (loss,
images/s and the training time left, from train.jsonl as ``benchmark.progress`` reads it), the last checkpoint, and why it failed (error.json, or for a job
that died without one, the Slurm state and the job's log).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark import checkpoint, progress
from benchmark.errors import DamagedFile, UserError
from benchmark.results import read_json, read_state
from benchmark.run_folder import RunFolder

RECORD = RunFolder.SLURM_RECORD   # the old name of ``RunFolder.slurm``'s file, for code that imports it from here
_DIED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


# ---- sacct -----------------------------------------------------------------------------------------------------------
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "CONFIGURING",
                 "COMPLETING", "RESIZING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"}
_JOB_ID = re.compile(r"^\d+(_\d+)?$")


def job_states(job_ids: list[str]) -> dict[str, dict] | None:
    """{job id: {"state", "exit_code", "elapsed", "reason"}} from sacct (allocations only), or None when sacct cannot
    answer (no accounting, not on a cluster). A pending array task that sacct still lists as ``A_[0-3]`` gets that
    line's state."""
    ids = [j for j in dict.fromkeys(job_ids) if _JOB_ID.fullmatch(str(j))]
    if not ids:
        return {}
    if shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode,Elapsed,Reason",
                              "-j", ",".join(ids)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    rows: dict[str, dict] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        rows[parts[0]] = {"state": parts[1].split()[0] if parts[1] else "UNKNOWN", "exit_code": parts[2],
                          "elapsed": parts[3], "reason": parts[4]}
    states = {}
    for j in ids:
        if j in rows:
            states[j] = rows[j]
        elif "_" in j:
            array = j.split("_")[0]
            pending = [v for k, v in rows.items() if k.startswith(f"{array}_[")]
            if pending:
                states[j] = pending[0]
    return states


def job_logs(run_dir: Path) -> tuple[Path, Path] | None:
    """The submitit stdout/stderr files of the run's recorded job."""
    path = RunFolder(run_dir).slurm
    if not path.exists():
        return None
    rec = read_json(path)
    if not rec.get("job_id") or not rec.get("submitit_folder"):
        return None
    folder = Path(rec["submitit_folder"])
    return folder / f"{rec['job_id']}_0_log.out", folder / f"{rec['job_id']}_0_log.err"


# ---- the table -------------------------------------------------------------------------------------------------------
@dataclass
class RunStatus:
    run: str
    scheduler: str       # "local", or the Slurm job's state
    step: str
    progress: str        # loss, images/s, training time left (unfinished runs)
    checkpoint: str
    detail: str


def _progress(run_dir: Path) -> tuple[int | None, int | None]:
    """(last logged step, planned steps) from train.jsonl; metrics.json's step count once finished."""
    folder = RunFolder(run_dir)
    if folder.finished:
        steps = read_state(folder.metrics).get("compute", {}).get("steps")
        return steps, steps
    step = total = None
    for row in folder.log_rows():
        if row.get("type") == "eval" or "step" not in row:
            continue
        step, total = row["step"], row.get("steps_total", total)
    return step, total


def _checkpoint(run_dir: Path) -> tuple[str, int | None]:
    last = checkpoint.latest(RunFolder(run_dir).checkpoints)
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
    folders = {d.path: d for d in map(RunFolder, sorted(root.glob("*/seed*")))
               if d.path.is_dir() and any(f.exists() for f in (d.config, d.slurm, d.log))}
    run_dirs = list(folders)
    damaged: dict[Path, str] = {}            # a state file that cannot be read: shown on its run's row

    def state(path: Path) -> dict | None:
        if not path.exists():
            return None
        try:
            return read_state(path)
        except DamagedFile as e:
            damaged.setdefault(path.parent, str(e))
            return None
    records = {d: state(f.slurm) for d, f in folders.items()}
    states = job_states([r["job_id"] for r in records.values() if r and r.get("job_id")])
    out = []
    for d in run_dirs:
        rec = records[d]
        job = rec.get("job_id") if rec else None
        error = (state(folders[d].error) or {}).get("error", "")
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
        try:
            step, total = _progress(d)
        except DamagedFile as e:
            step = total = None
            damaged.setdefault(d, str(e))
        ckpt, ckpt_step = _checkpoint(d)
        if ckpt_step is not None and (step is None or ckpt_step > step):
            step = ckpt_step                      # the log is written every few steps, checkpoints may be newer
        steps = "-" if step is None else f"{step}/{total if total is not None else '?'}"
        live = ""
        if d in damaged:
            detail = damaged[d]
        elif folders[d].finished:
            detail = "done"
        else:
            detail = error or ""
            p = progress.read(d)
            if p is not None:
                live = ", ".join(x for x in (
                    f"loss {p.loss:.3f}" if p.loss is not None else "",
                    f"{p.images_per_s:,.0f} img/s" if p.images_per_s else "",
                    f"{progress.duration(p.eta_s)} of training left" if p.eta_s and p.step < p.total else "") if x)
        out.append(RunStatus(f"{d.parent.name}/{d.name}", slurm, steps, live or "-", ckpt, detail))
    return out


def render(rows: list[RunStatus]) -> str:
    header = RunStatus("run", "scheduler", "step", "progress", "last checkpoint", "detail")
    table = [header] + rows
    columns = ("run", "scheduler", "step", "progress", "checkpoint")
    widths = [max(len(getattr(r, f)) for r in table) for f in columns]
    lines = []
    for r in table:
        cells = [getattr(r, f).ljust(w) for f, w in zip(columns, widths)]
        lines.append("  ".join(cells + [r.detail]).rstrip())
    return "\n".join(lines)


def main(results: Path, scale: str) -> int:
    rows = collect(results, scale)
    if not rows:
        print(f"no runs under {Path(results) / scale}")
        return 0
    print(render(rows))
    return 0
