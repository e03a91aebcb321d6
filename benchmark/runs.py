"""One run = one (method, scale, seed): train at matched compute, export, evaluate, record.

``execute(spec)`` is the job every launcher runs (in-process, submitit local, Slurm). It is idempotent: a run
with metrics is skipped, a run with checkpoints resumes, a run folder written by another config is refused.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch

from benchmark import active_rows, checkpoint, discovery, distributed, planning, tracking
from benchmark.data.train_data import load_training_data
from benchmark.errors import DamagedFile, RunFailed, RunLocked, UserError, storage_error
from benchmark.evaluation import suite
from benchmark.model import build_clip, load_clip  # noqa: F401 - build_clip: the old import path
from benchmark.results import code_version, pool_hash, read_json, read_state, rebuild_csv, write_json
from benchmark.run_folder import RunFolder
from benchmark.scales import Scale, get_scale
from benchmark.train import Interrupted, StopFlag, TrainPlan, train


@dataclass
class RunSpec:
    method: str
    seed: int
    scale: str = "pocket"
    results: str = "results"
    match: str = "flops"
    overrides: dict = field(default_factory=dict)
    force: bool = False
    data: str | None = None            # training data override (shards or CSV)
    dataset_root: str | None = None    # real evaluation datasets
    methods_dir: str | None = None
    report_to: tuple = ()              # experiment trackers (benchmark.tracking); not part of the run's identity
    scale_def: dict | None = None      # a scale file's (or a --set scale.* changed) scale, as Scale.to_dict()
    scale_source: dict | None = None   # where it came from: file, sha256, --set values (kept in config.json)

    @property
    def folder(self) -> RunFolder:
        return RunFolder.of(self.results, self.scale, self.method, self.seed)

    @property
    def dir(self) -> Path:
        return self.folder.path

    def label(self) -> str:
        return f"{self.scale}/{self.method}/seed{self.seed}"


def _info(spec: RunSpec):
    return discovery.resolve([spec.method], Path(spec.methods_dir) if spec.methods_dir else None)[0]


def spec_scale(spec: RunSpec) -> Scale:
    """The run's scale: a built-in by name, or the scale a file or ``--set scale.*`` defined."""
    return Scale.from_dict(spec.scale_def) if spec.scale_def else get_scale(spec.scale)


def identity(spec: RunSpec) -> dict:
    """Everything that determines a run's numbers; its hash guards the run folder against mixing."""
    scale = spec_scale(spec)
    info = _info(spec)
    ident = {"method": spec.method, "seed": spec.seed, "scale": scale.to_dict(), "match": info.match_for(spec.match),
             "method_config": info.config(scale.method_config_scale,
                                          discovery.overrides_for(spec.method, spec.overrides)),
             "data": spec.data, "dataset_root": spec.dataset_root}
    if spec.scale_source and spec.scale_source.get("set"):
        ident["scale_set"] = list(spec.scale_source["set"])       # --set scale.KEY=VALUE, as given
    if info.batch_multiplier != 1:                 # a variant's larger batch (FLIP Table 1a)
        ident["batch_multiplier"] = info.batch_multiplier
    model_scale = info.model_scale(scale)
    if model_scale is not scale:                   # a variant's wider image tower (clip@wide, a teacher for UTA)
        ident["model"] = model_scale.model
    return ident


def config_hash(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def run_lock(folder: Path):
    """One writer per run folder: a second ``run`` on the same run fails fast instead of interleaving."""
    folder.mkdir(parents=True, exist_ok=True)
    f = open(RunFolder(folder).lock, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunLocked(f"run {folder} is being written by another process; wait for it or use another "
                        "--results folder") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _trained_anything(folder: RunFolder) -> bool:
    return any(p.exists() for p in (folder.checkpoints, folder.log, folder.metrics, folder.model))


def check_config(spec: RunSpec, ident: dict) -> None:
    """Refuse a run folder that holds a different config (never mix two configs' checkpoints or numbers), and a
    damaged config.json or metrics.json (named, with the fix). A config.json whose run never trained a step (a
    refusal after it was written) holds nothing to mix: the new config replaces it."""
    path = spec.folder.config
    if path.exists() and not spec.force:
        old = read_state(path)
        if old.get("config_hash") != config_hash(ident) and _trained_anything(spec.folder):
            changed = sorted(k for k in ident if json.dumps(old.get("identity", {}).get(k), sort_keys=True,
                                                            default=str) != json.dumps(ident[k], sort_keys=True,
                                                                                       default=str))
            raise UserError(f"{spec.dir} holds a run with a different config (differs in: {', '.join(changed)}); "
                            "use another --results folder, or --force to discard it")
    if spec.folder.finished and not spec.force:
        metrics = read_state(spec.folder.metrics)
        if "compute" not in metrics or "evals" not in metrics:
            raise DamagedFile(f"{spec.folder.metrics} is damaged (no compute or evals record); delete it and "
                              "run the same `benchmark run` command again: the run re-exports and re-evaluates "
                              "from its last checkpoint")


def check_siblings(spec: RunSpec, ident: dict, replaced: set[int] = frozenset()) -> None:
    """Refuse a run whose configuration (all but the seed) differs from that of the method's other seeds in the
    same results folder: the report would average two configurations as if they were seeds. ``replaced``: seeds
    this command discards with --force (they no longer count)."""
    mine = pool_hash(ident)
    for path in sorted(spec.dir.parent.glob("seed*/config.json")):
        seed = path.parent.name[4:]
        if not seed.isdigit() or int(seed) == spec.seed or int(seed) in replaced or \
                not _trained_anything(RunFolder(path.parent)):
            continue                                # an untrained record holds nothing to mix
        try:
            old = read_json(path).get("identity", {})
        except (OSError, ValueError):
            continue                                # a damaged record is named by status/report
        if not isinstance(old, dict) or "method" not in old or pool_hash(old) == mine:
            continue
        changed = [k for k in sorted(set(old) | set(ident)) if k != "seed" and
                   json.dumps(old.get(k), sort_keys=True, default=str) != json.dumps(ident.get(k), sort_keys=True,
                                                                                     default=str)]
        detail = "; ".join(_config_difference(old.get(k), ident.get(k), k) for k in changed)
        raise UserError(
            f"{spec.dir.parent} already holds {spec.method} seed {seed} with another configuration ({detail}; "
            f"config hash without the seed: {pool_hash(old)} there, {mine} here); "
            f"seed {spec.seed} with this one would be averaged with it as if they were seeds of one configuration. "
            "Keep them apart: pass another --results folder for this configuration, or make it a named variant "
            "of the method (its own row in the report)")


def _config_difference(old, new, key: str) -> str:
    """'method_config.mask_ratio: 0.5 there, 0.75 here' for the keys that differ (nested one level)."""
    old, new = (json.loads(json.dumps(x, sort_keys=True, default=str)) for x in (old, new))  # tuples = lists
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return ", ".join(f"{key}.{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in keys[:6])
    return f"{key}: {old!r} there, {new!r} here"


def device_for_run() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.device_index(int(os.environ.get("LOCAL_RANK", 0))))


def discard_outputs(folder: Path, config: bool = False) -> None:
    """What --force discards: checkpoints, logs, model, evaluations, metrics, error (and the config record)."""
    for p in RunFolder(folder).outputs(config):
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _prepare(spec: RunSpec, ident: dict) -> dict | None:
    """Rank 0, holding the run lock: refuse a foreign config, apply --force, return the metrics of a finished run
    (nothing to do) or record the config and return None (train)."""
    check_config(spec, ident)
    if not spec.force:
        check_siblings(spec, ident)
    if spec.force:
        discard_outputs(spec.dir)
    folder = spec.folder
    if folder.finished:
        return read_state(folder.metrics)
    write_json(folder.config, {"config_hash": config_hash(ident), "identity": ident,
                               "code_version": code_version(), "torch": torch.__version__,
                               "open_clip": open_clip.__version__, "segments": _segments(spec, ident),
                               **({"scale_source": spec.scale_source} if spec.scale_source else {})})
    folder.error.unlink(missing_ok=True)
    return None


# ---- provenance: one record per segment of training (a start or a resume), appended, never rewritten ---------------
def _segments(spec: RunSpec, ident: dict) -> list[dict]:
    """The segments config.json records for this config (none after --force, or where another config stood)."""
    path = spec.folder.config
    if spec.force or not path.exists():
        return []
    old = read_state(path)
    return list(old.get("segments", [])) if old.get("config_hash") == config_hash(ident) else []


def resume_step(folder: Path) -> int:
    """The step training resumes from: that of the newest verified checkpoint (0 without one)."""
    last = checkpoint.latest(RunFolder(folder).checkpoints)
    return int(last.stem.split("_")[1]) if last is not None else 0


def check_resume_data(spec: RunSpec, fingerprint: str) -> None:
    """Refuse to resume checkpoints on data other than the data they were trained on."""
    path = spec.folder.config
    if spec.force or not path.exists() or spec.folder.finished:
        return
    segments = read_state(path).get("segments", [])
    step = resume_step(spec.dir)
    old = segments[-1].get("data_fingerprint") if segments else None
    if step > 0 and old and old != fingerprint:
        data = f"--data {spec.data}" if spec.data else "the scale's data"
        raise UserError(f"{spec.dir} was trained up to step {step} on data with fingerprint {old}, and {data} now "
                        f"has fingerprint {fingerprint}: the data changed since. Restore the original data to resume, "
                        "or pass --force to train again from step 0 on the new data")


def record_segment(spec: RunSpec, fingerprint: str, is_main: bool = True) -> None:
    """Before training starts or resumes: refuse changed data, then append (step, data fingerprint, code version)
    to config.json, so that a run resumed on other code says which steps ran on which commit."""
    check_resume_data(spec, fingerprint)
    if not is_main:
        return
    path = spec.folder.config
    record = read_state(path)
    record["data_fingerprint"] = fingerprint
    record["segments"] = list(record.get("segments", [])) + [{
        "start_step": resume_step(spec.dir), "data_fingerprint": fingerprint, "code_version": code_version(),
        "time": round(time.time(), 3), "host": os.uname().nodename}]
    write_json(path, record)


def execute(spec: RunSpec, progress_bar: bool = True, stop: StopFlag | None = None) -> dict | None:
    """Train (or resume), evaluate and record one run. Returns its metrics.json content.

    With several processes (torch.distributed initialised) every rank calls this; rank 0 holds the run lock and
    writes every file, the others train and return None. ``stop``: a flag polled at every step; when it is raised
    the run saves a checkpoint and raises ``Interrupted`` (a Slurm requeue), which is not a failure.
    """
    scale = spec_scale(spec)
    ident = identity(spec)
    env = distributed.current()
    with run_lock(spec.dir) if env.is_main else nullcontext():
        finished = distributed.broadcast_object(_prepare(spec, ident) if env.is_main else None)
        if finished is not None:
            return finished if env.is_main else None
        try:
            metrics = _train_and_evaluate(spec, scale, ident, progress_bar, env, stop)
        except (UserError, Interrupted):
            raise
        except Exception as e:
            if storage_error(e) is not None:          # a full or read-only disk: the user's to fix, not the run's
                raise storage_error(e) from None
            if env.is_main:
                write_json(spec.folder.error, {"error": f"{type(e).__name__}: {e}",
                                                     "traceback": traceback.format_exc(), "time": time.time()})
            raise RunFailed(f"{spec.label()} failed: {type(e).__name__}: {e} (details in {spec.dir}/error.json)") \
                from e
        return metrics


def _build_method(info, spec: RunSpec, scale, ident: dict, device, rank: int = 0, world_size: int = 1):
    return discovery.build_method(info, scale, seed=spec.seed, device=device, cfg=ident["method_config"], rank=rank,
                                  world_size=world_size, results_root=Path(spec.results))


def _train_and_evaluate(spec: RunSpec, scale, ident: dict, progress_bar: bool,
                        env: distributed.DistEnv = distributed.DistEnv(), stop: StopFlag | None = None) -> dict | None:
    device = device_for_run()
    info = _info(spec)
    data = load_training_data(scale, spec.data)
    record_segment(spec, data.fingerprint, env.is_main)
    method = _build_method(info, spec, scale, ident, device, env.rank, env.world_size)
    # Matched compute (benchmark/planning.py): FLOPs of rank 0's first step on a shape-only copy of the method (no
    # weight or activation memory), per phase, against the plain CLIP step. Every rank plans rank 0's step with
    # rank 0's RNG state, so every rank and every world size plan the same steps.
    torch.manual_seed(spec.seed)
    run_plan = planning.plan_run(info, ident["method_config"], scale, spec.seed, data, device, env.world_size,
                                 ident["match"], Path(spec.results), real_method=method)
    # masks: a function of the seed alone (and of the rank: each rank draws its own)
    torch.manual_seed(spec.seed if env.rank == 0 else spec.seed + 1_000_003 * env.rank)
    steps, phases, reference = run_plan.steps, [tuple(p) for p in run_plan.phases], run_plan.reference_flops
    per_step = run_plan.flops_per_step
    # A variant's batch multiplier (FLIP Table 1a: the memory masking frees buys a larger batch; planned at that
    # batch), with the linear learning-rate scaling rule FLIP uses (App. A: lr = base lr x batch / 256).
    batch_size, optim = scale.batch_size * info.batch_multiplier, scale.optim
    if info.batch_multiplier != 1:
        optim = dataclasses.replace(optim, lr=optim.lr * info.batch_multiplier)
    eval_every = scale.eval_every_samples // batch_size if scale.eval_every_samples else 0
    plan = TrainPlan(steps=steps, batch_size=batch_size, seed=spec.seed, optim=optim,
                     checkpoint_every=scale.checkpoint_every, eval_every_steps=eval_every, flops_per_step=per_step,
                     stages=method.lr_stages())
    active_rows.for_training(method, data, device)    # after planning: FLOPs are counted on the dense model
    model = distributed.wrap(method, device)
    tracker = tracking.for_run(spec, ident, config_hash(ident)) if env.is_main else None
    with stop.armed() if stop is not None else nullcontext(), tracking.closed_on_error(tracker):
        state = train(model, method, data, plan, spec.dir, device, rank=env.rank, world_size=env.world_size,
                      periodic_eval=suite.zero_shot_probe(scale, device, spec.dataset_root) if eval_every and env.is_main else None,
                      stop_requested=stop if stop is not None else (lambda: False), progress_bar=progress_bar,
                      tracker=tracker)
    if not env.is_main:
        return None                                    # rank 0 exports and evaluates

    compute = {"steps": steps, "batch_size": batch_size, "samples_seen": steps * batch_size,
               "train_flops": per_step * steps,
               "flops_per_step": per_step, "phase_flops_per_step": [list(p) for p in phases],
               "reference_clip_flops_per_step": reference, "reference_steps": scale.samples // scale.batch_size,
               "budget_flops": reference * (scale.samples // scale.batch_size), "match": ident["match"],
               "wall_time_s": round(state.wall_time_s, 3),
               "images_per_s": round(steps * batch_size / max(state.wall_time_s, 1e-9), 2)}
    compute.update(method.extra_compute())
    checkpoint.atomic_torch_save(method.export(), spec.folder.model)
    metrics = {"method": spec.method, "seed": spec.seed, "scale": spec.scale, "config_hash": config_hash(ident),
               "compute": compute, "history": state.history, "stats": method.stats(), "machine": machine(device)}
    metrics["evals"] = evaluate_run(spec, scale, ident, compute, device)
    if tracker is not None:
        tracker.log_final(metrics["evals"], steps)
        tracker.close()
    write_json(spec.folder.metrics, metrics)
    rebuild_csv(Path(spec.results), spec.scale)
    return metrics


def machine(device) -> dict:
    """Where a run trained (the report's header states it): CPU cores, torch threads, device."""
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def load_exported(spec: RunSpec, scale, device) -> open_clip.CLIP:
    """The run's exported model (what every evaluation uses): ``model.load_clip`` of its ``model.pt``, into the
    run's architecture (a variant may widen the scale's image tower)."""
    return load_clip(spec.folder.model, _info(spec).model_scale(scale), device,
                     what=f"the exported model of {spec.label()}")


def evaluate_run(spec: RunSpec, scale, ident: dict, compute: dict, device) -> dict:
    """Evaluate the exported model on the scale's suite; one JSON per (run, task[, dataset])."""
    t0 = time.perf_counter()
    model = load_exported(spec, scale, device)
    results = suite.evaluate(model, scale, scale.eval_suite, device, spec.dataset_root)
    run_meta = {"method": spec.method, "seed": spec.seed, "scale": spec.scale, "config_hash": config_hash(ident),
                "code_version": code_version(), "run_dir": str(spec.dir)}
    summary = write_evals(spec.dir, results, run_meta, compute, spec.method, str(spec.folder.model))
    summary["eval_time_s"] = round(time.perf_counter() - t0, 3)
    return summary


def write_evals(folder: Path, results: dict, run_meta: dict, compute: dict, model: str, pretrained: str) -> dict:
    """``folder/evals/<task>[.<dataset>].json`` from ``suite.evaluate``'s results; returns the main metric per
    task and dataset (or the task's error)."""
    evals_dir = RunFolder(folder).evals
    shutil.rmtree(evals_dir, ignore_errors=True)
    summary = {}
    for task, res in results.items():
        if isinstance(res, dict):                      # the task could not run
            write_json(evals_dir / f"{task}.json", {"task": task, "run": run_meta, **res})
            summary[task] = {"error": res["error"]}
            continue
        for i, r in enumerate(res):
            name = f"{task}.json" if len(res) == 1 else f"{task}.{r['dataset'].replace('/', '_')}.json"
            write_json(evals_dir / name, {"dataset": r["dataset"], "model": model,
                                          "pretrained": pretrained, "task": task,
                                          "language": "en", "metrics": r["metrics"],
                                          "main_metric": r["main_metric"], "chance": r.get("chance"),
                                          "per_item": r.get("per_item"),      # the report's bootstrap
                                          "notes": r.get("notes", {}), "run": run_meta, "compute": compute})
            summary.setdefault(task, {})[r["dataset"]] = r["metrics"][r["main_metric"]]
    return summary


def reevaluate(spec: RunSpec) -> dict:
    """``benchmark eval``: evaluate a finished run's exported model again, without retraining."""
    scale = spec_scale(spec)
    ident = identity(spec)
    folder = spec.folder
    if not folder.finished:                                # refused before the lock creates the folder
        raise UserError(f"{spec.dir} has no finished run to evaluate; train it first with `benchmark run`")
    with run_lock(spec.dir):
        if not folder.finished or not folder.model.exists():
            raise UserError(f"{spec.dir} has no finished run to evaluate; train it first with `benchmark run`")
        check_config(spec, ident)
        metrics = read_state(folder.metrics)
        metrics["evals"] = evaluate_run(spec, scale, ident, metrics["compute"], device_for_run())
        write_json(folder.metrics, metrics)
        rebuild_csv(Path(spec.results), spec.scale)
        return metrics
