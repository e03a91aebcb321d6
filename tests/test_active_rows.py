"""Training only the token rows the captions use (benchmark/active_rows.py) is the dense training, bit for bit."""
import numpy as np
import open_clip
import pytest
import torch

from benchmark import active_rows
from benchmark.active_rows import ActiveRowsEmbedding
from benchmark.data.train_data import InMemoryPairs
from benchmark.discovery import build_method
from benchmark.train import lr_at, make_optimizer, train_step
from benchmark.scales import get_scale


def _pairs(scale, n=64, vocab=(100, 400), seed=0) -> InMemoryPairs:
    """Captions over a few hundred token ids, as the embedded captions use a few dozen."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, scale.image_size, scale.image_size, 3), dtype=np.uint8)
    tokens = torch.zeros(n, scale.context_length, dtype=torch.long)
    for i, length in enumerate(rng.integers(4, scale.context_length, n)):
        tokens[i, 0], tokens[i, length - 1] = 49406, 49407
        tokens[i, 1:length - 1] = torch.from_numpy(rng.integers(*vocab, length - 2))
    return InMemoryPairs(images, tokens, fingerprint="test")


def _train(name, scale, data, restrict: bool, steps=12):
    torch.set_num_threads(1)
    method = build_method(name, scale, seed=0)
    replaced = active_rows.for_training(method, data, "cpu") if restrict else 0
    opt = make_optimizer(method, scale.optim)
    for step in range(steps):
        lr = lr_at(step, steps, 2, 5e-3)                     # a large lr and weight decay: a wrong decay shows
        train_step(method, method, opt, data.batch(step, 32, 0, "cpu"), step / steps, lr, None, "cpu", step)
    return method, replaced


@pytest.mark.parametrize("name", ["clip", "flip"])
def test_training_only_the_used_rows_gives_the_dense_weights_bit_for_bit(name):
    scale = get_scale("smoke")
    data = _pairs(scale)
    dense, _ = _train(name, scale, data, restrict=False)
    sparse, replaced = _train(name, scale, data, restrict=True)
    assert replaced == 1 and isinstance(sparse.clip.token_embedding, ActiveRowsEmbedding)
    a, b = dense.state_dict(), sparse.state_dict()
    assert list(a) == list(b)                                     # the same keys: checkpoints and exports unchanged
    for key in a:
        assert torch.equal(a[key], b[key]), key
    emb = a["clip.token_embedding.weight"]
    init = build_method(name, scale, seed=0).clip.token_embedding.weight.detach()
    unused = torch.ones(len(emb), dtype=torch.bool)
    unused[data.tokens.unique()] = False
    assert not torch.equal(emb[unused], init[unused])           # the unused rows did decay (the test can fail)
    assert torch.allclose(emb[unused], init[unused], rtol=0.01)
    assert not torch.equal(emb[~unused], init[~unused])         # and the used ones trained


def test_the_state_dict_round_trips_through_a_dense_open_clip_model():
    scale = get_scale("smoke")
    data = _pairs(scale)
    sparse, _ = _train("clip", scale, data, restrict=True, steps=3)
    dense = open_clip.CLIP(**scale.model)
    dense.load_state_dict(sparse.clip.state_dict())               # an export loads into the plain model
    again = build_method("clip", scale, seed=1)
    active_rows.for_training(again, data, "cpu")
    again.clip.load_state_dict(dense.state_dict())                # and a checkpoint back (resume)
    emb = again.clip.token_embedding
    assert torch.equal(emb.full_weight(), dense.token_embedding.weight.detach())
    assert torch.equal(emb.active.detach(), dense.token_embedding.weight.detach()[data.tokens.unique()])
    with pytest.raises(RuntimeError, match="size mismatch"):
        again.clip.load_state_dict({**dense.state_dict(), "token_embedding.weight": torch.zeros(3, 3)})


def test_prompts_with_unseen_tokens_are_looked_up_in_the_full_matrix_without_gradient_only():
    scale = get_scale("smoke")
    data = _pairs(scale)
    method = build_method("clip", scale, seed=0)
    full = method.clip.token_embedding.weight.detach().clone()
    active_rows.for_training(method, data, "cpu")
    emb = method.clip.token_embedding
    ids = torch.tensor([[49406, 5000, 49407]])                    # 5000: in no training caption
    with torch.no_grad():
        assert torch.equal(emb(ids), full[ids])
    with pytest.raises(ValueError, match=r"\[5000\] are not in the training captions"):
        emb(ids)
    with pytest.raises(RuntimeError, match="dense_token_embedding"):
        emb.weight


def test_it_applies_on_cpu_to_in_memory_data_and_not_to_a_tied_head_or_a_gpu():
    scale = get_scale("smoke")
    data = _pairs(scale)
    assert active_rows.for_training(build_method("clip", scale), data, "cpu") == 1
    assert active_rows.for_training(build_method("clip", scale), data, "cuda") == 0
    assert active_rows.for_training(build_method("clip", scale), object(), "cpu") == 0    # streamed: no tokens
    dong = build_method("maskclip_dong", scale)
    assert dong.dense_token_embedding and active_rows.for_training(dong, data, "cpu") == 0
