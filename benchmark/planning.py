"""The compute plan of one run: FLOPs per step, steps under matched compute, and the memory of a step per GPU,
counted without the memory of the step (``benchmark.shape_only``).

- The step counted is the one training really runs: rank 0's first batch, of the per-rank size (global batch /
  world size), with the RNG state training starts from. Its contrastive loss sees the features of the whole
  global batch, as open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)`` does after its all-gather:
  the other ranks' features are stand-ins of their shape, so the [B/W, B] logits are counted exactly.
- FLOPs per step of the whole job = world size x rank 0's count. For a method whose FLOPs depend only on shapes
  this is exact (every rank runs the same shapes; the logits term is B/W x B per rank, B x B in all). Where the
  FLOPs depend on the data (cluster masking's kept length, MaskCLIP-Dong's masked caption words) every batch of
  every rank differs a little, and rank 0's first batch stands for all of them, as step 0 stands for every step.
- The model is shape-only (weights on the meta device), so this costs no weight, gradient or activation memory at any scale;
  the data-dependent selections run on the real pixels of the per-rank batch.
- When a step's control flow depends on values of the weights (``NeedsRealValues``), a caller that holds the
  real method counts the real step on the per-rank batch instead (``real_method``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch.utils.flop_counter import FlopCounterMode

from benchmark import discovery, flops
from benchmark.shape_only import NeedsRealValues, ShapeOnly, building, is_meta, to_shape_only


# ---- the contrastive loss of one rank among world_size ------------------------------------------------------------
class RankClipLoss(ClipLoss):
    """open_clip's ClipLoss as rank ``rank`` of ``world_size`` computes it, without a process group: the all-gather
    of ``gather_features`` is replaced by this rank's features at its place among zeros of the other ranks' shape.
    The logits are then [B/W, B] as in training (ClipLoss.get_logits, ``local_loss`` branch), and the labels are
    offset by the rank (ClipLoss.get_ground_truth)."""

    def __init__(self, rank: int, world_size: int):
        super().__init__(local_loss=True, gather_with_grad=True, cache_labels=False, rank=rank,
                         world_size=world_size)

    def _all(self, features: torch.Tensor) -> torch.Tensor:
        b = features.shape[0]
        before = features.new_zeros(self.rank * b, features.shape[1])
        after = features.new_zeros((self.world_size - self.rank - 1) * b, features.shape[1])
        return torch.cat([before, features, after])

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        if self.world_size == 1:
            return super().get_logits(image_features, text_features, logit_scale, logit_bias)
        logits_per_image = logit_scale * image_features @ self._all(text_features).T
        logits_per_text = logit_scale * text_features @ self._all(image_features).T
        if logit_bias is not None:
            logits_per_image, logits_per_text = logits_per_image + logit_bias, logits_per_text + logit_bias
        return logits_per_image, logits_per_text


# ---- shape-only models --------------------------------------------------------------------------------------------
def build_shape_only(info, cfg: dict, scale, seed: int, device, results_root: Path | None = None,
                     world_size: int = 1):
    """The method as rank 0 of ``world_size`` builds it, shape-only (``benchmark.shape_only``), with the run's
    architecture (a variant may widen the scale's image tower: ``discovery.context``)."""
    ctx = discovery.context(info, cfg, scale, device=torch.device(device), seed=seed, rank=0,
                            world_size=world_size, results_root=results_root, planning=True)
    with building(), torch.device(device):
        torch.manual_seed(seed)
        method = info.cls(open_clip.CLIP(**ctx.scale.model), cfg, ctx)
    method.clip_loss = RankClipLoss(0, world_size)
    return to_shape_only(method).train()


def build_reference_clip(scale, device):
    """A shape-only open_clip CLIP of the scale, every parameter trainable (the plain CLIP step)."""
    with building(), torch.device(device):
        clip = open_clip.CLIP(**scale.model)
    return to_shape_only(clip).train()


# ---- counting one step ------------------------------------------------------------------------------------------
@dataclass
class StepCount:
    flops: int                  # forward + backward FLOPs of this rank's step
    peak_bytes: int             # peak live bytes of the step's meta tensors (activations, gradients), fp32


def _count(module, device, run) -> StepCount:
    """Run ``run()`` (forward, loss, backward) under the FLOP counter; restore what a step may change."""
    rng = flops._rng_state(device)
    real_state = {k: v.detach().clone() for k, v in module.state_dict().items() if not is_meta(v)}
    stats = dict(getattr(module, "_stats", {}))
    mode = ShapeOnly()
    try:
        with mode, mode.tracked(), flops.counted_kernels(), FlopCounterMode(display=False) as counter:
            run()
        return StepCount(int(counter.get_total_flops()), mode.peak_bytes)
    finally:
        for p in module.parameters():
            p.grad = None
        with torch.no_grad():
            current = module.state_dict()
            for k, v in real_state.items():
                current[k].copy_(v)
        if hasattr(module, "_stats"):
            module._stats = stats
        flops._set_rng_state(rng, device)


def count_method_step(method, batch: dict, progress: float) -> StepCount:
    """One training step of a shape-only ``method`` on ``batch`` (this rank's), every pass it really does."""
    def run():
        method(batch, progress)["loss"].backward()
    return _count(method, batch["images"].device, run)


def count_reference_step(clip, batch: dict, world_size: int) -> StepCount:
    """One plain CLIP step (full image, one text pass, ClipLoss) of rank 0 among ``world_size``."""
    loss = RankClipLoss(0, world_size)

    def run():
        flops.clip_reference_loss(clip, batch, loss).backward()
    return _count(clip, batch["images"].device, run)


# ---- the plan of a run --------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    method: str
    scale: str
    match: str
    world_size: int
    per_rank_batch: int
    reference_flops: int                          # one plain CLIP step, all ranks
    phases: list = field(default_factory=list)    # [fraction of steps, FLOPs per step of all ranks]
    steps: int = 0
    flops_per_step: float = 0.0                   # mean over phases
    peak_step_bytes: int = 0                      # rank 0, fp32, the most expensive phase
    trainable_params: int = 0
    frozen_params: int = 0
    buffer_bytes: int = 0
    batch_bytes: int = 0
    counted_on: str = "shape-only"                # or "real step: <why>"

    @property
    def train_flops(self) -> float:
        return self.flops_per_step * self.steps

    def to_dict(self) -> dict:
        return {**asdict(self), "train_flops": self.train_flops}


def _batch_bytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))


def rank0_batch(data, scale, seed: int, device, world_size: int) -> dict:
    """Rank 0's batch of step 0, as training draws it."""
    return data.batch(0, scale.batch_size, seed, device, 0, world_size)


def reference_flops(scale, batch: dict, device, world_size: int) -> int:
    """FLOPs of one plain CLIP step of the whole job at ``world_size`` (``batch``: rank 0's)."""
    clip = build_reference_clip(scale, device)
    return world_size * count_reference_step(clip, batch, world_size).flops


def plan_run(info, cfg: dict, scale, seed: int, data, device, world_size: int = 1, match: str = "flops",
             results_root: Path | None = None, real_method=None, reference: int | None = None,
             batch: dict | None = None) -> RunPlan:
    """The plan of one run of ``info`` at ``scale``. The torch RNG is left as it was found. ``real_method`` (the
    method being trained, on its device): counted for real on the per-rank batch if the shape-only step needs
    real values. ``reference``/``batch``: reuse what the caller computed already."""
    global_batch = scale.batch_size * info.batch_multiplier    # a variant's larger batch
    match = info.match_for(match)                              # a variant's own budget (clip@wide: samples)
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} not divisible by world size {world_size}")
    entry_rng = flops._rng_state(device)     # the state training starts from: every count starts from it
    batch = batch if batch is not None else rank0_batch(data, scale, seed, device, world_size)
    # the reference is a CLIP step at the scale's batch; the method's step is counted at its own batch
    run_batch = batch if global_batch == scale.batch_size else data.batch(0, global_batch, seed, device, 0,
                                                                          world_size)
    try:
        if reference is None:
            reference = reference_flops(scale, batch, device, world_size)
        method = build_shape_only(info, cfg, scale, seed, device, results_root, world_size)
        return _plan(info, method, scale, run_batch, device, world_size, match, real_method, reference, entry_rng,
                     global_batch)
    finally:
        flops._set_rng_state(entry_rng, device)


def _plan(info, method, scale, batch, device, world_size, match, real_method, reference, entry_rng, global_batch):
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in method.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in method.buffers())
    phases, peak, counted_on = [], 0, "shape-only"
    for frac, progress in method.phases():
        flops._set_rng_state(entry_rng, device)
        try:
            c = count_method_step(method, batch, progress)
            count, step_peak = c.flops, c.peak_bytes
        except NeedsRealValues as e:
            if real_method is None:
                raise
            counted_on = f"real step ({e})"
            if world_size > 1:     # the real method's loss gathers over a process group: count rank 0 alone
                raise NeedsRealValues(f"{info.name}: {e}; planning it on several ranks needs a shape-only step") \
                    from e
            count, step_peak = flops.count_step_flops(real_method, batch, progress), 0
        phases.append((frac, world_size * count))
        peak = max(peak, step_peak)
    del method
    steps = flops.plan_steps(match, scale, reference, phases, global_batch)
    return RunPlan(method=info.name, scale=scale.name, match=match, world_size=world_size,
                   per_rank_batch=global_batch // world_size, reference_flops=reference,
                   phases=[list(p) for p in phases], steps=steps,
                   flops_per_step=sum(f * c for f, c in phases), peak_step_bytes=peak,
                   trainable_params=trainable, frozen_params=frozen, buffer_bytes=buffers,
                   batch_bytes=_batch_bytes(batch), counted_on=counted_on)


# ---- memory of a training step per GPU ------------------------------------------------------------------------------
CUDA_OVERHEAD_BYTES = 2 * 1024 ** 3     # CUDA context, cuBLAS/cuDNN workspaces, allocator slack (an allowance)


def memory_estimate(plan: RunPlan) -> dict:
    """Peak memory of one GPU in training, estimated (bytes): fp32 weights of every module, fp32 gradients and
    AdamW's two fp32 moments of the trainable ones, buffers, the batch, and the step's activations. The
    activations are counted in fp32 on the shape-only step (SDPA math backend: attention probabilities stored);
    under bf16 autocast they take about half (``bf16``); the GPU check measures the truth."""
    states = 4 * (plan.trainable_params + plan.frozen_params) + 8 * plan.trainable_params + plan.buffer_bytes
    grads = 4 * plan.trainable_params
    activations = max(0, plan.peak_step_bytes - grads)
    fp32 = states + grads + activations + plan.batch_bytes + CUDA_OVERHEAD_BYTES
    bf16 = states + grads + activations // 2 + plan.batch_bytes + CUDA_OVERHEAD_BYTES
    return {"states_bytes": states, "gradient_bytes": grads, "activation_bytes_fp32": activations,
            "batch_bytes": plan.batch_bytes, "overhead_bytes": CUDA_OVERHEAD_BYTES,
            "fp32_bytes": fp32, "bf16_bytes": bf16}


def gpu_hours(train_flops: float, gpu_peak_flops: float, mfu: float) -> float:
    """GPU-hours of ``train_flops`` at ``mfu`` of ``gpu_peak_flops`` per GPU."""
    if not (gpu_peak_flops > 0 and 0 < mfu <= 1):
        return math.nan
    return train_flops / (gpu_peak_flops * mfu) / 3600
