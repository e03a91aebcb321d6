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
    data = loader(FeatureDataset(feats, targets, classnames))
    metrics = cb.evaluate(encoder.feature_model(), data, encoder.tokenizer, classnames, templates, device="cpu",
                          amp=False)
    # per image: is the top-1 class right (clip_benchmark's classifier and logits; their mean is acc1)
    classifier = cb.zero_shot_classifier(encoder.feature_model(), encoder.tokenizer, classnames, templates, "cpu",
                                         amp=False)
    logits, target = cb.run_classification(encoder.feature_model(), classifier, data, "cpu", amp=False)
    per_item = (logits.topk(1, dim=1).indices[:, 0] == target).float().tolist()
    return {"dataset": s.name, "metrics": metrics, "main_metric": MAIN_METRIC, "per_item": per_item,
            "chance": s.meta.get("chance"),
            "notes": {**{k: v for k, v in s.meta.items() if k in ("colour_only", "classes", "missing_datasets",
                                                                    "template_set")},
                      "templates": len(templates)}}


DATASETS = ("imagenet1k", "cifar10", "cifar100")    # paper scales: ImageNet-1k val, CIFAR test splits


def real_sets(root, scale, names=DATASETS) -> list[EvalSet]:
    """ImageNet-1k (val), CIFAR-10 and CIFAR-100 (test) from ``root``, with clip_benchmark's class names and the
    scale's template set (``openai``: clip_benchmark's English templates, ImageNet OpenAI's 80; ``flip7``; ``slip``)."""
    from benchmark.evaluation import real_datasets as R

    def read(name):
        images, labels, classes = R.read_classification(root, name, "test", scale.image_size)
        meta = {}
        if name == "imagenet1k" and len(set(labels)) < len(classes):
            # a partial copy: the classifier is over the classes present (fixed WordNet-id order, re-indexed)
            kept = sorted(set(labels))
            at = {c: i for i, c in enumerate(kept)}
            labels, classes = [at[y] for y in labels], [classes[c] for c in kept]
            meta["classes"] = f"{len(kept)} of 1000 (partial copy)"
        return EvalSet(name, images, [{"label": y} for y in labels],
                       {"classnames": classes, "templates": R.templates(name, scale.zeroshot_templates, root),
                        "template_set": scale.zeroshot_templates, "chance": 1 / len(classes), **meta})
    return R.read_all({name: (lambda n=name: read(n)) for name in names})
