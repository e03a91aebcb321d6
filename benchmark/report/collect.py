"""Read ``results/<scale>/`` into the frames every report is built from.

Numbers come from ``results.csv`` (the tidy table). Run folders add what the table cannot hold: whether a run
finished, failed or is still going, tasks that could not be evaluated, the periodic evaluations during training
(``metrics.json`` "history") and the realised mask ratio. Nothing incomplete is dropped: every run folder and
every expected task appears either as numbers or as an entry in ``issues``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.checkpoint import checkpoints
from benchmark.errors import UserError
from benchmark.results import CSV_COLUMNS, pool_hash
from benchmark.run_folder import RunFolder

ISSUE_COLUMNS = ["method", "seed", "task", "status", "detail"]
RUN_COLUMNS = ["method", "seed", "status", "detail", "steps", "samples_seen", "train_flops", "flops_per_step",
               "wall_time_s", "images_per_s", "mask_ratio", "match", "config_hash", "code_version",
               "required_flops", "total_flops", "builds_on", "pool_hash", "machine", "eval_time_s"]


@dataclass
class Results:
    scale: str
    root: Path                         # results/<scale>
    rows: pd.DataFrame                 # results.csv as written by benchmark.results.rebuild_csv
    runs: pd.DataFrame                 # one row per run folder (RUN_COLUMNS)
    issues: pd.DataFrame               # one row per incomplete (run, task) (ISSUE_COLUMNS)
    history: pd.DataFrame              # periodic evaluations during training, plus each run's final point
    tasks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    external: list[str] = field(default_factory=list)   # rows of checkpoints maskbench did not train
    # per (method, seed, task): one array of per-item main-metric scores per dataset (sorted by dataset name),
    # present only when every dataset of that run and task saved them (evals/<task>.json "per_item")
    items: dict = field(default_factory=dict)
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)   # reference levels besides chance (colour only)
    losses: pd.DataFrame = field(default_factory=pd.DataFrame)   # training loss per logged step, with FLOPs

    @property
    def main(self) -> pd.DataFrame:
        """The main-metric rows of results.csv."""
        return self.rows[self.rows["main"]]


def method_order(names) -> list[str]:
    """The CLIP baseline first, then the others by name, external checkpoints last."""
    names = sorted(set(names), key=lambda n: (n.endswith(" (external)"), n))
    return (["clip"] if "clip" in names else []) + [n for n in names if n != "clip"]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return {"error": f"unreadable {path.name}: {e}"}


def _expected_tasks(scale: str) -> list[str]:
    from benchmark.scales import SCALES
    return list(SCALES[scale].eval_suite) if scale in SCALES else []


def _last_logged_step(run: RunFolder) -> int | None:
    step = None
    for row in run.log_rows():
        step = row.get("step", step)
    return step


def realised_mask_ratio(run: Path, metrics: dict) -> float | None:
    """Mean ``mask_ratio`` over the logged training steps (train.jsonl), so that a schedule (FLIP's unmasked
    tuning, a per-batch ratio) counts as trained; the last recorded value in metrics.json otherwise."""
    values = [float(row["mask_ratio"]) for row in RunFolder(Path(run)).log_rows()
              if row.get("type") != "eval" and isinstance(row.get("mask_ratio"), (int, float))]
    if values:
        return sum(values) / len(values)
    value = metrics.get("stats", {}).get("mask_ratio")
    return float(value) if isinstance(value, (int, float)) else None


def required_compute(compute: dict, seed: int | None = None) -> tuple[float | None, str]:
    """(FLOPs of the runs this one needs, what it builds on). A method that starts from another run reports that
    run's training in ``metrics.json`` compute as ``<what>_pretraining_flops`` beside ``<what>_run`` (UTA's
    teacher, methods/uta/method.py ``extra_compute``); an external checkpoint's cost is unknown (None)."""
    flops, parts = 0.0, []
    for key in sorted(compute):
        if not key.endswith("_pretraining_flops"):
            continue
        what = key[: -len("_pretraining_flops")]
        value, run, ckpt = compute[key], compute.get(f"{what}_run"), compute.get(f"{what}_checkpoint")
        if isinstance(value, (int, float)):
            flops += float(value)
            who = (f"{Path(run).parent.name} run of the same seed" if Path(run).name == f"seed{seed}"
                   else f"{Path(run).parent.name}/{Path(run).name}") if run else "a run"
            parts.append(f"{what}: {who}")
        else:
            parts.append(f"{what}: external checkpoint {Path(ckpt).name if ckpt else ''} (cost unknown)".strip())
            flops = float("nan")
    return (flops if parts else 0.0), "; ".join(parts)


def _per_item(run: RunFolder) -> dict:
    """{(task, dataset): per-item scores} of one run, kept only where their mean is the recorded main metric."""
    out = {}
    for ev in sorted(run.evals.glob("*.json")):
        r = _read_json(ev)
        items, main = r.get("per_item"), r.get("main_metric")
        if not isinstance(items, list) or not items or main is None:
            continue
        value = (r.get("metrics") or {}).get(main)
        if isinstance(value, (int, float)) and abs(sum(items) / len(items) - value) <= 1e-6:
            out[(r.get("task"), r.get("dataset"))] = np.asarray(items, dtype=float)
    return out


def _levels(run: RunFolder) -> list[dict]:
    """Reference levels an evaluation set records besides chance (zero-shot: knowing colour but not shape)."""
    out = []
    for ev in sorted(run.evals.glob("*.json")):
        r = _read_json(ev)
        for name, value in (r.get("notes") or {}).items():
            if name == "colour_only" and isinstance(value, (int, float)):
                out.append({"task": r.get("task"), "dataset": r.get("dataset"), "level": "colour only",
                            "value": float(value)})
    return out


def _losses(run: RunFolder, method: str, seed: int, flops_per_step) -> list[dict]:
    out = []
    if not isinstance(flops_per_step, (int, float)):
        return out
    for row in run.log_rows():
        if row.get("type") != "eval" and isinstance(row.get("loss"), (int, float)) and "step" in row:
            out.append({"method": method, "seed": seed, "step": row["step"], "loss": float(row["loss"]),
                        "train_flops": float(row["step"]) * flops_per_step})
    return out


def check_pooling(runs: pd.DataFrame, root: Path) -> None:
    """The report averages a method's seeds only when they are seeds of one configuration."""
    for method, g in runs.dropna(subset=["pool_hash"]).groupby("method"):
        if g["pool_hash"].nunique() > 1:
            groups = "; ".join(f"{h}: seeds {', '.join(str(int(s)) for s in sorted(gg['seed']))}"
                               for h, gg in g.groupby("pool_hash"))
            raise UserError(f"{root / method} holds runs of {method} with different configurations (config hash "
                            f"without the seed: {groups}); the report never averages them. Move one "
                            "configuration's seeds to another --results folder, or rerun it as a named variant")


def _run_state(run: RunFolder) -> tuple[str, str, dict]:
    """(status, detail, metrics) of one run folder: done, failed, or incomplete (still going or interrupted)."""
    metrics_path, error_path = run.metrics, run.error
    if metrics_path.exists():
        metrics = _read_json(metrics_path)
        if "compute" in metrics:
            return "done", "", metrics
        return "failed", metrics.get("error", "metrics.json has no compute block"), {}
    if error_path.exists():
        err = _read_json(error_path)
        return "failed", str(err.get("error", "see error.json")).splitlines()[0], {}
    ckpts = checkpoints(run.checkpoints)
    step = _last_logged_step(run)
    if ckpts:
        detail = f"no metrics.json yet; last checkpoint {ckpts[-1].name}"
    elif step is not None:
        detail = f"no metrics.json yet; last logged step {step}, no checkpoint"
    else:
        detail = "no metrics.json yet; nothing trained"
    return "incomplete", detail + " (still running, or interrupted: `run` resumes it)", {}


def load(results: Path, scale: str) -> Results:
    root = Path(results) / scale
    if not root.is_dir():
        raise UserError(f"no results for scale {scale!r} in {root}; train first with "
                        f"`python -m benchmark run --scale {scale}`, or pass the folder with --results DIR")
    csv = root / "results.csv"
    rows = pd.read_csv(csv) if csv.exists() and csv.stat().st_size else pd.DataFrame(columns=CSV_COLUMNS)
    rows["external"] = rows["external"].astype(str).str.lower().eq("true") if "external" in rows else False
    missing = set(CSV_COLUMNS) - set(rows.columns)
    if missing:
        raise UserError(f"{csv} lacks column(s) {sorted(missing)}; it was written by another version: "
                        f"rebuild it with `python -m benchmark eval --scale {scale}`")
    rows["main"] = rows["main"].astype(str).str.lower().eq("true")
    rows["seed"] = rows["seed"].astype(int)

    run_rows, issues, history, levels, losses = [], [], [], [], []
    per_item: dict = {}
    task_errors: dict[tuple[str, int, str], str] = {}
    folders = RunFolder.all_under(results, scale)
    external = sorted(set(rows.loc[rows["external"], "method"]))
    for run in folders:
        method, seed = run.method, run.seed
        status, detail, metrics = _run_state(run)
        if metrics.get("external") and method not in external:
            external.append(method)
        method = external_label(method) if method in external else method
        comp = metrics.get("compute", {})
        cfg = _read_json(run.config) if run.config.exists() else {}
        required, builds_on = required_compute(comp, seed)
        ident = cfg.get("identity")
        run_rows.append({"method": method, "seed": seed, "status": status, "detail": detail,
                         "required_flops": required if comp else None, "builds_on": builds_on,
                         "total_flops": (comp["train_flops"] + required) if comp.get("train_flops") else None,
                         "pool_hash": pool_hash(ident) if isinstance(ident, dict) and "method" in ident else None,
                         "machine": metrics.get("machine"),
                         "eval_time_s": (metrics.get("evals") or {}).get("eval_time_s"),
                         **{k: comp.get(k) for k in ("steps", "samples_seen", "train_flops", "flops_per_step",
                                                     "wall_time_s", "images_per_s")},
                         "mask_ratio": realised_mask_ratio(run.path, metrics) if status == "done" else None,
                         "match": comp.get("match") or cfg.get("identity", {}).get("match"),
                         "config_hash": metrics.get("config_hash") or cfg.get("config_hash"),
                         "code_version": cfg.get("code_version")})
        if status != "done":
            issues.append({"method": method, "seed": seed, "task": None, "status": status, "detail": detail})
            continue
        for ev in sorted(run.evals.glob("*.json")):
            r = _read_json(ev)
            if "error" in r:
                task = r.get("task", ev.stem.split(".")[0])
                task_errors[(method, seed, task)] = str(r["error"]).splitlines()[0]
        for point in metrics.get("history", []):
            history.append({"method": method, "seed": seed, "final": False, **point})
        for (task, dataset), arr in _per_item(run).items():
            per_item.setdefault((method, seed, task), {})[dataset] = arr
        levels += _levels(run)
        losses += _losses(run, method, seed, comp.get("flops_per_step"))

    if not folders and rows.empty:
        raise UserError(f"{root} holds no runs; train first with `python -m benchmark run --scale {scale}`, "
                        "or pass the folder with --results DIR")
    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS)
    # an external checkpoint (`eval --checkpoint`) is its own row, marked as such in every table and plot
    rows["method"] = [external_label(m) if m in external else m for m in rows["method"]]
    check_pooling(runs, root)
    tasks = list(dict.fromkeys(_expected_tasks(scale) + sorted(set(rows["task"])) +
                               sorted({t for _, _, t in task_errors})))
    done = runs[runs["status"] == "done"]
    have = set(zip(rows["method"], rows["seed"], rows["task"]))
    for _, run in done.iterrows():
        for task in tasks:
            key = (run["method"], int(run["seed"]), task)
            if key in task_errors:
                issues.append({"method": key[0], "seed": key[1], "task": task, "status": "task error",
                               "detail": task_errors[key]})
            elif key not in have:
                issues.append({"method": key[0], "seed": key[1], "task": task, "status": "missing",
                               "detail": "the run finished but has no result for this task "
                                         "(re-evaluate with `python -m benchmark eval`)"})
    # Rows in results.csv whose run folder has gone are numbers without provenance: flag them too.
    known = set(zip(runs["method"], runs["seed"]))
    for method, seed in sorted(set(zip(rows["method"], rows["seed"])) - known):
        issues.append({"method": method, "seed": int(seed), "task": None, "status": "no run folder",
                       "detail": f"results.csv has rows for {method}/seed{seed} but {root}/{method}/seed{seed} "
                                 "is missing"})

    methods = method_order(list(runs["method"]) + list(rows["method"]))
    seeds = sorted({int(s) for s in runs["seed"]} | {int(s) for s in rows["seed"]})
    # Runs never started: a seed some method ran but this one did not.
    for method in methods:
        for seed in seeds:
            if (method, seed) not in known and not ((rows["method"] == method) & (rows["seed"] == seed)).any():
                issues.append({"method": method, "seed": seed, "task": None, "status": "not started",
                               "detail": f"other methods ran seed {seed}; this one has no run folder"})

    hist = pd.DataFrame(history)
    final = _final_points(rows, done, hist)
    hist = pd.concat([hist, final], ignore_index=True) if not final.empty else hist
    issues_df = pd.DataFrame(issues, columns=ISSUE_COLUMNS)
    # per-item arrays only where every dataset of the (run, task) in results.csv saved them
    items = {}
    for (method, seed, task), by_dataset in per_item.items():
        names = sorted(set(rows.loc[(rows["method"] == method) & (rows["seed"] == seed) & (rows["task"] == task)
                                    & rows["main"], "dataset"]))
        if names and set(names) <= set(by_dataset):
            items[(method, seed, task)] = [by_dataset[d] for d in names]
    return Results(scale=scale, root=root, rows=rows, runs=runs, issues=issues_df, history=hist,
                   tasks=tasks, methods=methods, seeds=seeds, external=[external_label(m) for m in external],
                   items=items,
                   levels=pd.DataFrame(levels, columns=["task", "dataset", "level", "value"]).drop_duplicates(),
                   losses=pd.DataFrame(losses, columns=["method", "seed", "step", "loss", "train_flops"]))


def external_label(name: str) -> str:
    return f"{name} (external)"


def _final_points(rows: pd.DataFrame, done: pd.DataFrame, hist: pd.DataFrame) -> pd.DataFrame:
    """Each finished run's final zero-shot score at its total training FLOPs, on the dataset the periodic
    evaluations used (zero-shot classification's first dataset when there were none), so the curve ends at the
    number the summary table reports."""
    out = []
    for _, run in done.iterrows():
        method, seed = run["method"], int(run["seed"])
        h = hist[(hist["method"] == method) & (hist["seed"] == seed)] if not hist.empty else hist
        if not h.empty:
            task, dataset = h["task"].iloc[-1], h["dataset"].iloc[-1]
        else:
            task = "zeroshot_classification"
            names = rows.loc[(rows["method"] == method) & (rows["seed"] == seed) & (rows["task"] == task), "dataset"]
            if names.empty:
                continue
            dataset = names.iloc[0]
        sel = rows[(rows["method"] == method) & (rows["seed"] == seed) & (rows["task"] == task) &
                   (rows["dataset"] == dataset)]
        if sel.empty or pd.isna(run["train_flops"]):
            continue
        point = {"method": method, "seed": seed, "final": True, "task": task, "dataset": dataset,
                 "step": run["steps"], "samples": run["samples_seen"], "train_flops": float(run["train_flops"])}
        point.update({m: float(v) for m, v in zip(sel["metric"], sel["value"])})
        out.append(point)
    return pd.DataFrame(out)
