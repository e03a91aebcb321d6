"""Shared building blocks that several methods use (DESIGN §2): written once here, imported by methods.

- ``random_keep_indices``: a uniform random subset of patch positions per image (FLIP, UTA, MaskCLIP).
- ``vit_tokens``: an open_clip ViT forward on the visible patches only, returning every output token.
- ``pool_project``: CLS pooling, ``ln_post`` and projection of those tokens into the joint space.
- ``patchify``: images to flattened patches (pixel targets).
- ``frozen_copy`` / ``ema_update``: teachers.
- ``MaskedTokenDecoder``: MAE-style decoder that re-inserts mask tokens at the dropped positions.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn


def random_keep_indices(batch: int, n_patches: int, mask_ratio: float, device) -> torch.Tensor:
    """Indices [B, K] of the kept patches, sorted, K = max(1, int(N * (1 - mask_ratio))) as open_clip's
    PatchDropout keeps. Drawn from the global torch RNG of ``device`` so a seed fixes the masks."""
    n_keep = max(1, int(n_patches * (1.0 - mask_ratio)))
    noise = torch.rand(batch, n_patches, device=device)
    return noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values


def complement_indices(keep_idx: torch.Tensor, n_patches: int) -> torch.Tensor:
    """The masked positions [B, N-K] given the kept ones [B, K] (each row the same K)."""
    keep = torch.zeros(keep_idx.shape[0], n_patches, dtype=torch.bool, device=keep_idx.device)
    keep.scatter_(1, keep_idx, True)
    return (~keep).nonzero()[:, 1].view(keep_idx.shape[0], -1)


def patch_embed(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """conv1 patch embedding plus positional embedding: [B, N, D] (no CLS)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    return x + visual.positional_embedding[1:].to(x.dtype)


def vit_tokens(visual: VisionTransformer, images: torch.Tensor, keep_idx: torch.Tensor | None = None,
               patch_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Run the ViT on the kept patches only (masked tokens are dropped before the encoder, as in FLIP/MAE).

    Returns the last block's output [B, 1 + K, D] (CLS first), before ``ln_post``. ``keep_idx`` None keeps every
    patch, which equals open_clip's own forward. ``patch_tokens`` may pass a precomputed ``patch_embed``.
    """
    x = patch_embed(visual, images) if patch_tokens is None else patch_tokens
    if keep_idx is not None:
        x = torch.gather(x, 1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))
    cls = (visual.class_embedding + visual.positional_embedding[0]).to(x.dtype)
    x = torch.cat([cls.expand(x.shape[0], 1, -1), x], dim=1)
    x = visual.ln_pre(x)
    return visual.transformer(x)


def pool_project(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's pooling of ViT output tokens into the joint space: ``ln_post`` + CLS pooling + ``proj``."""
    pooled, _ = visual._pool(tokens)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, patch*patch*C], patches in the ViT's row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode with ``requires_grad`` off: a teacher that receives no gradient."""
    teacher = copy.deepcopy(module).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameters and buffers alike."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


class MaskedTokenDecoder(nn.Module):
    """MAE-style decoder: visible encoder tokens plus a learned mask token at every dropped position,
    positional embedding, ``layers`` transformer blocks, then a linear head to ``out_dim`` per position."""

    def __init__(self, in_dim: int, width: int, layers: int, heads: int, n_patches: int, out_dim: int):
        super().__init__()
        self.n_patches = n_patches
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, width) * 0.02)
        self.blocks = nn.ModuleList([ResidualAttentionBlock(width, heads, batch_first=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + K, D_enc] (CLS first), keep_idx [B, K] -> predictions [B, N, out_dim] at every patch."""
        x = self.embed(tokens)
        b, _, w = x.shape
        full = self.mask_token.to(x.dtype).expand(b, self.n_patches, w).clone()
        full = full.scatter(1, keep_idx[..., None].expand(-1, -1, w), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.pos.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 1:]))


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
