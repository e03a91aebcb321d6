"""The run folder's layout (benchmark/run_folder.py) and its one reader of train.jsonl."""
import json

from benchmark.run_folder import RunFolder


def test_layout_and_identity(tmp_path):
    run = RunFolder.of(tmp_path, "smoke", "flip", 3)
    assert run.path == tmp_path / "smoke" / "flip" / "seed3" and (run.method, run.seed) == ("flip", 3)
    assert [p.name for p in (run.config, run.log, run.checkpoints, run.model, run.metrics, run.evals, run.error,
                             run.slurm, run.lock)] == ["config.json", "train.jsonl", "checkpoints", "model.pt",
                                                       "metrics.json", "evals", "error.json", "slurm.json", ".lock"]
    assert run.config not in run.outputs() and run.config in run.outputs(config=True)
    (tmp_path / "smoke" / "flip" / "seed3").mkdir(parents=True)
    (tmp_path / "smoke" / "clip" / "seed0").mkdir(parents=True)
    (tmp_path / "smoke" / "clip" / "notes").mkdir()
    assert [r.label for r in RunFolder.all_under(tmp_path, "smoke")] == ["clip/seed0", "flip/seed3"]
    assert not run.finished
    run.metrics.write_text("{}")
    assert run.finished


def test_log_rows_skip_a_line_cut_short(tmp_path):
    run = RunFolder(tmp_path)
    assert list(run.log_rows()) == []                       # no log yet
    rows = [{"step": 1, "loss": 2.0}, {"type": "eval", "step": 1, "acc1": 0.1}]
    run.log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2, "lo')
    assert list(run.log_rows()) == rows
