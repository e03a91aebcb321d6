"""Sweeps on a Slurm cluster through submitit (docs/design.md, "Launching"): ``run --cluster slurm`` submits and returns.

- Resources come from the scale (``Scale.resources``) overridden by a profile YAML in ``slurm/`` (``Profile``);
  every value that reaches sbatch is validated here.
- One job per (method, seed), submitted as submitit job arrays: the runs without requirements in one array; a run
  that ``requires`` another (UTA's teacher) waits on it with an ``afterok`` dependency. A run with metrics is not
  submitted, nor one whose recorded job is still queued or running; a run with checkpoints resumes from them.
- Every job is a ``TrainJob`` (``submitit.helpers.Checkpointable``): Slurm sends USR2 before the time limit or on
  preemption; the job finishes its step, saves a checkpoint, and submitit requeues the same call, which resumes
  from that checkpoint. ``max_requeues`` (submitit's ``slurm_max_num_timeout``, default 3) bounds the requeues.
- Several tasks (one per GPU, or ``tasks_per_node``) train with DDP (``benchmark.distributed``).
- ``slurm.json`` in the run folder (``RunFolder.slurm``) records the job id, so ``benchmark status`` can ask sacct about it.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import torch
import yaml

from benchmark import discovery, distributed
from benchmark.errors import UserError
from benchmark.results import read_json, write_json
from benchmark.run_folder import RunFolder
from benchmark.runs import RunSpec, check_config, discard_outputs, execute, identity, run_lock, spec_scale
from benchmark.status import ACTIVE_STATES, job_states
from benchmark.sweep import Outcome, requirements
from benchmark.train import Interrupted, StopFlag

# Environment variables a job needs from the submitting shell (sbatch may be set up not to export them).
FORWARDED_ENV = re.compile(r"^MASKBENCH_")

# Values reach `#SBATCH --key=value` lines (submitit shlex-quotes them, but a newline would still end the line and
# start a new one), so they are limited to what Slurm names and lists use: no whitespace, quotes, $ ` ; < > ( ) \ * ?
# Brackets are allowed for host lists (node[01-04]); `constraint` also takes Slurm's & (and) and | (or) operators.
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,:+@%=/\[\]-]*$")
_SAFE_CONSTRAINT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,:+@%=/\[\]&|-]*$")
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
# sbatch options the harness sets itself (or that have their own profile key).
_RESERVED_SBATCH = {"array", "output", "error", "open-mode", "job-name", "signal", "dependency", "wrap", "time",
                    "partition", "account", "qos", "constraint", "nodes", "ntasks-per-node", "cpus-per-task", "mem",
                    "gpus-per-node", "kill-on-invalid-dep", "wckey", "requeue", "no-requeue"}


@dataclass(frozen=True)
class Profile:
    """A cluster profile. Unset values (None) fall back to the scale's resources or Slurm's defaults."""

    source: str = "(no profile)"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int | None = None
    nodes: int | None = None
    tasks_per_node: int | None = None     # default: one task per GPU, or 1 without GPUs
    cpus_per_task: int | None = None
    mem_gb: float | None = None           # per node
    time_min: int | None = None
    signal_delay_s: int = 120             # USR2 this long before the time limit: finish the step, checkpoint
    max_requeues: int = 100               # time-limit requeues before submitit gives up (its default: 3)
    extra: dict = field(default_factory=dict)   # further sbatch options, e.g. {exclude: node[01-02]}


_INT_KEYS = {"gpus_per_node": 0, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "time_min": 1,
             "signal_delay_s": 0, "max_requeues": 0}      # key -> smallest allowed value
_STR_KEYS = {"partition", "account", "qos", "constraint"}
KNOWN_KEYS = sorted(_INT_KEYS.keys() | _STR_KEYS | {"mem_gb", "extra"})


def _check_str(source: str, key: str, value) -> str:
    pattern = _SAFE_CONSTRAINT if key.endswith("constraint") else _SAFE
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not pattern.fullmatch(str(value)):
        raise UserError(f"{source}: {key}={value!r} is not a valid Slurm value; use letters, digits and _ . , : + @ % "
                        f"= / - [ ]{' & |' if key.endswith('constraint') else ''} only (no spaces, quotes or shell "
                        "characters)")
    return str(value)


def parse_profile(raw, source: str) -> Profile:
    """A Profile from a YAML mapping; every key and value is checked and a bad one is named."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source} must be a YAML mapping of profile keys ({', '.join(KNOWN_KEYS)})")
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; known keys: {', '.join(KNOWN_KEYS)} "
                        "(other sbatch options go under 'extra:')")
    values: dict = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in _STR_KEYS:
            values[key] = _check_str(source, key, value)
        elif key in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool) or value < _INT_KEYS[key]:
                raise UserError(f"{source}: {key}={value!r} must be an integer >= {_INT_KEYS[key]}")
            values[key] = value
        elif key == "mem_gb":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise UserError(f"{source}: mem_gb={value!r} must be a positive number (GB per node)")
            values[key] = value
        elif key == "extra":
            values[key] = _check_extra(source, value)
    profile = Profile(source=source, **values)
    if profile.gpus_per_node and profile.tasks_per_node and profile.tasks_per_node != profile.gpus_per_node:
        raise UserError(f"{source}: tasks_per_node={profile.tasks_per_node} differs from gpus_per_node="
                        f"{profile.gpus_per_node}; training runs one task per GPU, so leave tasks_per_node out")
    if profile.time_min is not None and profile.signal_delay_s >= profile.time_min * 60:
        raise UserError(f"{source}: signal_delay_s={profile.signal_delay_s} is not shorter than time_min="
                        f"{profile.time_min} minutes; the checkpoint signal must come before the time limit")
    return profile


def _check_extra(source: str, extra) -> dict:
    if not isinstance(extra, dict):
        raise UserError(f"{source}: extra must map sbatch option names to values, e.g. extra: {{exclude: node07}}")
    out = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not _SBATCH_KEY.fullmatch(key.replace("_", "-")):
            raise UserError(f"{source}: extra.{key!r} is not an sbatch option name (lower-case letters, digits, -)")
        key = key.replace("_", "-")
        if key in _RESERVED_SBATCH:
            raise UserError(f"{source}: extra.{key} is set by the harness or has its own profile key; "
                            f"use the profile keys ({', '.join(KNOWN_KEYS)}) instead")
        out[key] = True if value is True else _check_str(source, f"extra.{key}", value)
        if value is False:
            raise UserError(f"{source}: extra.{key}=false: leave the option out instead")
    return out


def load_profile(path: str | os.PathLike | None) -> Profile:
    if not path:
        return Profile()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--slurm-profile {path}: no such file; pass a profile YAML such as slurm/local.yaml or a copy "
                        "of slurm/example-gpu-cluster.yaml")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"--slurm-profile {path} is not valid YAML: {e}") from None
    return parse_profile(raw, str(path))


@dataclass(frozen=True)
class JobResources:
    """What one job asks for, after the profile is applied to the scale's defaults."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: float
    time_min: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


def resources(profile: Profile, scale) -> JobResources:
    base = scale.resources
    gpus = profile.gpus_per_node if profile.gpus_per_node is not None else base.gpus_per_node
    res = JobResources(nodes=profile.nodes or base.nodes,
                    tasks_per_node=gpus if gpus else (profile.tasks_per_node or 1),
                    gpus_per_node=gpus,
                    cpus_per_task=profile.cpus_per_task or base.cpus_per_task,
                    mem_gb=profile.mem_gb or base.mem_gb,
                    time_min=profile.time_min or base.time_min)
    if scale.batch_size % res.world_size:
        raise UserError(f"scale {scale.name}: the global batch {scale.batch_size} is not divisible by the "
                        f"{res.world_size} training processes ({res.nodes} node(s) x {res.tasks_per_node} task(s)); "
                        f"change nodes/gpus_per_node in {profile.source}")
    if profile.signal_delay_s >= res.time_min * 60:
        raise UserError(f"{profile.source}: signal_delay_s={profile.signal_delay_s} is not shorter than the time "
                        f"limit of {res.time_min} minutes; lower signal_delay_s or raise time_min")
    return res


def make_executor(profile: Profile, scale, folder: Path) -> submitit.AutoExecutor:
    """A submitit Slurm executor with the profile's and the scale's resources (every value validated)."""
    res = resources(profile, scale)
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=profile.max_requeues)
    params = dict(name=f"maskbench-{scale.name}", timeout_min=res.time_min, nodes=res.nodes,
                  tasks_per_node=res.tasks_per_node, cpus_per_task=res.cpus_per_task, mem_gb=res.mem_gb,
                  slurm_signal_delay_s=profile.signal_delay_s,
                  # with several tasks, one that dies takes the step down instead of leaving the others waiting
                  slurm_srun_args=["--kill-on-bad-exit=1"])
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key) is not None:
            params[f"slurm_{key}"] = getattr(profile, key)
    if profile.extra:
        params["slurm_additional_parameters"] = dict(profile.extra)
    ex.update_parameters(**params)
    return ex


# ---- the job ---------------------------------------------------------------------------------------------------------
class TrainJob(submitit.helpers.Checkpointable):
    """One run as a Slurm job. Every start resumes from the run's latest checkpoint (``runs.execute``). On USR2
    (time limit, preemption, ``scancel --signal=USR2``) training stops at the next step boundary with a checkpoint,
    and submitit's handler requeues ``checkpoint()``'s call: the same run, which resumes."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)

    def __call__(self, spec: RunSpec):
        os.environ.update(self.env)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and cpus.isdigit():
            torch.set_num_threads(int(cpus))       # the CPUs Slurm gave this task, not every core of the node
        env = distributed.init_from_slurm()
        stop = StopFlag(signals=(signal.SIGUSR2,), pass_through=True)
        try:
            if env.is_main:
                _record_start(spec.dir)
            return execute(spec, progress_bar=False, stop=stop)
        except Interrupted as stopped:
            # Rank 0: submitit pickles checkpoint() and requeues the job, then exits. Other ranks: that requeue ends
            # this task too; wait for it rather than exit (a failed task would take the step down first).
            try:
                stop.forward()
            except Exception as e:
                if env.is_main:            # submitit would not requeue (max_requeues reached): say so in the run
                    write_json(spec.folder.error, {
                        "error": f"{type(e).__name__}: {e} ({stopped}; raise max_requeues or time_min in the profile, "
                                 "then submit again: the run resumes from its checkpoint)", "time": time.time()})
                raise
            time.sleep(600)
            raise RuntimeError("interrupted, but the job was not requeued within 10 minutes") from None
        finally:
            distributed.shutdown()

    def checkpoint(self, spec: RunSpec) -> submitit.helpers.DelayedSubmission:
        # The same run again; it finds its checkpoint. Never --force on a restart: that would discard it.
        return submitit.helpers.DelayedSubmission(self, dataclasses.replace(spec, force=False))


def _record_start(run_dir: Path) -> None:
    path = RunFolder(run_dir).slurm
    record = read_json(path) if path.exists() else {}
    record.setdefault("starts", []).append({
        "job_id": _current_job_id(), "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
        "host": os.uname().nodename, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "time": time.time()})
    write_json(path, record)


def _current_job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def recorded_job(run_dir: Path) -> str | None:
    path = RunFolder(run_dir).slurm
    if not path.exists():
        return None
    try:
        return read_json(path).get("job_id")
    except ValueError:
        return None


# ---- submission ------------------------------------------------------------------------------------------------------
@dataclass
class _Planned:
    spec: RunSpec
    needs: list[tuple[str, int]]                 # (method, seed) runs of this sweep it waits for


def submit_sweep(specs: list[RunSpec], profile_path: str | None = None, methods_dir: Path | None = None):
    """Submit ``specs`` (already ordered by ``sweep.with_requirements``) with the profile YAML ``profile_path``
    (None: the scale's resources alone) and return one Outcome per run."""
    if not specs:
        return []
    profile = load_profile(profile_path)
    if shutil.which("sbatch") is None:
        raise UserError("--cluster slurm: sbatch is not on PATH; run from a Slurm login node, or start the local test "
                        "cluster with `bash slurm/local-cluster.sh up` (root)")
    scale = spec_scale(specs[0])
    methods_root = Path(methods_dir or specs[0].methods_dir or discovery.methods_dir()).resolve()
    specs = [dataclasses.replace(s, results=str(Path(s.results).resolve()),
                                 methods_dir=str(Path(s.methods_dir).resolve()) if s.methods_dir else str(methods_root))
             for s in specs]
    folder = Path(specs[0].results) / scale.name / ".submitit"
    executor = make_executor(profile, scale, folder)
    job_env = {k: v for k, v in os.environ.items() if FORWARDED_ENV.match(k)}

    recorded = {(s.method, s.seed): recorded_job(s.dir) for s in specs}
    live = job_states([j for j in recorded.values() if j]) or {}
    outcomes: dict[tuple[str, int], Outcome] = {}
    job_of: dict[tuple[str, int], str] = {}      # runs of this sweep that other runs may wait for
    planned: list[_Planned] = []
    for spec in specs:
        key = (spec.method, spec.seed)
        job = recorded[key]
        active = live.get(job, {}).get("state") in ACTIVE_STATES if job else False
        if spec.force:
            if active:
                raise UserError(f"--force: {spec.label()} still has job {job} ({live[job]['state']}); cancel it "
                                f"first (scancel {job}) or leave out --force to keep it")
            _discard(spec)
        else:
            check_config(spec, identity(spec))       # refuse a foreign run folder now, not in the job
        if not spec.force and spec.folder.finished:
            outcomes[key] = Outcome(spec, "done", "already finished (metrics.json)")
            continue
        if active:
            outcomes[key] = Outcome(spec, "submitted", f"already queued as job {job} ({live[job]['state']})")
            job_of[key] = job
            continue
        needs = [(r, spec.seed) for r in requirements(spec, Path(spec.methods_dir))]
        planned.append(_Planned(dataclasses.replace(spec, force=False), needs))

    # Waves: a run is submitted once every run it needs has a job id (or is finished); runs with the same
    # dependencies go into one array.
    while planned:
        ready = [p for p in planned if all(n in job_of or n in outcomes for n in p.needs)]
        if not ready:
            raise UserError("runs wait on each other in a cycle: " + ", ".join(p.spec.label() for p in planned))
        groups: dict[str, list[_Planned]] = {}
        for p in ready:
            deps = sorted({job_of[n] for n in p.needs if n in job_of})
            groups.setdefault(":".join(deps), []).append(p)
        for deps, group in groups.items():
            extra = dict(profile.extra)
            if deps:
                extra.update({"dependency": f"afterok:{deps}", "kill-on-invalid-dep": "yes"})
            executor.update_parameters(slurm_additional_parameters=extra)
            jobs = executor.map_array(TrainJob(job_env), [p.spec for p in group])
            for p, job in zip(group, jobs):
                key = (p.spec.method, p.spec.seed)
                job_of[key] = job.job_id
                _record_submission(p.spec, job.job_id, deps, profile, folder)
                outcomes[key] = Outcome(p.spec, "submitted", f"job {job.job_id}" + (f" after {deps}" if deps else ""))
        planned = [p for p in planned if p not in ready]
    return [outcomes[(s.method, s.seed)] for s in specs]


def _discard(spec: RunSpec) -> None:
    """--force on a cluster: discard the run's outputs now, so that a requeued job never discards its own progress."""
    with run_lock(spec.dir):
        discard_outputs(spec.dir, config=True)


def _record_submission(spec: RunSpec, job_id: str, deps: str, profile: Profile, folder: Path) -> None:
    path = spec.folder.slurm
    old = read_json(path) if path.exists() else {}
    previous = old.get("previous_job_ids", []) + ([old["job_id"]] if old.get("job_id") else [])
    write_json(path, {"job_id": job_id, "submitted": time.time(), "dependency": deps or None,
                      "profile": profile.source, "submitit_folder": str(folder), "previous_job_ids": previous,
                      "starts": []})
