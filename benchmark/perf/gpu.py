"""P7 GPU: P1-P3 again on the GPU, and the model FLOPs utilisation (MFU) of a ViT-B/16 CLIP training step in
bf16: counted FLOPs per step (``benchmark.flops``) / median step time / the device's peak dense bf16 FLOP/s.
Skipped, with the reason recorded, where no GPU is visible."""
from __future__ import annotations

import traceback
from pathlib import Path

import torch

from benchmark.discovery import build_method
from benchmark.perf import harness, masking, methods, timing, trainer
from benchmark.scales import get_scale

MFU_GOAL = 0.45

# Peak dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' data sheets; first match wins.
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12),
    ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
    ("RTX 4090", 165.2e12), ("B200", 2250e12),
)


def peak_bf16(name: str) -> float | None:
    for key, peak in PEAK_BF16:
        if key.lower() in name.lower():
            return peak
    return None


def mfu(device: torch.device, repeats: int, batch_size: int = 256, scale_name: str = "cc12m-b16",
        device_name: str | None = None) -> dict:
    """One ViT-B/16 CLIP (the paper scales' open_clip ViT-B-16 config, 224 px) harness step at ``batch_size`` in
    bf16 autocast, on synthetic data. ``scale_name``/``device_name`` let a test run the same code on a CPU."""
    scale = get_scale(scale_name)
    name = device_name or torch.cuda.get_device_name(device)
    peak = peak_bf16(name)
    data = harness.synthetic_pairs(scale, 2 * batch_size)
    method = build_method("clip", scale, device=device)
    step = harness.HarnessStep(method, data, scale, device, batch_size)
    counted = harness.step_flops(method, step.batch())
    samples = timing.interleave({"vit_b16_clip": step}, repeats, warmup=3, device=device)
    med = timing.summary(samples["vit_b16_clip"])
    achieved = counted / (med["median_ms"] / 1e3)
    precision = "bf16 autocast (fp32 master weights), eager" if device.type == "cuda" else "fp32"
    out = {"device": name, "model": scale_name, "batch": batch_size, "precision": precision,
           "step": med, "flops_per_step": counted, "tflop_per_step": round(counted / 1e12, 3),
           "achieved_tflops": round(achieved / 1e12, 1),
           "peak_bf16_tflops": peak / 1e12 if peak else None, "goal": f"MFU >= {MFU_GOAL:.0%} on an H100"}
    if peak:
        out["mfu"] = achieved / peak
        out["mfu_best"] = counted / (med["min_ms"] / 1e3) / peak
        out["met"] = out["mfu"] >= MFU_GOAL
    else:
        out["mfu"] = None
        out["note"] = f"no peak bf16 figure known for {name!r}; add it to benchmark/perf/gpu.py PEAK_BF16"
    return out


def measure(scale_name: str, repeats: int, scratch: Path) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible on this machine (torch.cuda.is_available() is False)"}
    device = torch.device("cuda")
    scale = get_scale(scale_name)
    out = {"device": torch.cuda.get_device_name(device)}
    parts = {"p1": lambda: trainer.measure(scale, device, repeats),
             "p2": lambda: masking.measure(scale, device, repeats),
             "p3": lambda: methods.measure(scale, device, repeats, scratch),
             "mfu": lambda: mfu(device, repeats)}
    for key, fn in parts.items():
        try:
            out[key] = fn()
        except Exception as e:  # noqa: BLE001 - record and go on with the other parts
            out[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return out
