"""Fault and bad-input campaign (issue 13): nothing silently wrong, no row lost, no run stuck, no traceback.

One healthy smoke FLIP run (trained once, in this process) is copied into each test's own results folder and
damaged there; the tests that need training of their own keep it to a few smoke steps.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmark import REPO_ROOT
from benchmark.cli import main
from benchmark.results import read_json

SMOKE = ["--scale", "smoke", "--cluster", "debug"]


@pytest.fixture(scope="module")
def methods_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("methods")
    for name in ("clip", "flip"):
        shutil.copytree(REPO_ROOT / "methods" / name, root / name)
    return root


@pytest.fixture
def in_methods(methods_root, monkeypatch):
    monkeypatch.setenv("MASKBENCH_METHODS", str(methods_root))
    return methods_root


@pytest.fixture(scope="module")
def finished(methods_root, tmp_path_factory) -> Path:
    """A results folder holding one finished smoke FLIP run (seed 0)."""
    results = tmp_path_factory.mktemp("finished") / "results"
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKBENCH_METHODS", str(methods_root))
    try:
        assert main(["run", "--methods", "flip", *SMOKE, "--results", str(results), "--no-report"]) == 0
    finally:
        mp.undo()
    return results


def _copy(finished: Path, tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(finished, results)
    return results


def _run(method: str = "flip", results: Path | None = None, seed: int = 0) -> Path:
    return Path(results) / "smoke" / method / f"seed{seed}"


def _table(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "smoke" / "results.csv")


# ---- 5. results.csv rebuilt from the run folders on every run, eval and report ----------------------------------
@pytest.mark.parametrize("command,damage", [("run", "missing"), ("eval", "truncated"), ("report", "binary")])
def test_results_csv_is_rebuilt_by_run_eval_and_report(finished, in_methods, tmp_path, capsys, command, damage):
    """A kill between metrics.json and the table's rebuild (missing), a table cut short or overwritten: the next
    `run` (which skips the finished run), `eval` and `report` each write the full table again."""
    results = _copy(finished, tmp_path)
    table = results / "smoke" / "results.csv"
    want = _table(results)
    assert len(want) > 20 and set(want["method"]) == {"flip"}
    if damage == "missing":
        table.unlink()
    elif damage == "truncated":
        table.write_bytes(table.read_bytes()[:300])
    else:
        table.write_bytes(bytes(range(256)) * 8)
    argv = {"run": ["run", "--methods", "flip", *SMOKE, "--no-report"],
            "eval": ["eval", "--methods", "flip", "--scale", "smoke"],
            "report": ["report", "--scale", "smoke", "--reports", str(tmp_path / "reports")]}[command]
    assert main([*argv, "--results", str(results)]) == 0, capsys.readouterr().err
    got = _table(results)
    pd.testing.assert_frame_equal(got[["method", "task", "metric"]], want[["method", "task", "metric"]])


# ---- 6. one unreadable eval file costs only its own rows, and is named ------------------------------------------
def test_an_unreadable_eval_file_costs_only_its_rows_and_is_named(finished, in_methods, tmp_path, capsys):
    results = _copy(finished, tmp_path)
    other = _run("clip", results)                               # another method's run, its files garbled
    shutil.copytree(_run("flip", results), other)
    for ev in (other / "evals").glob("*.json"):
        data = read_json(ev)
        data["run"]["method"] = "clip"
        ev.write_text(json.dumps(data))
    bad = other / "evals" / "vqa.json"
    bad.write_bytes(bad.read_bytes()[:40])
    (other / "evals" / "linear_probe.json").write_bytes(b"\xff\xfe\x00garbage")
    (_run("flip", results) / ".." / ".." / "results.csv").resolve().unlink()
    assert main(["run", "--methods", "flip", *SMOKE, "--no-report", "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert f"{bad} is unreadable" in err and "linear_probe.json is unreadable" in err
    assert "benchmark eval --methods clip --seeds 0" in err            # the fix
    got = _table(results)
    flip, clip = got[got["method"] == "flip"], got[got["method"] == "clip"]
    assert len(flip) == len(_table(finished))
    assert set(clip["task"]) == set(flip["task"]) - {"vqa", "linear_probe"} and len(clip) > 0


# ---- 7. the log rewrite on resume is atomic and a cut last line is tolerated --------------------------------------
def _train_clip(run_dir: Path, steps: int, smoke_scale):
    from benchmark.data.train_data import load_training_data
    from benchmark.discovery import discover
    from benchmark.method import Context
    from benchmark.runs import build_clip
    from benchmark.train import TrainPlan, train
    info = discover(REPO_ROOT / "methods")["clip"]
    method = info.cls(build_clip(smoke_scale, 0), {}, Context(scale=smoke_scale))
    plan = TrainPlan(steps=steps, batch_size=8, seed=0, optim=smoke_scale.optim, checkpoint_every=2, log_every=1)
    return train(method, method, load_training_data(smoke_scale), plan, run_dir, "cpu", progress_bar=False)


def test_a_cut_last_log_line_does_not_stop_the_resume_and_the_rewrite_is_atomic(tmp_path, smoke_scale,
                                                                                monkeypatch):
    from benchmark import checkpoint
    log = tmp_path / "train.jsonl"
    _train_clip(tmp_path, 2, smoke_scale)
    rows = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # a kill while the log was being rewritten (or a line written) leaves a cut line at the end
    log.write_text(log.read_text() + json.dumps({"step": 3, "loss": 1.0})[:15])
    # a kill in the middle of the rewrite itself: the old log stays whole
    before = log.read_bytes()

    def killed(fd):
        raise KeyboardInterrupt("killed during the rewrite")
    monkeypatch.setattr(checkpoint.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        _train_clip(tmp_path, 4, smoke_scale)
    assert log.read_bytes() == before
    assert not list(tmp_path.glob(".train.jsonl.*"))
    monkeypatch.undo()
    _train_clip(tmp_path, 4, smoke_scale)                     # resumes from step 2
    rows = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
