"""Launch runs through submitit (DESIGN §7): ``debug`` in this process, ``local`` as subprocesses on this
machine, ``slurm`` on a cluster. Runs are ordered so that a run's ``requires`` finish first; one failed run
fails alone (runs that need it are skipped), the rest of the sweep finishes.
"""
from __future__ import annotations

from pathlib import Path

import submitit

from benchmark import slurm
from benchmark.errors import RunFailed, UserError
from benchmark.runs import RunSpec, execute
from benchmark.sweep import Outcome, blocked_by, with_requirements


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
           progress_bar: bool = True, slurm_profile: str | None = None) -> list[Outcome]:
    """Run ``specs`` one after another (two CPU cores: running them side by side only slows each); with
    ``cluster="slurm"`` submit them with the profile YAML ``slurm_profile`` instead."""
    specs = with_requirements(specs, methods_dir)
    if cluster == "slurm":
        return slurm.submit_sweep(specs, slurm_profile, methods_dir)
    executor = _executor(cluster, Path(specs[0].results) / specs[0].scale / ".submitit")
    outcomes: list[Outcome] = []
    failed: set[tuple[str, int]] = set()
    for spec in specs:
        blocked = blocked_by(spec, failed, methods_dir)
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
