"""Trainer: schedule, parameter groups, matched compute. (Exact resume after SIGKILL: tests/test_faults.py.)"""
import math
import re

import pytest
import torch

from benchmark.results import read_json
from benchmark.train import TrainPlan, clip_gradients, lr_at, param_groups, scheduled_lr, stage_bounds
from conftest import run_cli


def test_lr_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(99, 100, 10, 1.0) < 0.001


def test_slip_schedule_warms_up_from_start_lr_and_ends_at_min_lr():
    """SLIP utils.cosine_scheduler: np.linspace(1e-6, base, warmup), then cosine from base to 1e-5."""
    assert lr_at(0, 100, 10, 1.0, 1e-6, 1e-5) == pytest.approx(1e-6)
    assert lr_at(9, 100, 10, 1.0, 1e-6, 1e-5) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 1e-6, 1e-5) == pytest.approx(1e-5 + 0.5 * (1 - 1e-5))
    assert 1e-5 < lr_at(99, 100, 10, 1.0, 1e-6, 1e-5) < 1e-5 + 1e-3


@pytest.mark.parametrize("steps", [7, 100, 997, 1012])
@pytest.mark.parametrize("u", [0.01, 0.1, 0.3])
def test_stage_bounds_agree_with_progress(steps, u):
    """A method that switches on ``progress < 1 - u`` (FLIP's masking) switches at the stage's first step."""
    first = stage_bounds(steps, [1 - u, u])[1]
    assert all((step / steps < 1 - u) == (step < first) for step in range(steps))


def test_a_later_stage_restarts_the_schedule_at_its_own_lr_and_warmup():
    from benchmark.scales import Optim
    plan = TrainPlan(steps=1000, batch_size=10, seed=0, optim=Optim(lr=1.0, weight_decay=0.0, warmup_samples=100),
                     checkpoint_every=100, stages=[(0.9, 1.0, None), (0.1, 0.01, 0.2)])
    lrs = [scheduled_lr(s, plan) for s in range(1000)]
    assert lrs[0] == (pytest.approx(0.1), False)                          # the scale's warm-up: 10 steps
    assert lrs[899][0] < 1e-4 and not lrs[899][1]                         # the first stage's cosine ends at 0
    assert lrs[900] == (pytest.approx(0.01 / 20), True)                   # fresh stage: 20 warm-up steps from 0
    assert lrs[919][0] == pytest.approx(0.01) and not lrs[919][1]
    assert lrs[999][0] < 1e-5
    assert [s for s in range(1000) if lrs[s][1]] == [900]                 # the optimizer restarts once
    single = TrainPlan(steps=100, batch_size=10, seed=0, optim=Optim(lr=1.0, weight_decay=0.0, warmup_samples=100),
                       checkpoint_every=100)
    assert [scheduled_lr(s, single)[0] for s in range(100)] == [lr_at(s, 100, 10, 1.0) for s in range(100)]


def test_recipes_of_the_paper_scales():
    from benchmark.scales import get_scale
    y = get_scale("yfcc15m-b16")     # SLIP main.py
    assert (y.optim.eps, y.optim.warmup_start_lr, y.optim.min_lr, y.optim.grad_clip) == (1e-8, 1e-6, 1e-5, None)
    assert y.data.crop_scale == (0.5, 1.0) and y.zeroshot_templates == "slip"
    assert get_scale("cc12m-b16").samples == 32 * 10_968_539      # cluster masking: --train-num-samples 10968539
    assert get_scale("cc12m-b16").data.crop_scale == (0.9, 1.0)


def test_template_sets(tmp_path):
    import json

    from benchmark.errors import UserError
    from benchmark.evaluation.real_datasets import templates
    assert len(templates("imagenet1k")) == 80
    flip = templates("imagenet1k", "flip7")
    assert len(flip) == 7 and "itap of a {c}." in flip and set(flip) <= set(templates("imagenet1k"))
    assert templates("cifar10", "flip7") == templates("cifar10")
    with pytest.raises(UserError, match="slip/templates.json"):
        templates("imagenet1k", "slip", tmp_path)
    (tmp_path / "slip").mkdir()
    (tmp_path / "slip" / "templates.json").write_text(json.dumps({"imagenet": ["a photo of a {}."]}))
    assert templates("imagenet1k", "slip", tmp_path) == ["a photo of a {c}."]
    with pytest.raises(UserError, match="no template list for 'cifar10'"):
        templates("cifar10", "slip", tmp_path)
    with pytest.raises(UserError, match="unknown"):
        templates("imagenet1k", "nope")


def test_no_gradient_clipping_by_default_as_the_official_recipes():
    """open_clip_train's --grad-clip-norm defaults to None; FLIP's configs and SLIP's main.py do not clip."""
    from benchmark.scales import SCALES, Optim
    assert Optim(lr=1e-3, weight_decay=0.1).grad_clip is None
    assert all(s.optim.grad_clip is None for s in SCALES.values())


def test_clip_gradients_measures_without_clipping_and_clips_when_set():
    w = torch.nn.Parameter(torch.zeros(4))
    unused = torch.nn.Parameter(torch.zeros(2))          # no gradient: skipped
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert float(clip_gradients([w, unused], None)) == pytest.approx(5.0)
    assert torch.equal(w.grad, torch.tensor([3.0, 4.0, 0.0, 0.0]))          # untouched
    assert float(clip_gradients([w, unused], 1.0)) == pytest.approx(5.0)    # the norm before clipping
    assert float(w.grad.norm()) == pytest.approx(1.0, rel=1e-5)


def test_no_weight_decay_on_gains_biases_and_logit_scale(smoke_scale):
    import open_clip
    clip = open_clip.CLIP(**smoke_scale.model)
    no_decay, decay = param_groups(clip, 0.1)
    names = {id(p): n for n, p in clip.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in nd and any(n.endswith("bias") for n in nd) and any(".ln_" in n for n in nd)
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1


@pytest.mark.slow
def test_matched_flops_step_counts_follow_measured_flops(tmp_path):
    proc = run_cli("run", "--methods", "clip,flip", "--scale", "smoke", "--cluster", "debug", "--results", tmp_path,
                   "--no-report", "--set", "flip.mask_ratio=0.75")
    assert proc.returncode == 0, proc.stderr
    # live progress (stderr): a line per run while it trains, a sweep line after each run
    assert "[1/2] clip seed 0  starting in this process" in proc.stderr
    assert re.search(r"\[2/2\] flip seed 0  step \d+/\d+  loss \d+\.\d{3}  [\d,]+ img/s", proc.stderr)
    assert re.search(r"\[2/2\] flip seed 0  done in \d\d:\d\d \(\d+ steps, final loss", proc.stderr)
    assert "sweep: 1/2 runs done" in proc.stderr and "sweep: 2/2 runs done" in proc.stderr
    assert "main metric per task (%, mean over datasets, then over seeds)" in proc.stdout
    # the same runs again (lists with spaces this time): nothing is trained, each says so
    again = run_cli("run", "--methods", "clip", "flip", "--scale", "smoke", "--cluster", "debug", "--results",
                    tmp_path, "--no-report", "--set", "flip.mask_ratio=0.75", "--seeds", "0,")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already finished (--force to retrain)") == 2, again.stdout
    assert "starting" not in again.stderr
    clip = read_json(tmp_path / "smoke/clip/seed0/metrics.json")["compute"]
    flip = read_json(tmp_path / "smoke/flip/seed0/metrics.json")["compute"]
    assert flip["flops_per_step"] < clip["flops_per_step"]
    assert clip["flops_per_step"] == clip["reference_clip_flops_per_step"]
    assert flip["steps"] == math.floor(clip["steps"] * clip["flops_per_step"] / flip["flops_per_step"])
    assert flip["train_flops"] <= clip["train_flops"] < flip["train_flops"] + flip["flops_per_step"]
    for c in (clip, flip):
        assert c["samples_seen"] == c["steps"] * 32 and c["wall_time_s"] > 0 and c["images_per_s"] > 0
    # samples matching: the papers' protocol, same number of steps for both
    proc = run_cli("run", "--methods", "flip", "--scale", "smoke", "--cluster", "debug", "--results",
                   tmp_path / "samples", "--no-report", "--match", "samples")
    assert proc.returncode == 0, proc.stderr
    assert read_json(tmp_path / "samples/smoke/flip/seed0/metrics.json")["compute"]["steps"] == clip["steps"]


def test_attention_flops_are_counted(smoke_scale):
    """Under the default CPU SDPA kernel attention FLOPs vanish; the harness counts them (math backend)."""
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark.data.train_data import load_training_data
    from benchmark.flops import reference_clip_flops
    from open_clip.loss import ClipLoss
    clip = open_clip.CLIP(**smoke_scale.model)
    batch = load_training_data(smoke_scale).batch(0, 32, 0, "cpu")
    counted = reference_clip_flops(clip, batch, ClipLoss())
    with FlopCounterMode(display=False) as fc:
        f = torch.nn.functional
        ClipLoss()(f.normalize(clip.encode_image(batch["images"]), dim=-1),
                   f.normalize(clip.encode_text(batch["texts"]), dim=-1), clip.logit_scale.exp()).backward()
    assert counted > fc.get_total_flops()
