"""Live progress of a sweep on the console: one line per run (method, seed, step/total, loss, images/s, ETA) and a
sweep line (runs done / total, ETA).

Progress is read from the run's ``train.jsonl`` (the training loop's log), so the lines are the same whether the
run trains in this process (``--cluster debug``) or in a worker process (``--cluster local``), and ``status``
shows the same figures for Slurm jobs. Lines go to stderr, like tqdm's bars; results go to stdout. On a terminal
the line of the running run is redrawn in place; elsewhere (a pipe, a log file) a line is printed when the step
changes, at most every ``every_s`` seconds.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from benchmark import checkpoint
from benchmark.run_folder import RunFolder


@dataclass
class RunProgress:
    step: int
    total: int
    loss: float | None
    wall_time_s: float          # training time so far (the loop's own clock: no start-up, no evaluation)
    samples: int

    @property
    def images_per_s(self) -> float | None:
        return self.samples / self.wall_time_s if self.wall_time_s > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Training time left at the rate so far."""
        if self.step <= 0 or self.wall_time_s <= 0:
            return None
        return max(0, self.total - self.step) * self.wall_time_s / self.step

    def describe(self) -> str:
        parts = [f"step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.images_per_s is not None:
            parts.append(f"{self.images_per_s:,.0f} img/s")
        if self.step >= self.total:
            parts.append("training done, evaluating")
        elif self.eta_s is not None:
            parts.append(f"ETA {duration(self.eta_s)}")
        return "  ".join(parts)


def duration(seconds: float) -> str:
    return tqdm.format_interval(max(0, round(seconds)))


def read(run_dir: Path) -> RunProgress | None:
    """The newest training row of ``run_dir/train.jsonl`` (None before the first one is written)."""
    rows = [row for row in RunFolder(Path(run_dir)).log_rows()
            if row.get("type") != "eval" and "step" in row and "steps_total" in row]
    if not rows:
        return None
    row = rows[-1]
    return RunProgress(step=int(row["step"]), total=int(row["steps_total"]), loss=row.get("loss"),
                       wall_time_s=float(row.get("wall_time_s", 0.0)), samples=int(row.get("samples", 0)))


def resume_step(run_dir: Path) -> int | None:
    """The step a run will resume from (its newest verified checkpoint), or None for a fresh start."""
    last = checkpoint.latest(RunFolder(Path(run_dir)).checkpoints)
    return int(last.stem.split("_")[1]) if last is not None else None


class Console:
    """Prints the sweep's progress lines; ``watch(run_dir, label)`` follows one run while it trains."""

    def __init__(self, total_runs: int, stream=None, every_s: float = 10.0, poll_s: float = 0.5,
                 quiet: bool = False, redraw: bool = True):
        self.total = total_runs
        self.quiet = quiet
        self.stream = stream or sys.stderr
        # redraw: the running run's line is redrawn in place on a terminal (one run at a time)
        self.tty = redraw and bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s, self.poll_s = every_s, poll_s
        self.index = 0
        self.numbers: dict[str, int] = {}
        self.done = 0
        self.trained_s: list[float] = []     # wall time of each run this sweep trained (for the sweep ETA)
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._open_line = False

    # ---- output --------------------------------------------------------------------------------------------------
    def _print(self, text: str, final: bool = True) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.tty:
                self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
                self._open_line = not final
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def header(self, text: str) -> None:
        self._print(text)

    def run_line(self, label: str, text: str, final: bool = True) -> None:
        self._print(f"[{self.numbers.get(label, self.index)}/{self.total}] {label}  {text}", final)

    def sweep_line(self) -> None:
        elapsed = time.monotonic() - self.t0
        left = self.total - self.done
        line = f"sweep: {self.done}/{self.total} runs done, {duration(elapsed)} elapsed"
        if left and self.trained_s:
            line += f", ETA ~{duration(left * sum(self.trained_s) / len(self.trained_s))}"
        self._print(line)

    # ---- one run -------------------------------------------------------------------------------------------------
    def start(self, label: str) -> None:
        with self._lock:
            self.index += 1
            self.numbers[label] = self.index        # runs side by side keep their own numbers

    def finish(self, label: str, status: str, run_dir: Path | None = None, elapsed_s: float | None = None,
               trained: bool = True) -> None:
        p = read(run_dir) if run_dir is not None else None
        text = status
        if p is not None and trained and status == "done":
            ips = f", {p.images_per_s:,.0f} img/s" if p.images_per_s else ""
            loss = f", final loss {p.loss:.3f}" if p.loss is not None else ""
            text = f"done in {duration(elapsed_s or 0)} ({p.total} steps{loss}{ips})"
        self.run_line(label, text)
        self.done += 1
        if trained and elapsed_s is not None and status == "done":
            self.trained_s.append(elapsed_s)
        self.sweep_line()

    def watch(self, run_dir: Path, label: str, where: str) -> "_Watch":
        return _Watch(self, Path(run_dir), label, where)


class _Watch:
    """A thread that redraws (terminal) or prints (elsewhere) a run's line while the run trains."""

    def __init__(self, console: Console, run_dir: Path, label: str, where: str):
        self.c, self.run_dir, self.label, self.where = console, run_dir, label, where
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress {label}", daemon=True)
        self._last_text = None
        self._last_print = 0.0

    def __enter__(self):
        self.c.run_line(self.label, f"starting {self.where} (building the model, counting FLOPs)",
                        final=not self.c.tty)
        if not self.c.quiet:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.c.tty and self.c._open_line and exc[0] is not None:
            with self.c._lock:
                self.c.stream.write("\n")       # leave the last drawn line readable above the error
                self.c.stream.flush()
                self.c._open_line = False
        return False

    def _loop(self):
        while not self._stop.wait(self.c.poll_s):
            p = read(self.run_dir)
            if p is None:
                continue
            text = p.describe()
            now = time.monotonic()
            if self.c.tty:
                self.c.run_line(self.label, text, final=False)
            elif text != self._last_text and (now - self._last_print >= self.c.every_s or p.step >= p.total):
                self.c.run_line(self.label, text)
                self._last_text, self._last_print = text, now
