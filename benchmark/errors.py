"""Errors that reach the user: each one names the bad input and the fix."""
from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user (CLI value, config, method folder, dataset path). Exit status 2."""

    exit_code = 2


class RunFailed(Exception):
    """A run failed while training or evaluating (its error is recorded in the run folder). Exit status 1."""

    exit_code = 1


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf; raised at the step it happened."""


class RunLocked(UserError):
    """Another process holds the run's lock (it is training or evaluating that run). The sweep skips it."""


class DamagedFile(UserError, ValueError):
    """A state file (run folder, data cache) that cannot be read: cut short by a kill, or garbled. The message names
    the file and how to recover (delete it to regenerate, re-evaluate, or train again)."""


class StorageError(UserError):
    """The disk refused a write: full, read-only, no permission, or a path through a file. Exit status 2."""


_STORAGE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EISDIR: "it is a folder"}


def storage_error(e: BaseException) -> StorageError | None:
    """The user-facing error for a write the disk refused (``None`` for any other exception)."""
    if not isinstance(e, OSError) or e.errno not in _STORAGE:
        return None
    where = e.filename or "a results file"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"no space left on the device of {where} ({_STORAGE[e.errno]}); free space there or "
                            "pass another --results folder, then run the same command again (files are written "
                            "beside and renamed: nothing was left half-written)")
    return StorageError(f"cannot write {where} ({_STORAGE[e.errno]}); pass a writable folder (--results, "
                        "--reports) or fix its permissions")
