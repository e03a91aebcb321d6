"""P6 peak memory per method: each method trains a few harness steps in a fresh process, which reports its peak
resident set size (``ru_maxrss``; tracemalloc does not see torch's allocations) before the model is built
(interpreter, torch, the training data) and after the steps; on a GPU also ``torch.cuda.max_memory_allocated``.

    python -m benchmark.perf.memory METHOD --scale pocket --steps 3 [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import yaml

from benchmark import REPO_ROOT


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # Linux: KiB


def child(method: str, scale_name: str, steps: int, overrides: dict) -> dict:
    import torch
    from benchmark.perf import harness
    from benchmark.scales import get_scale
    scale = get_scale(scale_name)
    device = harness.default_device()
    data = harness.training_pairs(scale)
    before = peak_rss_mib()
    m = harness.build_method(method, scale, device, scale.name, overrides)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = harness.HarnessStep(m, data, scale, device, progress=m.phases()[0][1])
    for _ in range(steps):
        step()
    out = {"method": method, "steps": steps, "rss_before_model_mib": round(before, 1),
           "peak_rss_mib": round(peak_rss_mib(), 1),
           "params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 3)}
    out["model_and_step_mib"] = round(out["peak_rss_mib"] - before, 1)
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


def measure(scale_name: str, scratch: Path, steps: int = 3, timeout: int = 600) -> dict:
    """One fresh process per healthy method, one after another."""
    from benchmark.discovery import discover
    from benchmark.perf import harness
    from benchmark.scales import get_scale
    scale = get_scale(scale_name)
    rows, errors = [], {}
    for name, info in discover().items():
        if not info.ok:
            errors[name] = f"broken folder: {info.error}"
            continue
        cmd = [sys.executable, "-m", "benchmark.perf.memory", name, "--scale", scale_name, "--steps", str(steps)]
        for key, value in harness.method_overrides(name, scratch, scale).items():
            cmd += ["--set", f"{key}={value}"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
        if proc.returncode != 0 or not last:
            errors[name] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            continue
        rows.append(json.loads(last[0]))
    return {"scale": scale_name, "steps": steps, "rows": rows, "errors": errors,
            "method": "fresh process per method; peak RSS (ru_maxrss) before building the model and after "
                      f"{steps} training steps"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method")
    ap.add_argument("--scale", default="pocket")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in a.set)}
    print(json.dumps(child(a.method, a.scale, a.steps, overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
