"""What every measure builds: the device description, methods at a scale, training data, and the harness's
training step exactly as ``benchmark.train.train`` runs it (same optimizer, schedule, autocast, clipping, hooks).
"""
from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import torch

from benchmark import flops
from benchmark.data.synthetic import synthetic_pairs  # noqa: F401 - measures build data through harness
from benchmark.data.train_data import InMemoryPairs, load_training_data
from benchmark.discovery import discover
from benchmark.errors import NonFiniteLoss
from benchmark.method import Context
from benchmark.runs import build_clip
from benchmark.scales import Scale
from benchmark.train import clip_gradients, lr_at, make_optimizer


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


def autocast_for(device: torch.device):
    """The trainer's precision: bf16 autocast on GPU, fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


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
    info = discover()[name]
    if "teacher_checkpoint" in info.defaults:
        return {"teacher_checkpoint": str(teacher_checkpoint(scale, scratch))}
    return {}


def build_method(name: str, scale: Scale, device: torch.device, config_scale: str | None = None,
                 overrides: dict | None = None, seed: int = 0):
    """The method ``name`` built as ``benchmark.runs`` builds it: the scale's CLIP, the method's config for
    ``config_scale`` (default: the scale's name), on ``device``, in train mode."""
    info = discover()[name]
    if not info.ok:
        raise RuntimeError(f"method {name} is broken: {info.error}")
    cfg = info.config(config_scale or scale.name, overrides or {})
    ctx = Context(scale=scale, device=device, seed=seed)
    torch.manual_seed(seed)
    return info.cls(build_clip(scale, seed), cfg, ctx).to(device).train()


class HarnessStep:
    """One call = one training step of ``benchmark.train.train``'s loop body: lr schedule, ``data.batch``, the
    method's forward under the trainer's autocast, the finiteness check, backward, gradient clipping, fused
    AdamW, ``after_optimizer_step``. Nothing else (no logging, checkpoints or periodic evaluation)."""

    def __init__(self, method, data: InMemoryPairs, scale: Scale, device: torch.device, batch_size: int | None = None,
                 progress: float = 0.0, steps_total: int = 1000, seed: int = 0):
        self.method, self.data, self.scale, self.device = method, data, scale, device
        self.batch_size = batch_size or scale.batch_size
        self.progress, self.steps_total, self.seed = progress, steps_total, seed
        self.opt = make_optimizer(method, scale.optim)
        self.warmup = scale.optim.warmup_samples // self.batch_size
        self.autocast = autocast_for(device)
        self.step = 0

    def __call__(self) -> None:
        lr = lr_at(self.step, self.steps_total, self.warmup, self.scale.optim.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        batch = self.data.batch(self.step % self.steps_total, self.batch_size, self.seed, self.device)
        with self.autocast:
            losses = self.method(batch, self.progress)
        loss = losses["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(f"non-finite loss in a perf step of {type(self.method).__name__}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.method.parameters(), self.scale.optim.grad_clip)
        self.opt.step()
        self.method.after_optimizer_step(self.progress)
        self.step += 1

    def batch(self) -> dict:
        return self.data.batch(0, self.batch_size, self.seed, self.device)


def step_flops(method, batch: dict, progress: float = 0.0) -> int:
    """Counted forward + backward FLOPs of one step (``benchmark.flops``, SDPA math backend)."""
    return flops.count_step_flops(method, batch, progress)
