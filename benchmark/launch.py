"""Launch runs (docs/design.md, "Launching"): ``debug`` in this process, ``local`` in a worker process on this
machine, ``slurm`` through submitit on a cluster. Runs are ordered so that a run's ``requires`` finish first; one
failed run fails alone (runs that need it are skipped), the rest of the sweep finishes.

``local`` keeps persistent worker processes for the whole sweep (``concurrent.futures.ProcessPoolExecutor``,
spawned): torch, open_clip and the harness are imported once per worker, not once per run as a fresh interpreter
per run would. ``jobs`` workers run side by side, a run starting as soon as the runs it requires have finished. On a
CPU each worker uses one torch thread: the small pocket steps do not use two threads well (on 2 cores, two 1-thread
runs side by side gave 1.49x the throughput of one 2-thread run; docs/pocket.md), and one thread everywhere makes a
run's metrics the same on every CPU machine and at every ``--jobs``. A worker
that dies (killed, out of memory) fails its run only; a fresh worker takes the next run, and the killed run
resumes from its last checkpoint when the command is run again.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import submitit

from benchmark import errors, progress, slurm
from benchmark.errors import RunFailed, RunLocked, UserError
from benchmark.local_workers import LocalWorker, close_workers, threads_per_job
from benchmark.runs import RunSpec, check_config, execute, identity
from benchmark.sweep import Outcome, blocked_by, with_requirements


def _executor(cluster: str, folder: Path, threads: int | None = None):
    if cluster == "debug":
        return None
    if cluster == "local":
        return LocalWorker(threads)
    raise UserError(f"unknown --cluster {cluster!r}: choose debug, local or slurm")


ALREADY_FINISHED = "already finished (--force to retrain)"


def launch(specs: list[RunSpec], cluster: str = "local", methods_dir: Path | None = None,
           progress_bar: bool = True, slurm_profile: str | None = None, jobs: int = 1,
           workers: list[LocalWorker] | None = None) -> list[Outcome]:
    """Run ``specs``: with ``cluster="local"`` and ``jobs`` > 1, that many side by side (a run after the runs it
    requires), else one after another; with ``cluster="slurm"`` submit them with the profile YAML
    ``slurm_profile`` instead.

    ``progress_bar``: live progress lines on stderr (``benchmark.progress``), read from each run's log, for runs
    in this process and in worker processes alike. A finished run is not started again. ``workers``: local
    workers already started (``start_local_workers``), used first; ``launch`` closes them.
    """
    specs = with_requirements(specs, methods_dir)
    if cluster != "local":
        close_workers(list(workers or []))
    if cluster == "slurm":
        return slurm.submit_sweep(specs, slurm_profile, methods_dir)
    jobs = max(1, min(jobs, len(specs))) if cluster == "local" else 1
    submitit_folder = Path(specs[0].results) / specs[0].scale / ".submitit"
    threads = threads_per_job()
    started = list(workers or []) if cluster == "local" else []
    close_workers(started[jobs:])
    executors = started[:jobs] + [_executor(cluster, submitit_folder, threads) for _ in range(jobs - len(started))]
    where = "in this process" if executors[0] is None else "in a worker process"
    # two runs drawing one line each in place would overwrite each other: side by side, lines are printed
    console = progress.Console(len(specs), quiet=not progress_bar, redraw=jobs == 1)
    order = "one after another" if jobs == 1 else f"{jobs} side by side"
    if threads and executors[0] is not None:
        order += f", {threads} torch thread each"
    console.header(f"{len(specs)} run(s) at scale {specs[0].scale}, {order}, each {where} "
                   f"(--cluster {cluster}); results in {Path(specs[0].results) / specs[0].scale}")
    try:
        if jobs == 1:
            failed: set[tuple[str, int]] = set()
            return [_run_one(spec, executors[0], console, failed, methods_dir, where) for spec in specs]
        return _run_side_by_side(specs, executors, console, methods_dir, where)
    finally:
        for executor in executors:
            if executor is not None:
                executor.close()


def _run_one(spec, executor, console, failed: set, methods_dir, where) -> Outcome:
    """Run (or skip, or report as finished) one run; a failed, skipped or locked run is added to ``failed``."""
    label = f"{spec.method} seed {spec.seed}"
    console.start(label)
    blocked = blocked_by(spec, failed, methods_dir)
    if blocked:
        failed.add((spec.method, spec.seed))
        outcome = Outcome(spec, "skipped", f"required run(s) failed: {', '.join(blocked)}")
        console.finish(label, f"skipped: {outcome.detail}", trained=False)
        return outcome
    if not spec.force and spec.folder.finished:
        check_config(spec, identity(spec))          # a foreign run folder is refused, not reported as done
        console.finish(label, ALREADY_FINISHED, trained=False)
        return Outcome(spec, "done", ALREADY_FINISHED)
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
        console.finish(label, "done", spec.dir, time.monotonic() - t0)
        return Outcome(spec, "done")
    except RunLocked as e:               # another process is on this run: the others go on
        failed.add((spec.method, spec.seed))
        console.finish(label, f"locked: {e}", trained=False)
        return Outcome(spec, "locked", str(e))
    except UserError:
        raise
    except (RunFailed, Exception) as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()
        detail = next((ln for ln in reversed(msg) if "RunFailed" in ln or "Error" in ln), msg[-1] if msg else "")
        failed.add((spec.method, spec.seed))
        console.finish(label, f"failed: {detail}", trained=False)
        return Outcome(spec, "failed", detail)


def _run_side_by_side(specs, workers, console, methods_dir, where) -> list[Outcome]:
    """One thread per worker takes the first waiting run whose required runs have all ended (in ``specs``'
    order, which puts a run after the runs it requires). Outcomes come back in ``specs``' order."""
    from benchmark.sweep import requirements
    needs = {id(s): requirements(s, methods_dir) for s in specs}
    waiting, ended, failed = list(specs), set(), set()
    outcomes: dict[int, Outcome] = {}
    errors_seen: list[BaseException] = []
    cond = threading.Condition()

    def next_ready():
        for s in waiting:
            if all((r, s.seed) in ended for r in needs[id(s)]):
                waiting.remove(s)
                return s
        return None

    def serve(worker):
        while True:
            with cond:
                spec = None
                while not errors_seen and waiting and (spec := next_ready()) is None:
                    cond.wait()
                if spec is None:
                    return
            try:
                outcome = _run_one(spec, worker, console, failed, methods_dir, where)
            except BaseException as e:    # noqa: BLE001 - a UserError (or Ctrl-C) ends the sweep
                with cond:
                    errors_seen.append(e)
                    cond.notify_all()
                return
            with cond:
                outcomes[id(spec)] = outcome
                ended.add((spec.method, spec.seed))
                cond.notify_all()

    threads = [threading.Thread(target=serve, args=(w,), name=f"run slot {i}", daemon=True)
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:            # Ctrl-C: stop every worker (their runs resume from their checkpoints)
        with cond:
            errors_seen.append(KeyboardInterrupt())
            cond.notify_all()
        for w in workers:
            w.terminate()
        raise
    if errors_seen:
        raise errors_seen[0]
    return [outcomes[id(s)] for s in specs if id(s) in outcomes]


def _user_error_of(e: Exception) -> UserError | None:
    """The UserError (or subclass) a submitit job raised, rebuilt from the traceback text it sends back."""
    for line in reversed(str(e).strip().splitlines()):
        name, sep, message = line.strip().partition(": ")
        cls = getattr(errors, name.rsplit(".", 1)[-1], None) if sep and name.startswith("benchmark.errors.") else None
        if isinstance(cls, type) and issubclass(cls, UserError):
            return cls(message.strip())
    return None
