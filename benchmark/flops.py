"""Compute accounting: FLOPs of one real training step, counted, never declared (docs/design.md, "Matched compute").

The step (forward, every loss, backward) runs once under ``torch.utils.flop_counter.FlopCounterMode``. Runs plan
on shape-only copies (``benchmark.planning``, no memory); ``count_step_flops`` counts a real step on a copy of a
real method (the reference the planning is tested against, and the fallback for a step that needs real values).
Attention is counted by forcing the SDPA math backend and ``nn.MultiheadAttention``'s unfused path
(``counted_kernels``): the fused kernels (``aten._scaled_dot_product_flash_attention_for_cpu``,
``aten._native_multi_head_attention``) have no FLOP formula in ``torch.utils.flop_counter`` and would silently be
left out.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def counted_kernels():
    """Kernels whose FLOPs ``FlopCounterMode`` can count: the SDPA math backend (the fused CPU kernel has no FLOP
    formula), and ``nn.MultiheadAttention`` off its fused fast path (``_native_multi_head_attention``, which an
    eval-mode module without gradients takes: a frozen teacher's attention would count 0 FLOPs)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _rng_state(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None)


def _set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def count_step_flops(method, batch: dict, progress: float) -> int:
    """Forward + backward FLOPs of one training step of ``method`` on ``batch`` (all passes it really does)."""
    device = batch["images"].device
    rng = _rng_state(device)
    probe = copy.deepcopy(method)
    probe.train()
    try:
        with counted_kernels(), FlopCounterMode(display=False) as counter:
            losses = probe(batch, progress)
            losses["loss"].backward()
        return int(counter.get_total_flops())
    finally:
        del probe
        _set_rng_state(rng, device)


def clip_reference_loss(clip, batch: dict, clip_loss) -> torch.Tensor:
    """The loss of one plain CLIP step (full image, one text pass, ClipLoss): the unit of the compute budget."""
    img = F.normalize(clip.encode_image(batch["images"]), dim=-1)
    txt = F.normalize(clip.encode_text(batch["texts"]), dim=-1)
    return clip_loss(img, txt, clip.logit_scale.exp())


def reference_clip_flops(clip, batch: dict, clip_loss) -> int:
    """FLOPs of one plain CLIP step on real weights (a copy of ``clip``, both towers trained)."""
    probe = copy.deepcopy(clip).train()
    for p in probe.parameters():    # a plain CLIP trains both towers, whatever the method froze (UTA's text)
        p.requires_grad_(True)
    with counted_kernels(), FlopCounterMode(display=False) as counter:
        clip_reference_loss(probe, batch, clip_loss).backward()
    return int(counter.get_total_flops())


def plan_steps(match: str, scale, reference_flops: int, phase_flops: list[tuple[float, int]],
               batch_size: int | None = None) -> int:
    """Steps of a run. ``samples``: the scale's samples / batch (the papers' protocol). ``flops``: as many steps
    as fit the FLOPs the CLIP reference spends on those samples, given the per-step cost of each phase.
    ``batch_size``: the run's global batch when a variant multiplies the scale's (the phase FLOPs are then
    counted at that batch; the reference stays a CLIP step at the scale's batch)."""
    reference_steps = scale.samples // scale.batch_size
    if match == "samples":
        return scale.samples // (batch_size or scale.batch_size)
    per_step = sum(frac * f for frac, f in phase_flops)
    return max(1, math.floor(reference_steps * reference_flops / per_step))
