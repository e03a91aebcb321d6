"""Child processes that must not outlive the process that started them."""
from __future__ import annotations

import ctypes
import os
import signal


def die_with(parent: int) -> None:
    """Process-pool initializer: a kill of the parent (SIGKILL, or SIGTERM from ``timeout`` or Slurm) kills this
    worker too (Linux's parent-death signal; elsewhere it exits when the pool's pipe closes). Without it a local
    worker would go on training its run, unseen, beside the run that the next command starts on the same folder."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)       # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                                           # the parent died before the prctl
        os._exit(1)
