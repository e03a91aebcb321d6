"""Writing and reading results (docs/design.md, "Results"): JSON files written atomically, the code version, and
``results/<scale>/results.csv`` rebuilt from every run's evaluations (one row per run, task, dataset, metric;
``external`` is true for a checkpoint maskbench did not train, ``eval --checkpoint``, whose folder
``<label>/seed0`` holds config.json, metrics.json and evals/ as a run's). A run folder's layout:
``benchmark.run_folder``.
"""
from __future__ import annotations

import fcntl
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmark import REPO_ROOT
from benchmark.checkpoint import atomic_write_bytes
from benchmark.errors import DamagedFile
from benchmark.run_folder import RunFolder

CSV_COLUMNS = ["scale", "method", "seed", "task", "dataset", "metric", "value", "main", "chance",
               "steps", "samples_seen", "train_flops", "flops_per_step", "wall_time_s", "images_per_s",
               "config_hash", "code_version", "external"]


def pool_hash(identity: dict) -> str:
    """The hash of a run's identity without its seed: runs of one method with the same pool hash are seeds of
    one configuration (the report averages them); a different one is another configuration, never pooled."""
    import hashlib
    rest = {k: v for k, v in identity.items() if k != "seed"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dir(results: Path, scale: str, method: str, seed: int) -> Path:
    return RunFolder.of(results, scale, method, seed).path


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_state(path: Path) -> dict:
    """A JSON file of a run folder; a damaged one raises ``DamagedFile`` naming the file and how to fix it."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        fix = RunFolder.REPAIR.get(path.name, "delete it and run `benchmark eval` on the run to write it again")
        fix = fix.format(run=path.parent)
        raise DamagedFile(f"{path} is damaged ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"{path} is damaged (a JSON object was expected); "
                          + RunFolder.REPAIR.get(path.name, "delete it").format(run=path.parent))
    return value


def code_version() -> str:
    """The git commit of the harness (with ``+dirty`` when the tree has uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit or "unknown") + ("+dirty" if commit and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rebuild_csv(results: Path, scale: str, quiet: bool = False) -> Path | None:
    """Rewrite ``results/<scale>/results.csv`` from every run's eval JSONs (never appends, so never mixes).
    Runs finishing at the same time take turns (a lock), so the last writer has read every run. An unreadable eval
    file costs only its own rows; it is named on stderr (unless ``quiet``). Nothing to do without the folder."""
    root = Path(results) / scale
    if not root.is_dir():
        return None
    with open(root / ".results.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path, skipped = _write_csv(root, scale)
    if skipped and not quiet:
        for ev, why in skipped:
            print(f"warning: {ev} is unreadable ({why}); its rows are left out of {path}. Write it again with "
                  f"`python -m benchmark eval --methods {ev.parents[2].name} --seeds {ev.parents[1].name[4:]} "
                  f"--scale {scale} --results {root.parent}`", file=sys.stderr)
    return path


def _write_csv(root: Path, scale: str) -> tuple[Path, list[tuple[Path, str]]]:
    rows, skipped = [], []
    for ev in [e for run in RunFolder.all_under(root.parent, scale) for e in sorted(run.evals.glob("*.json"))]:
        try:
            r = json.loads(ev.read_bytes().decode("utf-8"))
            if "metrics" not in r:
                continue
            if not isinstance(r["metrics"], dict) or "task" not in r or "dataset" not in r:
                raise ValueError("not an evaluation record")
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:
            skipped.append((ev, f"{type(e).__name__}: {e}"))
            continue
        run, comp = r.get("run", {}), r.get("compute", {})
        for metric, value in r["metrics"].items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                rows.append({
                    "scale": scale, "method": run.get("method"), "seed": run.get("seed"), "task": r["task"],
                    "dataset": r["dataset"], "metric": metric, "value": value,
                    "main": metric == r.get("main_metric"), "chance": r.get("chance"),
                    "steps": comp.get("steps"), "samples_seen": comp.get("samples_seen"),
                    "train_flops": comp.get("train_flops"), "flops_per_step": comp.get("flops_per_step"),
                    "wall_time_s": comp.get("wall_time_s"), "images_per_s": comp.get("images_per_s"),
                    "config_hash": run.get("config_hash"), "code_version": run.get("code_version"),
                    "external": bool(run.get("external", False))})
    df = pd.DataFrame(rows, columns=CSV_COLUMNS)
    path = root / "results.csv"
    atomic_write_bytes(path, df.to_csv(index=False).encode())
    return path, skipped
