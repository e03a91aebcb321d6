"""Zero-shot classification: class names x prompt templates, clip_benchmark's classifier and metrics."""
from __future__ import annotations

import torch
from clip_benchmark.metrics import zeroshot_classification as cb

from benchmark.evaluation.features import Encoder, FeatureDataset, loader
from benchmark.evaluation.sets import EvalSet

TASK = "zeroshot_classification"
MAIN_METRIC = "acc1"


def evaluate_set(encoder: Encoder, s: EvalSet) -> dict:
    classnames, templates = s.meta["classnames"], s.meta["templates"]
    encoder.texts([t.format(c=c) for c in classnames for t in templates])     # one batched text pass
    feats = encoder.images(s.name, s.images)
    targets = torch.tensor([it["label"] for it in s.items])
    metrics = cb.evaluate(encoder.feature_model(), loader(FeatureDataset(feats, targets, classnames)),
                          encoder.tokenizer, classnames, templates, device="cpu", amp=False)
    return {"dataset": s.name, "metrics": metrics, "main_metric": MAIN_METRIC,
            "chance": s.meta.get("chance"), "notes": {k: v for k, v in s.meta.items() if k == "colour_only"}}
