"""Live progress lines: read from a run's train.jsonl while it trains (in this process or a worker alike)."""
import io
import json
import time

from benchmark import progress


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def _row(step, total=12, loss=3.0, wall=None):
    return json.dumps({"step": step, "steps_total": total, "samples": step * 32, "loss": loss,
                       "wall_time_s": wall if wall is not None else step * 0.5}) + "\n"


def test_read_takes_the_newest_training_row(tmp_path):
    assert progress.read(tmp_path) is None
    (tmp_path / "train.jsonl").write_text(_row(1) + _row(8, loss=2.0) + json.dumps({"type": "eval", "step": 8})
                                          + "\n" + '{"step": 9, "steps_to')      # a line being written
    p = progress.read(tmp_path)
    assert (p.step, p.total, p.loss) == (8, 12, 2.0)
    assert p.images_per_s == 64 and p.eta_s == 2.0
    assert p.describe() == "step 8/12  loss 2.000  64 img/s  ETA 00:02"
    (tmp_path / "train.jsonl").write_text(_row(12))
    assert progress.read(tmp_path).describe().endswith("training done, evaluating")


def _sweep(tmp_path, tty):
    out = _Stream(tty)
    console = progress.Console(2, stream=out, every_s=0.0, poll_s=0.01)
    console.header("2 run(s) at scale smoke")
    log = tmp_path / "train.jsonl"
    console.start("clip seed 0")
    with console.watch(tmp_path, "clip seed 0", "in a worker process"):
        for step in (2, 5, 12):
            with open(log, "a") as f:
                f.write(_row(step))
            time.sleep(0.2)
    console.finish("clip seed 0", "done", tmp_path, elapsed_s=9.0)
    console.start("flip seed 0")
    console.finish("flip seed 0", "already finished (--force to retrain)", trained=False)
    return out.getvalue()


def test_lines_per_run_and_for_the_sweep_without_a_terminal(tmp_path):
    lines = _sweep(tmp_path, tty=False).splitlines()
    assert lines[0] == "2 run(s) at scale smoke"
    assert lines[1] == "[1/2] clip seed 0  starting in a worker process (building the model, counting FLOPs)"
    assert "[1/2] clip seed 0  step 2/12  loss 3.000  64 img/s  ETA 00:05" in lines
    assert "[1/2] clip seed 0  step 5/12  loss 3.000  64 img/s  ETA 00:04" in lines
    assert "[1/2] clip seed 0  step 12/12  loss 3.000  64 img/s  training done, evaluating" in lines
    assert "[1/2] clip seed 0  done in 00:09 (12 steps, final loss 3.000, 64 img/s)" in lines
    assert "sweep: 1/2 runs done" in lines[lines.index("[1/2] clip seed 0  done in 00:09 (12 steps, final loss "
                                                       "3.000, 64 img/s)") + 1]
    assert "ETA ~00:09" in lines[-3]          # one run left, at the duration of the one trained
    assert lines[-2] == "[2/2] flip seed 0  already finished (--force to retrain)"
    assert lines[-1].startswith("sweep: 2/2 runs done") and "ETA" not in lines[-1]
    assert not any("\r" in ln for ln in lines)


def test_a_terminal_gets_one_line_redrawn_in_place(tmp_path):
    text = _sweep(tmp_path, tty=True)
    assert "\r\x1b[K[1/2] clip seed 0  step 5/12" in text
    finished = [ln for ln in text.split("\n") if ln]
    # every finished line is the last drawing of its run's line: the live redraws do not pile up as lines
    assert finished[1].rsplit("\r\x1b[K", 1)[-1] == "[1/2] clip seed 0  done in 00:09 (12 steps, final loss 3.000, " \
                                                      "64 img/s)"
    assert len(finished) == 5


def test_quiet_prints_nothing(tmp_path):
    out = _Stream(False)
    console = progress.Console(1, stream=out, quiet=True, poll_s=0.01)
    console.start("clip seed 0")
    with console.watch(tmp_path, "clip seed 0", "in this process"):
        (tmp_path / "train.jsonl").write_text(_row(3))
        time.sleep(0.05)
    console.finish("clip seed 0", "done", tmp_path, 1.0)
    assert out.getvalue() == ""
