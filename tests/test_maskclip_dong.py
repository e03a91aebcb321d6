"""MaskCLIP (Dong et al. 2023): the mechanisms that define the method, checked on the smoke model.

- the mean teachers (image encoder; text tower in the distill variant) are exactly the EMA of the student and
  never receive a gradient;
- the student's masked pass never sees the masked tokens;
- the distillation loss is computed on the masked positions only (for every target variant);
- the text branch masks caption words only (never SOT, EOT or padding), at the configured rate.
"""
import copy

import pytest
import torch

from benchmark.discovery import build_method
from benchmark.errors import UserError
from benchmark.train import make_optimizer


def build(scale, seed=0, **overrides):
    return build_method("maskclip_dong", scale, seed=seed, config_scale="smoke", overrides=overrides)


def batch(scale, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = torch.zeros(n, scale.context_length, dtype=torch.long)
    for i in range(n):
        words = 3 + i % (scale.context_length - 4)
        texts[i, 0] = 49406
        texts[i, 1:1 + words] = torch.randint(1, 49000, (words,), generator=g)
        texts[i, 1 + words] = 49407
    return {"images": torch.randn(n, 3, scale.image_size, scale.image_size, generator=g), "texts": texts}


@pytest.mark.parametrize("schedule", ["constant", "linear_ramp"])
def test_teachers_are_the_ema_of_the_student_and_get_no_gradient(smoke_scale, schedule):
    # text_branch=distill: the image teacher and the text tower's teacher are both replayed by hand
    m = build(smoke_scale, ema_schedule=schedule, ema_momentum=0.6, ema_momentum_end=0.9, ema_ramp_fraction=0.5,
              text_branch="distill")
    expected = {"constant": lambda p: 0.6, "linear_ramp": lambda p: 0.6 + 0.3 * min(1.0, p / 0.5)}[schedule]
    opt = make_optimizer(m, smoke_scale.optim)
    teachers = list(m.teacher.parameters()) + list(m.text_teacher.parameters())
    assert not any(p is q for g in opt.param_groups for p in g["params"] for q in teachers)
    text_names = [n for n, _ in m.text_teacher.named_parameters()]

    def students():   # the student parameters each teacher parameter follows, in the same order
        clip = dict(m.clip.named_parameters())
        return list(m.visual.parameters()) + [clip[n] for n in text_names]

    replay = [p.detach().clone() for p in teachers]                      # the teachers start as the student
    assert all(torch.equal(r, s) for r, s in zip(replay, students()))
    k = 3
    for step in range(k):
        progress = step / k
        losses = m(batch(smoke_scale, seed=step), progress)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for p in teachers:
            assert not p.requires_grad and p.grad is None, "a teacher received a gradient"
        opt.step()
        m.after_optimizer_step(progress)
        mom = expected(progress)
        replay = [mom * r + (1 - mom) * s.detach() for r, s in zip(replay, students())]
    for r, t in zip(replay, teachers):
        torch.testing.assert_close(t, r, rtol=1e-5, atol=1e-6)
    lag = max((t - s).abs().max().item() for t, s in zip(teachers, students()))
    assert lag > 1e-4, "after k steps the teachers should lag the student"


def test_student_never_sees_masked_tokens(smoke_scale):
    m = build(smoke_scale, text_branch="off")
    n, b = m.n_patches, 8
    seen, outs, keeps = [], [], []
    m.visual.transformer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    m.visual.transformer.register_forward_hook(lambda mod, args, out: outs.append(out.detach().clone()))
    keep_fn = m.image_keep_indices
    m.image_keep_indices = lambda *a: keeps.append(keep_fn(*a)) or keeps[-1]

    data = batch(smoke_scale, n=b)
    torch.manual_seed(5)
    m(data, 0.0)
    n_keep = keeps[0].shape[1]
    assert n_keep == n // 4
    # the student's encoder ran twice: full image (CLIP loss) and the visible tokens only (+ CLS)
    assert seen == [1 + n, 1 + n_keep]

    # change every masked patch's pixels: the student's masked-branch tokens do not change
    p = smoke_scale.model["vision_cfg"]["patch_size"]
    grid = smoke_scale.patch_grid
    images = data["images"].clone()
    keep = keeps[0]
    for i in range(b):
        for pos in set(range(n)) - set(keep[i].tolist()):
            r, c = divmod(pos, grid)
            images[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = torch.randn(3, p, p) * 5
    torch.manual_seed(5)
    m({"images": images, "texts": data["texts"]}, 0.0)
    assert torch.equal(keeps[1], keep)
    assert not torch.allclose(outs[2], outs[0]), "the full-image pass must see the change"
    torch.testing.assert_close(outs[3], outs[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("target", ["T1", "T2", "T3"])
def test_distillation_loss_covers_masked_positions_only(smoke_scale, target):
    m0 = build(smoke_scale, target=target, text_branch="off")
    data = batch(smoke_scale)
    n = m0.n_patches
    dim = m0.teacher_targets(data["images"]).shape[-1]
    fixed = torch.randn(8, n, dim)

    def distill(targets):
        m = copy.deepcopy(m0)                       # T3 updates its centre after the loss: start each run equal
        keeps = []
        keep_fn = m.image_keep_indices
        m.image_keep_indices = lambda *a: keeps.append(keep_fn(*a)) or keeps[-1]
        m.teacher_targets = lambda images: targets
        torch.manual_seed(11)
        return m(data, 0.0)["distill_image"], keeps[0]

    base, keep = distill(fixed)
    visible_changed = fixed.clone()
    for i in range(8):
        visible_changed[i, keep[i]] = torch.randn(keep.shape[1], dim) * 10
    assert torch.equal(distill(visible_changed)[0], base)
    masked_pos = next(j for j in range(n) if j not in keep[0].tolist())
    masked_changed = fixed.clone()
    masked_changed[0, masked_pos] = torch.randn(dim) * 10
    assert not torch.allclose(distill(masked_changed)[0], base)


def test_text_masking_touches_caption_words_only(smoke_scale):
    m = build(smoke_scale, text_mask_ratio=0.3)
    data = batch(smoke_scale, n=256)
    torch.manual_seed(0)
    embeds, selected, words = m.mask_caption(data["texts"])
    texts = data["texts"]
    assert not (selected & ~words).any()
    assert not selected[:, 0].any() and not (selected & (texts == 49407)).any() and not (selected & (texts == 0)).any()
    rate = selected.sum().item() / words.sum().item()
    assert 0.25 < rate < 0.35
    plain = m.clip.token_embedding(texts)
    assert torch.equal(embeds[~selected], plain[~selected])
    as_mask_token = (embeds[selected] == m.text_mask_token).all(-1).float().mean().item()
    assert 0.7 < as_mask_token < 0.9                # BERT 80 / 10 / 10


def test_block_masking_keeps_exactly_k_tokens(smoke_scale):
    m = build(smoke_scale, mask_type="block")
    keep = m.image_keep_indices(16, "cpu")
    assert keep.shape == (16, m.n_patches // 4)
    assert all(len(set(row.tolist())) == keep.shape[1] for row in keep)
    assert torch.equal(keep, keep.sort(dim=1).values)


def test_export_is_the_clip_alone_and_bad_config_is_refused(smoke_scale):
    m = build(smoke_scale, target="T3", text_branch="distill")
    assert set(m.export()) == set(m.clip.state_dict())
    with pytest.raises(UserError, match="maskclip_dong.target"):
        build(smoke_scale, target="T4")
