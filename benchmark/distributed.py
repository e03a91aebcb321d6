"""Multi-GPU and multi-node training (docs/design.md, "Launching"): one process per GPU, torch.distributed, DDP.

A run with one process never touches torch.distributed, so the single-process path is exactly the plain one.
With several processes (a Slurm job with several tasks, or ``torch.multiprocessing`` in tests) every rank builds
the same method, ``wrap`` puts it in DDP (gradients averaged over ranks), each rank trains on its contiguous
slice of the global batch (``data.batch(..., rank, world_size)``) and the contrastive loss is open_clip's
``ClipLoss(local_loss=True, gather_with_grad=True)`` that ``Method`` builds from the rank and world size: each rank
scores its own rows against the gathered features of all ranks, so the rank losses average to the global-batch
InfoNCE and the DDP-averaged gradients equal the single-process gradients of the global batch. Rank 0 writes
every file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistEnv:
    """The process group this process is part of (rank 0 of 1 when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_slurm() -> DistEnv:
    """Inside a submitit Slurm job with several tasks: export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from
    the Slurm environment (submitit's TorchDistributedEnvironment) and initialise the process group. One task:
    nothing to initialise."""
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment()
    if env.world_size == 1:
        return DistEnv()
    # Keep CUDA_VISIBLE_DEVICES as Slurm set it: ``device_index`` maps the local rank onto the visible GPUs,
    # whether Slurm shows each task all of the node's GPUs or only its own.
    env.export(set_cuda_visible_devices=False, overwrite=True)
    if torch.cuda.is_available():
        torch.cuda.set_device(device_index(env.local_rank))
    dist.init_process_group(backend=backend(), init_method="env://", rank=env.rank, world_size=env.world_size)
    return current()


def device_index(local_rank: int) -> int:
    return local_rank % max(1, torch.cuda.device_count())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(method: torch.nn.Module, device) -> torch.nn.Module:
    """DDP around the method when there are several processes (Method.forward runs the training step), else the
    method itself. ``find_unused_parameters``: a method may leave a module idle in some steps (a decoder in one
    phase); DDP then reduces zeros for it instead of failing."""
    if current().world_size == 1:
        return method
    device = torch.device(device)
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(method, device_ids=ids, find_unused_parameters=True)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (the object itself with one process)."""
    if current().world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    if current().world_size == 1:
        return [obj]
    out = [None] * current().world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any rank (so that all ranks stop at the same step)."""
    if current().world_size == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if current().world_size > 1:
        dist.barrier()
