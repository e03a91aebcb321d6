"""Cluster masking (methods/cluster_masking): the selection's defining properties, the bisection, both modes."""
import inspect
import math

import open_clip
import pytest
import torch

from benchmark.blocks import patch_embed, patchify
from benchmark.data.train_data import load_training_data
from benchmark.discovery import build_method, discover
from benchmark.scales import get_scale

INFO = discover()["cluster_masking"]
M = inspect.getmodule(INFO.cls)        # the method module: selection functions live beside the class


def build(scale_name="smoke", **overrides):
    scale = get_scale(scale_name)
    return build_method(INFO, scale, overrides=overrides)


def unpatchify(patches: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    """Inverse of benchmark.blocks.patchify: [B, N, p*p*3] -> [B, 3, H, W]."""
    b = patches.shape[0]
    x = patches.reshape(b, grid, grid, patch, patch, 3).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, 3, grid * patch, grid * patch)


def reference_similarity(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, N, N] Pearson correlation of the patches' pixel vectors, computed independently (torch.corrcoef)."""
    return torch.stack([torch.corrcoef(p) for p in patchify(images.double(), patch)])


@pytest.fixture(scope="module")
def smoke_batch():
    scale = get_scale("smoke")
    return load_training_data(scale).batch(0, scale.batch_size, 0, "cpu")


def test_every_masked_patch_is_near_an_anchor_or_dropped_to_equalise_length(smoke_batch):
    method = build("smoke", mode="code", code_threshold=0.6)
    images = smoke_batch["images"]
    torch.manual_seed(1)
    sel = method.select(images, None, 0.0)
    ref = reference_similarity(images, method.patch_size)
    tau, n = 0.6, method.n_patches
    kept = torch.zeros(images.shape[0], n, dtype=torch.bool)
    kept.scatter_(1, sel.keep, True)
    assert sel.keep.shape[1] == M.kept_length(sel.clustered, method.cfg["min_mask_ratio"])
    for b in range(images.shape[0]):
        near_anchor = (ref[b, sel.anchors[b]] > tau).any(0)
        ambiguous = ((ref[b, sel.anchors[b]] - tau).abs() < 1e-5).any(0)
        assert torch.equal(sel.clustered[b][~ambiguous], near_anchor[~ambiguous])
        assert sel.clustered[b, sel.anchors[b]].all(), "an anchor is always in its own cluster"
        dropped_unclustered = ~kept[b] & ~sel.clustered[b]
        if dropped_unclustered.any():
            # only an image with more unmasked patches than the batch's length drops unmasked ones,
            # and then it keeps no clustered patch at all
            assert (~sel.clustered[b]).sum() > sel.keep.shape[1]
            assert not (kept[b] & sel.clustered[b]).any()
        if (kept[b] & sel.clustered[b]).any():      # topped up: every unmasked patch is kept
            assert kept[b][~sel.clustered[b]].all()


def test_whole_clusters_go_together():
    """Images made of 5 known clusters (one random pixel pattern each, slight noise), scattered over the grid."""
    method = build("pocket", mode="code", code_threshold=0.8, anchor_ratio=0.1, min_mask_ratio=0.0)
    g = torch.Generator().manual_seed(0)
    b, n, p, k = 16, method.n_patches, method.patch_size, 5
    patterns = torch.randn(b, k, p * p * 3, generator=g)
    labels = torch.randint(0, k, (b, n), generator=g)
    patches = torch.gather(patterns, 1, labels[..., None].expand(-1, -1, p * p * 3))
    images = unpatchify(patches + 0.05 * torch.randn(patches.shape, generator=g), p, int(n ** 0.5))
    torch.manual_seed(0)
    sel = method.select(images, None, 0.0)
    assert sel.anchors.shape[1] == n - int(n * 0.9)            # anchors = N - int(N * (1 - anchor_ratio))
    for i in range(b):
        hit = set(labels[i, sel.anchors[i]].tolist())
        for c in range(k):
            members = sel.clustered[i, labels[i] == c]
            assert members.all() if c in hit else not members.any(), f"cluster {c} of image {i} split"
        # with r_min = 0 no image is cut, so exactly the anchors' clusters' patches are dropped...
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[sel.keep[i]] = False
        assert not (dropped & ~sel.clustered[i]).any()
    # ...except where an image is topped up to the batch's common length with random clustered patches
    assert sel.keep.shape[1] == int((~sel.clustered).sum(1).max())


@pytest.mark.parametrize("scale_name", ["smoke", "pocket"])
def test_bisection_reaches_the_target_on_the_first_batch_and_tau_stays_fixed(scale_name, smoke_batch):
    method = build(scale_name)
    assert math.isnan(float(method.threshold))
    if scale_name == "smoke":
        batch = smoke_batch
    else:   # a pocket-shaped batch of smooth random images (8x8 patch grid)
        g = torch.Generator().manual_seed(0)
        images = torch.nn.functional.interpolate(torch.randn(64, 3, 8, 8, generator=g), size=32, mode="bilinear")
        batch = {"images": images, "texts": open_clip.SimpleTokenizer(context_length=20)(["a red circle"] * 64)}
    torch.manual_seed(0)
    method.train()
    method(batch, 0.0)["loss"].backward()
    stats = method.stats()
    assert abs(stats["nominal_mask_ratio"] - 0.5) < 1e-2
    tau = float(method.threshold)
    assert -1 < tau < 1 and stats["threshold"] == pytest.approx(tau)
    assert 0.3 <= stats["mask_ratio"] <= 0.5 + 1e-2     # tokens really dropped: at least r_min, at most nominal
    method(batch, 0.5)
    assert float(method.threshold) == tau, "tau is found once, then fixed"
    # tau is a buffer: it travels with the checkpoint and is not searched again after a resume
    fresh = build(scale_name)
    fresh.load_state_dict(method.state_dict())
    assert float(fresh.threshold) == tau


def test_code_mode_reproduces_the_official_fixed_threshold_selection(smoke_batch):
    """Against an independent transcription of the official forward (methods/cluster_masking/README.md, "Official-code quirks" 2 and 4):
    full similarity matrix, tau = 0.5, keys 0 / exp(U) and a stable sort (CUDA's tie order)."""
    method = build("smoke", mode="code")
    assert float(method.threshold) == 0.5
    images = smoke_batch["images"]
    torch.manual_seed(5)
    sel = method.select(images, None, 0.0)

    torch.manual_seed(5)
    p = patchify(images, method.patch_size)
    p = (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True) + 1e-6) ** 0.5
    norms = p.norm(dim=-1)
    sim = torch.einsum("aik,ajk->aij", p, p) / torch.einsum("ai,aj->aij", norms, norms)
    bsz, n = sim.shape[:2]
    ids_throw = torch.argsort(torch.rand(bsz, n), dim=1)[:, int(n * (1 - 0.03)):]
    chosen = torch.gather(sim, 1, ids_throw.unsqueeze(-1).repeat(1, 1, n))
    mask = (chosen > 0.5).any(1).float()
    min_p = n - int(mask.sum(-1).min())
    noise_cutoff = torch.exp(torch.rand(bsz, n)) * mask
    len_keep = min(int(n * (1 - 0.3)), min_p)
    ids_keep = torch.argsort(noise_cutoff, dim=-1, stable=True)[:, :len_keep]

    assert torch.equal(sel.anchors, ids_throw)
    assert torch.equal(sel.clustered, mask.bool())
    assert torch.equal(sel.keep, ids_keep.sort(dim=1).values)
    method.train()
    method(smoke_batch, 0.0)
    assert float(method.threshold) == 0.5, "code mode never searches"


def test_tie_order_code_drops_the_last_unmasked_patches_paper_drops_at_random():
    clustered = torch.zeros(400, 16, dtype=torch.bool)
    clustered[0, :2] = True               # image 0: 14 unmasked, image 1..: 2 unmasked -> n_keep = 14
    clustered[1:, 2:] = True
    torch.manual_seed(0)
    code = M.keep_indices(clustered, 11, "code")          # 11 < 14: image 0 must drop 3 unmasked patches
    assert code[0].tolist() == list(range(2, 13))         # the highest-index ones go
    paper = M.keep_indices(clustered, 11, "paper")
    assert not clustered[0][paper[0]].any(), "image 0 keeps unmasked patches only"
    # paper mode: a uniform choice of which unmasked patches survive (each kept with prob 11/14)
    many = M.keep_indices(clustered[:1].expand(400, -1), 11, "paper")
    freq = torch.zeros(16).scatter_add_(0, many.flatten(), torch.ones(many.numel())) / 400
    assert torch.allclose(freq[2:], torch.full((14,), 11 / 14), atol=0.08)
    assert freq[:2].sum() == 0


def test_embedding_fusion_moves_from_rgb_to_patch_embedding_similarity(smoke_batch):
    method = build("smoke", use_embed=True, mode="code")
    images = smoke_batch["images"]
    emb = patch_embed(method.visual, images).detach()
    sims = {}
    for progress in (0.0, 0.5, 1.0):
        torch.manual_seed(2)
        sims[progress] = method.select(images, emb, progress).similarity
    torch.manual_seed(2)
    anchors = M.draw_anchors(images.shape[0], method.n_patches, 0.03, "cpu")
    rgb = M.anchor_similarity(M.patch_features(images, method.patch_size), anchors)
    embedding = M.anchor_similarity(torch.nn.functional.normalize(emb, dim=-1), anchors)
    assert torch.allclose(sims[0.0], rgb, atol=1e-6)
    assert torch.allclose(sims[1.0], embedding, atol=1e-6)
    assert torch.allclose(sims[0.5], (rgb + embedding) / 2, atol=1e-6)


def test_bad_mode_is_refused():
    from benchmark.errors import UserError
    with pytest.raises(UserError, match="cluster_masking.mode"):
        build("smoke", mode="kmeans")


def test_selection_runs_in_fp32_under_bf16_autocast():
    """On GPU the step runs under bf16 autocast; the selection (similarity, bisection) must not: emulated on CPU,
    a bf16 similarity flips threshold decisions. 128 images x 64 patches, as the pocket batch."""
    method = build("pocket")
    torch.manual_seed(0)
    images = torch.randn(128, 3, 32, 32)
    results = {}
    for name, fn, cast in (("fp32", method.select, False), ("autocast", method.select, True),
                           ("unguarded", method._select, True)):
        method.threshold.fill_(math.nan)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast):
            sel = fn(images, None, 0.0)
        results[name] = (float(method.threshold), sel.clustered, sel.keep)
    tau, clustered, keep = results["fp32"]
    assert results["autocast"][0] == tau
    assert torch.equal(results["autocast"][1], clustered) and torch.equal(results["autocast"][2], keep)
    # the guard matters: the same selection computed under autocast differs
    assert results["unguarded"][0] != tau or not torch.equal(results["unguarded"][1], clustered)


def test_code_mode_attention_mask_is_the_official_one(smoke_batch):
    """Against a transcription of the official forward (transformer.py: -1e12 per clustered pair member, gathered
    to the kept tokens, ``repeat(heads, 1, 1)``, ``== 0``, cast to float and added)."""
    method = build("smoke", mode="code")
    images = smoke_batch["images"]
    torch.manual_seed(5)
    sel = method.select(images, None, 0.0)
    heads = method.visual.transformer.resblocks[0].attn.num_heads
    b, n = sel.clustered.shape
    s = torch.cat([torch.zeros(b, 1), sel.clustered.float() * -1e12], dim=1)             # [B, 1+N]
    full = s[:, :, None] + s[:, None, :]
    ids = torch.cat([torch.zeros(b, 1, dtype=torch.long), sel.keep + 1], dim=1)
    enc = torch.gather(full, 1, ids[..., None].repeat(1, 1, n + 1))
    enc = torch.gather(enc, 2, ids[:, None, :].repeat(1, enc.shape[1], 1))
    expected = (enc.repeat(heads, 1, 1) == 0).float()
    got = M.official_attention_mask(sel.clustered, sel.keep, heads)
    assert torch.equal(got, expected)
    topped_up = torch.gather(sel.clustered, 1, sel.keep).any(1)
    assert topped_up.any() and (got == 0).any(), "this batch must exercise a topped-up image"


def test_a_constant_attention_mask_changes_nothing(smoke_batch):
    """An image with no clustered top-up gets the all-ones mask: a constant shift of the logits, no effect."""
    from benchmark.blocks import vit_tokens
    method = build("smoke", mode="code").eval()
    images = smoke_batch["images"][:4]
    keep = torch.arange(8).expand(4, -1)
    heads = method.visual.transformer.resblocks[0].attn.num_heads
    ones = M.official_attention_mask(torch.zeros(4, 16, dtype=torch.bool), keep, heads)
    assert torch.equal(ones, torch.ones(4 * heads, 9, 9))
    with torch.no_grad():
        a = vit_tokens(method.visual, images, keep)
        b = vit_tokens(method.visual, images, keep, attn_mask=ones)
        c = vit_tokens(method.visual, images, keep, attn_mask=ones * torch.rand(9)[None, None, :])
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-4)
