"""Streaming training data (paper scales): shards read as a seeded, resampled stream in workers."""
import dataclasses

import torch

from benchmark.data import embedded
from benchmark.data.train_data import load_training_data
from benchmark.scales import Data, get_scale


def test_streamed_batches_have_the_scale_shape_and_a_seed_fixes_them(tmp_path):
    folder = embedded.ensure(32, 300, 20, root=tmp_path)
    smoke = get_scale("smoke")
    scale = dataclasses.replace(smoke, data=Data(kind="webdataset", path=str(folder / "train-00000.tar"),
                                                 augment=False, stream=True, workers=0))
    data = load_training_data(scale)
    a = data.batch(0, 16, 0, "cpu")
    assert a["images"].shape == (16, 3, 32, 32) and a["images"].dtype == torch.float32
    assert a["texts"].shape == (16, smoke.context_length) and a["texts"][:, 0].eq(49406).all()
    b = data.batch(1, 16, 0, "cpu")
    assert not torch.equal(a["texts"], b["texts"])
    again = load_training_data(scale).batch(0, 16, 0, "cpu")
    assert torch.equal(a["texts"], again["texts"]) and torch.allclose(a["images"], again["images"])
    half = load_training_data(scale).batch(0, 16, 0, "cpu", rank=1, world_size=2)
    assert half["images"].shape[0] == 8
