"""Shared building blocks that several methods use (docs/design.md, "Methods"): written once here, imported by methods.

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
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn


def random_keep_indices(batch: int, n_patches: int, mask_ratio: float, device) -> torch.Tensor:
    """Indices [B, K] of the kept patches, sorted, K = max(1, int(N * (1 - mask_ratio))) as open_clip's
    PatchDropout keeps. Drawn from the global torch RNG of ``device`` so a seed fixes the masks."""
    n_keep = max(1, int(n_patches * (1.0 - mask_ratio)))
    noise = torch.rand(batch, n_patches, device=device)
    return noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values


def complement_indices(keep_idx: torch.Tensor, n_patches: int) -> torch.Tensor:
    """The masked positions [B, N-K], ascending, given the kept ones [B, K] (each row the same K). A stable sort
    of the keep mask puts the masked positions first in index order; its shape never depends on values, so a
    shape-only step (benchmark/shape_only.py) can take it too."""
    keep = torch.zeros(keep_idx.shape[0], n_patches, dtype=torch.uint8, device=keep_idx.device)
    keep.scatter_(1, keep_idx, 1)
    return keep.sort(dim=1, stable=True).indices[:, :n_patches - keep_idx.shape[1]]


def patch_embed(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """conv1 patch embedding plus positional embedding: [B, N, D] (no CLS)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    return x + visual.positional_embedding[1:].to(x.dtype)


def vit_tokens(visual: VisionTransformer, images: torch.Tensor, keep_idx: torch.Tensor | None = None,
               patch_tokens: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run the ViT on the kept patches only (masked tokens are dropped before the encoder, as in FLIP/MAE).

    Returns the last block's output [B, 1 + K, D] (CLS first), before ``ln_post``. ``keep_idx`` None keeps every
    patch, which equals open_clip's own forward. ``patch_tokens`` may pass a precomputed ``patch_embed``;
    ``attn_mask`` an additive attention mask for every block (``nn.MultiheadAttention`` layout).
    """
    x = patch_embed(visual, images) if patch_tokens is None else patch_tokens
    if keep_idx is not None:
        x = torch.gather(x, 1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))
    cls = (visual.class_embedding + visual.positional_embedding[0]).to(x.dtype)
    x = torch.cat([cls.expand(x.shape[0], 1, -1), x], dim=1)
    x = visual.ln_pre(x)
    return visual.transformer(x) if attn_mask is None else visual.transformer(x, attn_mask=attn_mask)


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
    """teacher <- momentum * teacher + (1 - momentum) * student for every parameter of the teacher, matched to the
    student's by name (the teacher may hold a part of the student, e.g. a text tower); buffers are copied."""
    params, buffers = dict(student.named_parameters()), dict(student.named_buffers())
    for name, t in teacher.named_parameters():
        t.lerp_(params[name].detach(), 1.0 - momentum)
    for name, t in teacher.named_buffers():
        t.copy_(buffers[name])


class MaskedTokenDecoder(nn.Module):
    """MAE-style decoder: visible encoder tokens plus a learned mask token at every dropped position,
    positional embedding, ``layers`` transformer blocks, then a linear head to ``out_dim`` per position.

    ``pos_embed``: ``learned`` or ``sincos``, MAE's fixed 2-D sin-cos table with a zero CLS row (MAE
    ``models_mae.py`` ``decoder_pos_embed``, requires_grad=False; open_clip ships the same function)."""

    def __init__(self, in_dim: int, width: int, layers: int, heads: int, n_patches: int, out_dim: int,
                 pos_embed: str = "learned"):
        super().__init__()
        self.n_patches = n_patches
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        if pos_embed == "sincos":
            from open_clip.pos_embed import get_2d_sincos_pos_embed
            grid = int(round(n_patches ** 0.5))
            table = torch.from_numpy(get_2d_sincos_pos_embed(width, grid, cls_token=True)).float()[None]
            self.register_buffer("pos", table)
        elif pos_embed == "learned":
            self.pos = nn.Parameter(torch.randn(1, n_patches + 1, width) * 0.02)
        else:
            raise ValueError(f"pos_embed={pos_embed!r}: learned or sincos")
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


def take_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` [B, M] of every sequence in ``x`` [B, N, ...]: [B, M, ...] (e.g. the masked positions)."""
    return torch.gather(x, 1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


def text_tokens(clip, texts: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
                causal: bool = True) -> torch.Tensor:
    """open_clip's text tower up to ``ln_final``, every token kept: [B, L, W] (``encode_text`` before pooling).

    ``embeds`` [B, L, W] replaces the token embedding of ``texts`` (e.g. with a learned mask embedding at masked
    positions); ``causal=False`` drops the causal attention mask. ``clip`` is any module holding open_clip's
    text parts (``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``, ``attn_mask``).
    """
    x = clip.token_embedding(texts) if embeds is None else embeds
    x = x + clip.positional_embedding.to(x.dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask if causal else None)
    return clip.ln_final(x)


def project_tokens(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Every ViT output token [B, T, D] into the joint space as open_clip pools the CLS token: ``ln_post`` then
    ``proj`` -> [B, T, E]. Row 0 equals ``pool_project`` for open_clip's default ViT (CLS pooling, ``ln_post``
    before pooling, no attentional pooler); other pooling setups are refused rather than silently diverging."""
    if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type != "tok":
        raise ValueError("project_tokens needs an open_clip ViT with CLS pooling ('tok'), ln_post before pooling "
                         "and no attentional pooler")
    x = visual.ln_post(tokens)
    return x @ visual.proj if visual.proj is not None else x


def block_keep_indices(batch: int, grid: int, n_keep: int, device, min_area: int | None = None,
                       aspect: tuple[float, float] = (0.3, 1 / 0.3), max_rounds: int = 200) -> torch.Tensor:
    """Indices [B, n_keep], sorted, of patches chosen in rectangular blocks (BEiT's block-wise masking
    generator, used to choose the *kept* patches). Rectangles of random area in [min_area, still needed] and
    log-uniform aspect ratio are added per image until ``n_keep`` patches are covered; exactly ``n_keep`` are
    returned: patches of earlier rectangles first, the last rectangle trimmed at random, and a random top-up if
    ``max_rounds`` run out. ``min_area`` defaults to BEiT's 16 of 196 patches scaled to the grid. Vectorised
    over the batch (one loop over rounds); the torch RNG of ``device`` fixes the draw."""
    n = grid * grid
    if not 0 < n_keep <= n:
        raise ValueError(f"n_keep={n_keep} must lie in [1, {n}]")
    min_area = max(1, round(16 * n / 196)) if min_area is None else min_area
    lo, hi = torch.log(torch.tensor(aspect[0])), torch.log(torch.tensor(aspect[1]))
    rows = torch.arange(grid, device=device).view(1, grid, 1)
    cols = torch.arange(grid, device=device).view(1, 1, grid)
    covered = torch.zeros(batch, n, dtype=torch.bool, device=device)
    order = torch.full((batch, n), float(max_rounds), device=device)   # the round that covered each patch
    for r in range(max_rounds):
        need = n_keep - covered.sum(1)
        if not (need > 0).any():
            break
        u = torch.rand(batch, 4, device=device)
        area = min_area + u[:, 0] * (need.clamp(min=min_area) - min_area)
        ratio = torch.exp(lo.to(device) + u[:, 1] * (hi - lo).to(device))
        h = torch.sqrt(area * ratio).round().clamp(1, grid)
        w = torch.sqrt(area / ratio).round().clamp(1, grid)
        top = (u[:, 2] * (grid - h + 1)).floor()
        left = (u[:, 3] * (grid - w + 1)).floor()
        rect = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
                & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1))).view(batch, n)
        new = rect & ~covered & (need > 0)[:, None]
        order = torch.where(new, torch.full_like(order, r), order)
        covered |= new
    key = order + 0.5 * torch.rand(batch, n, device=device)
    return key.argsort(dim=1)[:, :n_keep].sort(dim=1).values
