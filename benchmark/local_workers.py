"""Local worker processes (``run --cluster local``): persistent, spawned, one run at a time each.

Light on purpose (no torch, open_clip or harness import at module level): ``run`` starts its workers before
it imports anything heavy, so the workers' start-up (about 14 s of imports each) overlaps its own imports,
checks and data generation. On a CPU each worker uses one torch thread (``threads_per_job``).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal

from benchmark.errors import RunFailed
from benchmark.processes import die_with


class LocalWorker:
    """One persistent worker process; ``run(spec)`` executes a run in it and returns or raises what it did.
    ``threads``: its torch threads (None: torch's default, every core; ``AUTO``: ``threads_per_job()``, decided in
    the worker)."""

    def __init__(self, threads: int | None = None):
        self._pool = None
        self.threads = threads

    def start(self) -> "LocalWorker":
        """Start the worker process now (it imports torch, open_clip and the harness while the caller goes on)."""
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(self.threads, os.getpid()))
            self._pool.submit(_ready)
        return self

    def run(self, spec):
        """Execute ``spec`` (a ``benchmark.runs.RunSpec``) in the worker; returns or raises what the run did."""
        from benchmark.runs import execute
        future = self.start()._pool.submit(execute, spec, False)
        try:
            while True:
                # Wake up every 0.2 s: a Ctrl-C that the kernel delivers to another thread of this process (the
                # progress thread) would not interrupt a wait without timeout, and the run would go on to its end.
                try:
                    return future.result(timeout=0.2)
                except cf.TimeoutError:
                    continue
        except KeyboardInterrupt:            # Ctrl-C: stop the worker too (the run resumes from its checkpoint)
            self.terminate()
            raise
        except cf.process.BrokenProcessPool:
            self.close(wait=False)               # the next run gets a fresh worker
            raise RunFailed(f"{spec.label()} failed: its worker process died (killed or out of memory); run the "
                            "command again to resume it from its last checkpoint") from None

    def terminate(self):
        """Stop the worker process now (Ctrl-C in the launcher); its run resumes from its last checkpoint."""
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
            self.close(wait=False)

    def close(self, wait: bool = True):
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


AUTO = -1      # a worker's torch threads: decided in the worker, by ``threads_per_job`` (it needs torch)


def _worker_init(threads: int | None, parent: int) -> None:
    # A Ctrl-C reaches the whole process group: the launcher stops the worker, which would otherwise print its
    # own KeyboardInterrupt traceback under the launcher's message. A launcher killed outright takes it along.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with(parent)
    import benchmark.runs  # noqa: F401 - what every run imports (torch, open_clip, the harness), once per worker
    if threads == AUTO:
        threads = threads_per_job()
    if threads:
        import torch
        torch.set_num_threads(threads)


def _ready() -> None:
    """The first task of a fresh worker: it returns once the worker's initializer has run."""


def start_local_workers(n: int) -> list[LocalWorker]:
    """``n`` local workers, started at once: ``run`` starts them before it validates the sweep and generates
    the embedded data, so their start-up (about 14 s of imports each) overlaps that work. Hand them to
    ``launch(workers=...)``, which closes them; ``close_workers`` closes them when the sweep stops before."""
    return [LocalWorker(AUTO).start() for _ in range(n)]


def close_workers(workers: list[LocalWorker]) -> None:
    """Stop started workers that no sweep took over (bad input found, Ctrl-C during data generation)."""
    for w in workers:
        w.terminate()


def _cpu_only() -> bool:
    import torch
    return not torch.cuda.is_available()


def default_jobs(cpu_only: bool | None = None) -> int:
    """Runs side by side with ``--cluster local`` when ``--jobs`` is not given: one per CPU core (at most 4, about
    1.3 GB each at pocket) on a machine without a GPU; one with a GPU. ``cpu_only``: known already (else asked
    of torch)."""
    cpu_only = _cpu_only() if cpu_only is None else cpu_only
    return max(1, min(4, os.cpu_count() or 1)) if cpu_only else 1


def threads_per_job() -> int | None:
    """Torch threads of each local worker: one on a CPU, whatever ``--jobs`` is, so that a run's floating-point
    summation order (and so its metrics) is the same on every CPU machine and at every ``--jobs``; torch's
    default with a GPU."""
    return 1 if _cpu_only() else None
