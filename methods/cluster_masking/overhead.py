"""What the cluster selection costs per training step (the goal: under 3 % of the step).

    python methods/cluster_masking/overhead.py [--scale pocket] [--repeats 30] [--threads T] [--synthetic]

Interleaved rounds: each round times the selection alone (``ClusterMasking.select`` on the step's batch, tau
already found) and one whole training step as the trainer runs it (forward with the selection, backward, gradient
clipping, AdamW), in alternating order; the figure is median(selection) / median(step). On a GPU every timing is
synchronised. ``--synthetic`` uses random images and captions (for scales whose data is not on this machine).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmark.blocks import patch_embed
from benchmark.data.train_data import load_training_data
from benchmark.discovery import discover
from benchmark.method import Context
from benchmark.runs import build_clip
from benchmark.scales import get_scale
from benchmark.train import clip_gradients, make_optimizer


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure(scale_name: str = "pocket", repeats: int = 30, batch_size: int | None = None, synthetic: bool = False,
            device: str | None = None, overrides: dict | None = None) -> dict:
    scale = get_scale(scale_name)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = discover()["cluster_masking"]
    torch.manual_seed(0)
    method = info.cls(build_clip(scale, 0), info.config(scale_name, overrides or {}), Context(scale=scale, device=dev))
    method.to(dev).train()
    bsz = batch_size or scale.batch_size
    if synthetic:
        batch = {"images": torch.randn(bsz, 3, scale.image_size, scale.image_size, device=dev),
                 "texts": torch.randint(1, 49000, (bsz, scale.context_length), device=dev)}
    else:
        batch = load_training_data(scale).batch(0, bsz, 0, dev)
    opt = make_optimizer(method, scale.optim)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" \
        else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            loss = method(batch, 0.0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(method.parameters(), scale.optim.grad_clip)
        opt.step()

    def select():
        with torch.no_grad(), autocast:
            method.select(batch["images"], patch_embed(method.visual, batch["images"]) if method.cfg["use_embed"]
                          else None, 0.5)

    for _ in range(3):                                  # warm-up; the first step also finds tau
        step()
        select()
    sel, full = [], []
    for r in range(repeats):
        pair = [(sel, select), (full, step)]
        for out, fn in (pair if r % 2 == 0 else pair[::-1]):
            out.append(timed(fn, dev))
    med_sel, med_step = statistics.median(sel), statistics.median(full)
    return {"scale": scale_name, "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "threads": torch.get_num_threads(), "batch": bsz, "patches": method.n_patches,
            "kept_tokens": int(round((1 - method.stats()["mask_ratio"]) * method.n_patches)),
            "threshold": float(method.threshold), "repeats": repeats,
            "selection_ms_median": round(1e3 * med_sel, 3), "step_ms_median": round(1e3 * med_step, 3),
            "selection_ms_min": round(1e3 * min(sel), 3), "step_ms_min": round(1e3 * min(full), 3),
            "selection_fraction_of_step": round(med_sel / med_step, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="pocket")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--mode", default="paper", choices=["paper", "code"])
    ap.add_argument("--use-embed", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(measure(a.scale, a.repeats, a.batch, a.synthetic, a.device,
                             {"mode": a.mode, "use_embed": a.use_embed}), indent=1))


if __name__ == "__main__":
    main()
