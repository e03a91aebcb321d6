"""P1 trainer speed: the harness's CLIP step against open_clip's own training loop.

Both sides train the same open_clip CLIP (the scale's config, same initial weights), at the same batch and
precision, on the same pairs held in memory. The open_clip side is ``open_clip_train.train.train_one_epoch``
from the installed wheel, set up as ``open_clip_train.main`` sets it up: its AdamW parameter groups (stock
``torch.optim.AdamW``, not fused), ``cosine_lr``, ``ClipLoss`` as ``create_loss`` builds it, gradient clipping,
a ``DataLoader`` over the pairs (already normalised tensors, as its transforms would emit them; no workers:
two cores). One timed call runs ``steps_per_call`` steps (one ``train_one_epoch`` of that many batches).
"""
from __future__ import annotations

import argparse
import logging

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch.utils.data import DataLoader, Dataset, RandomSampler

from benchmark.data.preprocess import normalize_images
from benchmark.discovery import build_method
from benchmark.perf import harness, timing
from benchmark.scales import Scale


class _PairsDataset(Dataset):
    """Per-sample (image, tokens) as open_clip's datasets yield them, from the harness's in-memory pairs."""

    def __init__(self, data, n: int):
        idx = torch.arange(min(n, len(data)))
        self.images = normalize_images(data.images[idx], "cpu")
        self.tokens = data.tokens[idx]

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return self.images[i], self.tokens[i]


class _DataInfo:
    """open_clip_train.data.DataInfo's interface (``dataloader`` with ``num_batches``/``num_samples``)."""

    def __init__(self, dataloader):
        self.dataloader = dataloader

    def set_epoch(self, epoch):
        pass


def open_clip_args(device: torch.device, batch_size: int, grad_clip: float | None) -> argparse.Namespace:
    """The fields ``train_one_epoch`` reads, with open_clip_train's defaults for a one-process run."""
    precision = "amp_bf16" if device.type == "cuda" else "fp32"
    return argparse.Namespace(device=str(device), precision=precision, distill=False, accum_freq=1,
                              skip_scheduler=False, horovod=False, grad_clip_norm=grad_clip,
                              log_every_n_steps=100, batch_size=batch_size, world_size=1, rank=0, local_rank=0,
                              wandb=False)


class OpenClipLoop:
    """One call = ``train_one_epoch`` over ``steps`` batches of open_clip's stock loop."""

    def __init__(self, scale: Scale, state: dict, data, device: torch.device, batch_size: int, steps: int):
        from open_clip_train.scheduler import cosine_lr
        from open_clip_train.train import train_one_epoch
        self.train_one_epoch = train_one_epoch
        self.model = open_clip.CLIP(**scale.model, output_dict=True).to(device)
        self.model.load_state_dict(state)
        # open_clip_train.main: no weight decay on gains, biases and the logit scale; plain AdamW
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        named = list(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad],
              "weight_decay": scale.optim.weight_decay}],
            lr=scale.optim.lr, betas=scale.optim.betas, eps=scale.optim.eps)
        warmup = scale.optim.warmup_samples // batch_size
        self.scheduler = cosine_lr(self.optimizer, scale.optim.lr, warmup, 1000)
        self.loss = ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0, world_size=1)
        dataset = _PairsDataset(data, max(batch_size * steps, batch_size * 8))
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, drop_last=True,
                            sampler=RandomSampler(dataset, num_samples=batch_size * steps),
                            pin_memory=device.type == "cuda")
        loader.num_samples, loader.num_batches = batch_size * steps, steps
        self.data = {"train": _DataInfo(loader)}
        self.args = open_clip_args(device, batch_size, scale.optim.grad_clip)
        self.epoch = 0

    def __call__(self):
        self.train_one_epoch(self.model, self.data, self.loss, self.epoch, self.optimizer, None, self.scheduler,
                             None, self.args)
        self.epoch += 1


class HarnessLoop:
    """One call = ``steps`` harness steps (the same number of steps per call as the open_clip side)."""

    def __init__(self, step: harness.HarnessStep, steps: int):
        self.step, self.steps = step, steps

    def __call__(self):
        for _ in range(self.steps):
            self.step()


def measure(scale: Scale, device: torch.device, repeats: int, steps_per_call: int = 3, synthetic: bool = False,
            batch_size: int | None = None) -> dict:
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))   # open_clip logs each epoch
    bsz = batch_size or scale.batch_size
    data = harness.training_pairs(scale, synthetic)
    method = build_method("clip", scale, device=device)
    state = {k: v.detach().clone() for k, v in method.clip.state_dict().items()}
    ours = HarnessLoop(harness.HarnessStep(method, data, scale, device, bsz), steps_per_call)
    theirs = OpenClipLoop(scale, state, data, device, bsz, steps_per_call)
    samples = timing.interleave({"maskbench": ours, "open_clip_train": theirs}, repeats, warmup=1, device=device,
                                per_call={"maskbench": steps_per_call, "open_clip_train": steps_per_call})
    r = timing.ratio(samples["maskbench"], samples["open_clip_train"])
    return {
        "scale": scale.name, "batch": bsz, "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "steps_per_call": steps_per_call, "repeats": repeats, "data": "synthetic" if synthetic else "embedded",
        "maskbench": timing.summary(samples["maskbench"]),
        "open_clip_train": timing.summary(samples["open_clip_train"]),
        "ratio": r, "goal": "ratio <= 1.0 (aim 0.9)", "met": r["median"] <= 1.0,
        "notes": ("maskbench: benchmark.train loop body (fused AdamW, per-step data.batch from uint8 in memory); "
                  "open_clip_train: train_one_epoch with its stock AdamW and a DataLoader over normalised tensors"),
        "samples_ms": {k: [round(1e3 * s, 2) for s in v] for k, v in samples.items()},
    }
