"""One training loop for every method (nanoGPT-style: everything a step does is visible here).

AdamW with open_clip's parameter groups, linear warmup then cosine, and ``train_step``: bf16 autocast on GPU,
optional gradient clipping, the method's ``after_optimizer_step`` (logit-scale clamp, EMA). Checkpoints every N steps and
at the end; on start the run resumes from its latest checkpoint and continues exactly as if never stopped: model,
optimizer, RNG state and data position (the batch of a step is a function of the seed and the step).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from benchmark import active_rows, checkpoint, distributed
from benchmark.faults import maybe_kill
from benchmark.errors import NonFiniteLoss
from benchmark.run_folder import RunFolder
from benchmark.scales import Optim


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, norms and the logit scale (legacy_main.py)."""
    def no_decay(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": weight_decay}]


def make_optimizer(module: torch.nn.Module, optim: Optim) -> torch.optim.AdamW:
    opt = torch.optim.AdamW(param_groups(module, optim.weight_decay), lr=optim.lr, betas=optim.betas,
                            eps=optim.eps, fused=True)
    active_rows.follow(module, opt)       # token rows no caption uses decay as AdamW would decay them
    return opt


def clip_gradients(parameters, max_norm: float | None, norm_wanted: bool = True) -> torch.Tensor | None:
    """The global gradient norm, clipped to ``max_norm`` first when it is set (open_clip_train/train.py:
    ``clip_grad_norm_`` only under ``--grad-clip-norm``). Without clipping the norm is only read for the log, so
    it is computed only when ``norm_wanted`` (about 3 % of a pocket step otherwise; None is returned)."""
    if max_norm is None and not norm_wanted:
        return None
    params = [p for p in parameters if p.grad is not None]
    if max_norm is None:
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def lr_at(step: int, steps: int, warmup: int, base_lr: float, start_lr: float = 0.0, end_lr: float = 0.0) -> float:
    """open_clip's cosine_lr: linear warmup to ``base_lr``, then cosine to ``end_lr`` (open_clip: 0).
    With ``start_lr`` the warmup is SLIP's ``np.linspace(start_lr, base_lr, warmup)`` (SLIP ``utils.cosine_scheduler``)."""
    if step < warmup:
        if start_lr:
            return start_lr + (base_lr - start_lr) * step / max(1, warmup - 1)
        return base_lr * (step + 1) / warmup
    return end_lr + 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) * (base_lr - end_lr)


def stage_bounds(steps: int, fractions: list[float]) -> list[int]:
    """First step of each stage: the first step whose progress ``step / steps`` reaches the stage's start (so a
    method that switches on ``progress`` switches at the same step), and ``steps`` at the end."""
    bounds, start = [0], 0.0
    for frac in fractions[:-1]:
        start += frac
        first = min(steps, math.ceil(start * steps))
        while first > 0 and (first - 1) / steps >= start:
            first -= 1
        while first < steps and first / steps < start:
            first += 1
        bounds.append(first)
    return bounds + [steps]


def scheduled_lr(step: int, plan: "TrainPlan") -> tuple[float, bool]:
    """The learning rate of ``step`` and whether it is the first step of a later stage (FLIP's unmasked tuning:
    a separate short run with its own small learning rate and warm-up, §3.3 / App. A.1). Each stage after the
    first restarts the schedule from a fresh optimizer state, as open_clip's ``--pretrained`` fine-tuning does."""
    o = plan.optim
    bounds = stage_bounds(plan.steps, [s[0] for s in plan.stages])
    i = max(k for k in range(len(plan.stages)) if bounds[k] <= step or k == 0)
    _, lr_scale, warmup_fraction = plan.stages[i]
    first, length = bounds[i], bounds[i + 1] - bounds[i]
    warmup = plan.warmup_steps if warmup_fraction is None else round(warmup_fraction * length)
    lr = lr_at(step - first, length, warmup, o.lr * lr_scale, o.warmup_start_lr * lr_scale, o.min_lr * lr_scale)
    return lr, i > 0 and step == first


def autocast_for(device) -> torch.autocast:
    """The trainer's precision: bf16 autocast on GPU, fp32 on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def attention_kernel_for(device):
    """SDPA's kernel in the training step: torch's choice on GPU (flash); the math kernel on CPU, where the
    flash kernel's per-call set-up dominates the short sequences of small models (pocket: 17 image and 20 text
    tokens; steps up to 6 % faster, CLIP's most, none slower: ``python -m benchmark.perf.levers --attention``).
    FLOPs are counted under the math kernel too (``benchmark.flops``)."""
    if torch.device(device).type == "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def train_step(model: torch.nn.Module, method, opt: torch.optim.Optimizer, batch: dict, progress: float, lr: float,
               grad_clip: float | None, device, step: int = 0,
               norm_wanted: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One optimizer step, the only one there is: the loop below, ``benchmark perf`` and any script call it.

    Sets ``lr``, runs the method's ``training_step`` (through ``model``: the method or its DDP wrapper) under
    ``autocast_for(device)`` and ``attention_kernel_for(device)``, refuses a non-finite loss, backward, gradient
    clipping, the optimizer step and the method's ``after_optimizer_step``. Returns the named losses and the
    gradient norm (before clipping; None when there is no clipping and ``norm_wanted`` is False)."""
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast_for(device), attention_kernel_for(device):
        losses = model(batch, progress)
    loss = losses["loss"]
    if not torch.isfinite(loss.detach()).all():
        values = {k: float(v.detach().float()) for k, v in losses.items()}
        raise NonFiniteLoss(f"non-finite loss at step {step}: {values}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(method.parameters(), grad_clip, norm_wanted)
    opt.step()
    method.after_optimizer_step(progress)
    return losses, grad_norm


@dataclass
class TrainPlan:
    steps: int
    batch_size: int
    seed: int
    optim: Optim
    checkpoint_every: int
    eval_every_steps: int = 0
    flops_per_step: float = 0.0      # mean over phases; for the periodic-eval FLOP axis
    log_every: int = 10
    stages: list = field(default_factory=lambda: [(1.0, 1.0, None)])   # Method.lr_stages()

    @property
    def warmup_steps(self) -> int:
        return self.optim.warmup_samples // self.batch_size


@dataclass
class TrainState:
    step: int = 0
    wall_time_s: float = 0.0
    history: list = field(default_factory=list)   # periodic evaluations during training


class Interrupted(Exception):
    """The process was asked to stop (SIGUSR2/SIGTERM); a checkpoint was written first."""


def _rng_states(device) -> dict:
    s = {"torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _restore_rng(states: dict | list, device, rank: int = 0) -> None:
    # A multi-process checkpoint holds one state per rank (each rank draws its own masks).
    if isinstance(states, list):
        states = states[rank] if rank < len(states) else states[0]
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


def _truncate_log(folder: RunFolder, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so the log reads as one clean run. Rewritten
    beside and renamed (a kill during the rewrite leaves the old log, never half of it)."""
    if not folder.log.exists():
        return
    keep = [row for row in folder.log_rows() if row.get("step", 0) <= step]
    checkpoint.atomic_write_bytes(folder.log, "".join(json.dumps(row) + "\n" for row in keep).encode())


def train(model: torch.nn.Module, method, data, plan: TrainPlan, run_dir: Path, device,
          rank: int = 0, world_size: int = 1, periodic_eval: Callable | None = None,
          stop_requested: Callable[[], bool] = lambda: False, progress_bar: bool = True,
          tracker=None) -> TrainState:
    """Train ``model`` (the method, or its DDP wrapper) for ``plan.steps``, resuming from ``run_dir``.
    ``tracker``: a ``benchmark.tracking.Trackers`` (rank 0) that receives every log row and periodic evaluation."""
    folder = RunFolder(run_dir)
    ckpt_dir, log_path = folder.checkpoints, folder.log
    opt = make_optimizer(method, plan.optim)
    state = TrainState()
    last = checkpoint.latest(ckpt_dir)
    if last is not None:
        blob = checkpoint.load(last, map_location=device)
        method.load_state_dict(blob["method"])
        opt.load_state_dict(blob["optimizer"])
        _restore_rng(blob["rng"], device, rank)
        state = TrainState(step=int(blob["step"]), wall_time_s=float(blob["wall_time_s"]),
                           history=list(blob["history"]))
        method.record(**blob.get("stats", {}))     # the last step's statistics, even when no step is left to run
        if rank == 0:
            print(f"resuming {run_dir} from {last.name} (step {state.step} of {plan.steps})", flush=True)
    if rank == 0:
        _truncate_log(folder, state.step)
    if tracker is not None:
        tracker.start(state.step)

    def save():
        # Every rank reaches save() at the same step; the RNG states of all ranks are gathered, rank 0 writes.
        rng = distributed.all_gather_object(_rng_states(device)) if world_size > 1 else _rng_states(device)
        if rank == 0:
            checkpoint.save(ckpt_dir, state.step, {
                "method": method.state_dict(), "optimizer": opt.state_dict(), "rng": rng,
                "step": state.step, "wall_time_s": state.wall_time_s, "history": state.history,
                "stats": method.stats()})

    model.train()
    log = open(log_path, "a") if rank == 0 else None
    bar = tqdm(total=plan.steps, initial=state.step, desc=f"train {run_dir.parent.name}/{run_dir.name}",
               unit="step", disable=not progress_bar or rank != 0, leave=False)
    try:
        while state.step < plan.steps:
            stop = stop_requested()
            if world_size > 1:
                stop = distributed.any_rank(stop)      # all ranks stop at the same step
            if stop:
                save()
                raise Interrupted(f"stopped at step {state.step}")
            t0 = time.perf_counter()
            step, progress = state.step, state.step / plan.steps
            lr, new_stage = scheduled_lr(step, plan)
            if new_stage:
                opt.state.clear()                     # a later stage starts as a separate run would
            batch = data.batch(step, plan.batch_size, plan.seed, device, rank, world_size)
            logged = log is not None and (step % plan.log_every == 0 or step + 1 == plan.steps)
            try:
                losses, grad_norm = train_step(model, method, opt, batch, progress, lr, plan.optim.grad_clip, device,
                                               step, norm_wanted=logged)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(f"{e}; the last good checkpoint is kept in {ckpt_dir}") from None
            state.step += 1
            state.wall_time_s += time.perf_counter() - t0
            bar.update()
            if logged:
                row = {"step": state.step, "steps_total": plan.steps, "samples": state.step * plan.batch_size,
                       "lr": lr, "grad_norm": float(grad_norm), "wall_time_s": round(state.wall_time_s, 3),
                       **{k: float(v.detach().float()) for k, v in losses.items()}, **method.stats()}
                log.write(json.dumps(row) + "\n")
                log.flush()
                if tracker is not None:
                    tracker.log_train(row, tuple(losses), tuple(method.stats()))
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if periodic_eval is not None and rank == 0 and plan.eval_every_steps \
                    and state.step % plan.eval_every_steps == 0 and state.step < plan.steps:
                point = {"step": state.step, "samples": state.step * plan.batch_size,
                         "train_flops": state.step * plan.flops_per_step, **periodic_eval(method)}
                model.train()
                state.history.append(point)
                if log is not None:
                    log.write(json.dumps({"type": "eval", **point}) + "\n")
                    log.flush()
                if tracker is not None:
                    tracker.log_eval(point)
            if state.step % plan.checkpoint_every == 0 or state.step == plan.steps:
                save()
            maybe_kill("step", state.step)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return state


class StopFlag:
    """Turns a signal (SIGUSR2: Slurm's time limit or a preemption) into a checkpoint-and-stop at the next step
    boundary: ``train`` polls it, saves a checkpoint and raises ``Interrupted``.

    With ``pass_through`` (a Slurm job) the flag only catches the signal while armed (``with flag.armed():`` around
    training); outside training nothing is unsaved, so the signal goes at once to the handler installed before the
    flag (submitit's checkpoint-and-requeue), as does ``forward()`` after an ``Interrupted``, and a signal that
    arrived after the last step boundary is forwarded when training ends.
    """

    def __init__(self, signals=(signal.SIGUSR2, signal.SIGTERM), pass_through: bool = False):
        self.requested = False
        self.pass_through = pass_through
        self._armed = not pass_through
        self._signum = None
        self._old = {}
        if os.environ.get("MASKBENCH_NO_SIGNALS"):
            return
        for s in signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:      # not the main thread
                pass

    def _handle(self, signum, frame):
        if self._armed:
            self.requested, self._signum = True, signum
        else:
            self._forward_or_carry_on(signum, frame)

    def _forward_or_carry_on(self, signum, frame=None) -> None:
        try:
            self.forward(signum, frame)
        except Exception as e:      # noqa: BLE001 - raised here, it would surface inside whatever code was running
            # (submitit refusing a requeue, "timed-out too many times"): carry on; the work may still finish in time
            print(f"signal {signal.Signals(signum).name} not acted on: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)

    def __call__(self) -> bool:
        return self.requested

    def forward(self, signum=None, frame=None) -> None:
        """Hand the signal to the handler that was installed before this flag (a no-op if there was none)."""
        signum = signum if signum is not None else self._signum
        old = self._old.get(signum)
        if callable(old):
            old(signum, frame)

    @contextmanager
    def armed(self):
        self._armed = True
        try:
            yield self
        finally:
            self._armed = not self.pass_through
        # reached only when training ended normally (an Interrupted skips this: its catcher forwards)
        if self.requested and self.pass_through:
            self._forward_or_carry_on(self._signum)

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
