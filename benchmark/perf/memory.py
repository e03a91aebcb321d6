"""P6 peak memory per method: each method trains a few harness steps in a fresh process, which reports its
resident memory from ``/proc/self/status`` (tracemalloc does not see torch's allocations): the RSS once the
interpreter, torch and the training data are loaded; the peak (VmHWM) of building the model and counting its
FLOPs on a copy, as a run does first; the peak of the training steps (each peak is reset before through
``/proc/self/clear_refs``, so an earlier phase does not mask it); and the whole process's peak; on a GPU also ``torch.cuda.max_memory_allocated``. (``ru_maxrss`` is not used: Linux carries
it over from the parent across fork + exec, so a child would report its parent's peak.)

    python -m benchmark.perf.memory METHOD --scale pocket --steps 3 [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from benchmark import REPO_ROOT


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024                  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(method: str, scale_name: str, steps: int, overrides: dict) -> dict:
    import torch
    from benchmark.discovery import build_method
    from benchmark.perf import harness
    from benchmark.scales import get_scale
    scale = get_scale(scale_name)
    device = harness.default_device()
    data = harness.training_pairs(scale)
    process_peak_before = peak_rss_mib()
    before = rss_mib()
    reset_peak()
    m = build_method(method, scale, device=device, overrides=overrides)
    step = harness.HarnessStep(m, data, scale, device, progress=m.phases()[0][1])
    harness.step_flops(m, step.batch(), step.progress)     # a run counts FLOPs on a copy of the method first
    count_peak = peak_rss_mib()
    reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        step()
    peak = peak_rss_mib()
    out = {"method": method, "steps": steps, "rss_before_model_mib": round(before, 1),
           "flop_count_peak_mib": round(count_peak, 1), "peak_rss_mib": round(peak, 1),
           "model_and_step_mib": round(peak - before, 1),
           "process_peak_mib": round(max(peak, count_peak, process_peak_before), 1),
           "params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 3)}
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
            "method": "a fresh process per method: RSS with torch and the training data loaded, then the peak RSS "
                      f"(VmHWM, reset before each phase) of building the model and counting its FLOPs, and of {steps} training steps"}


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
