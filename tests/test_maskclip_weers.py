"""MaskCLIP (Weers 2022) / MAE-CLIP: the mechanisms that define the method, checked on the smoke model.

- the reconstruction loss is MAE's normalised-pixel MSE over the masked patches only;
- the masked set follows patch-caption similarity as configured (mask / keep the relevant patches, sample by
  softmax, or uniform random as the control), on a constructed image whose relevant patches are known;
- the encoder passes are the configured wiring: two passes (full + visible only) or one masked pass.
"""
import pytest
import torch

from benchmark.blocks import patchify, vit_tokens
from benchmark.discovery import build_method
from benchmark.errors import UserError


def build(scale, seed=0, **overrides):
    return build_method("maskclip_weers", scale, seed=seed, config_scale="smoke", overrides=overrides)


def spy_keep(method):
    keeps = []
    choose = method.choose_keep
    method.choose_keep = lambda *a: keeps.append(choose(*a)) or keeps[-1]
    return keeps


def random_batch(scale, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = torch.zeros(n, scale.context_length, dtype=torch.long)
    texts[:, 0], texts[:, 1:5], texts[:, 5] = 49406, torch.randint(1, 49000, (n, 4), generator=g), 49407
    return {"images": torch.randn(n, 3, scale.image_size, scale.image_size, generator=g), "texts": texts}


def test_reconstruction_loss_covers_masked_patches_only(smoke_scale):
    m = build(smoke_scale)
    data = random_batch(smoke_scale)
    n, patch = m.n_patches, smoke_scale.model["vision_cfg"]["patch_size"]
    fixed = torch.randn(8, n, patch * patch * 3)

    def reconstruction(pred):
        keeps = spy_keep(m)
        m.decoder.forward = lambda tokens, keep: pred
        torch.manual_seed(1)
        return m(data, 0.0)["reconstruction"], keeps[0][0]

    base, keep = reconstruction(fixed)
    # MAE's formula by hand: per-patch normalised pixels, mean over pixels, mean over the masked patches
    target = patchify(data["images"], patch)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    mask = torch.ones(8, n).scatter_(1, keep, 0.0)
    torch.testing.assert_close(base, (((fixed - target) ** 2).mean(-1) * mask).sum() / mask.sum())

    visible_changed = fixed.clone()
    visible_changed[torch.arange(8)[:, None], keep] = torch.randn(8, keep.shape[1], fixed.shape[-1]) * 10
    assert torch.equal(reconstruction(visible_changed)[0], base)
    masked_changed = fixed.clone()
    masked_changed[0, mask[0].nonzero()[0, 0]] += 10
    assert reconstruction(masked_changed)[0] > base + 1e-3


def constructed_case(m, scale, b=64, n_relevant=4, seed=0):
    """A ViT whose residual branches and positional embedding are zero, so every patch token depends on that
    patch's pixels alone; images where ``n_relevant`` random patches show one pattern and the rest are noise;
    a caption embedding equal to that pattern's patch token in the joint space. Returns (images, relevant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in m.visual.transformer.resblocks:
            for lin in (block.attn.out_proj, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
        m.visual.positional_embedding.zero_()
    p, grid, size = scale.model["vision_cfg"]["patch_size"], scale.patch_grid, scale.image_size
    pattern = torch.randn(3, p, p, generator=g)
    images = torch.randn(b, 3, size, size, generator=g)
    relevant = torch.stack([torch.randperm(grid * grid, generator=g)[:n_relevant] for _ in range(b)])
    for i in range(b):
        for pos in relevant[i].tolist():
            r, c = divmod(pos, grid)
            images[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = pattern
    with torch.no_grad():
        token = vit_tokens(m.visual, pattern.repeat(1, grid, grid)[None])[:, 1]
        caption = (m.visual.ln_post(token) @ m.visual.proj).expand(b, -1)
    m.clip.encode_text = lambda texts: caption          # the caption embedding of the constructed case
    texts = torch.zeros(b, scale.context_length, dtype=torch.long)
    return {"images": images, "texts": texts}, relevant


def masked_fraction_of(relevant, keep, n):
    kept = torch.zeros(keep.shape[0], n, dtype=torch.bool).scatter_(1, keep, True)
    return 1.0 - kept.gather(1, relevant).float().mean().item()


@pytest.mark.parametrize("rule,wiring", [("mask_relevant", "two_pass"), ("mask_relevant", "one_pass"),
                                         ("keep_relevant", "two_pass"), ("sample", "two_pass"),
                                         ("random", "two_pass")])
def test_masked_set_follows_patch_text_similarity(smoke_scale, rule, wiring):
    m = build(smoke_scale, masking=rule, wiring=wiring, sample_temperature=0.05)
    data, relevant = constructed_case(m, smoke_scale)
    keeps = spy_keep(m)
    torch.manual_seed(0)
    m(data, 0.0)
    keep, scores = keeps[0]
    n, n_keep = m.n_patches, keep.shape[1]
    assert n_keep == n // 4 == relevant.shape[1]
    if rule != "random":     # the construction: the relevant patches are exactly the most caption-like ones
        rel = scores.gather(1, relevant)
        others = scores.masked_fill(torch.zeros_like(scores, dtype=torch.bool).scatter_(1, relevant, True), -2)
        assert (rel.min(1).values > others.max(1).values + 0.05).all()
        assert rel.min() > 0.99
    frac = masked_fraction_of(relevant, keep, n)
    if rule == "mask_relevant":
        assert frac == 1.0                                                   # every relevant patch is masked
    elif rule == "keep_relevant":
        assert torch.equal(keep, relevant.sort(1).values)                    # exactly the relevant ones are kept
    elif rule == "sample":
        assert frac > 0.95                                                   # sampled towards the relevant ones ...
        torch.manual_seed(1)
        m(data, 0.0)
        assert not torch.equal(keeps[1][0], keep)                            # ... but a draw, not a fixed rule
    else:
        assert 0.6 < frac < 0.9                                              # the control: blind to the caption


def test_encoder_passes_follow_the_wiring(smoke_scale):
    n, k = 16, 4
    for wiring, masking, expected in [("two_pass", "mask_relevant", [1 + n, 1 + k]),
                                      ("one_pass", "mask_relevant", [1 + n, 1 + k]),   # no-grad pre-pass
                                      ("one_pass", "random", [1 + k])]:
        m = build(smoke_scale, wiring=wiring, masking=masking)
        seen = []
        m.visual.transformer.register_forward_pre_hook(
            lambda mod, args: seen.append((args[0].shape[1], torch.is_grad_enabled())))
        m(random_batch(smoke_scale), 0.0)
        assert [s for s, _ in seen] == expected, (wiring, masking, seen)
        if wiring == "one_pass" and masking != "random":
            assert seen[0][1] is False, "the similarity pre-pass must not build a graph"


def test_export_is_the_clip_alone_and_bad_config_is_refused(smoke_scale):
    m = build(smoke_scale)
    assert set(m.export()) == set(m.clip.state_dict())
    with pytest.raises(UserError, match="maskclip_weers.masking"):
        build(smoke_scale, masking="mask_everything")


def test_decoder_positional_embedding_is_maes_fixed_sincos(smoke_scale):
    """MAE (models_mae.py): the decoder's positional embedding is a fixed 2-D sin-cos table with a zero CLS row."""
    from open_clip.pos_embed import get_2d_sincos_pos_embed
    method = build(smoke_scale)
    dec = method.decoder
    grid, width = smoke_scale.patch_grid, dec.pos.shape[-1]
    assert "pos" in dict(dec.named_buffers()) and "pos" not in dict(dec.named_parameters())
    assert torch.allclose(dec.pos[0], torch.from_numpy(get_2d_sincos_pos_embed(width, grid, cls_token=True)).float())
    assert torch.equal(dec.pos[0, 0], torch.zeros(width))


def test_the_learned_decoder_position_variant_trains_its_table(smoke_scale):
    """``@learned_decoder_pos`` (this suite before the fix) gives the decoder a trained table instead."""
    from benchmark.discovery import resolve
    info = resolve(["maskclip_weers@learned_decoder_pos"])[0]
    assert info.config("smoke", {})["decoder_pos_embed"] == "learned"
    dec = build(smoke_scale, decoder_pos_embed="learned").decoder
    assert "pos" in dict(dec.named_parameters()) and "pos" not in dict(dec.named_buffers())
