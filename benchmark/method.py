"""The method contract (docs/design.md, "Methods"; a walkthrough in docs/adding-a-method.md).

A method folder ``methods/<name>/method.py`` holds one subclass of ``Method``. The harness builds it from the
scale's open_clip CLIP model and the method's config, and owns everything else (data, optimizer, schedule,
precision, distributed setup, compute budget, checkpoints, evaluation). A method overrides only the hooks
its paper changes, as in solo-learn's base class:

- ``training_step(batch, progress)``  named loss tensors, including the total ``loss`` (required);
- ``after_optimizer_step(progress)``  the base clamps the logit scale (open_clip semantics) and updates EMA teachers;
- ``encode_image`` / ``encode_text``  normalised embeddings of the full image, for evaluation;
- ``export()``                         the evaluable open_clip CLIP state dict, teachers and decoders stripped;
- ``requires(cfg)``                    runs that must finish first (UTA's teacher); ``ctx.finished_run(name)`` hands
                                       one to the method, ``ctx.required_models[name]`` its architecture (a
                                       variant may widen the image tower: ``clip@wide``);
- ``phases()``                         parts of training whose per-step cost differs (FLIP's unmasked tuning);
- ``lr_stages()``                      parts of training with their own learning-rate schedule (the same tuning);
- ``stats()``                          realised mask ratio and other statistics for the log;
- ``extra_compute()``                  compute outside this run that its result rests on (a teacher's pretraining);
- ``selection_probe(batch, progress)`` the token selection the method adds, as a call ``benchmark perf`` times.

Teachers are declared, not hand-managed: ``self.teacher = self.frozen_teacher(module)`` (a fixed copy, e.g. a
pretrained CLIP) or ``self.ema_teacher(student, momentum)`` (a mean teacher, ``momentum(progress)`` its schedule).
Both stay in eval mode without gradients whatever ``train()`` is called with; the EMA ones are updated after
every optimizer step. The FLOP count of a step includes their forward passes like any other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from benchmark.blocks import ema_update, frozen_copy
from benchmark.errors import UserError
from benchmark.run_folder import RunFolder
from benchmark.scales import Scale


@dataclass
class Context:
    """What the harness tells a method about the run it is part of."""

    scale: Scale
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    results_root: Path | None = None   # where finished runs of this benchmark live (teachers)
    planning: bool = False             # a shape-only copy for compute planning (benchmark/planning.py): a
                                       # teacher not trained yet may be stood in for by its architecture
    required_models: dict = field(default_factory=dict)   # open_clip.CLIP kwargs of each run it ``requires``

    def finished_run(self, method: str, instead: str = "") -> RunFolder:
        """The finished run of ``method`` at this scale and seed: one that this method ``requires``, so that
        ``benchmark run`` trains it first. A missing or unfinished one is a UserError naming the command that
        trains it (and ``instead``, another way to satisfy the method)."""
        alternative = f", or {instead}" if instead else ""
        if self.results_root is None:
            raise UserError(f"this method needs the finished {method!r} run: run it through `benchmark run`, "
                            f"which trains {method!r} first{alternative}")
        run = RunFolder.of(self.results_root, self.scale.name, method, self.seed)
        if not (run.finished and run.model.exists()):
            raise UserError(f"the required run {run.path} is missing or unfinished (needs model.pt and "
                            f"metrics.json): train it first with `python -m benchmark run --methods {method} "
                            f"--scale {self.scale.name} --seeds {self.seed}` (`benchmark run` does it for the runs a "
                            f"method requires){alternative}")
        return run


class Method(nn.Module):
    paper: ClassVar[str] = ""      # short citation shown by `benchmark list`
    summary: ClassVar[str] = ""    # one line: what the method changes
    # True when the loss reads the token-embedding matrix itself (a tied masked-language head): every row then gets
    # a gradient, so the harness keeps the embedding dense instead of training only the rows captions use
    # (benchmark/active_rows.py).
    dense_token_embedding: ClassVar[bool] = False

    def __init__(self, clip: open_clip.CLIP, cfg: dict, ctx: Context):
        super().__init__()
        self.clip = clip
        self.cfg = dict(cfg)
        self.ctx = ctx
        # open_clip's ClipLoss with local loss and gathered features (gradients equal the global-batch InfoNCE).
        self.clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=False,
                                  rank=ctx.rank, world_size=ctx.world_size)
        self._stats: dict[str, float] = {}
        self._teachers: list[tuple[nn.Module, nn.Module | None, Callable[[float], float] | None]] = []

    # ---- hooks a method overrides -------------------------------------------------------------------------
    def training_step(self, batch: dict, progress: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def requires(cls, cfg: dict) -> list[str]:
        """Names of methods whose run (same scale and seed) must finish before this one starts."""
        return []

    def phases(self) -> list[tuple[float, float]]:
        """(fraction of steps, a progress value inside that part). The harness counts FLOPs once per phase."""
        return [(1.0, 0.0)]

    def lr_stages(self) -> list[tuple[float, float, float | None]]:
        """(fraction of steps, learning-rate scale, warm-up as a fraction of the stage or None for the scale's).
        A stage after the first restarts the schedule with a fresh optimizer state (a separate short run)."""
        return [(1.0, 1.0, None)]

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        """Clamp the logit scale at 100, then update every EMA teacher."""
        self.clip.logit_scale.clamp_(0, math.log(100))   # open_clip_train/train.py: clamp(0, ln 100)
        for teacher, student, momentum in self._teachers:
            if student is not None:
                ema_update(teacher, student, momentum(progress))

    def extra_compute(self) -> dict:
        """Compute spent outside this run that its result rests on (e.g. a teacher's own pretraining), recorded in
        metrics.json beside the run's training FLOPs."""
        return {}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def export(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.clip.state_dict().items()}

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def selection_probe(self, batch: dict, progress: float) -> tuple[str, Callable[[], object]] | None:
        """(what it is, a call running only it): the token selection this method adds to its step, from inputs the
        step computes anyway, for ``benchmark perf`` to time against the whole step. None: no selection to time."""
        return None

    # ---- teachers -----------------------------------------------------------------------------------------
    def frozen_teacher(self, module: nn.Module) -> nn.Module:
        """A fixed teacher: a copy of ``module``, in eval mode, without gradients, never updated."""
        teacher = frozen_copy(module)
        self._teachers.append((teacher, None, None))
        return teacher

    def ema_teacher(self, student: nn.Module, momentum: Callable[[float], float],
                    teacher: nn.Module | None = None) -> nn.Module:
        """A mean teacher of ``student``: a frozen copy of it (or ``teacher``, a copy of a part of it whose parameters
        carry the student's names, frozen here), updated after every optimizer step as teacher <- m * teacher + (1 - m) * student
        with m = ``momentum(progress)``."""
        teacher = frozen_copy(student) if teacher is None else teacher.eval().requires_grad_(False)
        self._teachers.append((teacher, student, momentum))
        return teacher

    def teachers(self) -> list[nn.Module]:
        """Every declared teacher, in the order of declaration."""
        return [teacher for teacher, _, _ in self._teachers]

    def train(self, mode: bool = True):
        super().train(mode)
        for teacher in self.teachers():
            teacher.eval()            # a teacher never leaves eval mode
        return self

    # ---- helpers for subclasses ---------------------------------------------------------------------------
    def forward(self, batch: dict, progress: float) -> dict[str, torch.Tensor]:
        # DDP wraps the method; calling it runs the training step so gradients are synchronised.
        return self.training_step(batch, progress)

    def contrastive(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE on L2-normalised features with the learnable temperature (open_clip ClipLoss)."""
        return self.clip_loss(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1),
                              self.clip.logit_scale.exp())

    def record(self, **values: float) -> None:
        self._stats.update({k: float(v) for k, v in values.items()})

    @property
    def visual(self):
        return self.clip.visual

    @property
    def n_patches(self) -> int:
        return self.ctx.scale.patch_grid ** 2
