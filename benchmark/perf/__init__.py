"""``python -m benchmark perf``: the harness measured against open_clip and clip_benchmark (issue 8).

    python -m benchmark perf [--measures all|p1,p2,...] [--repeats N] [--scale pocket] [--out reports/perf]

Measures (one module each): P1 trainer speed (``trainer``), P2 masking efficiency (``masking``), P3 method
overheads (``methods``), P4 evaluation (``evaluation``), P5 end to end
(``end_to_end``), P6 peak memory (``memory``), P7 GPU (``gpu``). Every comparison is interleaved round-robin
(``timing``). Writes ``perf.json`` (every figure, with the raw samples) and ``perf.md`` (a table per measure,
the goals, the device); both are rewritten after each measure, so an interrupted run keeps what it measured.
Measuring a subset updates those measures in an existing ``perf.json`` in ``--out`` and keeps the others (each
measure records when it was measured and with how many torch threads).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmark.errors import UserError

MEASURES = ("p1", "p2", "p3", "p4", "p5", "p6", "p7")


def parse_measures(value: str) -> list[str]:
    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return list(MEASURES)
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise UserError(f"--measures {value!r}: choose 'all' or a comma-separated list of {', '.join(MEASURES)}")
    return [m for m in MEASURES if m in names]


def run_measure(key: str, scale, device, repeats: int, scratch: Path) -> dict:
    from benchmark.perf import end_to_end, evaluation, gpu, masking, memory, methods, trainer
    if key == "p1":
        return trainer.measure(scale, device, repeats)
    if key == "p2":
        return masking.measure(scale, device, repeats)
    if key == "p3":
        return methods.measure(scale, device, repeats, scratch)
    if key == "p4":
        return evaluation.measure(repeats, scale.name)
    if key == "p5":
        return end_to_end.measure(scratch, scale.name)
    if key == "p6":
        return memory.measure(scale.name, scratch)
    if key == "p7":
        return gpu.measure(scale.name, repeats, scratch)
    raise ValueError(key)


def write(out: Path, report: dict) -> None:
    from benchmark.perf.report import render
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "perf.md").write_text(render(report))


def main(args) -> int:
    import torch
    from benchmark.perf import harness
    from benchmark.scales import get_scale
    measures = parse_measures(args.measures)
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: pass a positive number of interleaved rounds, e.g. --repeats 10")
    scale = get_scale(getattr(args, "scale", "pocket"))
    if not scale.runs_here:
        raise UserError(f"--scale {scale.name} is a cluster scale; measure at smoke or pocket")
    out = Path(args.out)
    own_scratch = not getattr(args, "scratch", None)      # a temp folder we made is removed at the end
    scratch = Path(tempfile.mkdtemp(prefix="maskbench-perf-")) if own_scratch else Path(args.scratch)
    device = harness.default_device()
    report = {"command": f"python -m benchmark perf --measures {args.measures} --repeats {args.repeats} "
                         f"--scale {scale.name}",
              "device": harness.device_info(device), "scale": scale.name, "repeats": args.repeats,
              "load_start": _load(), "measures": {}, "elapsed_s": 0.0}
    previous = _previous(out / "perf.json")
    if previous:
        report["measures"] = {k: v for k, v in previous.items() if k not in measures}
    t_all = time.perf_counter()
    failed = False
    for key in measures:
        print(f"perf {key} ...", flush=True)
        t0 = time.perf_counter()
        try:
            res = run_measure(key, scale, device, args.repeats, scratch)
        except Exception as e:  # noqa: BLE001 - record the failure and measure the rest
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            failed = True
            print(f"perf {key} failed: {res['error']}", file=sys.stderr, flush=True)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
        res["threads_used"] = torch.get_num_threads()
        report["measures"][key] = res
        report["measures"] = {k: report["measures"][k] for k in MEASURES if k in report["measures"]}
        report["elapsed_s"], report["load_end"] = round(time.perf_counter() - t_all, 1), _load()
        write(out, report)
    if own_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out / 'perf.md'} and {out / 'perf.json'}")
    return 1 if failed else 0


def _previous(path: Path) -> dict:
    """The measures of an earlier report in the same folder (kept when this run measures others)."""
    try:
        return dict(json.loads(path.read_text()).get("measures", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
