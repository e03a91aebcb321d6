"""UTA (methods/uta): masked tokens never reach the student, the teacher is frozen, tokens align position by
position, zero-shot text comes from the teacher, and the teacher run is found, required and disclosed."""
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from benchmark.blocks import patch_embed
from benchmark.data.train_data import load_training_data
from benchmark.discovery import build_method, discover
from benchmark.errors import UserError
from benchmark.model import build_clip
from benchmark.train import make_optimizer

INFO = discover()["uta"]


@pytest.fixture(scope="module")
def scale(smoke_scale):
    return smoke_scale


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, scale):
    """A teacher checkpoint: an open_clip CLIP of the smoke model with its own (seed 7) weights."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(open_clip.CLIP(**scale.model).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def batch(scale):
    return load_training_data(scale).batch(0, scale.batch_size, 0, "cpu")


def build(scale, teacher_file, seed=0, **overrides):
    return build_method(INFO, scale, seed=seed, config_scale="smoke",
                        overrides={"teacher_checkpoint": str(teacher_file), **overrides})


def teacher_clip(scale, teacher_file):
    clip = open_clip.CLIP(**scale.model)
    clip.load_state_dict(torch.load(teacher_file, weights_only=True))
    return clip.eval()


def sequences_seen(module, images, step):
    """The token sequences [B, 1+K, D] that enter ``module``'s transformer (ln_pre's input) during ``step()``."""
    seen = []
    handle = module.ln_pre.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        step()
    finally:
        handle.remove()
    return seen


def positions_of(sequence, visual, images):
    """Which patch positions the rows of ``sequence`` (after CLS) are: matched by content to the patch embeddings."""
    full = patch_embed(visual, images).detach()                         # [B, N, D]
    dist = torch.cdist(sequence[:, 1:], full)                           # [B, K, N]
    assert (dist.min(-1).values < 1e-5).all(), "a student token is not the embedding of any single patch"
    return dist.argmin(-1)                                              # [B, K]


@pytest.mark.parametrize("mode", ["random", "reversed_block", "complementary"])
def test_the_student_never_receives_masked_tokens(mode, scale, teacher_file, batch):
    method = build(scale, teacher_file, mask_mode=mode)
    method.train()
    images, n = batch["images"], method.n_patches
    student = sequences_seen(method.visual, images, lambda: method(batch, 0.0))
    teacher = sequences_seen(method.teacher, images, lambda: method(batch, 0.0))
    assert [s.shape[1] for s in teacher] == [1 + n], "the teacher sees the whole image once"
    assert len(student) == (2 if mode == "complementary" else 1)
    covered = torch.zeros(images.shape[0], n)
    for seq in student:
        assert seq.shape[1] == 1 + n // 2, "CLS + the unmasked half only: no mask tokens, nothing masked"
        pos = positions_of(seq, method.visual, images)
        assert all(len(set(row.tolist())) == n // 2 for row in pos), "each kept patch appears once"
        covered.scatter_add_(1, pos, torch.ones_like(pos, dtype=covered.dtype))
    if mode == "complementary":
        assert torch.equal(covered, torch.ones_like(covered)), "the two passes see complementary halves"
    assert method.stats()["mask_ratio"] == 0.5


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient(scale, teacher_file, batch):
    method = build(scale, teacher_file)
    method.train()
    assert not method.teacher.training and not any(m.training for m in method.teacher.modules())
    assert method.visual.training
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    text_before = {k: v.clone() for k, v in method.clip.state_dict().items() if not k.startswith("visual.")}
    opt = make_optimizer(method, scale.optim)
    losses = method(batch, 0.0)
    losses["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.visual.parameters())
    opt.step()
    method.train(True)
    assert not method.teacher.training
    after = method.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "an optimizer step changed the teacher"
    text_after = method.clip.state_dict()
    assert all(torch.equal(text_before[k], text_after[k]) for k in text_before), "the text tower changed"


@pytest.mark.parametrize("target", ["projected", "features"])
def test_alignment_loss_is_zero_with_the_teachers_own_tower_at_mask_zero(target, scale, teacher_file, batch):
    method = build(scale, teacher_file, mask_ratio=0.0, target=target)
    method.visual.load_state_dict(method.teacher.state_dict())
    method.train()
    loss = method(batch, 0.0)["loss"]
    assert loss.item() < 1e-6
    other = build(scale, teacher_file, mask_ratio=0.0, target=target)   # a student that is not the teacher
    assert other(batch, 0.0)["loss"].item() > 0.1


def test_tokens_align_with_the_teacher_token_at_the_same_position(scale, teacher_file, batch):
    """With every block's residual branches zeroed, each output token depends on its own patch alone; a student
    equal to the teacher then matches it exactly at 50 % masking iff token i is compared with the teacher's
    token at the same position."""
    method = build(scale, teacher_file, mask_ratio=0.5)
    with torch.no_grad():
        for block in method.teacher.transformer.resblocks:
            for lin in (block.attn.out_proj, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
    method.visual.load_state_dict(method.teacher.state_dict())
    assert method(batch, 0.0)["loss"].item() < 1e-6
    method.teacher.positional_embedding.data[1:] = method.teacher.positional_embedding.data[1:].roll(1, 0)
    assert method(batch, 0.0)["loss"].item() > 1e-3, "shifted teacher positions must show up in the loss"


def test_zero_shot_text_embeddings_come_from_the_teacher(scale, teacher_file, batch):
    method = build(scale, teacher_file)
    teacher = teacher_clip(scale, teacher_file)
    texts = batch["texts"][:8]
    method.eval()
    assert torch.allclose(method.encode_text(texts), F.normalize(teacher.encode_text(texts), dim=-1), atol=1e-6)
    exported = method.export()
    for k, v in teacher.state_dict().items():
        if k.startswith("visual."):
            assert torch.equal(exported[k], method.clip.state_dict()[k])      # the student's image tower
        else:
            assert torch.equal(exported[k], v), f"{k} is not the teacher's"
    assert not torch.equal(exported["visual.conv1.weight"], teacher.state_dict()["visual.conv1.weight"])


def test_requires_names_the_teacher_run_and_a_missing_teacher_is_a_clear_error(scale, tmp_path):
    assert INFO.cls.requires(INFO.config("smoke")) == ["clip"]
    given = tmp_path / "teacher.pt"
    given.write_bytes(b"")                        # config ranges check that the file exists; requires() reads only the key
    assert INFO.cls.requires(INFO.config("smoke", {"teacher_checkpoint": str(given)})) == []
    with pytest.raises(UserError, match="benchmark run --methods clip --scale smoke --seeds 4"):
        build_method(INFO, scale, seed=4, results_root=tmp_path)
    with pytest.raises(UserError, match="teacher_checkpoint"):
        build_method(INFO, scale)
    with pytest.raises(UserError, match="does not (name an existing file|exist)"):
        build_method(INFO, scale, overrides={"teacher_checkpoint": str(tmp_path / "no.pt")})


def test_teacher_run_is_loaded_and_its_pretraining_compute_reported(scale, teacher_file, tmp_path):
    run = tmp_path / "smoke" / "clip" / "seed2"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(teacher_file.read_bytes())
    (run / "metrics.json").write_text(json.dumps({"config_hash": "abc123",
                                                  "compute": {"train_flops": 1234, "samples_seen": 384}}))
    method = build_method(INFO, scale, seed=2, results_root=tmp_path)
    teacher = teacher_clip(scale, teacher_file)
    assert torch.equal(method.teacher.conv1.weight, teacher.visual.conv1.weight)
    extra = method.extra_compute()
    assert extra["teacher_pretraining_flops"] == 1234 and extra["teacher_pretraining_samples"] == 384
    assert extra["teacher_run"] == str(run) and extra["teacher_config_hash"] == "abc123"


def test_contrastive_finetuning_stage(scale, teacher_file, batch):
    method = build(scale, teacher_file, contrastive_finetune_fraction=0.25)
    assert method.phases() == [(0.75, 0.0), (0.25, 0.875)]
    method.train()
    teacher_calls = sequences_seen(method.teacher, batch["images"], lambda: method(batch, 0.5))
    assert len(teacher_calls) == 1
    teacher_calls = sequences_seen(method.teacher, batch["images"],
                                   lambda: method(batch, 0.8)["loss"].backward())
    assert teacher_calls == [], "stage 2 runs no teacher"
    assert method.clip.logit_scale.grad is not None
    assert all(p.grad is None for n, p in method.clip.named_parameters()
               if not n.startswith("visual.") and n != "logit_scale"), "the text tower stays frozen"
    assert any(p.grad is not None for p in method.visual.parameters())


def test_compute_budget_is_a_plain_clip_step_although_uta_freezes_the_text_tower(scale, teacher_file, batch):
    from benchmark import flops
    method = build(scale, teacher_file)
    plain = build_clip(scale, 0)
    assert flops.reference_clip_flops(method.clip, batch, method.clip_loss) == \
        flops.reference_clip_flops(plain, batch, method.clip_loss)
    # UTA's own step counts the teacher's full-image forward pass: the same step with the targets precomputed
    # costs exactly that much less
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        targets = method.teacher_targets(batch["images"])
    teacher_forward = counter.get_total_flops()
    full = flops.count_step_flops(method, batch, 0.0)
    method.teacher_targets = lambda images: targets
    assert full - flops.count_step_flops(method, batch, 0.0) == teacher_forward > 0


WIDE = discover()["clip"].with_variant("wide")
WIDE_TEACHER = INFO.with_variant("wide_teacher")


def _wide_teacher_run(root, scale, seed, model=None):
    """A finished clip@wide run folder: a model of twice the image width (or ``model``), with its compute."""
    run = root / scale.name / "clip@wide" / f"seed{seed}"
    run.mkdir(parents=True)
    torch.manual_seed(11)
    teacher = open_clip.CLIP(**(model or WIDE.model_scale(scale).model))
    torch.save(teacher.state_dict(), run / "model.pt")
    (run / "metrics.json").write_text(json.dumps({"config_hash": "wide1", "compute": {"train_flops": 99,
                                                                                       "samples_seen": 384}}))
    return teacher.eval()


def test_a_wider_teacher_run_is_loaded_in_its_own_architecture_and_the_export_keeps_the_scales(scale, batch,
                                                                                                  tmp_path):
    assert WIDE_TEACHER.cls.requires(WIDE_TEACHER.config("smoke")) == ["clip@wide"]
    teacher = _wide_teacher_run(tmp_path, scale, 1)
    method = build_method(WIDE_TEACHER, scale, seed=1, results_root=tmp_path)
    width = scale.model["vision_cfg"]["width"]
    assert method.teacher.conv1.weight.shape[0] == 2 * width and method.visual.conv1.weight.shape[0] == width
    assert torch.equal(method.teacher.conv1.weight, teacher.visual.conv1.weight)
    assert torch.equal(method.clip.token_embedding.weight, teacher.token_embedding.weight)   # its text tower
    cls_target, patches = method.teacher_targets(batch["images"])
    assert torch.allclose(cls_target, teacher.encode_image(batch["images"]), atol=1e-5)
    assert torch.isfinite(method(batch, 0.0)["loss"])
    # the exported model (student image tower + the teacher's text tower) has the scale's architecture
    open_clip.CLIP(**scale.model).load_state_dict(method.export(), strict=True)
    assert method.extra_compute()["teacher_pretraining_flops"] == 99
    assert method.extra_compute()["teacher_run"] == str(tmp_path / "smoke" / "clip@wide" / "seed1")


def test_a_wider_teacher_is_refused_where_it_cannot_fit(scale, tmp_path):
    _wide_teacher_run(tmp_path, scale, 0)
    with pytest.raises(UserError, match="target=features .* is 64 wide and the student 32"):
        build_method(WIDE_TEACHER, scale, seed=0, results_root=tmp_path, overrides={"target": "features"})
    # a clip@wide folder holding a model of another architecture is named, with what it must be
    _wide_teacher_run(tmp_path, scale, 3, model=scale.model)
    with pytest.raises(UserError, match=r"teacher run .*clip@wide/seed3/model.pt does not fit .* architecture of its run"):
        build_method(WIDE_TEACHER, scale, seed=3, results_root=tmp_path)
    # a teacher checkpoint with another text tower cannot pair with the student
    other = {**scale.model, "text_cfg": {**scale.model["text_cfg"], "width": 64, "heads": 2}}
    path = tmp_path / "other_text.pt"
    torch.save(open_clip.CLIP(**other).state_dict(), path)
    with pytest.raises(UserError, match="does not fit the smoke model"):
        build_method(INFO, scale, overrides={"teacher_checkpoint": str(path)})


def test_planning_counts_the_wider_teachers_pass(scale, batch):
    from benchmark import planning
    data = load_training_data(scale)
    plain = planning.plan_run(INFO, INFO.config("smoke"), scale, 0, data, "cpu")
    wide = planning.plan_run(WIDE_TEACHER, WIDE_TEACHER.config("smoke"), scale, 0, data, "cpu")
    teacher = planning.plan_run(WIDE, WIDE.config("smoke"), scale, 0, data, "cpu")
    clip = planning.plan_run(discover()["clip"], {}, scale, 0, data, "cpu")
    assert wide.reference_flops == plain.reference_flops == clip.reference_flops     # the budget is the scale's
    assert wide.flops_per_step > plain.flops_per_step and wide.steps < plain.steps  # the wide forward is paid
    assert wide.train_flops <= wide.reference_flops * (scale.samples // scale.batch_size)
    # clip@wide trains on the scale's samples (its own budget), at more FLOPs per step than CLIP
    assert teacher.match == "samples" and teacher.steps == scale.samples // scale.batch_size
    assert teacher.flops_per_step > 1.5 * clip.flops_per_step
