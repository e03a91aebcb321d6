"""Multi-process training (benchmark/distributed.py) on CPU with the gloo backend, 2 processes.

1. One step: the DDP-averaged gradients of 2 processes, each on its half of the global batch with open_clip's
   local loss and gathered features, equal the gradients of one process on the whole batch; the mean of the two
   rank losses equals the one-process loss.
2. Training: 3 steps of ``train`` with 2 processes end at the parameters of 3 one-process steps.
3. Stop and resume: a stop raised on rank 1 only stops both ranks at the same step with one checkpoint (rank 0
   writes it, with the RNG state of each rank); resuming ends bit for bit where an uninterrupted 2-process run
   ends (FLIP: each rank draws its own masks, so the per-rank RNG state matters).
4. A whole run (``runs.execute``) with 2 processes: the same step plan as one process, rank 0 alone writes the
   run folder and evaluates, and every evaluation runs.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark import distributed, flops
from benchmark.data.train_data import InMemoryPairs
from benchmark.discovery import build_method
from benchmark.runs import RunSpec, config_hash, execute, identity
from benchmark.scales import get_scale
from benchmark.train import Interrupted, TrainPlan, train

pytestmark = pytest.mark.slow       # two processes per test, whole runs

SCALE = get_scale("smoke")
BATCH = 16


def _data() -> InMemoryPairs:
    rng = np.random.default_rng(0)
    n = 64
    images = rng.integers(0, 256, size=(n, SCALE.image_size, SCALE.image_size, 3), dtype=np.uint8)
    tokens = torch.zeros(n, SCALE.context_length, dtype=torch.long)
    for i in range(n):
        length = int(rng.integers(3, SCALE.context_length - 1))
        tokens[i, 0], tokens[i, length] = 49406, 49407
        tokens[i, 1:length] = torch.from_numpy(rng.integers(1, 49000, size=length - 1))
    return InMemoryPairs(images, tokens, "ddp-test")


def _method(name: str, rank: int, world_size: int):
    return build_method(name, SCALE, rank=rank, world_size=world_size)


def _plan(steps: int) -> TrainPlan:
    return TrainPlan(steps=steps, batch_size=BATCH, seed=0, optim=SCALE.optim, checkpoint_every=100, log_every=1)


def _params(method) -> dict:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _one_step(method, batch: dict, model=None) -> tuple[float, dict]:
    losses = (model or method)(batch, 0.0)
    losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return float(losses["loss"].detach()), grads


def _train(name: str, rank: int, world_size: int, run_dir: Path, steps: int, stop_at: int | None = None):
    """``train`` for ``steps``; with ``stop_at``, a stop raised on the last rank only when that step begins."""
    run_dir.mkdir(parents=True, exist_ok=True)
    method = _method(name, rank, world_size)
    torch.manual_seed(0 if rank == 0 else 1_000_003 * rank)       # as runs.py seeds each rank
    model = distributed.wrap(method, "cpu")
    step_seen = iter(range(10 ** 6))
    stop = (lambda: next(step_seen) == stop_at and rank == world_size - 1) if stop_at is not None else (lambda: False)
    train(model, method, _data(), _plan(steps), run_dir, "cpu", rank=rank, world_size=world_size,
          stop_requested=stop, progress_bar=False)
    return _params(method)


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        out = Path(out)
        data = _data()
        # 1. one step, this rank's half of the global batch
        method = _method("clip", rank, world_size)
        model = distributed.wrap(method, "cpu")
        loss, grads = _one_step(method, data.batch(0, BATCH, 0, "cpu", rank, world_size), model)
        # 2. three training steps
        params = _train("clip", rank, world_size, out / "clip", 3)
        # 3. FLIP: stopped at step 2 (stop raised on the last rank only), resumed, against an uninterrupted run
        interrupted = False
        try:
            _train("flip", rank, world_size, out / "flip-resumed", 4, stop_at=2)
        except Interrupted:
            interrupted = True
        dist.barrier()
        stopped_at = sorted(int(p.stem.split("_")[1]) for p in (out / "flip-resumed" / "checkpoints").glob("*.pt")) \
            if interrupted else None
        resumed = _train("flip", rank, world_size, out / "flip-resumed", 4)
        straight = _train("flip", rank, world_size, out / "flip-straight", 4)
        # 4. a whole run (train, export, evaluate) as a Slurm job with 2 tasks runs it
        metrics = execute(RunSpec(method="clip", seed=0, scale="smoke", results=str(out / "runs")), progress_bar=False)
        torch.save({"loss": loss, "grads": grads, "params": params, "stopped_at": stopped_at,
                    "resumed": resumed, "straight": straight, "metrics": metrics}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_process_step_equals_one_process_on_the_global_batch(two_ranks):
    _, ranks = two_ranks
    torch.set_num_threads(1)
    method = _method("clip", 0, 1)
    loss, grads = _one_step(method, _data().batch(0, BATCH, 0, "cpu"))
    # local loss: each rank scores its own rows against all gathered features; the rank losses average to the
    # global-batch loss (and differ from it and from each other)
    assert ranks[0]["loss"] != pytest.approx(ranks[1]["loss"], abs=1e-4)
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == ranks[0]["grads"].keys()
    for name, g in grads.items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), f"DDP left {name} unsynchronised"
        # all-reduce sums in another order than one process: float noise of ~1e-6 on a few of 1.6M entries
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=5e-4, atol=2e-6, msg=f"gradient of {name}")


def test_two_process_training_matches_one_process(two_ranks, tmp_path):
    out, ranks = two_ranks
    torch.set_num_threads(1)
    params = _train("clip", 0, 1, tmp_path / "single", 3)
    for name, p in params.items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name])
        # AdamW normalises each entry: a near-zero gradient's summation noise moves a few entries by ~lr/50
        torch.testing.assert_close(ranks[0]["params"][name], p, rtol=1e-4, atol=5e-5, msg=f"parameter {name}")
    # rank 0 alone writes the log: one line per step
    assert len((out / "clip" / "train.jsonl").read_text().splitlines()) == 3


def test_stop_on_one_rank_stops_all_and_resume_is_exact(two_ranks):
    out, ranks = two_ranks
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == [2]
    ckpt = torch.load(out / "flip-resumed" / "checkpoints" / "step_0000004.pt", weights_only=True)
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"]), "ranks must draw different masks"
    for r in ranks:
        for name, p in r["straight"].items():
            assert torch.equal(r["resumed"][name], p), f"resumed {name} differs from the uninterrupted run"


def test_two_process_run_plans_the_same_steps_and_rank0_writes(two_ranks):
    out, ranks = two_ranks
    assert ranks[1]["metrics"] is None                      # rank 0 exports, evaluates and records
    metrics = ranks[0]["metrics"]
    run = out / "runs" / "smoke" / "clip" / "seed0"
    assert json.loads((run / "metrics.json").read_text())["compute"] == metrics["compute"]
    # the step plan is a single-process quantity: the 2-process run trains the steps one process would
    ident = identity(RunSpec(method="clip", seed=0, scale="smoke"))
    assert metrics["config_hash"] == config_hash(ident)
    assert metrics["compute"]["steps"] == flops.plan_steps(
        "flops", SCALE, metrics["compute"]["reference_clip_flops_per_step"],
        [(f, c) for f, c in metrics["compute"]["phase_flops_per_step"]])
    assert metrics["compute"]["steps"] == SCALE.samples // SCALE.batch_size     # CLIP: the reference itself
    errors = {task: r["error"] for task, r in metrics["evals"].items() if isinstance(r, dict) and "error" in r
              and "No module named" not in r["error"]}   # (a task whose module is not written yet is not ours)
    assert not errors, errors
    log = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("type") != "eval"] == sorted({1, 11, metrics["compute"]["steps"]})
