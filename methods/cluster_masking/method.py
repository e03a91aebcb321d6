"""Efficient Vision-Language Pre-training by Cluster Masking (Wei, Pan, Owens; CVPR 2024, arXiv 2405.08815).

Project page, method (README.md, "The step"): per image, the patches are normalised to zero mean and unit
variance ("pixel norm") and compared by cosine similarity; a few random anchor patches (3 %) are drawn, and every
patch whose similarity to an anchor exceeds a threshold tau is masked, so whole clusters of similar patches
disappear together. Masked patches are dropped before the encoder as in FLIP; the loss is plain CLIP. The batch
keeps one length: n_keep = min(int(L (1 - r_min)), max over images of the unmasked count); unmasked patches are
kept first, an image with too few is topped up with random clustered ones, one with too many drops the surplus.
tau comes from a bisection on the first batch to a nominal mask ratio of 0.5 and stays fixed (a buffer, so it is
checkpointed). Optional fusion: the similarity moves linearly from RGB to patch-embedding similarity over training.

Two modes (README): ``paper`` (bisection, unbiased random tie-breaking) and ``code`` (what the official code
effectively runs: tau = 0.5 fixed, its tie order and its attention mask). The selection is vectorised over the batch
on the model's device, in fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from benchmark.blocks import patch_embed, patchify, pool_project, vit_tokens
from benchmark.errors import UserError
from benchmark.method import Method

MODES = ("paper", "code")


# ---- steps 1-2 (README.md, "The step"): patch features whose dot products are the cosine similarities ----------------------------
def patch_features(images: torch.Tensor, patch: int, pixel_norm: bool = True) -> torch.Tensor:
    """[B, N, p*p*3] unit vectors whose dot products are the official similarities: the (CLIP-normalised) pixels
    of each patch, normalised per patch to zero mean and unit variance, compared by cosine (= the Pearson
    correlation of the two patches). Dividing by the patch's standard deviation is a positive per-patch scale,
    which the cosine cancels exactly, so centring + L2 normalisation computes the same thing in fewer passes.
    A perfectly flat patch becomes the zero vector (similarity 0 with everything; the official 0/0 gives NaN,
    which is never above tau either)."""
    p = patchify(images.detach().float(), patch)
    if pixel_norm:
        p = p - p.mean(-1, keepdim=True)
    return F.normalize(p, dim=-1)


# ---- step 3: anchors ---------------------------------------------------------------------------------------
def n_anchors(n_patches: int, anchor_ratio: float) -> int:
    """The official count: the last L - int(L (1 - p)) of a random permutation (6 of 196 at p = 0.03), at least 1."""
    return max(1, n_patches - int(n_patches * (1 - anchor_ratio)))


def draw_anchors(batch: int, n_patches: int, anchor_ratio: float, device) -> torch.Tensor:
    """[B, A] random anchor positions per image (the tail of a random permutation, as the official code)."""
    return torch.rand(batch, n_patches, device=device).argsort(dim=1)[:, n_patches - n_anchors(n_patches,
                                                                                                anchor_ratio):]


def anchor_similarity(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """[B, A, N] cosine similarity of each anchor to every patch: the anchor rows of the [B, N, N] matrix only."""
    rows = torch.gather(features, 1, anchors[..., None].expand(-1, -1, features.shape[-1]))
    return rows @ features.transpose(1, 2)


# ---- steps 4-5: cluster mask and batch-uniform kept length ---------------------------------------------------
def cluster_mask(similarity: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """[B, N] True where a patch is above ``threshold`` for any anchor (anchors included: self-similarity 1)."""
    return (similarity > threshold).any(dim=1)


def kept_length(clustered: torch.Tensor, min_drop_ratio: float) -> int:
    """n_keep = min(int(L (1 - r_min)), max_b unmasked_b): one length for the batch, at least 1 token."""
    n = clustered.shape[1]
    return max(1, min(int(n * (1 - min_drop_ratio)), int((~clustered).sum(1).max())))


def keep_indices(clustered: torch.Tensor, n_keep: int, tie_order: str) -> torch.Tensor:
    """[B, n_keep] kept positions, sorted: unmasked patches first, then clustered ones.

    ``paper``: keys U(0,1) for unmasked and 1 + U(0,1) for clustered patches, so both the dropped surplus of
    unmasked patches and the top-up of clustered ones are uniform at random. ``code``: the official keys (0 for
    unmasked, exp(U(0,1)) for clustered) with a stable sort, so the surplus is dropped in index order (the
    highest-index, bottom-row patches go first; quirk 4)."""
    noise = torch.rand(clustered.shape, device=clustered.device)
    if tie_order == "paper":
        order = (noise + clustered.float()).argsort(dim=1)
    else:
        order = torch.where(clustered, noise.exp(), torch.zeros_like(noise)).argsort(dim=1, stable=True)
    return order[:, :n_keep].sort(dim=1).values


def nominal_ratio(clustered: torch.Tensor, n_keep: int) -> torch.Tensor:
    """[B] the official "mask ratio" of each image: |clustered or dropped| / L = max(|M_b|, L - n_keep) / L."""
    n = clustered.shape[1]
    return clustered.sum(1).clamp(min=n - n_keep).float() / n


# ---- the threshold ("paper" mode): bisection on one batch ------------------------------------------------------------------------
def bisect_threshold(similarity: torch.Tensor, target: float, min_drop_ratio: float, tolerance: float = 1e-3,
                     max_iter: int = 60) -> float:
    """tau such that the batch's mean nominal ratio is within ``tolerance`` of ``target`` (the official search:
    ratio below target -> lower tau, else raise it), on fixed anchors. The ratio is a step function of tau, so
    the search stops after ``max_iter`` halvings with the best tau seen. Searched over cosine's range [-1, 1]."""
    lo, hi = -1.0, 1.0
    best, best_gap = 0.0, math.inf
    for _ in range(max_iter):
        tau = (lo + hi) / 2
        clustered = cluster_mask(similarity, tau)
        ratio = float(nominal_ratio(clustered, kept_length(clustered, min_drop_ratio)).mean())
        if abs(ratio - target) < best_gap:
            best, best_gap = tau, abs(ratio - target)
        if best_gap < tolerance:
            break
        if ratio < target:
            hi = tau
        else:
            lo = tau
    return best


# ---- code mode: the official attention mask (README, quirk 5) ----------------------------------------------------
def official_attention_mask(clustered: torch.Tensor, keep: torch.Tensor, heads: int) -> torch.Tensor:
    """[H*B, 1+K, 1+K] the additive mask the official code feeds every block (``transformer.py``: PatchDropout
    builds -1e12 on pairs involving a clustered patch; VisionTransformer takes ``(mask == 0)``, which
    ResidualAttentionBlock casts to 1.0 / 0.0 and *adds* to the logits). 1.0 between two unclustered kept tokens
    (CLS counts as unclustered), 0.0 where a clustered top-up token is involved: an unclustered query weights a
    topped-up clustered key e^-1 relative to the others; an image with no top-up gets a constant shift (no effect).
    Tiled head-major (``repeat(heads, 1, 1)``) where ``nn.MultiheadAttention`` reads index b*H + h, so head h of
    image b gets the mask of image (b*H + h) mod B, as in the official code."""
    free = ~torch.gather(clustered, 1, keep)                                              # [B, K]
    free = torch.cat([torch.ones_like(free[:, :1]), free], dim=1)                         # CLS first
    return (free[:, :, None] & free[:, None, :]).float().repeat(heads, 1, 1)


@dataclass
class Selection:
    keep: torch.Tensor          # [B, n_keep] kept patch positions
    clustered: torch.Tensor     # [B, N] patches inside some anchor's cluster
    anchors: torch.Tensor       # [B, A]
    similarity: torch.Tensor    # [B, A, N] (fused when the embedding variant is on)

    @property
    def nominal(self) -> torch.Tensor:
        return nominal_ratio(self.clustered, self.keep.shape[1])


class ClusterMasking(Method):
    paper = "Cluster masking: Wei, Pan, Owens, CVPR 2024 (arXiv 2405.08815)"
    summary = ("CLIP with clusters of visually similar patches dropped together: random anchors, every patch "
               "above a similarity threshold of one is masked (~30% of tokens dropped per step).")

    def __init__(self, clip, cfg, ctx):
        super().__init__(clip, cfg, ctx)
        if self.cfg["mode"] not in MODES:
            raise UserError(f"cluster_masking.mode={self.cfg['mode']!r}: choose paper (bisection, random "
                            "tie-break) or code (tau fixed at code_threshold, the official tie order)")
        if not -1 <= self.cfg["code_threshold"] <= 1:
            raise UserError(f"cluster_masking.code_threshold={self.cfg['code_threshold']} must be a cosine "
                            "similarity in [-1, 1]")
        # tau: NaN until the bisection runs on the first training batch (paper mode); a buffer, so checkpointed.
        tau = self.cfg["code_threshold"] if self.cfg["mode"] == "code" else math.nan
        self.register_buffer("threshold", torch.tensor(tau, dtype=torch.float32))

    @property
    def patch_size(self) -> int:
        return int(self.ctx.scale.model["vision_cfg"]["patch_size"])

    @torch.no_grad()
    def select(self, images: torch.Tensor, embeddings: torch.Tensor | None, progress: float) -> Selection:
        """Which patches the encoder sees (README.md, "The step"): no gradient, vectorised over the batch, in fp32
        even under bf16 autocast (a bf16 similarity moves tau's realised ratio and flips threshold decisions)."""
        with torch.autocast(images.device.type, enabled=False):
            return self._select(images.float(), embeddings, progress)

    def _select(self, images: torch.Tensor, embeddings: torch.Tensor | None, progress: float) -> Selection:
        cfg = self.cfg
        feats = patch_features(images, self.patch_size, cfg["pixel_norm"])
        anchors = draw_anchors(images.shape[0], feats.shape[1], cfg["anchor_ratio"], images.device)
        sim = anchor_similarity(feats, anchors)
        if cfg["use_embed"] and progress > 0:
            # RGB -> patch-embedding similarity, weight rising linearly over training (official: epoch / 32)
            emb = anchor_similarity(F.normalize(embeddings.detach().float(), dim=-1), anchors)
            sim = progress * emb + (1 - progress) * sim
        if torch.isnan(self.threshold):
            self.threshold.fill_(bisect_threshold(sim, cfg["target_mask_ratio"], cfg["min_mask_ratio"],
                                                  cfg["search_tolerance"]))
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(self.threshold, src=0)      # one tau for every rank (rank 0's first batch)
        clustered = cluster_mask(sim, self.threshold)
        keep = keep_indices(clustered, kept_length(clustered, cfg["min_mask_ratio"]), cfg["mode"])
        return Selection(keep, clustered, anchors, sim)

    def training_step(self, batch, progress):
        images = batch["images"]
        tokens = patch_embed(self.visual, images)              # conv1 + positional embedding, [B, N, D]
        sel = self.select(images, tokens, progress)
        mask = None
        if self.cfg["mode"] == "code":     # the official code's attention mask, as it acts (quirk 5)
            mask = official_attention_mask(sel.clustered, sel.keep, self.visual.transformer.resblocks[0].attn.num_heads)
        image = pool_project(self.visual, vit_tokens(self.visual, images, sel.keep, patch_tokens=tokens,
                                                     attn_mask=mask))
        text = self.clip.encode_text(batch["texts"])
        loss = self.contrastive(image, text)                   # unchanged ClipLoss (project page, method)
        self.record(mask_ratio=1.0 - sel.keep.shape[1] / self.n_patches,      # tokens really dropped
                    nominal_mask_ratio=float(sel.nominal.mean()),             # what the bisection targets
                    cluster_ratio=float(sel.clustered.float().mean()),
                    threshold=float(self.threshold), logit_scale=self.clip.logit_scale.exp().item())
        return {"loss": loss, "contrastive": loss.detach()}

    # ---- the selection's cost (goal: under 3 % of the step; timed by `benchmark perf`, P3) ---------------------
    def selection_probe(self, batch, progress):
        images = batch["images"]
        with torch.no_grad():
            tokens = patch_embed(self.visual, images) if self.cfg["use_embed"] else None
        return "select (anchors, similarity, threshold, keep indices)", lambda: self.select(images, tokens, progress)
