"""Evaluation sets: the embedded ones (generated with the training data) and, at paper scales, real
datasets read from disk. Loaded once per process."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from benchmark.data import embedded
from benchmark.data.readers import read_eval_set


@dataclass
class EvalSet:
    name: str                 # dataset name as it appears in results ("embedded/zeroshot_classification")
    images: np.ndarray        # uint8 [N, H, W, 3]
    items: list[dict]         # per-image metadata (labels, captions, questions, ...)
    meta: dict = field(default_factory=dict)


@lru_cache(maxsize=16)
def embedded_set(folder: str, task: str, image_size: int) -> EvalSet:
    folder = Path(folder)
    images, items = read_eval_set(str(folder / f"{task}.tar"), image_size)
    meta = json.loads((folder / f"{task}.meta.json").read_text())
    return EvalSet(f"embedded/{task}", images, items, meta)


def embedded_folder(scale) -> Path:
    d = scale.data
    return embedded.ensure(scale.image_size, d.train_size or 512, d.eval_size or 96)
