"""MaskCLIP: Masked Self-Distillation Advances Contrastive Language-Image Pretraining
(Dong, Bao, Zheng, Zhang, Chen, Yang, Zeng, Zhang, Yuan, Chen, Wen, Yu; CVPR 2023, arXiv 2208.12262).

No code was released, so every choice beyond the abstract is ours and a config switch (tags in config.yaml and
README.md). One training step:

1. CLIP loss: the student image encoder on the full image, the text encoder on the caption.      [C: abstract]
2. Masked self-distillation (image): the student encodes only the visible 25 % of the patches (masked tokens
   are dropped, never encoded); a small decoder re-inserts learned mask tokens and predicts, at the masked
   positions, what the mean teacher computes from the full image ("distill representation from a full image
   to the representation predicted from a masked image").                        [C: abstract; S: EMA, 75 %]
3. Local supervision of the text branch (CVPR version): masked-token prediction on the caption.  [C: abstract v2]
4. L = L_clip + λ_img·L_img + λ_txt·L_txt; after the optimizer step, teacher <- EMA of the student encoder.

Three image-encoder passes per step (student full, student visible-only, teacher full without gradient), which
is what the harness counts for matched compute.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from benchmark.blocks import (MaskedTokenDecoder, block_keep_indices, complement_indices, random_keep_indices,
                              take_tokens, text_tokens, vit_tokens)
from benchmark.errors import UserError
from benchmark.method import Method

CHOICES = {"target": ("T1", "T2", "T3"), "mask_type": ("random", "block"), "text_branch": ("mlm", "distill", "off"),
           "ema_schedule": ("constant", "linear_ramp", "cosine")}


def _check(cfg: dict) -> None:
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise UserError(f"maskclip_dong.{key}={cfg[key]!r} is not one of {', '.join(allowed)} "
                            f"(config.yaml or --set maskclip_dong.{key}=...)")
    if cfg["decoder_width"] % cfg["decoder_heads"]:
        raise UserError(f"maskclip_dong.decoder_width={cfg['decoder_width']} must be a multiple of "
                        f"decoder_heads={cfg['decoder_heads']}")


# ---- heads --------------------------------------------------------------------------------------------------
class PrototypeHead(nn.Module):
    """T3 (iBOT-style soft tokens): 3-layer MLP to a bottleneck, L2 norm, weight-normalised prototypes (g = 1)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Linear(bottleneck, prototypes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes.weight, dim=-1))


class TextDecoder(nn.Module):
    """Bidirectional blocks on the text tower's token features (they supply the right context the causal tower
    lacks), a LayerNorm, and a head: tied to the token embedding (MLM) or a linear map (text self-distillation)."""

    def __init__(self, width: int, heads: int, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList([ResidualAttentionBlock(width, heads, batch_first=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class MaskCLIPDong(Method):
    paper = "MaskCLIP: Dong et al., CVPR 2023 (arXiv 2208.12262)"
    summary = ("CLIP + masked self-distillation: the student sees 25% of the patches and a small decoder predicts "
               "an EMA teacher's full-image features at the masked ones (+ masked text prediction).")
    # The text branch's masked-language head (step 3 below) is tied to the token embedding and scores the whole
    # vocabulary, so every embedding row gets a gradient: keep the embedding dense.
    dense_token_embedding = True

    def __init__(self, clip, cfg, ctx):
        super().__init__(clip, cfg, ctx)
        _check(self.cfg)
        c = self.cfg
        width = self.visual.transformer.width
        embed_dim = self.visual.output_dim
        # Mean teacher: a copy of the student image encoder (incl. ln_post, proj), EMA-updated (step 4).
        self.teacher = self.ema_teacher(self.visual, self.momentum)
        # Decoder on visible tokens + mask tokens (BootMAE-style feature decoder). Output width by target.
        out_dim = {"T1": width, "T2": embed_dim, "T3": width}[c["target"]]
        self.decoder = MaskedTokenDecoder(width, c["decoder_width"], c["decoder_layers"], c["decoder_heads"],
                                          self.n_patches, out_dim)
        if c["target"] == "T3":
            self.student_head = PrototypeHead(width, c["t3_hidden"], c["t3_bottleneck"], c["t3_prototypes"])
            self.teacher_head = self.ema_teacher(self.student_head, self.momentum)
            self.register_buffer("center", torch.zeros(1, 1, c["t3_prototypes"]))
        if c["text_branch"] != "off":
            text_width = self.clip.transformer.width
            text_heads = self.ctx.scale.model["text_cfg"]["heads"]
            self.text_mask_token = nn.Parameter(torch.randn(text_width) * 0.02)   # CLIP's BPE has no [MASK] id
            self.text_decoder = TextDecoder(text_width, text_heads, c["text_decoder_layers"])
            if c["text_branch"] == "mlm":
                self.mlm_bias = nn.Parameter(torch.zeros(self.clip.token_embedding.num_embeddings))
            else:
                self.text_head = nn.Linear(text_width, text_width)
                teacher_text = copy.deepcopy(self.clip)      # the text tower's EMA teacher (visual dropped)
                teacher_text.visual = None
                self.text_teacher = self.ema_teacher(self.clip, self.momentum, teacher=teacher_text)

    # ---- schedules ------------------------------------------------------------------------------------------
    def momentum(self, progress: float) -> float:
        """4. EMA momentum of the teachers, which the harness updates after every optimizer step (README.md):
        constant 0.999 by default; BootMAE's linear ramp; DINO/iBOT cosine."""
        c = self.cfg
        m0, m1 = c["ema_momentum"], c["ema_momentum_end"]
        if c["ema_schedule"] == "constant":
            return m0
        if c["ema_schedule"] == "linear_ramp":
            return m0 + (m1 - m0) * min(1.0, progress / max(c["ema_ramp_fraction"], 1e-12))
        return m1 - (m1 - m0) * (math.cos(math.pi * progress) + 1) / 2

    def lambda_img(self, progress: float) -> float:
        """λ_img, optionally ramped linearly from 0 (BootMAE ramps its feature loss over the first 25 %)."""
        warm = self.cfg["lambda_img_warmup_fraction"]
        return self.cfg["lambda_img"] * (min(1.0, progress / warm) if warm > 0 else 1.0)

    def teacher_temperature(self, progress: float) -> float:
        c = self.cfg
        warm = c["t3_teacher_temp_warmup_fraction"]
        if warm <= 0 or progress >= warm:
            return c["t3_teacher_temp"]
        return c["t3_teacher_temp_start"] + (c["t3_teacher_temp"] - c["t3_teacher_temp_start"]) * progress / warm

    # ---- 2. masked self-distillation (image) ----------------------------------------------------------------
    def image_keep_indices(self, batch: int, device) -> torch.Tensor:
        """Visible patch positions [B, K] (sorted); the rest are masked. Uniform random by default;
        ``block``: the masked set is BEiT's block-wise selection (BootMAE's masking), exactly N - K patches."""
        if self.cfg["mask_type"] == "block":
            n_mask = self.n_patches - max(1, int(self.n_patches * (1.0 - self.cfg["mask_ratio"])))
            masked = block_keep_indices(batch, self.ctx.scale.patch_grid, n_mask, device)
            return complement_indices(masked, self.n_patches)
        return random_keep_indices(batch, self.n_patches, self.cfg["mask_ratio"], device)

    def predict_masked(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Student: encoder on the visible tokens only, decoder with mask tokens -> predictions [B, N, d]."""
        tokens = vit_tokens(self.visual, images, keep)                  # [B, 1+K, D]: masked tokens never enter
        pred = self.decoder(self.visual.ln_post(tokens), keep)          # [B, N, d] at every position
        return self.student_head(pred) if self.cfg["target"] == "T3" else pred

    @torch.no_grad()
    def teacher_targets(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher features of the full image [B, N, d] (README.md, target options)."""
        h = vit_tokens(self.teacher, images)                            # [B, 1+N, D], before ln_post
        if self.cfg["target"] == "T1":                                  # last-block tokens (BootMAE)
            return h[:, 1:]
        t = self.teacher.ln_post(h)[:, 1:]
        if self.cfg["target"] == "T2":                                  # joint image-text space
            return t @ self.teacher.proj
        return self.teacher_head(t)                                     # T3: prototype logits

    def distill_loss(self, pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, progress: float):
        """The distillation loss over the masked positions only; returns (loss, cosine for the log)."""
        p, t = take_tokens(pred, masked), take_tokens(target, masked).detach()
        target_kind = self.cfg["target"]
        if target_kind == "T1":       # MSE after a no-affine LayerNorm (BootMAE run_pretraining.py)
            p, t = F.layer_norm(p, p.shape[-1:]), F.layer_norm(t, t.shape[-1:])
            loss = F.mse_loss(p, t)
        elif target_kind == "T2":     # 1 - cos in the joint space
            loss = (1 - F.cosine_similarity(p, t, dim=-1)).mean()
        else:                         # T3: cross-entropy to the centred, sharpened teacher distribution (iBOT)
            teacher_probs = F.softmax((t - self.center) / self.teacher_temperature(progress), dim=-1)
            loss = -(teacher_probs * F.log_softmax(p / self.cfg["t3_student_temp"], dim=-1)).sum(-1).mean()
        return loss, F.cosine_similarity(p.detach(), t, dim=-1).mean()

    @torch.no_grad()
    def update_center(self, target: torch.Tensor) -> None:
        batch_center = target.mean(dim=(0, 1), keepdim=True)
        if self.ctx.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            batch_center /= self.ctx.world_size
        m = self.cfg["t3_center_momentum"]
        self.center.mul_(m).add_(batch_center, alpha=1 - m)

    # ---- 3. text branch (CVPR version) ----------------------------------------------------------------------
    def mask_caption(self, texts: torch.Tensor):
        """BERT masking of the caption words (SOT, EOT and padding excluded): each word is selected with
        probability ``text_mask_ratio``; of those 80 % -> the learned mask embedding, 10 % -> a random token,
        10 % unchanged. Returns (input embeddings [B, L, W], selected [B, L], words [B, L])."""
        pos = torch.arange(texts.shape[1], device=texts.device)
        words = (pos > 0) & (pos[None] < texts.argmax(dim=-1, keepdim=True))   # EOT is the largest id
        selected = words & (torch.rand(texts.shape, device=texts.device) < self.cfg["text_mask_ratio"])
        r = torch.rand(texts.shape, device=texts.device)
        vocab = self.clip.token_embedding.num_embeddings                        # SOT = vocab-2, EOT = vocab-1
        random_ids = torch.randint(1, vocab - 2, texts.shape, device=texts.device)
        ids = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, texts)
        embeds = self.clip.token_embedding(ids)
        embeds = torch.where((selected & (r < 0.8))[..., None], self.text_mask_token.to(embeds.dtype), embeds)
        return embeds, selected, words

    def text_loss(self, texts: torch.Tensor) -> tuple[torch.Tensor, float]:
        embeds, selected, words = self.mask_caption(texts)
        h = text_tokens(self.clip, embeds=embeds, causal=self.cfg["text_causal"])   # [B, L, W]
        y = self.text_decoder(h)[selected]                                          # [M, W] selected words
        fraction = float(selected.sum() / words.sum().clamp(min=1))
        if selected.sum() == 0:
            return y.sum() * 0.0, fraction
        if self.cfg["text_branch"] == "mlm":     # predict the original token, head tied to the embedding
            logits = y @ self.clip.token_embedding.weight.t() + self.mlm_bias
            return F.cross_entropy(logits, texts[selected]), fraction
        with torch.no_grad():                    # text self-distillation from the EMA text tower
            target = text_tokens(self.text_teacher, texts)[selected]
        pred = self.text_head(y)
        loss = F.mse_loss(F.layer_norm(pred, pred.shape[-1:]), F.layer_norm(target, target.shape[-1:]))
        return loss, fraction

    # ---- the step -------------------------------------------------------------------------------------------
    def training_step(self, batch, progress):
        images, texts = batch["images"], batch["texts"]
        # 1. CLIP loss on the full image (student pass 1) and the caption.
        l_clip = self.contrastive(self.clip.encode_image(images), self.clip.encode_text(texts))
        # 2. masked self-distillation: student pass 2 on visible tokens, teacher pass on the full image.
        keep = self.image_keep_indices(images.shape[0], images.device)
        masked = complement_indices(keep, self.n_patches)
        pred = self.predict_masked(images, keep)
        target = self.teacher_targets(images)
        l_img, cos = self.distill_loss(pred, target, masked, progress)
        if self.cfg["target"] == "T3":
            self.update_center(target)
        loss = l_clip + self.lambda_img(progress) * l_img
        out = {"contrastive": l_clip.detach(), "distill_image": l_img.detach()}
        # 3. text branch.
        text_fraction = 0.0
        if self.cfg["text_branch"] != "off":
            l_txt, text_fraction = self.text_loss(texts)
            loss = loss + self.cfg["lambda_txt"] * l_txt
            out[f"text_{self.cfg['text_branch']}"] = l_txt.detach()
        self.record(mask_ratio=1.0 - keep.shape[1] / self.n_patches, distill_cos=float(cos),
                    text_masked_fraction=text_fraction, ema_momentum=self.momentum(progress),
                    logit_scale=self.clip.logit_scale.exp().item())
        return {"loss": loss, **out}
