"""P3 method overheads: every discovered method's step time and counted FLOPs relative to CLIP, and the cost of
the token selection a method adds (its ``Method.selection_probe``: cluster masking's anchor/threshold selection,
MaskCLIP-Weers' patch-text similarity masking) as a fraction of that method's whole step (goal: at most 3 %).

All methods and the selection probes run in the same interleaved rounds. UTA's frozen teacher is a freshly
initialised CLIP export written to a scratch folder (its cost does not depend on its weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from benchmark.discovery import build_method, discover
from benchmark.perf import harness, timing
from benchmark.scales import Scale

SELECTION_GOAL = 0.03


def measure(scale: Scale, device: torch.device, repeats: int, scratch: Path, synthetic: bool = False) -> dict:
    data = harness.training_pairs(scale, synthetic)
    infos = discover()
    built, errors = {}, {}
    for name, info in infos.items():
        if not info.ok:
            errors[name] = f"broken folder: {info.error}"
            continue
        try:
            built[name] = build_method(info, scale, device=device,
                                       overrides=harness.method_overrides(name, scratch, scale))
        except Exception as e:  # noqa: BLE001 - a method being written by someone else must not stop the rest
            errors[name] = f"{type(e).__name__}: {e}"
    if "clip" not in built:
        raise RuntimeError(f"P3 needs the clip method as the reference: {errors.get('clip', 'not found')}")
    progress = {name: m.phases()[0][1] for name, m in built.items()}
    steps = {name: harness.HarnessStep(m, data, scale, device, progress=progress[name]) for name, m in built.items()}
    batch = steps["clip"].batch()
    counted = {}
    for name, m in list(built.items()):
        try:
            counted[name] = harness.step_flops(m, batch, progress[name])
        except Exception as e:  # noqa: BLE001
            errors[name] = f"FLOP count failed: {type(e).__name__}: {e}"
            built.pop(name), steps.pop(name)
    fns: dict[str, Callable] = dict(steps)
    probes = {}
    for name, m in built.items():
        probe = m.selection_probe(batch, progress[name])
        if probe is not None:
            probes[name] = probe[0]
            fns[f"{name}:selection"] = probe[1]
    samples = timing.interleave(fns, repeats, warmup=1, device=device)
    rows = []
    for name in built:
        row = {"method": name, "step": timing.summary(samples[name]),
               "time_vs_clip": timing.ratio(samples[name], samples["clip"]),
               "gflop": round(counted[name] / 1e9, 3), "flops_vs_clip": round(counted[name] / counted["clip"], 4),
               "mask_ratio": built[name].stats().get("mask_ratio")}
        if name in probes:
            sel = samples[f"{name}:selection"]
            frac = timing.ratio(sel, samples[name])
            row["selection"] = {"what": probes[name], **timing.summary(sel), "fraction_of_step": frac,
                                "goal": f"<= {SELECTION_GOAL:.0%}", "met": frac["median"] <= SELECTION_GOAL}
        rows.append(row)
    return {"scale": scale.name, "batch": scale.batch_size, "repeats": repeats, "rows": rows, "errors": errors,
            "selection_goal": f"selection <= {SELECTION_GOAL:.0%} of the step",
            "met": all(r["selection"]["met"] for r in rows if "selection" in r) if probes else None}
