"""MaskCLIP (Weers, MSc thesis, University of Twente 2022) and MAE-CLIP (Weers, Shankar, Katharopoulos, Yang,
Gunter, "Masked Autoencoding Does Not Help Natural Language Supervision at Scale", CVPR 2023).

CLIP plus MAE-style masked patch prediction in one multi-task step, with the masking guided by per-patch
image-text similarity (thesis abstract [C]). Neither work released code; everything beyond the abstracts is our
default and a config switch (tags in config.yaml and README.md).

One step (default wiring "two_pass", MAE-CLIP-2P):
1. Pass A: the student ViT on the full image -> CLS -> ln_post -> proj; the text tower; CLIP loss.
2. Masking: per-patch cosine between pass A's patch tokens in the joint space and the caption embedding
   (no gradient); mask the most text-relevant patches, keep them, or sample the masked set by softmax.
3. Pass B: the same ViT on the visible 25 % of the patches only; an MAE decoder with mask tokens predicts the
   normalised pixels of every patch; the loss is taken on the masked patches only (MAE, norm_pix_loss).
4. L = L_clip + λ_mae·L_mae.
``wiring: one_pass`` (ablation, FLIP-like) feeds both losses from a single masked pass; similarity-guided masks
then need a no-gradient full-image pre-pass, which the harness counts like any other pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.blocks import (MaskedTokenDecoder, complement_indices, patchify, pool_project, random_keep_indices,
                              take_tokens, vit_tokens)
from benchmark.errors import UserError
from benchmark.method import Method

MASKINGS = ("mask_relevant", "keep_relevant", "sample", "random")
WIRINGS = ("two_pass", "one_pass")


def patch_text_similarity(visual, tokens: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
    """Cosine [B, N] between each patch token in the joint space (ln_post -> proj) and the caption."""
    patches = visual.ln_post(tokens[:, 1:])
    if visual.proj is not None:
        patches = patches @ visual.proj
    return torch.einsum("bnd,bd->bn", F.normalize(patches, dim=-1), F.normalize(text_embedding, dim=-1))


def keep_from_similarity(scores: torch.Tensor, n_keep: int, rule: str, temperature: float = 0.1,
                         random_fraction: float = 0.0) -> torch.Tensor:
    """Visible positions [B, n_keep] (sorted) chosen from patch-text similarity ``scores`` [B, N].

    - ``mask_relevant``: the N - n_keep most similar patches are masked (a harder task on the semantic regions);
    - ``keep_relevant``: the n_keep most similar patches are kept;
    - ``sample``: the masked set is drawn without replacement with p ∝ softmax(s / temperature) (Gumbel top-k);
      ``random_fraction`` of it is then drawn uniformly from the remaining patches instead.
    """
    n = scores.shape[1]
    if rule == "keep_relevant":
        return scores.topk(n_keep, dim=1).indices.sort(dim=1).values
    if rule == "mask_relevant":
        return scores.topk(n_keep, dim=1, largest=False).indices.sort(dim=1).values
    n_mask = n - n_keep
    uniform = torch.rand_like(scores).clamp_(1e-12, 1 - 1e-12)
    keys = scores / temperature - torch.log(-torch.log(uniform))           # Gumbel-perturbed logits
    n_guided = n_mask - int(round(random_fraction * n_mask))
    guided = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, keys.topk(n_guided, dim=1).indices, True)
    keys = torch.where(guided, torch.full_like(scores, float("inf")), torch.rand_like(scores))
    return keys.topk(n_keep, dim=1, largest=False).indices.sort(dim=1).values


def reconstruction_loss(pred: torch.Tensor, images: torch.Tensor, masked: torch.Tensor, patch: int,
                        norm_pix: bool = True) -> torch.Tensor:
    """MAE's loss: mean squared error to the (per-patch normalised) pixels, on the masked patches only."""
    target = patchify(images, patch)                                        # [B, N, patch*patch*3]
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)                         # [B, N]
    return take_tokens(per_patch, masked).mean()


class MaskCLIPWeers(Method):
    paper = "MaskCLIP: Weers, MSc thesis, U. Twente 2022; MAE-CLIP: Weers et al., CVPR 2023 (arXiv 2301.07836)"
    summary = ("CLIP + MAE pixel reconstruction from the visible 25% of the patches, the masked set chosen by "
               "patch-caption similarity.")

    def __init__(self, clip, cfg, ctx):
        super().__init__(clip, cfg, ctx)
        c = self.cfg
        for key, allowed in (("masking", MASKINGS), ("wiring", WIRINGS)):
            if c[key] not in allowed:
                raise UserError(f"maskclip_weers.{key}={c[key]!r} is not one of {', '.join(allowed)} "
                                f"(config.yaml or --set maskclip_weers.{key}=...)")
        if c["decoder_width"] % c["decoder_heads"]:
            raise UserError(f"maskclip_weers.decoder_width={c['decoder_width']} must be a multiple of "
                            f"decoder_heads={c['decoder_heads']}")
        if c["sample_temperature"] <= 0 or not 0 <= c["sample_random_fraction"] <= 1:
            raise UserError("maskclip_weers.sample_temperature must be > 0 and sample_random_fraction in [0, 1]")
        self.patch = int(ctx.scale.model["vision_cfg"]["patch_size"])
        self.n_keep = max(1, int(self.n_patches * (1.0 - c["mask_ratio"])))
        # MAE decoder (dec512d8b at ViT-B) with a pixel head: patch*patch*3 values per patch, and MAE's fixed
        # 2-D sin-cos decoder positional embedding (models_mae.py; `learned` is the ablation).
        self.decoder = MaskedTokenDecoder(self.visual.transformer.width, c["decoder_width"], c["decoder_layers"],
                                          c["decoder_heads"], self.n_patches, self.patch * self.patch * 3,
                                          pos_embed=c["decoder_pos_embed"])

    # ---- masking ---------------------------------------------------------------------------------------------
    def choose_keep(self, images: torch.Tensor, text: torch.Tensor, full_tokens: torch.Tensor | None):
        """Visible positions [B, K] and the patch-text similarity [B, N] (None for random masking)."""
        if self.cfg["masking"] == "random":
            return random_keep_indices(images.shape[0], self.n_patches, self.cfg["mask_ratio"], images.device), None
        with torch.no_grad():
            if full_tokens is None:                   # one_pass: a no-gradient full-image pre-pass
                full_tokens = vit_tokens(self.visual, images)
            scores = patch_text_similarity(self.visual, full_tokens.detach(), text.detach())
        keep = keep_from_similarity(scores, self.n_keep, self.cfg["masking"], self.cfg["sample_temperature"],
                                    self.cfg["sample_random_fraction"])
        return keep, scores

    # ---- the step ------------------------------------------------------------------------------------------
    def training_step(self, batch, progress):
        images, texts = batch["images"], batch["texts"]
        text = self.clip.encode_text(texts)                                    # [B, E]
        if self.cfg["wiring"] == "two_pass":
            full = vit_tokens(self.visual, images)                             # pass A: [B, 1+N, D]
            l_clip = self.contrastive(pool_project(self.visual, full), text)
            keep, scores = self.choose_keep(images, text, full)
            visible = vit_tokens(self.visual, images, keep)                    # pass B: [B, 1+K, D]
        else:
            keep, scores = self.choose_keep(images, text, None)
            visible = vit_tokens(self.visual, images, keep)                    # the only pass with gradient
            l_clip = self.contrastive(pool_project(self.visual, visible), text)
        masked = complement_indices(keep, self.n_patches)                      # [B, N-K]
        pred = self.decoder(self.visual.ln_post(visible), keep)               # [B, N, patch*patch*3]
        l_mae = reconstruction_loss(pred, images, masked, self.patch, self.cfg["norm_pix_loss"])
        loss = l_clip + self.cfg["lambda_mae"] * l_mae
        stats = {"mask_ratio": 1.0 - keep.shape[1] / self.n_patches,
                 "logit_scale": self.clip.logit_scale.exp().item()}
        if scores is not None:   # how text-relevant the masked patches are compared with the kept ones
            stats["masked_minus_kept_similarity"] = float(take_tokens(scores, masked).mean()
                                                          - take_tokens(scores, keep).mean())
        self.record(**stats)
        return {"loss": loss, "contrastive": l_clip.detach(), "reconstruction": l_mae.detach()}

    # ---- the selection's cost (timed by `benchmark perf`, P3) -----------------------------------------------------
    def selection_probe(self, batch, progress):
        if self.cfg["masking"] == "random":
            return None
        images = batch["images"]
        with torch.no_grad():
            text = self.clip.encode_text(batch["texts"])
            full = vit_tokens(self.visual, images) if self.cfg["wiring"] == "two_pass" else None
        return f"choose_keep ({self.cfg['masking']}: patch-text similarity, top-k)", \
            lambda: self.choose_keep(images, text, full)
