"""Teachers declared in the method contract (benchmark/method.py): a frozen teacher never changes and an EMA
teacher follows its student with the declared momentum schedule; both stay in eval mode without gradients."""
import torch

from benchmark.discovery import MethodInfo, build_method
from benchmark.method import Method


class TwoTeachers(Method):
    paper = "test fixture"
    summary = "CLIP with a frozen and an EMA copy of its image tower"

    def __init__(self, clip, cfg, ctx):
        super().__init__(clip, cfg, ctx)
        self.fixed = self.frozen_teacher(self.visual)
        self.mean = self.ema_teacher(self.visual, lambda progress: 0.5 + 0.25 * progress)
        text = type(self.clip)(**ctx.scale.model)
        text.visual = None                                   # a part of the student: the text tower
        text.load_state_dict({k: v for k, v in self.clip.state_dict().items() if not k.startswith("visual.")})
        self.mean_text = self.ema_teacher(self.clip, lambda progress: 0.9, teacher=text)

    def training_step(self, batch, progress):
        image = self.clip.encode_image(batch["images"]) + 0 * self.mean(batch["images"]).sum()
        return {"loss": self.contrastive(image, self.clip.encode_text(batch["texts"]))}


def test_frozen_and_ema_teachers(smoke_scale):
    m = build_method(MethodInfo("twoteachers", None, TwoTeachers), smoke_scale, cfg={})
    m.train()
    for t in (m.fixed, m.mean, m.mean_text):
        assert not t.training and all(not p.requires_grad for p in t.parameters())
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randn(4, 3, smoke_scale.image_size, smoke_scale.image_size, generator=g),
             "texts": torch.randint(1, 49000, (4, smoke_scale.context_length), generator=g)}
    fixed0 = {k: v.clone() for k, v in m.fixed.state_dict().items()}
    mean0 = {k: v.clone() for k, v in m.mean.state_dict().items()}
    text0 = {k: v.clone() for k, v in m.mean_text.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    m(batch, 0.0)["loss"].backward()
    assert all(p.grad is None for t in (m.fixed, m.mean, m.mean_text) for p in t.parameters())
    opt.step()
    m.after_optimizer_step(0.4)                               # momentum 0.5 + 0.25 * 0.4 = 0.6
    student = m.visual.state_dict()
    for k, v in m.mean.state_dict().items():
        assert torch.allclose(v, 0.6 * mean0[k] + 0.4 * student[k], atol=1e-6), k
    assert any(not torch.equal(mean0[k], v) for k, v in m.mean.state_dict().items()), "the EMA teacher did not move"
    assert all(torch.equal(fixed0[k], v) for k, v in m.fixed.state_dict().items()), "the frozen teacher moved"
    clip = m.clip.state_dict()
    for k, v in m.mean_text.state_dict().items():
        assert torch.allclose(v, 0.9 * text0[k] + 0.1 * clip[k], atol=1e-6), k
    m.train()
    assert not m.fixed.training and not m.mean.training and m.visual.training
