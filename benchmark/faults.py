"""Fault injection for tests: ``MASKBENCH_KILL_AT=step:N`` makes the process SIGKILL itself right after
optimizer step N; ``checkpoint:N`` kills it in the middle of writing the checkpoint of step N (the temporary
file written, not yet renamed). Unset in normal use: every hook is a single environment lookup."""
from __future__ import annotations

import os
import signal


def maybe_kill(point: str, step: int) -> None:
    spec = os.environ.get("MASKBENCH_KILL_AT")
    if spec and spec == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
