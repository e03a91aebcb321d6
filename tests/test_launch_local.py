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
