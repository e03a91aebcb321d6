"""Every method constructs and steps at the paper scales' shapes (ViT-B/16, 224 px, 196 patches, 77-token text, the
decoders and teachers as configured), on CPU: one real step of ``benchmark.train.train`` on 2 images (forward,
every loss, backward, AdamW, the after-step hooks, checkpoint), then export and a strict reload into open_clip.

The three paper scales share the model; a method's config may differ between them (``scales:`` in its
config.yaml). Each distinct (method, config) is stepped once, for every paper scale it stands for."""
import json
import math

import open_clip
import pytest
import torch

from benchmark import discovery
from benchmark.data.synthetic import synthetic_pairs
from benchmark.method import Context
from benchmark.results import run_dir
from benchmark.scales import SCALES
from benchmark.train import TrainPlan, train

PAPER = [s for s in SCALES.values() if not s.runs_here]
METHODS = ("clip", "flip", "cluster_masking", "maskclip_dong", "maskclip_weers", "uta")   # clip first: UTA's teacher


def distinct_configs() -> list[tuple[str, dict, list]]:
    """(method, config, paper scales it covers): one entry per distinct config and model."""
    out: list[tuple[str, dict, list]] = []
    infos = discovery.discover()
    for name in METHODS:
        for scale in PAPER:
            cfg = infos[name].config(scale.name)
            for m, c, scales in out:
                if m == name and c == cfg and scales[0].model == scale.model:
                    scales.append(scale)
                    break
            else:
                out.append((name, cfg, [scale]))
    return out


def test_the_paper_scales_are_vit_b16():
    for scale in PAPER:
        v = scale.model["vision_cfg"]
        assert (scale.image_size, v["patch_size"], v["width"], v["layers"], scale.patch_grid ** 2) == \
            (224, 16, 768, 12, 196)


@pytest.mark.slow
def test_every_method_steps_at_paper_shapes(tmp_path):
    results = tmp_path / "results"
    stepped = {}
    for name, cfg, scales in distinct_configs():
        scale = scales[0]
        data = synthetic_pairs(scale, 4)
        ctx = Context(scale=scale, seed=0, results_root=results)
        torch.manual_seed(0)
        method = discovery.discover()[name].cls(open_clip.CLIP(**scale.model), cfg, ctx)
        before = {k: v.detach().clone() for k, v in method.state_dict().items()}
        folder = run_dir(results, scale.name, name, 0)
        folder.mkdir(parents=True, exist_ok=True)
        plan = TrainPlan(steps=1, batch_size=2, seed=0, optim=scale.optim, checkpoint_every=1, log_every=1)
        state = train(method, method, data, plan, folder, torch.device("cpu"), progress_bar=False)
        assert state.step == 1
        row = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0, (name, row)
        changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
        assert any(k.startswith("clip.visual.") for k in changed), f"{name}: the optimizer step moved no weight"
        assert (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
        exported = method.export()
        torch.save(exported, folder / "model.pt")
        reloaded = open_clip.CLIP(**scale.model)
        reloaded.load_state_dict(torch.load(folder / "model.pt", weights_only=True), strict=True)
        reloaded.eval()
        method.eval()
        batch = data.batch(1, 2, 0, "cpu")
        with torch.no_grad():
            ref = method.encode_image(batch["images"])
            got = torch.nn.functional.normalize(reloaded.encode_image(batch["images"]), dim=-1)
        assert torch.allclose(ref, got, atol=1e-5), f"{name}: the exported model is not the trained one"
        if name == "clip":      # a finished teacher run for UTA (same scale, seed and results folder)
            (folder / "metrics.json").write_text(json.dumps({"compute": {"train_flops": 0, "samples_seen": 2}}))
        for p in (folder / "checkpoints").iterdir():
            p.unlink()
        stepped.setdefault(name, []).extend(s.name for s in scales)
        del method, reloaded, exported, before
    assert set(stepped) == set(METHODS)
    covered = {(m, s) for m, scales in stepped.items() for s in scales}
    for name, _, scales in distinct_configs():
        assert all((name, s.name) in covered for s in scales)
