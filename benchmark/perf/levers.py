"""Speed levers of the pocket step on this machine, side by side in one command: the model's patch size, torch
threads against runs side by side, a compact vocabulary, a one-layer text tower and SDPA's math kernel
(``--compile`` adds ``torch.compile``).

Every contender trains the bare pocket CLIP step (open_clip ``CLIP`` forward, ``ClipLoss``, backward,
``benchmark.train.make_optimizer``'s fused AdamW) on a fixed random batch of 128 in a fresh spawned process, ``steps``
timed steps after ``warmup`` untimed ones; a ``pair`` contender runs two such processes at once, one torch thread
each, as ``run --jobs 2`` does. The contenders of a round run one after another in a rotating order
(``benchmark.perf.timing.round_orders``), so slow drift of the machine hits each alike. Reported per contender: the
median step time over rounds and its throughput (steps per second of the whole machine), and the ratio to the
reference (the landed pocket step before this change: patch 4, one process with every core).

    python -m benchmark.perf.levers [--rounds 3] [--steps 30] [--compile]

``--attention`` measures the attention-kernel lever on the harness's own training step instead
(``benchmark.perf.harness.HarnessStep``: ``benchmark.train.train_step`` on the embedded pocket data, every method
as the sweep builds it, one torch thread): SDPA's choice on CPU (its flash kernel) against the math kernel that
``train_step`` uses on CPU, interleaved step block by step block in one process, median ms per step.

    python -m benchmark.perf.levers --attention [--rounds 4] [--steps 6]

``--used-rows`` measures this wave's two step levers on the harness step with a fresh spawned process per method,
mode and round (the dense embedding's 12.6 MB gradient, allocated every step, shifts the allocator for whatever
runs after it in one process): ``before`` (dense token embedding, the gradient norm at every step), ``norm``
(the norm only at logged steps, as the loop now does) and ``landed`` (also only the token rows the embedded
captions use, ``benchmark.active_rows``), for every method the harness restricts.

    python -m benchmark.perf.levers --used-rows [--rounds 3] [--steps 20]
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass

from benchmark.perf.timing import round_orders


@dataclass(frozen=True)
class Contender:
    name: str
    patch: int = 8
    threads: int = 0            # 0: torch's default (every core)
    processes: int = 1          # 2: two runs side by side
    vocab: int = 49408
    text_layers: int = 2
    compile: bool = False
    math_attention: bool = False   # SDPA's math kernel instead of the CPU flash kernel (the trainer's CPU choice)


CONTENDERS = [
    Contender("patch 4, one run, every core (before)", patch=4),
    Contender("patch 4, two runs side by side, 1 thread each", patch=4, threads=1, processes=2),
    Contender("patch 8, one run, every core", patch=8),
    Contender("patch 8, one run, 1 thread", patch=8, threads=1),
    Contender("patch 8, two runs side by side, 1 thread each (landed)", patch=8, threads=1, processes=2),
    Contender("patch 8, 1 thread, compact vocabulary (1,024 tokens)", patch=8, threads=1, vocab=1024),
    Contender("patch 8, 1 thread, one text layer", patch=8, threads=1, text_layers=1),
    Contender("patch 8, 1 thread, SDPA math kernel", patch=8, threads=1, math_attention=True),
]


def _child(c: Contender, steps: int, warmup: int, out) -> None:
    import open_clip
    import torch

    from benchmark.scales import get_scale
    from benchmark.train import make_optimizer
    if c.threads:
        torch.set_num_threads(c.threads)
    scale = get_scale("pocket")
    cfg = copy.deepcopy(scale.model)
    cfg["vision_cfg"]["patch_size"] = c.patch
    cfg["text_cfg"].update(vocab_size=c.vocab, layers=c.text_layers)
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg, output_dict=True)
    loss_fn, opt = open_clip.ClipLoss(), make_optimizer(model, scale.optim)
    forward = torch.compile(model) if c.compile else model
    images = torch.randn(scale.batch_size, 3, scale.image_size, scale.image_size)
    texts = torch.randint(0, c.vocab, (scale.batch_size, scale.context_length))
    times = []
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with sdpa_kernel(SDPBackend.MATH) if c.math_attention else nullcontext():
            o = forward(images, texts)
        loss = loss_fn(o["image_features"], o["text_features"], o["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out.put(statistics.median(times))


def run_contender(c: Contender, steps: int, warmup: int) -> float:
    """Median step seconds (the mean of the processes' medians when two run side by side)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(c, steps, warmup, q)) for _ in range(c.processes)]
    for p in procs:
        p.start()
    medians = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(medians) / len(medians)


def measure(rounds: int = 3, steps: int = 30, warmup: int = 10, with_compile: bool = False) -> list[dict]:
    contenders = CONTENDERS + ([Contender("patch 8, one run, every core, torch.compile", compile=True)]
                               if with_compile else [])
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    by_name = {c.name: c for c in contenders}
    for order in round_orders(list(by_name), rounds):
        for name in order:
            samples[name].append(run_contender(by_name[name], steps, warmup))
    ref = statistics.median(samples[contenders[0].name])
    rows = []
    for c in contenders:
        step = statistics.median(samples[c.name])
        rate = c.processes / step
        rows.append({"contender": c.name, "ms_per_step": round(1e3 * step, 1), "steps_per_s": round(rate, 2),
                     "throughput_vs_before": round(rate * ref, 2)})
    return rows


def attention_kernels(rounds: int = 4, steps: int = 6, warmup: int = 2) -> list[dict]:
    """Per method, the harness step's median ms with SDPA's own choice (flash on CPU) and with the math kernel."""
    from contextlib import nullcontext
    from pathlib import Path
    from tempfile import TemporaryDirectory
    from unittest import mock

    import torch

    from benchmark import train
    from benchmark.discovery import build_method, discover
    from benchmark.perf import harness
    from benchmark.scales import get_scale
    torch.set_num_threads(1)
    scale, device = get_scale("pocket"), torch.device("cpu")
    data = harness.training_pairs(scale)
    times: dict[tuple[str, str], list[float]] = {}
    with TemporaryDirectory() as scratch:
        step_of = {name: harness.HarnessStep(build_method(name, scale, overrides=harness.method_overrides(
                       name, Path(scratch), scale)), data, scale, device)
                   for name, info in discover().items() if info.ok}
        kernels = {"flash": lambda device: nullcontext(), "math": train.attention_kernel_for}
        for order in round_orders(list(kernels), rounds):
            for name, step in step_of.items():
                for kernel in order:
                    with mock.patch.object(train, "attention_kernel_for", kernels[kernel]):
                        for _ in range(warmup):
                            step()
                        for _ in range(steps):
                            t0 = time.perf_counter()
                            step()
                            times.setdefault((name, kernel), []).append(time.perf_counter() - t0)
    rows = []
    for name in step_of:
        flash, math = (statistics.median(times[(name, k)]) for k in ("flash", "math"))
        rows.append({"method": name, "flash_ms": round(1e3 * flash, 1), "math_ms": round(1e3 * math, 1),
                     "speedup": round(flash / math, 3)})
    return rows


def _used_rows_child(name: str, mode: str, steps: int, warmup: int, out) -> None:
    from pathlib import Path
    from tempfile import TemporaryDirectory
    from unittest import mock

    import torch

    from benchmark import active_rows
    from benchmark.discovery import build_method
    from benchmark.perf import harness
    from benchmark.scales import get_scale
    torch.set_num_threads(1)
    scale, device = get_scale("pocket"), torch.device("cpu")
    data = harness.training_pairs(scale)
    with TemporaryDirectory() as scratch:
        method = build_method(name, scale, overrides=harness.method_overrides(name, Path(scratch), scale))
        restrict = active_rows.for_training if mode == "landed" else (lambda *a: 0)
        with mock.patch.object(active_rows, "for_training", restrict):
            step = harness.HarnessStep(method, data, scale, device)
        if mode == "before":
            step.norm_every = 1
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    out.put(statistics.median(times))


USED_ROWS_METHODS = ("clip", "flip", "cluster_masking", "maskclip_weers")   # the rest keep a dense (or frozen) one


USED_ROWS_MODES = ("before", "norm", "landed")


def used_rows(rounds: int = 3, steps: int = 20, warmup: int = 4) -> list[dict]:
    """Per method, the median over rounds of each process's median ms per step in each mode."""
    ctx = mp.get_context("spawn")
    keys = [f"{name}|{mode}" for name in USED_ROWS_METHODS for mode in USED_ROWS_MODES]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for order in round_orders(keys, rounds):
        for key in order:
            name, mode = key.split("|")
            q = ctx.Queue()
            proc = ctx.Process(target=_used_rows_child, args=(name, mode, steps, warmup, q))
            proc.start()
            samples[key].append(q.get())
            proc.join()
    rows = []
    for name in USED_ROWS_METHODS:
        ms = {m: statistics.median(samples[f"{name}|{m}"]) for m in USED_ROWS_MODES}
        rows.append({"method": name, **{f"{m}_ms": round(1e3 * t, 1) for m, t in ms.items()},
                     "speedup": round(ms["before"] / ms["landed"], 3)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf.levers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="add a torch.compile contender (about 90 s to compile)")
    p.add_argument("--attention", action="store_true",
                   help="the attention kernel on the harness's training step of every method instead")
    p.add_argument("--used-rows", action="store_true",
                   help="the gradient-norm and used-token-rows levers on the harness step, per method")
    a = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    if a.used_rows:
        rows = used_rows(a.rounds, a.steps)
        title = (f"harness training step: before, the gradient norm at logged steps only, and also only the used "
                 f"token rows; {a.rounds} rounds x {a.steps} steps, a fresh process each")
        columns = [("method", "method", 18), ("before ms", "before_ms", 10), ("norm ms", "norm_ms", 9),
                   ("landed ms", "landed_ms", 10), ("x", "speedup", 7)]
    elif a.attention:
        rows = attention_kernels(a.rounds, a.steps)
        title = f"harness training step, SDPA flash (CPU default) against math, {a.rounds} rounds x {a.steps} steps"
        columns = [("method", "method", 18), ("flash ms", "flash_ms", 9), ("math ms", "math_ms", 9),
                   ("x", "speedup", 7)]
    else:
        rows = measure(a.rounds, a.steps, a.warmup, a.compile)
        title = f"pocket step levers, {a.rounds} rounds x {a.steps} steps, {os.cpu_count()} cores"
        columns = [("contender", "contender", 58), ("ms/step", "ms_per_step", 8), ("steps/s", "steps_per_s", 8),
                   ("x before", "throughput_vs_before", 9)]
    print(f"{title}; load {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    for row in [{key: head for head, key, _ in columns}] + rows:
        print(" ".join(f"{row[key]:<{w}}" if i == 0 else f"{row[key]:>{w}}" for i, (_, key, w) in enumerate(columns)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
