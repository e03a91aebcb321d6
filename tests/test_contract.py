"""The method contract, checked on every discovered method (a new folder is tested without any edit here)."""
import math
from pathlib import Path

import open_clip
import pytest
import torch

from benchmark.data.train_data import load_training_data
from benchmark.discovery import MethodInfo, build_method, discover, resolve
from benchmark.sweep import with_requirements
from benchmark.runs import RunSpec, execute

METHODS = sorted(discover())
# UTA's tests train its CLIP teacher first (about 7 s a seed): they run in the slow lane
METHOD_PARAMS = [pytest.param(m, marks=pytest.mark.slow) if m == "uta" else m for m in METHODS]
VARIANTS = sorted(f"{n}@{v}" for n, i in discover().items() for v in i.variants)


@pytest.fixture(scope="module")
def teacher_results(tmp_path_factory):
    """required(name, seed) -> a results folder holding finished smoke runs of what method ``name`` ``requires``
    at ``seed`` (UTA's CLIP teacher), trained on first need: ``-k clip`` trains none."""
    root = tmp_path_factory.mktemp("contract-results")

    def required(name: str, seed: int) -> Path:
        """``name``: a method or a variant (``uta@wide_teacher`` requires ``clip@wide``)."""
        info = resolve([name])[0]
        assert info.ok, f"methods/{info.base} is broken: {info.error}"
        for req in info.cls.requires(info.config("smoke")):
            for spec in with_requirements([RunSpec(method=req, seed=seed, scale="smoke", results=str(root))]):
                execute(spec, progress_bar=False)          # a finished run is not trained again
        return root
    return required


def build(name: str, seed: int, scale, results: Path):
    return build_method(name, scale, seed=seed, config_scale="smoke", results_root=results)


def one_step(method, data, scale, seed=0):
    method.train()
    losses = method(data.batch(0, scale.batch_size, seed, "cpu"), 0.0)
    losses["loss"].backward()
    return losses


@pytest.fixture(scope="module")
def data(smoke_scale):
    return load_training_data(smoke_scale)


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_folder_is_healthy(name):
    info = discover()[name]
    assert info.ok, info.error
    assert info.cls.paper and info.cls.summary, "set the class attributes `paper` and `summary`"
    for f in ("method.py", "config.yaml", "paper.yaml", "README.md"):
        assert (info.folder / f).exists(), f"methods/{name}/{f} is missing"


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_one_step_gives_finite_losses_and_gradients(name, smoke_scale, data, teacher_results):
    method = build(name, 0, smoke_scale, teacher_results(name, 0))
    losses = one_step(method, data, smoke_scale)
    assert "loss" in losses
    for k, v in losses.items():
        assert torch.isfinite(v).all(), f"{k} is not finite: {v}"
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert grads and any(g is not None for g in grads), "no parameter received a gradient"
    for (n, p) in method.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {n}"
    method.after_optimizer_step(0.0)
    assert method.clip.logit_scale.item() <= math.log(100) + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_builds_and_steps(name, smoke_scale, data, teacher_results):
    """A variant's overrides are valid values of its method: it builds and takes a finite step."""
    method = build(name, 0, smoke_scale, teacher_results(name, 0))
    torch.manual_seed(0)
    losses = one_step(method, data, smoke_scale)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_export_loads_into_open_clip_and_embeddings_are_normalised(name, smoke_scale, data, teacher_results):
    method = build(name, 0, smoke_scale, teacher_results(name, 0))
    state = method.export()
    clip = open_clip.CLIP(**smoke_scale.model)
    clip.load_state_dict(state, strict=True)
    method.eval()
    batch = data.batch(0, 8, 0, "cpu")
    img, txt = method.encode_image(batch["images"]), method.encode_text(batch["texts"])
    dim = smoke_scale.model["embed_dim"]
    assert img.shape == (8, dim) and txt.shape == (8, dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(8), atol=1e-5)
    # the exported model is what evaluation uses: it must embed exactly as the method does
    clip.eval()
    assert torch.allclose(torch.nn.functional.normalize(clip.encode_image(batch["images"]), dim=-1), img, atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(clip.encode_text(batch["texts"]), dim=-1), txt, atol=1e-5)


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_same_seed_same_losses(name, smoke_scale, data, teacher_results):
    a = one_step(build(name, 3, smoke_scale, teacher_results(name, 3)), data, smoke_scale, seed=3)
    b = one_step(build(name, 3, smoke_scale, teacher_results(name, 3)), data, smoke_scale, seed=3)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two builds with the same seed"



def parameters_without_gradient(method, data, scale) -> list[str]:
    """Trainable (``requires_grad``) parameters that no phase's training step gives a gradient."""
    reached: set[str] = set()
    for _, progress in method.phases():
        method.zero_grad(set_to_none=True)
        method.train()
        method(data.batch(0, scale.batch_size, 0, "cpu"), progress)["loss"].backward()
        reached |= {n for n, p in method.named_parameters() if p.grad is not None}
    return [n for n, p in method.named_parameters() if p.requires_grad and n not in reached]


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_every_trainable_parameter_gets_a_gradient(name, smoke_scale, data, teacher_results):
    """A parameter the optimizer updates (``requires_grad``) must receive a gradient in a training step of at
    least one of the method's phases; a parameter meant to stay fixed is declared so with
    ``requires_grad_(False)`` (a teacher: ``Method.frozen_teacher`` / ``ema_teacher``). A learnable parameter the
    loss never reaches (e.g. used through ``.item()`` or ``.detach()``) would silently train nothing."""
    missing = parameters_without_gradient(build(name, 0, smoke_scale, teacher_results(name, 0)), data, smoke_scale)
    assert not missing, (f"methods/{name}: trainable parameter(s) {missing} get no gradient in a training step; "
                         "use them in the loss, or declare them frozen with requires_grad_(False)")


def test_a_learnable_bias_the_loss_never_reaches_is_caught(smoke_scale, data):
    """SigLIP-style bias read through ``.item()``: the loss runs, but the bias never trains."""
    from benchmark.method import Method

    class DetachedBias(Method):
        def __init__(self, clip, cfg, ctx):
            super().__init__(clip, cfg, ctx)
            self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))

        def training_step(self, batch, progress):
            loss = self.contrastive(self.clip.encode_image(batch["images"]), self.clip.encode_text(batch["texts"]))
            return {"loss": loss + self.logit_bias.item()}

    method = build_method(MethodInfo("detachedbias", None, DetachedBias), smoke_scale, cfg={})
    assert parameters_without_gradient(method, data, smoke_scale) == ["logit_bias"]
    method.logit_bias.requires_grad_(False)                      # declared frozen: accepted
    assert parameters_without_gradient(method, data, smoke_scale) == []


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_teachers_stay_in_eval_mode_without_gradients(name, smoke_scale, data, teacher_results):
    method = build(name, 0, smoke_scale, teacher_results(name, 0))
    one_step(method, data, smoke_scale)                          # one_step calls train()
    for teacher in method.teachers():
        assert not any(m.training for m in teacher.modules()), f"a teacher of {name} is in train mode"
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()), \
            f"a teacher of {name} takes gradients"
