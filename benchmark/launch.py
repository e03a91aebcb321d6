"""Launch runs through submitit (docs/design.md, "Launching"): ``debug`` in this process, ``local`` as subprocesses on this
machine, ``slurm`` on a cluster. Runs are ordered so that a run's ``requires`` finish first; one failed run
fails alone (runs that need it are skipped), the rest of the sweep finishes.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import submitit

from benchmark import errors, progress, slurm
from benchmark.errors import RunFailed, RunLocked, UserError
from benchmark.runs import RunSpec, check_config, execute, identity
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


ALREADY_FINISHED = "already finished (--force to retrain)"


def launch(specs: list[RunSpec], cluster: str = "local", methods_dir: Path | None = None,
           progress_bar: bool = True, slurm_profile: str | None = None) -> list[Outcome]:
    """Run ``specs`` one after another (two CPU cores: running them side by side only slows each); with
    ``cluster="slurm"`` submit them with the profile YAML ``slurm_profile`` instead.

    ``progress_bar``: live progress lines on stderr (``benchmark.progress``), read from each run's log, for runs
    in this process and in worker processes alike. A finished run is not started again.
    """
    specs = with_requirements(specs, methods_dir)
    if cluster == "slurm":
        return slurm.submit_sweep(specs, slurm_profile, methods_dir)
    submitit_folder = Path(specs[0].results) / specs[0].scale / ".submitit"
    executor = _executor(cluster, submitit_folder)
    where = "in this process" if executor is None else "in a worker process"
    console = progress.Console(len(specs), quiet=not progress_bar)
    console.header(f"{len(specs)} run(s) at scale {specs[0].scale}, one after another, each {where} "
                   f"(--cluster {cluster}); results in {Path(specs[0].results) / specs[0].scale}")
    outcomes: list[Outcome] = []
    failed: set[tuple[str, int]] = set()
    for spec in specs:
        label = f"{spec.method} seed {spec.seed}"
        console.start(label)
        blocked = blocked_by(spec, failed, methods_dir)
        if blocked:
            outcomes.append(Outcome(spec, "skipped", f"required run(s) failed: {', '.join(blocked)}"))
            failed.add((spec.method, spec.seed))
            console.finish(label, f"skipped: {outcomes[-1].detail}", trained=False)
            continue
        if not spec.force and (spec.dir / "metrics.json").exists():
            check_config(spec, identity(spec))          # a foreign run folder is refused, not reported as done
            outcomes.append(Outcome(spec, "done", ALREADY_FINISHED))
            console.finish(label, ALREADY_FINISHED, trained=False)
            continue
        resume = None if spec.force else progress.resume_step(spec.dir)
        if resume is not None:
            console.run_line(label, f"resuming from step {resume}")
        t0 = time.monotonic()
        try:
            with console.watch(spec.dir, label, where):
                try:
                    if executor is None:
                        execute(spec, False)
                    else:
                        executor.update_parameters(name=f"maskbench-{spec.method}-s{spec.seed}")
                        with _controller_stderr(submitit_folder):
                            job = executor.submit(execute, spec, False)
                        job.result()
                except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
                    raise _user_error_of(e) or e
            outcomes.append(Outcome(spec, "done"))
            console.finish(label, "done", spec.dir, time.monotonic() - t0)
        except RunLocked as e:               # another process is on this run: the others go on
            outcomes.append(Outcome(spec, "locked", str(e)))
            failed.add((spec.method, spec.seed))
            console.finish(label, f"locked: {e}", trained=False)
        except UserError:
            raise
        except (RunFailed, Exception) as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()
            detail = next((ln for ln in reversed(msg) if "RunFailed" in ln or "Error" in ln), msg[-1] if msg else "")
            outcomes.append(Outcome(spec, "failed", detail))
            failed.add((spec.method, spec.seed))
            console.finish(label, f"failed: {detail}", trained=False)
    return outcomes


@contextmanager
def _controller_stderr(folder: Path):
    """submitit's local controller process inherits this process's stderr, and a Ctrl-C reaches it too: it would
    print its own KeyboardInterrupt traceback under ours. It writes to ``controller.err`` in the submitit folder."""
    folder.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved, log = os.dup(2), os.open(folder / "controller.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)


def _user_error_of(e: Exception) -> UserError | None:
    """The UserError (or subclass) a submitit job raised, rebuilt from the traceback text it sends back."""
    for line in reversed(str(e).strip().splitlines()):
        name, sep, message = line.strip().partition(": ")
        cls = getattr(errors, name.rsplit(".", 1)[-1], None) if sep and name.startswith("benchmark.errors.") else None
        if isinstance(cls, type) and issubclass(cls, UserError):
            return cls(message.strip())
    return None
