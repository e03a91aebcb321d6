"""UTA: Enhancing Vision-Language Model with Unmasked Token Alignment (Liu, Zheng, Liu, Liu, Li; TMLR 2024).

Abstract and pipeline figure: a student ViT receives only the unmasked patches (no [MASK]
tokens) and each of its output tokens, CLS included, is aligned with the frozen CLIP teacher's token at the same
position; the teacher sees the full image. The teacher's tokens live in the CLIP joint space, so the student is
aligned with the teacher's frozen text tower for free: evaluation pairs the student's image tower with the
teacher's text tower. No training code was released, so the loss (1 - cosine), the targets (teacher tokens after
``ln_post`` and ``proj``), the mask ratio and pattern are our choices, each a config switch (README, fidelity
table). Optional stage 2: contrastive fine-tuning of the student against the frozen text tower.

The teacher is a finished run of this benchmark (``teacher_run``, by default the ``clip`` run of the same scale
and seed, declared through ``requires`` so the harness trains it first; ``uta@wide_teacher``: ``clip@wide``, whose
image tower is twice as wide, the paper's premise of a stronger teacher) or an open_clip checkpoint file
(``teacher_checkpoint``). Its forward pass is part of every step, so matched compute counts it; its own
pretraining compute is reported beside UTA's (``extra_compute``) and charged in the report's total.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from benchmark.blocks import (block_keep_indices, complement_indices, pool_project, project_tokens,
                              random_keep_indices, vit_tokens)
from benchmark.errors import UserError
from benchmark.method import Method
from benchmark.model import load_clip
from benchmark.results import read_json

MASK_MODES = ("random", "reversed_block", "complementary")
TARGETS = ("projected", "features")


class UTA(Method):
    paper = "UTA: Liu, Zheng, Liu, Liu, Li, TMLR 2024 (arXiv 2405.19009); training re-implemented, no code released"
    summary = ("A student ViT on the unmasked 50% of patches aligns every token, CLS included, to a frozen CLIP "
               "teacher; zero-shot through the teacher's text tower.")

    def __init__(self, clip, cfg, ctx):
        super().__init__(clip, cfg, ctx)
        if self.cfg["mask_mode"] not in MASK_MODES:
            raise UserError(f"uta.mask_mode={self.cfg['mask_mode']!r}: choose one of {', '.join(MASK_MODES)}")
        if self.cfg["target"] not in TARGETS:
            raise UserError(f"uta.target={self.cfg['target']!r}: choose one of {', '.join(TARGETS)}")
        if self.cfg["mask_mode"] == "complementary" and self.cfg["mask_ratio"] == 0:
            raise UserError("uta.mask_mode=complementary needs mask_ratio > 0 (the second pass sees the masked part)")
        if not 0 <= self.cfg["contrastive_finetune_fraction"] < 1:
            raise UserError(f"uta.contrastive_finetune_fraction={self.cfg['contrastive_finetune_fraction']} is "
                            "outside [0, 1): the fraction of the steps spent in stage-2 contrastive fine-tuning")
        self.teacher_run = self.teacher_metrics = self.teacher_checkpoint = None
        # The teacher's architecture: the teacher run's own (a wider variant, e.g. clip@wide) or the scale's.
        teacher_model = None if self.cfg["teacher_checkpoint"] else ctx.required_models.get(self.cfg["teacher_run"])
        if ctx.planning:
            # Compute planning: the frozen teacher's pass costs the same whatever its weights, so an untrained model
            # of its architecture stands in for it (the teacher run may not exist yet).
            teacher = open_clip.CLIP(**(teacher_model or ctx.scale.model))
        elif self.cfg["teacher_checkpoint"]:
            self.teacher_checkpoint = Path(self.cfg["teacher_checkpoint"]).expanduser()
            teacher = load_clip(self.teacher_checkpoint, ctx.scale, what="uta.teacher_checkpoint")
        else:           # the finished run named by teacher_run (required, so trained first)
            self.teacher_run = ctx.finished_run(self.cfg["teacher_run"], instead="set uta.teacher_checkpoint to an "
                                                "open_clip checkpoint file")
            teacher = load_clip(self.teacher_run.model, ctx.scale, what=f"uta's teacher run {self.teacher_run.path}",
                                model=teacher_model)
            self.teacher_metrics = read_json(self.teacher_run.metrics)
        teacher_width, width = teacher.visual.ln_post.normalized_shape, self.visual.ln_post.normalized_shape
        if self.cfg["target"] == "features" and teacher_width != width:
            raise UserError(f"uta.target=features aligns the student's ln_post output with the teacher's, but the "
                            f"teacher ({self.cfg['teacher_run']}) is {teacher_width[0]} wide and the student "
                            f"{width[0]}: use target=projected (both in the joint embedding space)")
        # The frozen teacher image tower: targets only, never updated.
        self.teacher = self.frozen_teacher(teacher.visual)
        # The evaluable model = student image tower + the teacher's text tower and temperature, frozen (LiT-style)
        # unless stage 2 tunes them.
        text_state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("visual.")}
        try:
            self.clip.load_state_dict({**self.clip.state_dict(), **text_state}, strict=True)
        except RuntimeError as e:
            raise UserError(f"uta's teacher ({self.cfg['teacher_checkpoint'] or self.cfg['teacher_run']}) has "
                            "another text tower or embedding width than the scale's model, so its text tower "
                            f"cannot pair with the student ({str(e).strip().splitlines()[0]}); a teacher may "
                            "differ from the scale's model in its image tower only") from None
        stage2 = self.cfg["contrastive_finetune_fraction"] > 0
        for name, p in self.clip.named_parameters():
            if not name.startswith("visual."):
                p.requires_grad_(stage2 and (name == "logit_scale" or self.cfg["finetune_text"]))

    @classmethod
    def requires(cls, cfg):
        # the teacher run (same scale and seed) finishes first; a checkpoint file needs no run
        return [] if cfg["teacher_checkpoint"] else [cfg["teacher_run"]]

    # ---- the frozen teacher ---------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_targets(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher on the full image: its CLIP image embedding [B, E] (the CLS target) and one target per
        patch [B, N, E] after ``ln_post`` + ``proj`` (``features``: [B, N, D] after ``ln_post`` only)."""
        tokens = vit_tokens(self.teacher, images)
        projected = project_tokens(self.teacher, tokens)
        patches = projected[:, 1:] if self.cfg["target"] == "projected" else self.teacher.ln_post(tokens[:, 1:])
        return projected[:, 0], patches

    # ---- masking ----------------------------------------------------------------------------------------------
    def keep_sets(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The kept patch positions of each student pass: one pass, or two complementary ones."""
        b, n, ratio = images.shape[0], self.n_patches, self.cfg["mask_ratio"]
        mode = self.cfg["mask_mode"]
        if mode == "reversed_block":         # block-wise mask whose blocks are kept, the rest dropped
            return [block_keep_indices(b, self.ctx.scale.patch_grid, max(1, int(n * (1 - ratio))), images.device)]
        keep = random_keep_indices(b, n, ratio, images.device)
        return [keep, complement_indices(keep, n)] if mode == "complementary" else [keep]

    # ---- one step --------------------------------------------------------------------------------------------
    def finetuning(self, progress: float) -> bool:
        f = self.cfg["contrastive_finetune_fraction"]
        return f > 0 and progress >= 1.0 - f

    def phases(self):
        # Stage 2 has no teacher pass but a text pass: compute matching counts it at its own cost.
        f = self.cfg["contrastive_finetune_fraction"]
        return [(1.0 - f, 0.0)] + ([(f, 1.0 - f / 2)] if f > 0 else [])

    def training_step(self, batch, progress):
        if self.finetuning(progress):
            return self.contrastive_step(batch)
        images = batch["images"]
        cls_target, patch_target = self.teacher_targets(images)
        total, cls_terms = [], []
        keep_sets = self.keep_sets(images)
        for keep in keep_sets:
            tokens = vit_tokens(self.visual, images, keep)            # the student never sees masked patches
            cls = pool_project(self.visual, tokens)                    # [B, E]: the zero-shot image embedding
            if self.cfg["target"] == "projected":
                patches = project_tokens(self.visual, tokens[:, 1:])   # [B, K, E]
            else:
                patches = self.visual.ln_post(tokens[:, 1:])           # [B, K, D]
            cls_loss = 1 - F.cosine_similarity(cls.float(), cls_target.float(), dim=-1)                  # [B]
            target = torch.gather(patch_target, 1, keep[..., None].expand(-1, -1, patch_target.shape[-1]))
            patch_loss = 1 - F.cosine_similarity(patches.float(), target.float(), dim=-1)                # [B, K]
            # negative cosine over every kept token and CLS, equal weights (EVA-02's MIM loss form)
            total.append(torch.cat([cls_loss[:, None], patch_loss], dim=1).mean())
            cls_terms.append(cls_loss.mean())
        loss = torch.stack(total).mean()
        cls_term = torch.stack(cls_terms).mean().detach()
        self.record(mask_ratio=1.0 - keep_sets[0].shape[1] / self.n_patches, student_passes=len(keep_sets),
                    cls_cosine=1.0 - cls_term.item())
        return {"loss": loss, "align": loss.detach(), "align_cls": cls_term}

    def contrastive_step(self, batch):
        """Stage 2: ClipLoss between the student's image embedding and the frozen text tower."""
        images, ratio = batch["images"], self.cfg["finetune_mask_ratio"]
        keep = random_keep_indices(images.shape[0], self.n_patches, ratio, images.device) if ratio > 0 else None
        image = pool_project(self.visual, vit_tokens(self.visual, images, keep))
        with torch.set_grad_enabled(self.cfg["finetune_text"] and torch.is_grad_enabled()):
            text = self.clip.encode_text(batch["texts"])
        loss = self.contrastive(image, text)
        kept = keep.shape[1] if keep is not None else self.n_patches
        self.record(mask_ratio=1.0 - kept / self.n_patches, logit_scale=self.clip.logit_scale.exp().item())
        return {"loss": loss, "contrastive": loss.detach()}

    # ---- compute disclosure -----------------------------------------------------------------------------------
    def extra_compute(self) -> dict:
        """The teacher's own pretraining, reported beside UTA's training FLOPs (not from scratch: abstract)."""
        out = {"teacher_run": str(self.teacher_run.path) if self.teacher_run else None,
               "teacher_checkpoint": str(self.teacher_checkpoint) if self.teacher_checkpoint else None,
               "teacher_pretraining_flops": None, "teacher_pretraining_samples": None}
        if self.teacher_metrics is not None:
            c = self.teacher_metrics.get("compute", {})
            out.update(teacher_pretraining_flops=c.get("train_flops"),
                       teacher_pretraining_samples=c.get("samples_seen"),
                       teacher_config_hash=self.teacher_metrics.get("config_hash"))
        return out
