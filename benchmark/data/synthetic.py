"""Synthetic image-caption pairs of a scale's shapes: random uint8 images and random captions (SOT ... EOT as the
tokenizer writes them), served by the trainer's own batcher. For model variants whose image size has no generated
data, GPU measurements, and compute plans made where the training data is not present."""
from __future__ import annotations

import numpy as np
import torch

from benchmark.data.train_data import InMemoryPairs
from benchmark.scales import Scale


def synthetic_pairs(scale: Scale, n: int, seed: int = 0) -> InMemoryPairs:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, scale.image_size, scale.image_size, 3), dtype=np.uint8)
    tokens = torch.zeros(n, scale.context_length, dtype=torch.long)
    lengths = rng.integers(4, scale.context_length, n)
    for i, length in enumerate(lengths):
        tokens[i, 0], tokens[i, length - 1] = 49406, 49407           # SOT ... EOT, as the tokenizer writes
        tokens[i, 1:length - 1] = torch.from_numpy(rng.integers(1, 49000, length - 2))
    return InMemoryPairs(images, tokens, fingerprint=f"synthetic-{seed}-{n}")
