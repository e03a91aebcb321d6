"""--cluster local: the whole sweep runs in one persistent worker process (imports paid once, not per run); a
worker that dies fails its own run only, and the next run gets a fresh worker."""
import json
import os
import textwrap

import pytest

from benchmark.launch import launch
from benchmark.runs import RunSpec

pytestmark = pytest.mark.slow

_METHOD = """
import os
import signal

from benchmark.method import Method


class {cls}(Method):
    paper = "test"
    summary = "CLIP that records the id of the process it trains in{extra}"

    def training_step(self, batch, progress):
        if {die}:
            os.kill(os.getpid(), signal.SIGKILL)
        self.record(pid=os.getpid())
        return {{"loss": self.contrastive(self.clip.encode_image(batch["images"]), self.clip.encode_text(batch["texts"]))}}
"""


def _methods(tmp_path):
    root = tmp_path / "methods"
    for name, cls, die in (("pid_a", "PidA", False), ("pid_b", "PidB", False), ("dies", "Dies", True)):
        (root / name).mkdir(parents=True)
        (root / name / "method.py").write_text(textwrap.dedent(_METHOD.format(cls=cls, die=die,
                                                                                extra=", then dies" if die else "")))
    return root


def _pid(results, method):
    return json.loads((results / "smoke" / method / "seed0" / "metrics.json").read_text())["stats"]["pid"]


def test_local_sweep_runs_in_one_persistent_worker_and_survives_a_dead_one(tmp_path):
    methods, results = _methods(tmp_path), tmp_path / "results"
    specs = [RunSpec(method=m, seed=0, scale="smoke", results=str(results), methods_dir=str(methods))
             for m in ("pid_a", "pid_b", "dies", "pid_a")]
    specs[3] = RunSpec(method="pid_b", seed=1, scale="smoke", results=str(results), methods_dir=str(methods))
    outcomes = launch(specs, cluster="local", methods_dir=methods, progress_bar=False)
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done"]
    assert "worker process died" in outcomes[2].detail
    a, b = _pid(results, "pid_a"), _pid(results, "pid_b")
    assert a == b != os.getpid()                      # two runs, one worker, not this process
    after = json.loads((results / "smoke" / "pid_b" / "seed1" / "metrics.json").read_text())["stats"]["pid"]
    assert after not in (a, os.getpid())              # the run after the dead worker got a fresh one


_NEEDS = """
import os

from benchmark.method import Method


class {cls}(Method):
    paper = "test"
    summary = "CLIP that needs the {req} run of its seed first"

    @classmethod
    def requires(cls, cfg):
        return ["{req}"]

    def training_step(self, batch, progress):
        self.record(pid=os.getpid())
        return {{"loss": self.contrastive(self.clip.encode_image(batch["images"]), self.clip.encode_text(batch["texts"]))}}
"""


def test_side_by_side_workers_keep_required_runs_first_and_one_thread_each(tmp_path):
    methods, results = _methods(tmp_path), tmp_path / "results"
    for name, cls, req in (("needs_a", "NeedsA", "pid_a"), ("needs_dies", "NeedsDies", "dies")):
        (methods / name).mkdir()
        (methods / name / "method.py").write_text(textwrap.dedent(_NEEDS.format(cls=cls, req=req)))
    specs = [RunSpec(method=m, seed=0, scale="smoke", results=str(results), methods_dir=str(methods))
             for m in ("needs_a", "needs_dies", "pid_b")]
    outcomes = launch(specs, cluster="local", methods_dir=methods, progress_bar=False, jobs=2)
    by = {o.spec.method: o for o in outcomes}
    # the required runs were added and ran before the runs that need them; a failed one blocks its dependant only
    assert [o.spec.method for o in outcomes] == ["pid_a", "needs_a", "dies", "needs_dies", "pid_b"]
    assert [by[m].status for m in ("pid_a", "needs_a", "dies", "needs_dies", "pid_b")] == \
        ["done", "done", "failed", "skipped", "done"]
    run = lambda m: results / "smoke" / m / "seed0"       # noqa: E731
    assert (run("needs_a") / "config.json").stat().st_mtime >= (run("pid_a") / "metrics.json").stat().st_mtime
    pids = {_pid(results, m) for m in ("pid_a", "needs_a", "pid_b")}
    assert len(pids) <= 2 and os.getpid() not in pids    # at most two workers shared the three runs
    for m in ("pid_a", "needs_a", "pid_b"):
        machine = json.loads((run(m) / "metrics.json").read_text())["machine"]
        assert machine["torch_threads"] == 1             # one thread per run on a CPU, at any --jobs


def test_runs_go_to_the_workers_started_before_the_sweep_and_unneeded_ones_are_stopped(tmp_path):
    """``run`` starts its workers before it imports torch (``start_local_workers``); ``launch`` runs the sweep
    in exactly those processes and stops the ones it does not need."""
    from benchmark.local_workers import start_local_workers
    methods, results = _methods(tmp_path), tmp_path / "results"
    workers = start_local_workers(3)
    started = [set(w._pool._processes) for w in workers]
    assert all(len(p) == 1 for p in started)
    specs = [RunSpec(method=m, seed=0, scale="smoke", results=str(results), methods_dir=str(methods))
             for m in ("pid_a", "pid_b")]
    outcomes = launch(specs, cluster="local", methods_dir=methods, progress_bar=False, jobs=2, workers=workers)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert {_pid(results, "pid_a"), _pid(results, "pid_b")} <= started[0] | started[1]
    assert all(w._pool is None for w in workers)           # all closed: the two used, the third unneeded
