"""Checkpoints: written atomically, verified on load, loaded with ``weights_only=True``.

``step_0000123.pt`` is written to a temporary file, fsynced and renamed; its sha256 is then written beside it
(``.sha256``). A checkpoint without a matching digest (a write killed midway) is ignored on resume.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch

from benchmark.faults import maybe_kill

KEEP = 2
_NAME = re.compile(r"^step_(\d{7})\.pt$")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def process_umask() -> int:
    """The process umask, read without changing it (Linux: /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mkstemp_like_open(folder: Path, name: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder``, but with the mode ``open()`` would give (0o666 less the umask, i.e. 0644
    by default) instead of mkstemp's 0600, so that labmates on a shared cluster can read results and checkpoints."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~process_umask())
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = mkstemp_like_open(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _torch_save(obj, f, path: Path) -> None:
    """torch.save into an open file; a full disk surfaces from torch's zip writer as a RuntimeError ("unexpected
    pos", "failed writing file"), turned back into the OSError it is."""
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        if "unexpected pos" in str(e) or "failed writing" in str(e) or "file write failed" in str(e):
            raise OSError(errno.ENOSPC, f"No space left on device (torch.save: {str(e).splitlines()[0]})",
                          str(path)) from None
        raise


def atomic_torch_save(obj, path: Path, kill_point: tuple[str, int] | None = None) -> None:
    """torch.save to a temporary file beside ``path``, fsynced, then renamed: never half a file under its name."""
    fd, tmp = mkstemp_like_open(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            _torch_save(obj, f, path)
            f.flush()
            os.fsync(f.fileno())
        if kill_point:
            maybe_kill(*kill_point)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(folder: Path, step: int, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.pt"
    atomic_torch_save(state, path, kill_point=("checkpoint", step))
    atomic_write_bytes(path.with_suffix(".sha256"), file_sha256(path).encode())
    for old in sorted(checkpoints(folder))[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    for stale in folder.glob(".step_*.tmp"):      # left by a process killed mid-write (one writer per run: the lock)
        stale.unlink(missing_ok=True)
    return path


def checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step_*.pt") if _NAME.match(p.name)) if folder.is_dir() else []


def verified(path: Path) -> bool:
    digest = path.with_suffix(".sha256")
    return digest.exists() and digest.read_text().strip() == file_sha256(path)


def latest(folder: Path) -> Path | None:
    """The newest checkpoint whose digest matches; damaged or unfinished ones are skipped."""
    for path in reversed(checkpoints(folder)):
        if verified(path):
            return path
    return None


def load(path: Path, map_location="cpu") -> dict:
    if not verified(path):
        raise ValueError(f"checkpoint {path} does not match its sha256: it is damaged or was not fully written")
    return torch.load(path, map_location=map_location, weights_only=True)
