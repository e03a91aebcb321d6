"""Against the real local Slurm cluster (`bash slurm/local-cluster.sh up`; skipped when it is not up).

1. `run --methods clip,flip --scale smoke --cluster slurm --slurm-profile slurm/local.yaml` submits and returns; the
   jobs end COMPLETED in sacct, and their results equal a local run of the same config bit for bit.
2. One sweep of two jobs on a profile that asks for a GPU (the cluster's fake GPUs), with methods from a temporary
   folder (MASKBENCH_METHODS must reach the jobs): a slowed-down CLIP interrupted with `scancel --signal=USR2` midway
   is requeued, resumes from its checkpoint and ends with the metrics of an uninterrupted run; a method that raises
   fails alone and `status` shows its error; the GPU request is allocated.
Jobs use 1 CPU thread (cpus_per_task: 1), so the local references run with 1 thread too: float sums on the CPU
depend on the thread count.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from benchmark import REPO_ROOT, cli
from benchmark.status import ACTIVE_STATES, job_states
from benchmark.runs import RunSpec, execute
from conftest import run_cli


def _cluster_missing() -> str | None:
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        sacct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    if "is UP" not in ping.stdout:
        return "slurmctld is not answering"
    if sacct.returncode != 0:
        return "sacct does not work (accounting is off)"
    return None


_MISSING = _cluster_missing()
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(_MISSING is not None, reason=f"the local Slurm cluster is not up ({_MISSING}); start "
                                 "it with `bash slurm/local-cluster.sh up` (root)")]
TIMING = re.compile(r"(time_s|per_s)$")


def _job(results: Path, method: str) -> str:
    return json.loads((results / "smoke" / method / "seed0" / "slurm.json").read_text())["job_id"]


def _wait(results: Path, methods: list[str], timeout: float = 600, until=None) -> dict[str, str]:
    """Poll sacct until every job has a final state (or ``until()`` is true); {method: state}."""
    jobs = {m: _job(results, m) for m in methods}
    end = time.time() + timeout
    while time.time() < end:
        if until is not None and until():
            return {}
        states = job_states(list(jobs.values())) or {}
        final = {m: states[j]["state"] for m, j in jobs.items()
                 if j in states and states[j]["state"] not in ACTIVE_STATES}
        if until is None and len(final) == len(jobs):
            return final
        time.sleep(0.5 if until is not None else 2)
    logs = "".join(p.read_text()[-2000:] for p in (results / "smoke" / ".submitit").glob("*_log.err"))
    raise AssertionError(f"jobs {jobs} not done after {timeout} s; squeue:\n"
                         f"{subprocess.run(['squeue'], capture_output=True, text=True).stdout}\nlogs:\n{logs}")


def _cli(capsys, *args) -> str:
    """``python -m benchmark ARGS`` in this process (its imports are paid already); its stdout."""
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def _local(method: str, results: Path, methods_dir: Path | None = None) -> Path:
    """The same run in this process (``--cluster debug``), with the jobs' one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = RunSpec(method=method, seed=0, scale="smoke", results=str(results),
                       methods_dir=str(methods_dir) if methods_dir else None)
        execute(spec, progress_bar=False)
        return spec.dir
    finally:
        torch.set_num_threads(threads)


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if not TIMING.search(k)}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _assert_same_results(cluster_dir: Path, local_dir: Path) -> None:
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (cluster_dir, local_dir))
    assert _without_timing(a) == _without_timing(b)
    evals = sorted(p.name for p in (local_dir / "evals").glob("*.json"))
    assert evals and evals == sorted(p.name for p in (cluster_dir / "evals").glob("*.json"))
    for name in evals:
        ea, eb = (json.loads((d / "evals" / name).read_text()) for d in (cluster_dir, local_dir))
        assert ea.get("metrics") == eb.get("metrics") and ea.get("error") == eb.get("error"), name
    ma, mb = (torch.load(d / "model.pt", weights_only=True) for d in (cluster_dir, local_dir))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_sweep_on_the_cluster_matches_a_local_run(tmp_path, capsys, monkeypatch):
    results = tmp_path / "cluster"
    proc = run_cli("run", "--methods", "clip,flip", "--scale", "smoke", "--cluster", "slurm",
                   "--slurm-profile", "slurm/local.yaml", "--results", results, check=True)
    assert re.search(r"clip\s+seed 0\s+submitted\s+job \d+_0", proc.stdout), proc.stdout
    assert re.search(r"flip\s+seed 0\s+submitted\s+job \d+_1", proc.stdout), proc.stdout   # one array
    assert not (results / "smoke" / "clip" / "seed0" / "metrics.json").exists()       # submitted, not waited for
    local = {m: _local(m, tmp_path / "local") for m in ("clip", "flip")}                 # while the jobs run
    assert _wait(results, ["clip", "flip"]) == {"clip": "COMPLETED", "flip": "COMPLETED"}
    for m in ("clip", "flip"):
        _assert_same_results(results / "smoke" / m / "seed0", local[m])
    table = _cli(capsys, "status", "--scale", "smoke", "--results", results)
    assert re.search(r"clip/seed0\s+COMPLETED \(job \d+_0\)\s+12/12\s+(\S+\s+)?step 12 .*done", table), table
    # submitting again skips the finished runs
    monkeypatch.setenv("MASKBENCH_SLURM_PROFILE", "")
    again = _cli(capsys, "run", "--methods", "clip,flip", "--scale", "smoke", "--cluster", "slurm",
                 "--slurm-profile", "slurm/local.yaml", "--results", results)
    assert again.count("already finished") == 2, again


SLOW_CLIP = '''
import os
import time
from benchmark.method import Method


class SlowCLIP(Method):
    paper = "test"
    summary = "CLIP with a pause in every step, so that a test can interrupt it midway"

    def training_step(self, batch, progress):
        time.sleep(float(os.environ.get("MASKBENCH_TEST_STEP_SLEEP", "0")))
        loss = self.contrastive(self.clip.encode_image(batch["images"]), self.clip.encode_text(batch["texts"]))
        return {"loss": loss}
'''
BROKEN = '''
from benchmark.method import Method


class Broken(Method):
    paper = "test"
    summary = "raises in its training step"

    def training_step(self, batch, progress):
        raise RuntimeError("broken on purpose")
'''


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    methods = root / "methods"
    for name, code in (("slowclip", SLOW_CLIP), ("broken", BROKEN)):
        (methods / name).mkdir(parents=True)
        (methods / name / "method.py").write_text(textwrap.dedent(code))
    profile = root / "gpu.yaml"
    profile.write_text((REPO_ROOT / "slurm" / "local.yaml").read_text().replace("gpus_per_node: 0", "gpus_per_node: 1"))
    results = root / "cluster"
    # MASKBENCH_* variables of the submitting shell reach the jobs: the methods folder, and the pause
    proc = run_cli("run", "--methods", "slowclip,broken", "--scale", "smoke", "--cluster", "slurm",
                   "--slurm-profile", profile, "--results", results, check=True,
                   env={"MASKBENCH_METHODS": str(methods), "MASKBENCH_TEST_STEP_SLEEP": "1"})
    run = results / "smoke" / "slowclip" / "seed0"
    _wait(results, ["slowclip"], timeout=300, until=lambda: (run / "checkpoints" / "step_0000004.pt").exists())
    job = _job(results, "slowclip")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    local = _local("slowclip", root / "local", methods)           # uninterrupted, no pause: same numbers
    states = _wait(results, ["slowclip", "broken"])
    return {"results": results, "run": run, "job": job, "states": states, "local": local, "submit": proc.stdout}


def test_usr2_requeues_and_resumes_with_the_same_metrics(interrupted_sweep):
    s = interrupted_sweep
    assert s["states"]["slowclip"] == "COMPLETED"
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", s["job"]],
                             capture_output=True, text=True, check=True).stdout.split()
    assert history == ["REQUEUED", "COMPLETED"], history
    starts = json.loads((s["run"] / "slurm.json").read_text())["starts"]
    assert [st["restart"] for st in starts] == [0, 1]
    log = (s["results"] / "smoke" / ".submitit" / f"{s['job']}_0_log.out").read_text()
    resumed = re.search(r"resuming .* from step_(\d+)\.pt \(step \d+ of (\d+)\)", log)
    assert resumed, log
    assert 4 <= int(resumed.group(1)) < int(resumed.group(2)), "interrupted midway, resumed from that checkpoint"
    assert "20 remaining timeouts" in log          # submitit counts down from the profile's max_requeues, not 3
    _assert_same_results(s["run"], s["local"])


def test_failed_job_is_reported_by_status_and_the_others_finish(interrupted_sweep, capsys):
    s = interrupted_sweep
    assert s["states"] == {"slowclip": "COMPLETED", "broken": "FAILED"}
    table = _cli(capsys, "status", "--scale", "smoke", "--results", s["results"])
    assert re.search(r"broken/seed0\s+FAILED \(job \S+\)\s+.*RuntimeError: broken on purpose", table), table
    assert re.search(r"slowclip/seed0\s+COMPLETED \(job \S+\), 1 requeue\s+12/12\s+.*done", table), table


def test_gpu_request_runs_on_the_fake_gpus(interrupted_sweep):
    s = interrupted_sweep
    tres = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "AllocTRES", "-j", s["job"]],
                          capture_output=True, text=True, check=True).stdout
    assert "gres/gpu=1" in tres, tres
    starts = json.loads((s["run"] / "slurm.json").read_text())["starts"]
    assert starts[0]["gpus"] == "0"                # Slurm gave the job one (fake) GPU
