"""Launch runs through submitit (DESIGN §7): ``debug`` in this process, ``local`` as subprocesses on this
machine, ``slurm`` on a cluster. Runs are ordered so that a run's ``requires`` finish first; one failed run
fails alone (runs that need it are skipped), the rest of the sweep finishes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import submitit

from benchmark import discovery
from benchmark.errors import RunFailed, UserError
from benchmark.runs import RunSpec, execute


@dataclass
class Outcome:
    spec: RunSpec
    status: str          # "done", "failed", "skipped"
    detail: str = ""


def with_requirements(specs: list[RunSpec], methods_dir: Path | None = None) -> list[RunSpec]:
    """Add the runs that ``requires`` names (same scale, seed and results folder), teachers first."""
    ordered: list[RunSpec] = []
    seen: set[tuple[str, int]] = set()

    def visit(spec: RunSpec, stack: tuple[str, ...]):
        if (spec.method, spec.seed) in seen:
            return
        if spec.method in stack:
            raise UserError(f"methods require each other in a cycle: {' -> '.join(stack + (spec.method,))}")
        info = discovery.resolve([spec.method], methods_dir)[0]
        cfg = info.config(spec.scale, spec.overrides.get(spec.method, {}))
        for req in info.cls.requires(cfg):
            visit(RunSpec(**{**spec.__dict__, "method": req, "force": False}), stack + (spec.method,))
        seen.add((spec.method, spec.seed))
        ordered.append(spec)

    for s in specs:
        visit(s, ())
    return ordered


def _executor(cluster: str, folder: Path):
    if cluster == "debug":
        return None
    if cluster == "local":
        # cluster="local" explicitly: AutoExecutor would pick Slurm whenever sbatch is on PATH.
        ex = submitit.AutoExecutor(folder=str(folder), cluster="local")
        ex.update_parameters(timeout_min=24 * 60)
        return ex
    raise UserError(f"unknown --cluster {cluster!r}: choose debug, local or slurm")


def launch(specs: list[RunSpec], cluster: str = "local", methods_dir: Path | None = None,
           progress_bar: bool = True) -> list[Outcome]:
    """Run ``specs`` one after another (two CPU cores: running them side by side only slows each)."""
    specs = with_requirements(specs, methods_dir)
    if cluster == "slurm":
        from benchmark.slurm import submit_sweep   # noqa: PLC0415 - only needed on a cluster
        return submit_sweep(specs)
    executor = _executor(cluster, Path(specs[0].results) / specs[0].scale / ".submitit")
    outcomes: list[Outcome] = []
    failed: set[tuple[str, int]] = set()
    for spec in specs:
        info = discovery.resolve([spec.method], methods_dir)[0]
        blocked = [r for r in info.cls.requires(info.config(spec.scale, spec.overrides.get(spec.method, {})))
                   if (r, spec.seed) in failed]
        if blocked:
            outcomes.append(Outcome(spec, "skipped", f"required run(s) failed: {', '.join(blocked)}"))
            failed.add((spec.method, spec.seed))
            continue
        try:
            if executor is None:
                execute(spec, progress_bar)
            else:
                executor.update_parameters(name=f"maskbench-{spec.method}-s{spec.seed}")
                job = executor.submit(execute, spec, False)
                job.result()
            outcomes.append(Outcome(spec, "done"))
        except UserError:
            raise
        except (RunFailed, submitit.core.utils.FailedJobError, Exception) as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()
            detail = next((ln for ln in reversed(msg) if "RunFailed" in ln or "Error" in ln), msg[-1] if msg else "")
            if "UserError" in detail:
                raise UserError(detail.split("UserError:", 1)[-1].strip()) from None
            outcomes.append(Outcome(spec, "failed", detail))
            failed.add((spec.method, spec.seed))
    return outcomes
