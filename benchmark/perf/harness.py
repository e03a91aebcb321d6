"""What every measure builds: the device description, methods at a scale, training data, and the harness's
training step as ``benchmark.train.train`` runs it (``benchmark.train.train_step``, same optimizer and schedule).
"""
from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import torch

from benchmark import active_rows, discovery, flops
from benchmark.data.synthetic import synthetic_pairs  # noqa: F401 - measures build data through harness
from benchmark.data.train_data import InMemoryPairs, load_training_data
from benchmark.model import build_clip
from benchmark.scales import Scale
from benchmark.train import TrainPlan, lr_at, make_optimizer, train_step


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device)}
    if os.environ.get("OMP_NUM_THREADS"):
        info["omp_num_threads"] = os.environ["OMP_NUM_THREADS"]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")




def training_pairs(scale: Scale, synthetic: bool = False, n: int = 4096) -> InMemoryPairs:
    return synthetic_pairs(scale, n) if synthetic else load_training_data(scale)


def with_model(scale: Scale, name: str, **model) -> Scale:
    """A variant of ``scale`` with another model (same optimizer, batch and data)."""
    return dataclasses.replace(scale, name=name, model=model)


def teacher_checkpoint(scale: Scale, folder: Path, seed: int = 0) -> Path:
    """An open_clip CLIP export of the scale's model, for UTA's frozen teacher (its cost does not depend on its
    weights, so a freshly initialised CLIP stands in for a trained one)."""
    path = folder / f"teacher-{scale.name}-seed{seed}.pt"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(build_clip(scale, seed).state_dict(), path)
    return path


def method_overrides(name: str, scratch: Path, scale: Scale) -> dict:
    """Overrides a method needs to be built outside a sweep (UTA: a teacher checkpoint instead of a run)."""
    info = discovery.discover()[name]
    if "teacher_checkpoint" in info.defaults:
        return {"teacher_checkpoint": str(teacher_checkpoint(scale, scratch))}
    return {}


class HarnessStep:
    """One call = one step of ``benchmark.train.train``'s loop: the lr schedule, ``data.batch`` and
    ``benchmark.train.train_step`` itself (no logging, checkpoints or periodic evaluation)."""

    def __init__(self, method, data: InMemoryPairs, scale: Scale, device: torch.device, batch_size: int | None = None,
                 progress: float = 0.0, steps_total: int = 1000, seed: int = 0):
        self.method, self.data, self.scale, self.device = method, data, scale, device
        self.batch_size = batch_size or scale.batch_size
        self.progress, self.steps_total, self.seed = progress, steps_total, seed
        active_rows.for_training(method, data, device)      # as benchmark.runs does before training
        self.opt = make_optimizer(method, scale.optim)
        self.warmup = scale.optim.warmup_samples // self.batch_size
        self.step = 0
        self.norm_every = TrainPlan.log_every     # the loop computes the gradient norm for logged steps only

    def __call__(self) -> None:
        lr = lr_at(self.step, self.steps_total, self.warmup, self.scale.optim.lr)
        batch = self.data.batch(self.step % self.steps_total, self.batch_size, self.seed, self.device)
        train_step(self.method, self.method, self.opt, batch, self.progress, lr, self.scale.optim.grad_clip,
                   self.device, self.step, norm_wanted=self.step % self.norm_every == 0)
        self.step += 1

    def batch(self) -> dict:
        return self.data.batch(0, self.batch_size, self.seed, self.device)


def step_flops(method, batch: dict, progress: float = 0.0) -> int:
    """Counted forward + backward FLOPs of one step (``benchmark.flops``, SDPA math backend)."""
    return flops.count_step_flops(method, batch, progress)
