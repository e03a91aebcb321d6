"""GPU check of the paper-scale plan (``python -m benchmark.perf.paper_step``; about 3-5 minutes on one GPU).

For every method at ViT-B/16 (the paper scale's config), on one GPU, per-GPU batch 256, bf16 autocast, the
harness's own training step (``harness.HarnessStep``): median ms/step, images/s, MFU against the device's dense
bf16 peak (``gpu.PEAK_BF16``), peak memory (``torch.cuda.max_memory_allocated``) against the plan's estimate for
that per-rank batch (``planning.memory_estimate``), and the FLOPs counted on the device on the real weights
(``flops.count_step_flops``) against the shape-only plan of the same step (``planning.plan_run``): they must be
equal. ``--scale smoke --batch 8 --steps 2`` runs the same code on a CPU (the FLOP equality is tested so).
UTA's teacher is a freshly initialised CLIP of the scale (its cost does not depend on its weights).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmark import discovery, flops, planning
from benchmark.data.synthetic import synthetic_pairs
from benchmark.perf import gpu, harness
from benchmark.scales import get_scale
from benchmark.train import autocast_for

METHODS = ("clip", "flip", "cluster_masking", "maskclip_dong", "maskclip_weers", "uta")


def check_method(name: str, scale, device: torch.device, batch: int, steps: int, scratch: Path) -> dict:
    one_gpu = dataclasses.replace(scale, batch_size=batch)         # one rank's step: its batch, its B x B logits
    info = discovery.discover()[name]
    cfg = info.config(scale.name, harness.method_overrides(name, scratch, one_gpu))
    data = synthetic_pairs(one_gpu, 2 * batch)
    torch.manual_seed(0)
    plan = planning.plan_run(info, cfg, one_gpu, 0, data, device, 1)
    method = discovery.build_method(info, one_gpu, device=device, cfg=cfg)
    torch.manual_seed(0)
    with autocast_for(device):        # as training runs it (the count depends on shapes, not precision)
        counted = flops.count_step_flops(method, data.batch(0, batch, 0, device), 0.0)
    step = harness.HarnessStep(method, data, one_gpu, device, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()                                                          # warm-up (allocator, kernels)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    ms = sorted(times)[len(times) // 2] * 1e3
    est = planning.memory_estimate(plan)
    name_ = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = gpu.peak_bf16(name_)
    out = {"method": name, "batch": batch, "ms_per_step": round(ms, 1), "images_per_s": round(batch / ms * 1e3, 1),
           "planned_flops": plan.phases[0][1], "counted_flops_on_device": counted,
           "flops_equal": plan.phases[0][1] == counted,
           "mfu": counted / (ms / 1e3) / peak if peak else None,
           "estimated_peak_gb_bf16": round(est["bf16_bytes"] / 2 ** 30, 2),
           "estimated_peak_gb_fp32": round(est["fp32_bytes"] / 2 ** 30, 2)}
    if device.type == "cuda":
        out["measured_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    del method, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf.paper_step", description=__doc__.split("\n")[0])
    p.add_argument("--scale", default="cc12m-b16")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch", type=int, default=256, help="per-GPU batch")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method (after one warm-up)")
    p.add_argument("--out", default="reports/perf/paper_step.json")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not get_scale(args.scale).runs_here:
        print(f"no CUDA device visible: the {args.scale} check needs a GPU (on a CPU, try --scale smoke --batch 8)",
              file=sys.stderr)
        return 2
    scale = get_scale(args.scale)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.methods.split(","):
            row = check_method(name, scale, device, args.batch, args.steps, Path(scratch))
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": str(device), "scale": scale.name, "rows": rows}, indent=2))
    bad = [r["method"] for r in rows if not r["flops_equal"]]
    if bad:
        print(f"FLOPs counted on the device differ from the plan for: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
