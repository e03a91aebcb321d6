"""Trainer: schedule, parameter groups, matched compute. (Exact resume after SIGKILL: tests/test_faults.py.)"""
import math
import re

import pytest
import torch

from benchmark.results import read_json
from benchmark.train import clip_gradients, lr_at, param_groups
from conftest import run_cli


def test_lr_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(99, 100, 10, 1.0) < 0.001


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
