"""Launch runs (docs/design.md, "Launching"): ``debug`` in this process, ``local`` in a worker process on this
machine, ``slurm`` through submitit on a cluster. Runs are ordered so that a run's ``requires`` finish first; one
failed run fails alone (runs that need it are skipped), the rest of the sweep finishes.

``local`` keeps one worker process for the whole sweep (``concurrent.futures.ProcessPoolExecutor``, spawned):
torch, open_clip and the harness are imported once, not once per run as a fresh interpreter per run would. A
worker that dies (killed, out of memory) fails its run only; a fresh worker takes the next run, and the killed
run resumes from its last checkpoint when the command is run again.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import signal
import time
from pathlib import Path

import submitit

from benchmark import errors, progress, slurm
from benchmark.errors import RunFailed, RunLocked, UserError
from benchmark.runs import RunSpec, check_config, execute, identity
from benchmark.sweep import Outcome, blocked_by, with_requirements


class LocalWorker:
    """One persistent worker process; ``run(spec)`` executes a run in it and returns or raises what it did."""

    def __init__(self):
        self._pool = None

    def run(self, spec: RunSpec):
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init)
        try:
            return self._pool.submit(execute, spec, False).result()
        except KeyboardInterrupt:            # Ctrl-C: stop the worker too (the run resumes from its checkpoint)
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
            self.close(wait=False)
            raise
        except cf.process.BrokenProcessPool:
            self.close(wait=False)               # the next run gets a fresh worker
            raise RunFailed(f"{spec.label()} failed: its worker process died (killed or out of memory); run the "
                            "command again to resume it from its last checkpoint") from None

    def close(self, wait: bool = True):
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def _worker_init() -> None:
    # A Ctrl-C reaches the whole process group: the launcher stops the worker, which would otherwise print its
    # own KeyboardInterrupt traceback under the launcher's message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import benchmark.runs  # noqa: F401 - what every run imports (torch, open_clip, the harness), once per worker


def _executor(cluster: str, folder: Path):
    if cluster == "debug":
        return None
    if cluster == "local":
        return LocalWorker()
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
    try:
        return _run_in_order(specs, executor, console, methods_dir, where)
    finally:
        if executor is not None:
            executor.close()


def _run_in_order(specs, executor, console, methods_dir, where) -> list[Outcome]:
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
        if not spec.force and spec.folder.finished:
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
                        executor.run(spec)
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


def _user_error_of(e: Exception) -> UserError | None:
    """The UserError (or subclass) a submitit job raised, rebuilt from the traceback text it sends back."""
    for line in reversed(str(e).strip().splitlines()):
        name, sep, message = line.strip().partition(": ")
        cls = getattr(errors, name.rsplit(".", 1)[-1], None) if sep and name.startswith("benchmark.errors.") else None
        if isinstance(cls, type) and issubclass(cls, UserError):
            return cls(message.strip())
    return None
