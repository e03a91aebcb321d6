"""--report-to: TensorBoard event files (and wandb offline, when installed) with the training log's scalars, the
periodic evaluations and the final evaluations, one tracker run per (method, seed)."""
import json
import os

import pytest

from benchmark import cli, tracking
from benchmark.errors import UserError


def test_report_to_takes_lists_and_refuses_unknown_or_missing_trackers(monkeypatch):
    assert tracking.parse_report_to(["none"]) == ()
    assert tracking.parse_report_to(["tensorboard"]) == ("tensorboard",)
    with pytest.raises(UserError, match="'mlflow' is not a tracker here"):
        tracking.parse_report_to(["tensorboard,mlflow"])
    monkeypatch.setattr(tracking, "installed", lambda module: False)
    with pytest.raises(UserError, match=r"needs the wandb package.*pip install 'maskbench\[wandb\]'"):
        tracking.parse_report_to(["wandb"])


def test_missing_tracker_package_exits_2_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tracking, "installed", lambda module: False)
    code = cli.main(["run", "--methods", "clip", "--scale", "smoke", "--results", str(tmp_path / "r"),
                     "--report-to", "tensorboard"])
    assert code == 2 and "maskbench[tensorboard]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_holds_the_training_log_and_the_evaluations(tmp_path, monkeypatch):
    trackers = ["tensorboard"]
    wandb_installed = tracking.installed("wandb")
    if wandb_installed:
        trackers.append("wandb")
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_SILENT", "true")
    results = tmp_path / "results"
    assert cli.main(["run", "--methods", "clip", "--scale", "smoke", "--cluster", "debug", "--results", str(results),
                     "--no-report", "--report-to", ",".join(trackers)]) == 0
    run = results / "smoke" / "clip" / "seed0"
    rows = [json.loads(ln) for ln in (run / "train.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("type") != "eval"]
    evals = [r for r in rows if r.get("type") == "eval"]
    assert evals, "smoke has a periodic evaluation (every 6 steps)"
    scalars = _scalars(run / "tensorboard")
    for key in ("loss", "lr", "grad_norm", "samples"):
        assert scalars[f"train/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train], key
    assert [s for s, _ in scalars["train/images_per_s"]] == [r["step"] for r in train]
    for key in ("mask_ratio", "logit_scale"):                  # the method's statistics
        assert scalars[f"stats/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train], key
    assert scalars["eval/acc1"] == [(e["step"], pytest.approx(e["acc1"], rel=1e-6)) for e in evals]
    metrics = json.loads((run / "metrics.json").read_text())
    steps = metrics["compute"]["steps"]
    for task, per_dataset in metrics["evals"].items():
        if isinstance(per_dataset, dict):
            assert len(per_dataset) == 1                       # the embedded suite: one dataset per task
            assert scalars[f"final/{task}"] == [(steps, pytest.approx(next(iter(per_dataset.values())), rel=1e-6))]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    if wandb_installed:
        offline = list((run / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and list(offline[0].glob("*.wandb")), os.listdir(run / "wandb")


def test_a_resumed_run_continues_its_tensorboard_run_without_duplicate_steps(tmp_path):
    """Killed after step 7 with the last checkpoint at step 4: the resumed run logs steps 5-8 again, and the steps
    logged after the checkpoint by the first start are dropped (purge_step), so every step appears once."""
    def start(step, upto):
        t = tracking.Trackers(("tensorboard",), tmp_path, "smoke/clip/seed0", {"seed": 0}, "clip-seed0-x")
        t.start(step)
        for s in range(step + 1, upto + 1):
            t.log_train({"step": s, "loss": 10.0 - s + (0.5 if step == 0 else 0.0), "lr": 0.1, "grad_norm": 1.0,
                         "samples": 32 * s, "wall_time_s": s}, ("loss",), ())
        t.close()
    start(0, 7)
    start(4, 8)
    loss = _scalars(tmp_path / "tensorboard")["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 9))
    assert [v for _, v in loss] == [9.5, 8.5, 7.5, 6.5, 5.0, 4.0, 3.0, 2.0]   # 1-4 from the first start, 5-8 resumed
