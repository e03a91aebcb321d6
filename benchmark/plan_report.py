"""``python -m benchmark plan``: what a sweep will cost before it runs. No training, no GPU, nothing submitted.

For every method (and the runs it requires, UTA's teacher): steps, samples, FLOPs per step (every pass and
phase, ``benchmark.planning``: shape-only, no memory), training FLOPs, the same plus the required runs, GPU-hours
at a stated throughput, the estimated peak memory per GPU for the per-rank batch and whether it fits. Then the
Slurm job waves (arrays, ``afterok`` dependencies) and the sbatch script of each, as submitit would write it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import submitit.slurm.slurm as submitit_slurm
import torch

from benchmark import discovery, planning, slurm
from benchmark.data.synthetic import synthetic_pairs
from benchmark.errors import UserError
from benchmark.sweep import with_requirements
from benchmark.runs import RunSpec

# The throughput GPU-hours assume unless told otherwise (--mfu, --gpu-tflops, --gpu-memory-gb): an A100 80 GB's
# dense bf16 peak and 30 % model FLOPs utilisation, an assumption for eager bf16 ViT-B/16 training to be replaced
# by the MFU the GPU check measures (README, "GPU check").
DEFAULT_GPU_TFLOPS = 312.0
DEFAULT_MFU = 0.30
DEFAULT_GPU_MEMORY_GB = 80.0
GiB = 1024 ** 3


def missing_data(scale, data_override: str | None = None, dataset_root: str | None = None) -> list[str]:
    """Training shards and evaluation dataset folders of the scale that are not on this machine, by name."""
    missing: list[str] = []
    spec = scale.data
    root = dataset_root or spec.dataset_root
    if root:
        from benchmark.evaluation.real_datasets import LAYOUTS
        missing += [str(Path(root) / name) for name in LAYOUTS if not (Path(root) / name).exists()]
    if spec.kind != "embedded" or data_override:
        import braceexpand
        path = data_override or spec.path
        for pattern in path.split("::"):
            missing += [u for u in braceexpand.braceexpand(pattern) if not Path(u).exists()]
    return missing


def _shown(missing: list[str], limit: int = 12) -> list[str]:
    return missing[:limit] + ([f"... and {len(missing) - limit} more (all of them in --json)"]
                              if len(missing) > limit else [])


@dataclass
class Throughput:
    gpu_tflops: float = DEFAULT_GPU_TFLOPS
    mfu: float = DEFAULT_MFU
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB


def plan_sweep(scale, specs: list[RunSpec], profile_path: str | None, throughput: Throughput, use_data: bool,
               progress=print) -> dict:
    """The plan of ``specs`` (requirements added) at ``scale`` as a JSON-able dict."""
    specs = with_requirements(specs)
    profile = slurm.load_profile(profile_path)
    res = slurm.resources(profile, scale)
    world = res.world_size
    per_rank = scale.batch_size // world
    if use_data:
        from benchmark.data.train_data import load_training_data
        data, data_note = load_training_data(scale, specs[0].data), "the scale's training data"
    else:
        data = synthetic_pairs(scale, per_rank)
        data_note = ("synthetic pixels and captions (training data not present): data-dependent counts (cluster "
                     "masking's kept length, MaskCLIP-Dong's masked caption words) are those of random data")
    device = torch.device("cpu")
    batches: dict[int, dict] = {}
    t0 = time.perf_counter()
    torch.manual_seed(specs[0].seed)
    batch = planning.rank0_batch(data, scale, specs[0].seed, device, world)
    reference = planning.reference_flops(scale, batch, device, world)
    progress(f"  plain CLIP step counted ({time.perf_counter() - t0:.1f} s)")
    rows: dict[tuple[str, int], dict] = {}
    for spec in specs:
        info = discovery.resolve([spec.method], Path(spec.methods_dir) if spec.methods_dir else None)[0]
        cfg = info.config(scale.method_config_scale, spec.overrides.get(spec.method, {}))
        if spec.seed not in batches:
            torch.manual_seed(spec.seed)
            batches[spec.seed] = batch if spec.seed == specs[0].seed else \
                planning.rank0_batch(data, scale, spec.seed, device, world)
        t = time.perf_counter()
        torch.manual_seed(spec.seed)
        try:
            plan = planning.plan_run(info, cfg, scale, spec.seed, data, device, world, spec.match,
                                     Path(spec.results), reference=reference, batch=batches[spec.seed])
        except planning.NeedsRealValues as e:
            raise UserError(f"{spec.method} cannot be planned without its weights ({e}); its first real step "
                            "on the cluster plans it") from None
        mem = planning.memory_estimate(plan)
        hours = planning.gpu_hours(plan.train_flops, throughput.gpu_tflops * 1e12, throughput.mfu)
        requires = info.cls.requires(cfg)
        rows[(spec.method, spec.seed)] = {
            "method": spec.method, "seed": spec.seed, "requires": requires, **plan.to_dict(),
            "samples_seen": plan.steps * scale.batch_size, "gpu_hours": hours, "memory": mem,
            "fits": mem["bf16_bytes"] <= throughput.gpu_memory_gb * GiB, "plan_time_s": time.perf_counter() - t}
        progress(f"  {spec.method} seed {spec.seed} planned ({time.perf_counter() - t:.1f} s)")
    for row in rows.values():
        req = [rows[(r, row["seed"])] for r in row["requires"] if (r, row["seed"]) in rows]
        row["train_flops_with_required"] = row["train_flops"] + sum(r["train_flops"] for r in req)
        row["gpu_hours_with_required"] = row["gpu_hours"] + sum(r["gpu_hours"] for r in req)
    return {"scale": scale.name, "match": specs[0].match, "profile": profile.source,
            "nodes": res.nodes, "gpus_per_node": res.gpus_per_node, "world_size": world, "per_rank_batch": per_rank,
            "global_batch": scale.batch_size, "budget_samples": scale.samples,
            "budget_flops": reference * (scale.samples // scale.batch_size), "reference_clip_flops_per_step": reference,
            "throughput": throughput.__dict__, "data": data_note, "runs": list(rows.values()),
            "waves": job_waves(specs, profile, scale)}


def job_waves(specs: list[RunSpec], profile, scale) -> list[dict]:
    """The arrays ``slurm.submit_sweep`` would submit, in order, each with the sbatch script submitit would write
    for it (job ids are not known before submission: a dependency names the run it waits for)."""
    executor = slurm.make_executor(profile, scale, Path(specs[0].results).resolve() / scale.name / ".submitit")
    inner = executor._executor           # submitit's SlurmExecutor, which writes the sbatch file it submits
    waves, placed, pending, wave = [], set(), list(specs), 0
    needs = {(s.method, s.seed): [(r, s.seed) for r in _requires(s, scale)] for s in specs}
    while pending:
        ready = [s for s in pending if all(n in placed for n in needs[(s.method, s.seed)])]
        if not ready:
            raise UserError("runs wait on each other in a cycle: " + ", ".join(s.label() for s in pending))
        wave += 1
        groups: dict[str, list[RunSpec]] = {}
        for s in ready:
            deps = ":".join(f"JOBID_{m}_seed{k}" for m, k in sorted(needs[(s.method, s.seed)]))
            groups.setdefault(deps, []).append(s)
        for deps, group in groups.items():
            params = dict(inner.parameters)
            extra = dict(params.get("additional_parameters") or {})
            if deps:
                extra.update({"dependency": f"afterok:{deps}", "kill-on-invalid-dep": "yes"})
            params["additional_parameters"] = extra
            if len(group) > 1:
                params["map_count"] = len(group)
            script = submitit_slurm._make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder,
                                                        **params)
            waves.append({"wave": wave, "after": deps, "jobs": [s.label() for s in group], "sbatch": script})
        placed |= {(s.method, s.seed) for s in ready}
        pending = [s for s in pending if s not in ready]
    return waves


def _requires(spec: RunSpec, scale) -> list[str]:
    info = discovery.resolve([spec.method], Path(spec.methods_dir) if spec.methods_dir else None)[0]
    return info.cls.requires(info.config(scale.method_config_scale, spec.overrides.get(spec.method, {})))


def _gb(b: float) -> str:
    return f"{b / GiB:.1f}"


def format_plan(p: dict) -> str:
    import pandas as pd
    t = p["throughput"]
    lines = [f"plan for scale {p['scale']} (--match {p['match']}): {p['nodes']} node(s) x {p['gpus_per_node']} GPU(s) "
             f"= {p['world_size']} ranks, global batch {p['global_batch']}, per-rank batch {p['per_rank_batch']}; "
             f"profile {p['profile']}",
             f"budget: {p['budget_samples']:,} samples of plain CLIP = {p['budget_flops']:.3e} FLOPs "
             f"({p['reference_clip_flops_per_step']:.4e} per CLIP step)",
             f"counted on: {p['data']}",
             f"GPU-hours at {t['mfu']:.0%} MFU of {t['gpu_tflops']:g} TFLOP/s per GPU (assumed; --mfu, --gpu-tflops); "
             f"memory against {t['gpu_memory_gb']:g} GB per GPU (--gpu-memory-gb)", ""]
    table = []
    for r in p["runs"]:
        m = r["memory"]
        table.append({
            "method": r["method"], "seed": r["seed"], "steps": f"{r['steps']:,}",
            "samples": f"{r['samples_seen']:,}", "FLOPs/step": f"{r['flops_per_step']:.4e}",
            "phases": " + ".join(f"{f:g}x{c:.3e}" for f, c in r["phases"]) if len(r["phases"]) > 1 else "1 phase",
            "train FLOPs": f"{r['train_flops']:.4e}", "+ required": f"{r['train_flops_with_required']:.4e}"
            + (f" ({', '.join(r['requires'])})" if r["requires"] else ""),
            "GPU-h": f"{r['gpu_hours']:,.0f}", "GPU-h + req": f"{r['gpu_hours_with_required']:,.0f}",
            "mem/GPU GB (bf16 est.)": _gb(m["bf16_bytes"]), "fp32 est.": _gb(m["fp32_bytes"]),
            "fits": "yes" if r["fits"] else "NO"})
    lines.append(pd.DataFrame(table).to_string(index=False))
    lines += ["", "memory per GPU = fp32 weights + AdamW moments + gradients + buffers + batch + activations of the "
              "per-rank step (counted in fp32, SDPA math backend; bf16 estimate: activations halved) + "
              f"{_gb(planning.CUDA_OVERHEAD_BYTES)} GB allowance", "", "job waves (nothing is submitted):"]
    for w in p["waves"]:
        lines.append(f"  wave {w['wave']}: array of {len(w['jobs'])} job(s): {', '.join(w['jobs'])}"
                     + (f"  [--dependency=afterok:{w['after']}]" if w["after"] else ""))
    for w in p["waves"]:
        lines += ["", f"---- sbatch script of wave {w['wave']} ({', '.join(w['jobs'])}) ----", w["sbatch"].rstrip()]
    return "\n".join(lines)


def main(args, scale, specs: list[RunSpec]) -> int:
    missing = missing_data(scale, specs[0].data, specs[0].dataset_root)
    if missing:
        msg = f"missing dataset paths ({len(missing)}):\n  " + "\n  ".join(_shown(missing))
        if not args.no_data_check:
            raise UserError(f"{msg}\nput the data there (or pass --data / --dataset-root), or plan anyway with "
                            "--no-data-check")
        print(msg + "\n(--no-data-check: planned on synthetic data)\n")
    throughput = Throughput(args.gpu_tflops, args.mfu, args.gpu_memory_gb)
    if not 0 < throughput.mfu <= 1:
        raise UserError(f"--mfu {args.mfu} must lie in (0, 1], e.g. --mfu 0.35")
    if throughput.gpu_tflops <= 0 or throughput.gpu_memory_gb <= 0:
        raise UserError("--gpu-tflops and --gpu-memory-gb must be positive")
    t0 = time.perf_counter()
    p = plan_sweep(scale, specs, args.slurm_profile, throughput, use_data=not missing)
    p["missing_data"] = missing
    p["plan_time_s"] = round(time.perf_counter() - t0, 1)
    print(format_plan(p))
    print(f"\nplanned in {p['plan_time_s']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(p, indent=2, default=str))
        print(f"plan written to {args.json}")
    return 0
