"""Side-by-side timing on a noisy machine: interleave the contenders round-robin, report medians and minimums.

Every figure of ``benchmark perf`` is a ratio of two timings taken in the same rounds, so slow phases of the
machine (other processes on the same cores) hit both sides alike. The order inside a round rotates, so no side
always runs first (right after the previous side has warmed or flushed the caches).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device=None) -> float:
    """Seconds one call of ``fn`` takes (the GPU is synchronised before and after)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """The order of the contenders in each round: round r starts at contender r mod n (a rotation)."""
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(rounds)]


def interleave(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device=None,
               per_call: dict[str, int] | None = None) -> dict[str, list[float]]:
    """Time every callable ``repeats`` times, round-robin. ``per_call[name]`` = how many steps one call of that
    callable runs (its times are divided by it, so every sample is seconds per step). ``warmup`` untimed rounds
    come first (allocator, lazy optimizer state, one-time searches)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    names = list(fns)
    per_call = per_call or {}
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for order in round_orders(names, repeats):
        for name in order:
            samples[name].append(time_call(fns[name], device) / per_call.get(name, 1))
    return samples


def summary(seconds: list[float]) -> dict:
    """Median and minimum in milliseconds, with the number of samples."""
    return {"median_ms": round(1e3 * statistics.median(seconds), 3), "min_ms": round(1e3 * min(seconds), 3),
            "n": len(seconds)}


def ratio(a: list[float], b: list[float]) -> dict:
    """a / b by medians and by minimums (two estimates of the same ratio; their spread shows the noise)."""
    return {"median": round(statistics.median(a) / statistics.median(b), 4), "min": round(min(a) / min(b), 4)}
