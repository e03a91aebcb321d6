"""Experiment trackers for ``run --report-to`` (open_clip's flag and names): ``tensorboard`` and ``wandb``.

One tracker run per (method, seed), written inside the run folder: ``<run>/tensorboard/`` (event files) and
``<run>/wandb/``. Logged at the training log's rows (``train.jsonl``): the losses (``train/<name>``), learning rate,
gradient norm, images/s, samples seen, the method's statistics (``stats/<name>``: the realised mask ratio and
the like); the periodic evaluations (``eval/<metric>``); after training, the main metric of every final
evaluation (``final/<task>``, or ``final/<task>/<dataset>`` for a task with several datasets). The x axis is the
optimizer step.

A run resumed from a checkpoint continues the same tracker run: TensorBoard drops the events logged after the
checkpoint (``purge_step``), wandb resumes the run by its id (derived from the run's config hash). Weights &
Biases honours its own environment (``WANDB_MODE=offline`` logs to ``<run>/wandb`` without a network,
``WANDB_PROJECT``; the project defaults to ``maskbench``). Both packages are optional: ``pip install
'maskbench[tensorboard]'`` / ``'maskbench[wandb]'``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from benchmark.errors import UserError

TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}   # name: (module, extra)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def parse_report_to(values: list[str] | str | None) -> tuple[str, ...]:
    """``--report-to tensorboard,wandb`` / ``tensorboard wandb`` / ``none`` -> the tracker names, each checked to be
    installed (before anything is written)."""
    values = [values] if isinstance(values, str) else list(values or [])
    names = [n.strip().lower() for v in values for n in v.split(",") if n.strip()]
    names = [n for n in names if n not in ("none", "")]
    for n in names:
        if n not in TRACKERS:
            raise UserError(f"--report-to {n!r} is not a tracker here; choose tensorboard, wandb (or both, "
                            "separated by commas or spaces), or none")
        module, extra = TRACKERS[n]
        if not installed(module):
            raise UserError(f"--report-to {n} needs the {module} package, which is not installed: "
                            f"pip install 'maskbench[{extra}]' (or pip install {module})")
    return tuple(dict.fromkeys(names))


def _scalars(row: dict, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The trackers of one run. ``start(step)`` once training knows where it resumes; then ``log_*``; ``close()``."""

    def __init__(self, names: tuple[str, ...], run_dir: Path, run_name: str, config: dict, run_id: str):
        self.names, self.run_dir, self.run_name, self.config = tuple(names), Path(run_dir), run_name, config
        self.run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_id)
        self._tb = None
        self._wandb = None

    def start(self, step: int) -> None:
        if "tensorboard" in self.names and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            # a resumed run drops the events logged after its checkpoint (step ``step`` itself is kept)
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=step + 1 if step else None)
            if not step:
                self._tb.add_text("config", "```\n" + json.dumps(self.config, indent=1, sort_keys=True,
                                                                 default=str) + "\n```", 0)
        if "wandb" in self.names and self._wandb is None:
            import wandb
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "maskbench"), name=self.run_name,
                                     id=self.run_id, resume="allow", dir=str(self.run_dir), config=self.config,
                                     reinit="create_new")

    def log(self, scalars: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def log_train(self, row: dict, losses: tuple[str, ...], stats: tuple[str, ...]) -> None:
        """A ``train.jsonl`` row: losses and optimisation figures under ``train/``, method statistics under
        ``stats/``."""
        step = int(row["step"])
        scalars = _scalars({k: row[k] for k in losses if k in row}, "train")
        scalars.update(_scalars({k: row[k] for k in ("lr", "grad_norm", "samples") if k in row}, "train"))
        if row.get("wall_time_s"):
            scalars["train/images_per_s"] = row["samples"] / row["wall_time_s"]
        scalars.update(_scalars({k: row[k] for k in stats if k in row}, "stats"))
        self.log(scalars, step)

    def log_eval(self, point: dict) -> None:
        """A periodic evaluation (``train.jsonl`` ``{"type": "eval"}`` rows)."""
        self.log(_scalars(point, "eval", skip=("step",)), int(point["step"]))

    def log_final(self, evals: dict, step: int) -> None:
        """The main metric of each final evaluation (``metrics.json`` ``evals``: task -> dataset -> value)."""
        scalars = {}
        for task, per_dataset in evals.items():
            if isinstance(per_dataset, dict):
                values = {ds: float(v) for ds, v in per_dataset.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)}
                if len(values) == 1:                       # one dataset: named by the task alone
                    scalars[f"final/{task}"] = next(iter(values.values()))
                else:
                    scalars.update({f"final/{task}/{ds}": v for ds, v in values.items()})
        self.log(scalars, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def for_run(spec, ident: dict, config_hash: str) -> Trackers | None:
    """The trackers ``spec.report_to`` names for this run (None when it names none)."""
    if not spec.report_to:
        return None
    return Trackers(tuple(spec.report_to), spec.dir, f"{spec.scale}/{spec.method}/seed{spec.seed}", ident,
                    f"{spec.method}-seed{spec.seed}-{config_hash}")


@contextmanager
def closed_on_error(tracker: Trackers | None):
    """Close the trackers when the block raises (training stopped or failed); they stay open otherwise."""
    try:
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.close()
        raise
