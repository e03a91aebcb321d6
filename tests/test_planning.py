"""Compute planning without memory (benchmark/planning.py, benchmark/shape_only.py): the shape-only count equals
the count of the real step on the full batch for every method, the per-rank logits make every world size plan
the same, a paper-scale model costs no memory, and the CLIP count at ViT-B/16 equals an analytic count."""
import dataclasses

import open_clip
import pytest
import torch

from benchmark import discovery, flops, planning
from benchmark.data.synthetic import synthetic_pairs
from benchmark.data.train_data import load_training_data
from benchmark.method import Context
from benchmark.perf import harness
from benchmark.scales import get_scale
from benchmark.shape_only import NeedsRealValues

METHODS = ("clip", "flip", "cluster_masking", "maskclip_dong", "maskclip_weers", "uta")


def full_batch_count(info, cfg, scale, data, seed=0):
    """What runs.py counted before planning was shape-only: one real step of a real copy on the global batch."""
    torch.manual_seed(seed)
    method = info.cls(open_clip.CLIP(**scale.model), cfg, Context(scale=scale, seed=seed)).train()
    torch.manual_seed(seed)
    batch = data.batch(0, scale.batch_size, seed, "cpu")
    reference = flops.reference_clip_flops(method.clip, batch, method.clip_loss)
    return reference, [(f, flops.count_step_flops(method, batch, p)) for f, p in method.phases()]


@pytest.mark.parametrize("scale_name", ["smoke", "pocket"])
@pytest.mark.parametrize("name", METHODS)
def test_shape_only_plan_equals_the_full_batch_count(name, scale_name, tmp_path):
    scale = get_scale(scale_name)
    info = discovery.discover()[name]
    cfg = info.config(scale.name, harness.method_overrides(name, tmp_path, scale))
    data = load_training_data(scale)
    reference, phases = full_batch_count(info, cfg, scale, data)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    plan = planning.plan_run(info, cfg, scale, 0, data, "cpu")
    assert torch.equal(torch.get_rng_state(), rng), "planning leaves the RNG where training starts from it"
    assert plan.reference_flops == reference
    assert [tuple(p) for p in plan.phases] == phases
    assert plan.steps == flops.plan_steps("flops", scale, reference, phases)
    assert plan.counted_on == "shape-only"


@pytest.mark.parametrize("name", ["clip", "flip", "maskclip_weers"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_every_world_size_plans_the_same_job(name, world_size, smoke_scale, tmp_path):
    """Rank 0's step with [B/W, B] logits, times W, is the world-size-1 step of the global batch (for methods whose
    FLOPs follow from shapes alone): the logits term is counted exactly, not approximated."""
    info = discovery.discover()[name]
    cfg = info.config("smoke")
    data = load_training_data(smoke_scale)
    one = planning.plan_run(info, cfg, smoke_scale, 0, data, "cpu", 1)
    many = planning.plan_run(info, cfg, smoke_scale, 0, data, "cpu", world_size)
    assert many.per_rank_batch == smoke_scale.batch_size // world_size
    assert many.reference_flops == one.reference_flops
    assert many.phases == one.phases and many.steps == one.steps


def test_rank_loss_has_the_shapes_of_the_gathered_loss():
    loss = planning.RankClipLoss(rank=1, world_size=4)
    img, txt = torch.randn(3, 8), torch.randn(3, 8)
    per_image, per_text = loss.get_logits(img, txt, torch.tensor(1.0))
    assert per_image.shape == per_text.shape == (3, 12)
    assert torch.allclose(per_image[:, 3:6], img @ txt.T)        # this rank's block sits at its place
    assert loss.get_ground_truth("cpu", 3).tolist() == [3, 4, 5]
    one = planning.RankClipLoss(rank=0, world_size=1)
    ref = open_clip.loss.ClipLoss()
    assert torch.allclose(one(img, txt, torch.tensor(2.0)), ref(img, txt, torch.tensor(2.0)))


def vit_b16_clip_step_flops(batch: int) -> int:
    """Analytic FLOPs (2 per multiply-add) of a ViT-B/16 CLIP step: forward matmuls F; backward 2F, except the patch
    embedding, whose input (the image) needs no gradient (1x). Attention: QK^T and AV, 2 * T^2 * D each."""
    def tower(tokens, width, layers):
        return layers * (2 * tokens * 12 * width * width + 4 * tokens * tokens * width)
    patch = 2 * 196 * (3 * 16 * 16) * 768
    forward = batch * (patch + tower(197, 768, 12) + 2 * 768 * 512 + tower(77, 512, 12) + 2 * 512 * 512)
    forward += 2 * 2 * batch * batch * 512                    # logits per image and per text
    return 3 * forward - batch * patch


@pytest.mark.parametrize("scale_name", ["cc12m-b16", "yfcc15m-b16"])
def test_paper_scale_plan_costs_no_memory_and_counts_the_analytic_clip_step(scale_name):
    scale = get_scale(scale_name)
    world_size = 8
    data = synthetic_pairs(scale, scale.batch_size // world_size)
    info = discovery.discover()["clip"]
    plan = planning.plan_run(info, info.config(scale.name), scale, 0, data, "cpu", world_size)
    analytic = vit_b16_clip_step_flops(scale.batch_size)
    assert abs(plan.reference_flops - analytic) / analytic < 1e-3
    assert plan.flops_per_step == plan.reference_flops
    method = planning.build_shape_only(info, info.config(scale.name), scale, 0, "cpu")
    assert all(p.is_meta for p in method.parameters()), "no weight of a paper-scale model is materialised"
    assert plan.trainable_params == sum(p.numel() for p in method.parameters()) > 140_000_000   # ViT-B/16 CLIP


def test_a_decision_on_weight_values_is_refused_by_name(smoke_scale):
    """A step that branches on a value of the weights cannot be planned shape-only: it says so (and runs.py then
    counts the real step)."""
    from benchmark.method import Method

    class Branchy(Method):
        def training_step(self, batch, progress):
            image = self.clip.encode_image(batch["images"])
            if int((image > 0).sum()) > 3:                    # a shape decided by the model's output
                image = image[:, :2]
            return {"loss": self.contrastive(image, self.clip.encode_text(batch["texts"])[:, :image.shape[1]])}

    info = dataclasses.replace(discovery.discover()["clip"], cls=Branchy)
    data = synthetic_pairs(smoke_scale, smoke_scale.batch_size)
    with pytest.raises(NeedsRealValues, match="control flow or shapes"):
        planning.plan_run(info, {}, smoke_scale, 0, data, "cpu")
    torch.manual_seed(0)
    real = Branchy(open_clip.CLIP(**smoke_scale.model), {}, Context(scale=smoke_scale)).train()
    plan = planning.plan_run(info, {}, smoke_scale, 0, data, "cpu", real_method=real)
    assert plan.counted_on.startswith("real step")
    assert plan.phases[0][1] == flops.count_step_flops(real, data.batch(0, smoke_scale.batch_size, 0, "cpu"), 0.0)


def test_a_frozen_teachers_attention_is_counted():
    """An eval-mode nn.MultiheadAttention without gradients takes a fused fast path that FlopCounterMode cannot
    see; counting turns it off, so a frozen teacher's attention is counted like the student's."""
    from torch.utils.flop_counter import FlopCounterMode
    mha = torch.nn.MultiheadAttention(64, 2, batch_first=True).eval()
    x = torch.randn(2, 10, 64)
    with torch.no_grad(), flops.counted_kernels(), FlopCounterMode(display=False) as counted:
        mha(x, x, x, need_weights=False)
    expected = 2 * 2 * 10 * 64 * 3 * 64 + 2 * 2 * 10 * 64 * 64 + 2 * 2 * 2 * 10 * 10 * 64   # in/out proj, QK^T, AV
    assert counted.get_total_flops() == expected


def test_gpu_check_counts_equal_the_plan_on_cpu_at_smoke(tmp_path):
    """The README's GPU check (benchmark/perf/paper_step.py) run at the smoke scale on a CPU: the FLOPs counted on
    the device's real weights equal the shape-only plan for every method, and the figures are written."""
    import json

    from benchmark.perf import paper_step
    out = tmp_path / "paper_step.json"
    assert paper_step.main(["--scale", "smoke", "--batch", "8", "--steps", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == list(METHODS)
    assert all(r["flops_equal"] and r["planned_flops"] > 0 and r["ms_per_step"] > 0 for r in rows)


def test_plan_command_prints_runs_waves_and_sbatch_without_submitting(tmp_path, capsys):
    import json

    from benchmark import cli
    out = tmp_path / "plan.json"
    profile = tmp_path / "p.yaml"
    profile.write_text("partition: gpu\ngpus_per_node: 4\nnodes: 2\ntime_min: 600\n")
    assert cli.main(["plan", "--scale", "smoke", "--methods", "flip,uta", "--results", str(tmp_path / "r"),
                     "--slurm-profile", str(profile), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["world_size"] == 8 and plan["per_rank_batch"] == 4
    runs = {r["method"]: r for r in plan["runs"]}
    assert set(runs) == {"clip", "flip", "uta"}, "UTA's teacher run is planned too"
    assert runs["uta"]["requires"] == ["clip"]
    assert runs["uta"]["train_flops_with_required"] == runs["uta"]["train_flops"] + runs["clip"]["train_flops"]
    assert runs["clip"]["steps"] == 12 and runs["flip"]["steps"] > 12
    waves = [sorted(w["jobs"]) for w in plan["waves"]]
    assert waves == [["smoke/clip/seed0", "smoke/flip/seed0"], ["smoke/uta/seed0"]]
    first, second = (w["sbatch"] for w in plan["waves"])
    assert "#SBATCH --array=0-1%2" in first and "--dependency" not in first
    assert "#SBATCH --dependency=afterok:JOBID_clip_seed0" in second and "#SBATCH --partition=gpu" in second
    assert "#SBATCH --nodes=2" in second and "#SBATCH --gpus-per-node=4" in second
    assert "wave 2: array of 1 job(s): smoke/uta/seed0" in text and "GPU-h" in text
    assert not (tmp_path / "r").exists(), "planning writes no run folder and submits nothing"


def test_plan_lists_missing_data_by_name(capsys):
    from benchmark import cli
    assert cli.main(["plan", "--scale", "cc12m-b16", "--methods", "clip"]) == 2
    err = capsys.readouterr().err
    assert "/datasets/imagenet1k" in err and "/datasets/cc12m/00000.tar" in err and "--no-data-check" in err


def test_plan_checks_the_dataset_root_it_is_given(tmp_path, capsys):
    from benchmark import cli
    assert cli.main(["plan", "--scale", "cc12m-b16", "--methods", "clip", "--dataset-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "imagenet1k") in err and "/datasets/imagenet1k" not in err


@pytest.mark.parametrize("world_size", [2, 4])
def test_cluster_masking_is_planned_on_the_per_rank_batch_it_trains_on(world_size, smoke_scale):
    """Cluster masking's tau and kept length depend on the images of a batch: on several ranks each trains on its
    slice of the global batch (tau from rank 0's first slice), so the plan must count rank 0's step on rank 0's
    slice, times the world size, not the step on the global batch (issue: planning over-counted it)."""
    info = discovery.discover()["cluster_masking"]
    cfg = info.config("smoke")
    data = load_training_data(smoke_scale)
    torch.manual_seed(0)
    plan = planning.plan_run(info, cfg, smoke_scale, 0, data, "cpu", world_size)
    assert plan.per_rank_batch == smoke_scale.batch_size // world_size
    # rank 0 as training builds it, real weights, its loss with [B/W, B] logits, on its own slice of step 0
    torch.manual_seed(0)
    real = info.cls(open_clip.CLIP(**smoke_scale.model), cfg,
                    Context(scale=smoke_scale, seed=0, rank=0, world_size=world_size)).train()
    real.clip_loss = planning.RankClipLoss(0, world_size)
    batch = planning.rank0_batch(data, smoke_scale, 0, "cpu", world_size)
    assert batch["images"].shape[0] == plan.per_rank_batch
    torch.manual_seed(0)
    counted = [(f, world_size * flops.count_step_flops(real, batch, p)) for f, p in real.phases()]
    assert [tuple(p) for p in plan.phases] == counted
