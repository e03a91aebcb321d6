"""Method variants (config.yaml ``variants:``): named override sets and a batch multiplier, each its own run."""
import json
import math
import textwrap

import pytest

from benchmark.discovery import discover, overrides_for, resolve
from benchmark.errors import UserError
from benchmark.results import read_json
from conftest import GOOD_METHOD as GOOD, run_cli



def _folder(root, name, config):
    (root / name).mkdir(parents=True)
    (root / name / "method.py").write_text(GOOD)
    (root / name / "config.yaml").write_text(textwrap.dedent(config))


def test_variant_config_layers_defaults_scale_variant_and_set(tmp_path):
    _folder(tmp_path, "good", """
        defaults: {mask_ratio: 0.5, depth: 2}
        scales: {smoke: {depth: 1}}
        variants:
          mask75: {summary: "more masking", set: {mask_ratio: 0.75}}
          big: {batch_multiplier: 2}
    """)
    base, v, big = resolve("good,good@mask75,good@big", tmp_path)
    assert (base.name, v.name, big.name) == ("good", "good@mask75", "good@big")
    assert v.config("smoke") == {"mask_ratio": 0.75, "depth": 1} and base.config("smoke")["mask_ratio"] == 0.5
    assert (base.batch_multiplier, v.batch_multiplier, big.batch_multiplier) == (1, 1, 2)
    # --set good.KEY applies to the method and its variants; --set good@mask75.KEY to that variant, and wins
    sets = {"good": {"depth": 3}, "good@mask75": {"mask_ratio": 0.6}}
    assert v.config("smoke", overrides_for(v.name, sets)) == {"mask_ratio": 0.6, "depth": 3}
    assert base.config("smoke", overrides_for(base.name, sets)) == {"mask_ratio": 0.5, "depth": 3}
    assert [i.name for i in resolve("all", tmp_path)] == ["good"]          # all = each method's default
    with pytest.raises(UserError, match="unknown variant 'nope'.*mask75, big"):
        resolve("good@nope", tmp_path)


@pytest.mark.parametrize("variants, needle", [
    ("{x: {set: {nokey: 1}}}", "unknown"),
    ("{x: {batch_multiplier: 0}}", "positive integer"),
    ("{x: {batch_multiplier: 1.5}}", "positive integer"),
    ("{x: {summary: nothing}}", "changes nothing"),
    ("{x: {sets: {mask_ratio: 0.7}}}", "only the keys"),
    ("{x: {vision_width_multiplier: 0}}", "vision_width_multiplier must be a positive integer"),
    ("{x: {match: flopz}}", "match must be one of samples"),
    ("{Bad-Name: {set: {mask_ratio: 0.7}}}", "variant name"),
])
def test_bad_variants_break_the_folder_by_name(tmp_path, variants, needle):
    _folder(tmp_path, "good", f"defaults: {{mask_ratio: 0.5}}\nvariants: {variants}\n")
    info = discover(tmp_path)["good"]
    assert not info.ok and needle in info.error and "variants" in info.error


def test_a_wider_image_tower_and_an_own_budget(tmp_path, smoke_scale):
    _folder(tmp_path, "good", """
        defaults: {mask_ratio: 0.5}
        variants:
          wide: {vision_width_multiplier: 2, match: samples}
    """)
    base, wide = resolve("good,good@wide", tmp_path)
    assert base.model_scale(smoke_scale) is smoke_scale and base.match_for("flops") == "flops"
    model = wide.model_scale(smoke_scale).model
    assert model["vision_cfg"]["width"] == 2 * smoke_scale.model["vision_cfg"]["width"]
    # only the image tower widens: the text tower and the joint embedding stay the scale's (a teacher's text tower
    # pairs with a student of the scale's model)
    assert {k: v for k, v in model["vision_cfg"].items() if k != "width"} == \
        {k: v for k, v in smoke_scale.model["vision_cfg"].items() if k != "width"}
    assert model["text_cfg"] == smoke_scale.model["text_cfg"] and model["embed_dim"] == smoke_scale.model["embed_dim"]
    assert wide.match_for("flops") == "samples" and wide.config("smoke") == base.config("smoke")


@pytest.mark.slow
def test_list_shows_variants():
    out = run_cli("list", check=True).stdout
    assert "@mask75" in out and "@batch2x" in out and "batch x2" in out and "mask_ratio=0.75" in out
    assert "@wide" in out and "image tower x2 wide; --match samples" in out and "teacher_run=clip@wide" in out


@pytest.mark.slow
def test_variant_runs_are_their_own_rows_and_the_batch_multiplier_is_flop_matched(tmp_path):
    proc = run_cli("run", "--methods", "flip,flip@batch2x,flip@mask75", "--scale", "smoke", "--cluster", "debug",
                   "--results", tmp_path, "--no-report", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    runs = {m: read_json(tmp_path / f"smoke/{m}/seed0/metrics.json") for m in ("flip", "flip@batch2x", "flip@mask75")}
    flip, big, m75 = (runs[m]["compute"] for m in ("flip", "flip@batch2x", "flip@mask75"))
    assert (flip["batch_size"], big["batch_size"], m75["batch_size"]) == (32, 64, 32)
    # the doubled batch costs about twice the FLOPs per step, so it gets about half the steps of the same budget
    assert big["flops_per_step"] == pytest.approx(2 * flip["flops_per_step"], rel=0.02)
    assert big["reference_clip_flops_per_step"] == flip["reference_clip_flops_per_step"]
    assert big["steps"] == math.floor(big["reference_steps"] * big["reference_clip_flops_per_step"]
                                      / big["flops_per_step"])
    assert big["samples_seen"] == big["steps"] * 64 and big["train_flops"] <= big["budget_flops"]
    assert m75["flops_per_step"] < flip["flops_per_step"] and m75["steps"] > flip["steps"]
    # linear learning-rate scaling with the batch (FLIP App. A); warm-up stays in samples (half the steps)
    from benchmark.scales import get_scale
    from benchmark.train import lr_at
    optim = get_scale("smoke").optim
    for m, c, mult in (("flip", flip, 1), ("flip@batch2x", big, 2)):
        rows = [json.loads(ln) for ln in (tmp_path / f"smoke/{m}/seed0/train.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "lr" in r]
        assert rows and all(r["lr"] == pytest.approx(lr_at(r["step"] - 1, c["steps"], optim.warmup_samples //
                                                            (32 * mult), optim.lr * mult)) for r in rows), m
    cfg = read_json(tmp_path / "smoke/flip@mask75/seed0/config.json")["identity"]
    assert cfg["method_config"]["mask_ratio"] == 0.75 and "batch_multiplier" not in cfg
    assert read_json(tmp_path / "smoke/flip@batch2x/seed0/config.json")["identity"]["batch_multiplier"] == 2
    import pandas as pd
    rows = pd.read_csv(tmp_path / "smoke/results.csv")
    assert set(rows["method"]) == {"flip", "flip@batch2x", "flip@mask75"}     # never pooled


@pytest.mark.slow
def test_bad_variant_name_exits_2_writing_nothing(tmp_path):
    proc = run_cli("run", "--methods", "flip@nope", "--scale", "smoke", "--results", tmp_path)
    assert proc.returncode == 2 and "unknown variant 'nope'" in proc.stderr and "mask75" in proc.stderr
    proc = run_cli("run", "--methods", "flip", "--scale", "smoke", "--results", tmp_path,
                   "--set", "flip@mask75.nokey=1")
    assert proc.returncode == 2 and "unknown key" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_uta_with_the_wide_teacher_trains_it_first_and_charges_it(tmp_path):
    proc = run_cli("run", "--methods", "uta@wide_teacher", "--scale", "smoke", "--cluster", "debug",
                   "--results", tmp_path, "--no-report", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    from benchmark.scales import get_scale
    smoke = get_scale("smoke")
    wide = read_json(tmp_path / "smoke/clip@wide/seed0/metrics.json")["compute"]
    uta = read_json(tmp_path / "smoke/uta@wide_teacher/seed0/metrics.json")["compute"]
    ident = read_json(tmp_path / "smoke/clip@wide/seed0/config.json")["identity"]
    assert ident["match"] == "samples" and ident["model"]["vision_cfg"]["width"] == 2 * smoke.model["vision_cfg"]["width"]
    # the teacher trains on the scale's samples, whatever its FLOPs; UTA stays FLOP-matched and is charged for it
    assert wide["match"] == "samples" and wide["steps"] == smoke.samples // smoke.batch_size
    assert wide["train_flops"] > wide["budget_flops"]
    assert uta["match"] == "flops" and uta["train_flops"] <= uta["budget_flops"]
    assert uta["teacher_pretraining_flops"] == wide["train_flops"]
    assert uta["teacher_run"] == str(tmp_path / "smoke/clip@wide/seed0")
    # both exported models evaluate: the teacher in its own architecture, UTA's in the scale's
    for run in ("clip@wide", "uta@wide_teacher"):
        evals = read_json(tmp_path / f"smoke/{run}/seed0/metrics.json")["evals"]
        assert "zeroshot_classification" in evals and "error" not in evals["zeroshot_classification"], run
