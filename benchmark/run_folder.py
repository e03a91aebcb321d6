"""One run's folder: the only place that knows its file names. Every writer (``runs``, ``train``, ``slurm``) and
every reader (``status``, ``report``, ``perf``, a method's teacher) goes through ``RunFolder``::

    results/<scale>/<method>/seed<k>/
        config.json     what the run is (method config, scale, match, data fingerprint, code version)
        train.jsonl     training log (losses, lr, method statistics; periodic evaluations, "type": "eval")
        checkpoints/    step_*.pt (+ .sha256)
        model.pt        the exported open_clip CLIP state dict
        metrics.json    compute (steps, samples, FLOPs, wall time, images/s) and the main metric per task
        evals/<task>.json   clip_benchmark's keys (dataset, model, task, metrics) + run identity and compute
        error.json      present when the run failed: the error and its traceback
        slurm.json      on a cluster: the job id, its submitit folder, every start
        .lock           held by the one process writing the run
    results/<scale>/results.csv   one tidy table over every run (one row per run, task, dataset, metric)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"``{name}`` in the run folder")


@dataclass(frozen=True)
class RunFolder:
    path: Path
    SLURM_RECORD: ClassVar[str] = "slurm.json"      # written by benchmark.slurm, read by benchmark.status
    # How to recover from a damaged file of the layout, by file name (benchmark.results.read_state says it).
    REPAIR: ClassVar[dict[str, str]] = {
        "config.json": "delete the run folder {run} (or pass --force) to train it again",
        "metrics.json": "delete it and run the same `benchmark run` command again: the run re-exports and "
                        "re-evaluates from its last checkpoint",
        "error.json": "delete it; `benchmark run` then retries the run",
        SLURM_RECORD: "delete it (it only records the Slurm job id)"}

    @classmethod
    def of(cls, results: str | Path, scale: str, method: str, seed: int) -> RunFolder:
        return cls(Path(results) / scale / method / f"seed{seed}")

    @classmethod
    def all_under(cls, results: str | Path, scale: str) -> list[RunFolder]:
        """Every ``<method>/seed<k>`` folder of a scale, sorted."""
        root = Path(results) / scale
        return [cls(p) for p in sorted(root.glob("*/seed*")) if p.is_dir() and p.name[4:].isdigit()]

    # ---- what it is ----------------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.path.parent.name

    @property
    def seed(self) -> int:
        return int(self.path.name.removeprefix("seed"))

    @property
    def label(self) -> str:
        return f"{self.method}/{self.path.name}"

    # ---- the files -------------------------------------------------------------------------------------------------
    config = _file("config.json")
    log = _file("train.jsonl")
    checkpoints = _file("checkpoints")
    model = _file("model.pt")
    metrics = _file("metrics.json")
    evals = _file("evals")
    error = _file("error.json")
    slurm = _file(SLURM_RECORD)
    lock = _file(".lock")

    def outputs(self, config: bool = False) -> list[Path]:
        """What ``--force`` discards: checkpoints, log, model, evaluations, metrics, error (and the config)."""
        return [self.checkpoints, self.evals, self.metrics, self.log, self.model, self.error] + \
            ([self.config] if config else [])

    # ---- reading ---------------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Trained, exported and evaluated: metrics.json is written last."""
        return self.metrics.exists()

    def log_rows(self) -> Iterator[dict]:
        """The rows of train.jsonl in order (training steps and ``"type": "eval"`` points); a line cut short by a
        kill, being written, or garbled is skipped."""
        try:
            text = self.log.read_bytes().decode("utf-8", errors="replace")
        except OSError:                       # not written yet (or discarded meanwhile)
            return
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row
