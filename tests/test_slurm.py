"""Slurm support without a cluster: profile validation, resources, submission planning (waves, afterok
dependencies, skipping finished runs) against a recording executor, sacct parsing, the USR2 stop flag, the
requeued call, and the status table. The tests against the real local cluster are in test_slurm_cluster.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from benchmark import REPO_ROOT, checkpoint, slurm, status
from benchmark.errors import UserError
from benchmark.results import write_json
from benchmark.runs import RunSpec
from benchmark.scales import get_scale
from benchmark.train import StopFlag


def _profile(tmp_path: Path, text: str) -> slurm.Profile:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return slurm.load_profile(path)


# ---- profiles -------------------------------------------------------------------------------------------------------
def test_shipped_profiles_load():
    local = slurm.load_profile(REPO_ROOT / "slurm" / "local.yaml")
    assert (local.partition, local.cpus_per_task, local.gpus_per_node) == ("debug", 1, 0)
    example = slurm.load_profile(REPO_ROOT / "slurm" / "example-gpu-cluster.yaml")
    res = slurm.resources(example, get_scale("cc12m-b16"))
    assert (res.gpus_per_node, res.tasks_per_node, res.world_size) == (8, 8, 8)
    assert example.extra == {"exclude": "gpu-node-07"} and example.max_requeues > 3


@pytest.mark.parametrize("text, named", [
    ("partiton: gpu", "partiton"),                                  # a typo is named, with the known keys
    ("partition: 'gpu; rm -rf /'", "partition"),                   # shell characters
    ("partition: \"gpu\\n#SBATCH --uid=0\"", "partition"),         # a newline would add an sbatch line
    ("partition: \"gpu\\n\"", "partition"),                         # even a trailing newline
    ("account: 'my account'", "account"),                          # spaces
    ("qos: '$(id)'", "qos"),
    ("constraint: 'a100`x`'", "constraint"),
    ("gpus_per_node: -1", "gpus_per_node"),
    ("nodes: 0", "nodes"),
    ("cpus_per_task: two", "cpus_per_task"),
    ("time_min: true", "time_min"),
    ("mem_gb: 0", "mem_gb"),
    ("extra: {array: 0-3}", "extra.array"),                         # the harness sets it
    ("extra: {partition: x}", "extra.partition"),                   # has its own key
    ("extra: {'Bad Key': 1}", "Bad Key"),
    ("extra: {exclude: 'n1 n2'}", "extra.exclude"),
    ("extra: [exclude]", "extra"),
    ("gpus_per_node: 4\ntasks_per_node: 2", "tasks_per_node"),
    ("time_min: 2\nsignal_delay_s: 120", "signal_delay_s"),
    ("- partition", "mapping"),
])
def test_bad_profile_is_named(tmp_path, text, named):
    with pytest.raises(UserError, match=named.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")):
        _profile(tmp_path, text)


def test_profile_accepts_slurm_syntax(tmp_path):
    p = _profile(tmp_path, """
        partition: gpu,gpu-long
        constraint: a100|h100
        account: proj-123_x
        extra: {exclude: "node[01-03]", exclusive: true, mail-user: me@example.org}
    """)
    assert p.constraint == "a100|h100" and p.extra == {"exclude": "node[01-03]", "exclusive": True,
                                                       "mail-user": "me@example.org"}


def test_missing_or_invalid_profile_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        slurm.load_profile(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("partition: [")
    with pytest.raises(UserError, match="not valid YAML"):
        slurm.load_profile(tmp_path / "bad.yaml")


def test_resources_from_scale_and_profile(tmp_path):
    smoke = get_scale("smoke")
    res = slurm.resources(slurm.Profile(), smoke)
    assert (res.nodes, res.tasks_per_node, res.gpus_per_node) == (1, 1, 0)
    assert res.cpus_per_task == smoke.resources.cpus_per_task and res.time_min == smoke.resources.time_min
    res = slurm.resources(_profile(tmp_path, "tasks_per_node: 2\nnodes: 2"), smoke)
    assert res.world_size == 4
    with pytest.raises(UserError, match="not divisible by the 3 training processes"):
        slurm.resources(_profile(tmp_path, "gpus_per_node: 3"), smoke)
    with pytest.raises(UserError, match="signal_delay_s"):
        slurm.resources(_profile(tmp_path, "signal_delay_s: 4000"), smoke)   # scale time limit: 60 min


# ---- submission planning --------------------------------------------------------------------------------------------
class _Job:
    def __init__(self, job_id):
        self.job_id = job_id


class _RecordingExecutor:
    """Stands in for submitit's executor: records each array with the parameters it was submitted with."""

    def __init__(self):
        self.params, self.arrays, self.next_id = {}, [], 100

    def update_parameters(self, **kw):
        self.params.update(kw)

    def map_array(self, fn, specs):
        self.next_id += 1
        self.arrays.append((fn, list(specs), dict(self.params.get("slurm_additional_parameters", {}))))
        return [_Job(f"{self.next_id}_{i}") for i in range(len(specs))]


@pytest.fixture
def methods_with_teacher(tmp_path):
    """A methods folder: ``student`` requires ``teacher`` (as UTA requires its teacher), ``plain`` requires nothing."""
    root = tmp_path / "methods"
    body = {"teacher": "[]", "student": "['teacher']", "plain": "[]"}
    for name, req in body.items():
        (root / name).mkdir(parents=True)
        (root / name / "method.py").write_text(textwrap.dedent(f"""
            from benchmark.method import Method
            class M(Method):
                @classmethod
                def requires(cls, cfg):
                    return {req}
                def training_step(self, batch, progress):
                    raise NotImplementedError
        """))
    return root


def _sweep(monkeypatch, tmp_path, methods_dir, names, seeds=(0, 1)):
    from benchmark.sweep import with_requirements
    ex = _RecordingExecutor()
    monkeypatch.setattr(slurm, "make_executor", lambda profile, scale, folder: ex)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm, "job_states", lambda ids: {})
    specs = [RunSpec(method=m, seed=s, scale="smoke", results=str(tmp_path / "results"), methods_dir=str(methods_dir))
             for s in seeds for m in names]
    return ex, slurm.submit_sweep(with_requirements(specs, methods_dir), profile_path="")


def test_sweep_is_one_array_plus_afterok_for_requirements(monkeypatch, tmp_path, methods_with_teacher):
    ex, outcomes = _sweep(monkeypatch, tmp_path, methods_with_teacher, ["student", "plain"])
    # wave 1: every run without requirements in one array; wave 2: each student after its own seed's teacher
    (fn, first, extra0), *later = ex.arrays
    assert sorted((s.method, s.seed) for s in first) == [("plain", 0), ("plain", 1), ("teacher", 0), ("teacher", 1)]
    assert "dependency" not in extra0 and isinstance(fn, slurm.TrainJob)
    teacher_job = {o.spec.seed: o.detail.split()[1] for o in outcomes if o.spec.method == "teacher"}
    assert sorted(e["dependency"] for _, _, e in later) == sorted(f"afterok:{teacher_job[s]}" for s in (0, 1))
    assert all(e["kill-on-invalid-dep"] == "yes" for _, _, e in later)
    assert {o.status for o in outcomes} == {"submitted"}
    rec = json.loads((tmp_path / "results/smoke/student/seed1/slurm.json").read_text())
    assert rec["dependency"] == teacher_job[1] and rec["job_id"].startswith("10")
    assert all(Path(s.results).is_absolute() and s.methods_dir for s in first)


def test_finished_runs_are_skipped_and_queued_ones_not_resubmitted(monkeypatch, tmp_path, methods_with_teacher):
    done = tmp_path / "results/smoke/teacher/seed0"
    write_json(done / "metrics.json", {"compute": {"steps": 3}, "evals": {}})
    queued = tmp_path / "results/smoke/plain/seed0"
    write_json(queued / "slurm.json", {"job_id": "77_1"})
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"77_1": {"state": "RUNNING"}})
    ex = _RecordingExecutor()
    monkeypatch.setattr(slurm, "make_executor", lambda profile, scale, folder: ex)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    from benchmark.sweep import with_requirements
    specs = [RunSpec(method=m, seed=0, scale="smoke", results=str(tmp_path / "results"),
                     methods_dir=str(methods_with_teacher)) for m in ("student", "plain")]
    outcomes = {o.spec.method: o for o in slurm.submit_sweep(with_requirements(specs, methods_with_teacher), "")}
    assert outcomes["teacher"].status == "done" and "already finished" in outcomes["teacher"].detail
    assert outcomes["plain"].status == "submitted" and "already queued as job 77_1" in outcomes["plain"].detail
    # only the student is submitted, with no dependency: its teacher is finished
    assert [(s.method, e.get("dependency")) for _, specs_, e in ex.arrays for s in specs_] == [("student", None)]


def test_no_sbatch_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="sbatch is not on PATH"):
        slurm.submit_sweep([RunSpec(method="clip", seed=0, scale="smoke", results=str(tmp_path))], "")


# ---- the job --------------------------------------------------------------------------------------------------------
def test_requeued_call_is_the_same_run_without_force():
    job = slurm.TrainJob({"MASKBENCH_CACHE": "/x"})
    spec = RunSpec(method="clip", seed=3, scale="smoke", force=True)
    delayed = job.checkpoint(spec)
    assert delayed.function is job and delayed.args[0].seed == 3 and delayed.args[0].force is False


def test_stop_flag_catches_usr2_only_while_training():
    forwarded = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: forwarded.append(s))
    try:
        flag = StopFlag(signals=(signal.SIGUSR2,), pass_through=True)
        os.kill(os.getpid(), signal.SIGUSR2)               # outside training: straight to the old handler
        assert forwarded == [signal.SIGUSR2] and not flag()
        with flag.armed():
            os.kill(os.getpid(), signal.SIGUSR2)           # inside: only the flag (train checkpoints at the step)
            assert flag() and forwarded == [signal.SIGUSR2]
        # training ended normally after the signal: forwarded once at the end
        assert forwarded == [signal.SIGUSR2, signal.SIGUSR2]
        flag.requested = False
        with pytest.raises(RuntimeError), flag.armed():
            os.kill(os.getpid(), signal.SIGUSR2)
            raise RuntimeError("an Interrupted is forwarded by its catcher, not by armed()")
        assert len(forwarded) == 2
        flag.restore()
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_refused_requeue_outside_training_does_not_break_the_running_code(capsys):
    def refuse(signum, frame):       # submitit's handler once max_requeues is used up
        raise RuntimeError("Job not requeued because: timed-out too many times.")
    previous = signal.signal(signal.SIGUSR2, refuse)
    try:
        flag = StopFlag(signals=(signal.SIGUSR2,), pass_through=True)
        os.kill(os.getpid(), signal.SIGUSR2)               # e.g. during evaluation: it carries on
        assert "not acted on: RuntimeError: Job not requeued" in capsys.readouterr().err
        with flag.armed():
            os.kill(os.getpid(), signal.SIGUSR2)           # caught by the flag
            with pytest.raises(RuntimeError, match="too many"):
                flag.forward()          # after an Interrupted the refusal propagates (the job records it, fails)
        # training ended with the signal pending: forwarded, refused, and the evaluation carries on
        assert "not acted on" in capsys.readouterr().err
        flag.restore()
    finally:
        signal.signal(signal.SIGUSR2, previous)


# ---- sacct and status -----------------------------------------------------------------------------------------------
def test_job_states_parses_sacct(monkeypatch):
    out = ("12_0|COMPLETED|0:0|00:00:31|None\n12_1|CANCELLED by 0|0:15|00:00:02|None\n"
           "13_[0-1]|PENDING|0:0|00:00:00|Dependency\n")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(status.shutil, "which", lambda name: "/usr/bin/sacct")
    monkeypatch.setattr(status.subprocess, "run", fake_run)
    states = status.job_states(["12_0", "12_1", "13_1", "x;rm"])
    assert calls[0][-1] == "12_0,12_1,13_1"                    # ids that are not job ids never reach sacct
    assert states["12_0"]["state"] == "COMPLETED" and states["12_1"]["state"] == "CANCELLED"
    assert states["13_1"]["state"] == "PENDING" and states["13_1"]["reason"] == "Dependency"
    monkeypatch.setattr(status.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "no db"))
    assert status.job_states(["12_0"]) is None


def test_status_table(monkeypatch, tmp_path):
    root = tmp_path / "smoke"
    running = root / "clip" / "seed0"
    write_json(running / "config.json", {})
    write_json(running / "slurm.json", {"job_id": "5_0", "submitit_folder": str(tmp_path),
                                        "starts": [{"restart": 0}, {"restart": 1}]})
    (running / "train.jsonl").write_text(json.dumps({"step": 1, "steps_total": 12}) + "\n"
                                         + json.dumps({"type": "eval", "step": 6}) + "\n"
                                         + json.dumps({"step": 7, "steps_total": 12, "loss": 2.5, "samples": 224,
                                                       "wall_time_s": 7.0}) + "\n")
    checkpoint.save(running / "checkpoints", 4, {"x": torch.zeros(1)})
    failed = root / "broken" / "seed0"
    write_json(failed / "slurm.json", {"job_id": "5_1", "submitit_folder": str(tmp_path)})
    write_json(failed / "error.json", {"error": "RuntimeError: broken on purpose"})
    died = root / "flip" / "seed0"
    write_json(died / "slurm.json", {"job_id": "6", "submitit_folder": str(tmp_path)})
    (tmp_path / "6_0_log.err").write_text("loading\n"
                                          "slurmstepd: error: *** JOB 6 CANCELLED AT 12:00 DUE TO TIME LIMIT ***\n")
    local = root / "flip" / "seed1"
    write_json(local / "config.json", {})
    write_json(local / "metrics.json", {"compute": {"steps": 15}})
    monkeypatch.setattr(status, "job_states", lambda ids: {
        "5_0": {"state": "RUNNING", "exit_code": "0:0", "elapsed": "", "reason": "None"},
        "5_1": {"state": "FAILED", "exit_code": "1:0", "elapsed": "", "reason": "None"},
        "6": {"state": "TIMEOUT", "exit_code": "0:0", "elapsed": "", "reason": "None"}})
    rows = {r.run: r for r in status.collect(tmp_path, "smoke")}
    assert rows["clip/seed0"].scheduler == "RUNNING (job 5_0), 1 requeue"
    assert rows["clip/seed0"].progress == "loss 2.500, 32 img/s, 00:05 of training left"
    assert rows["clip/seed0"].step == "7/12" and rows["clip/seed0"].checkpoint.startswith("step 4 ")
    assert rows["broken/seed0"].scheduler.startswith("FAILED") and rows["broken/seed0"].detail == \
        "RuntimeError: broken on purpose"
    assert "TIMEOUT" in rows["flip/seed0"].detail and "DUE TO TIME LIMIT" in rows["flip/seed0"].detail
    assert (rows["flip/seed1"].scheduler, rows["flip/seed1"].step, rows["flip/seed1"].detail) == ("local", "15/15", "done")
    text = status.render(list(rows.values()))
    assert text.splitlines()[0].split() == ["run", "scheduler", "step", "progress", "last", "checkpoint", "detail"]
    with pytest.raises(UserError, match="no runs under"):
        status.collect(tmp_path, "pocket")


def test_force_refuses_a_run_whose_job_is_still_active(monkeypatch, tmp_path):
    run = tmp_path / "results/smoke/clip/seed0"
    write_json(run / "slurm.json", {"job_id": "9"})
    write_json(run / "metrics.json", {})
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"9": {"state": "PENDING"}})
    monkeypatch.setattr(slurm, "make_executor", lambda profile, scale, folder: _RecordingExecutor())
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    spec = RunSpec(method="clip", seed=0, scale="smoke", results=str(tmp_path / "results"), force=True)
    with pytest.raises(UserError, match="scancel 9"):
        slurm.submit_sweep([spec], "")
    assert (run / "metrics.json").exists()
    # once the job is gone, --force discards the run's outputs at submission (never in a requeued job)
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"9": {"state": "CANCELLED"}})
    [outcome] = slurm.submit_sweep([spec], "")
    assert outcome.status == "submitted" and not (run / "metrics.json").exists()
