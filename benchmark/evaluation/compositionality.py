"""Compositionality, SugarCrepe-style: is the true caption scored above its hard negative?

Per subset (replace-obj/att/rel, swap-obj/att, add-obj/att), clip_benchmark's image-caption selection
(``clip_benchmark.metrics.image_caption_selection.evaluate``, the function its ``sugar_crepe/*`` datasets use)
on the cached features. With one image per item its ``image_acc`` is trivially 1, so we report ``text_acc``
per subset, their micro average (every item counts once; the main metric) and macro average. Chance is 50 %.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import image_caption_selection as cb

from benchmark.evaluation.features import Encoder, FeatureDataset, loader
from benchmark.evaluation.sets import EvalSet

TASK = "compositionality"
MAIN_METRIC = "text_acc"
SUBSETS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")


def evaluate_set(encoder: Encoder, s: EvalSet) -> dict:
    items = s.items
    encoder.texts([t for it in items for t in (it["positive"], it["negative"])])   # one batched text pass
    feats = encoder.images(s.name, s.images)
    present = {it["subset"] for it in items}
    subsets = [x for x in s.meta.get("subsets", SUBSETS) if x in present]
    metrics, counts, per_item = {}, {}, []
    for subset in subsets:
        idx = [i for i, it in enumerate(items) if it["subset"] == subset]
        pairs = [[items[i]["positive"], items[i]["negative"]] for i in idx]     # caption 0 is the true one
        r = cb.evaluate(encoder.feature_model(), loader(FeatureDataset(feats[idx], pairs), image_captions_collate_fn),
                        encoder.tokenizer, device="cpu", amp=False)
        metrics[f"text_acc_{subset}"] = r["text_acc"]
        counts[subset] = (round(r["text_acc"] * len(idx)), len(idx))
        # per item: is the true caption the argmax, as clip_benchmark picks it (the first on a tie)
        img = F.normalize(feats[idx].flatten(1), dim=-1)
        pos, neg = (F.normalize(encoder.texts([items[i][k] for i in idx]), dim=-1) for k in ("positive", "negative"))
        per_item += (torch.stack([(img * pos).sum(1), (img * neg).sum(1)], 1).argmax(1) == 0).float().tolist()
    metrics["text_acc"] = sum(c for c, _ in counts.values()) / sum(n for _, n in counts.values())
    metrics["text_acc_macro"] = sum(metrics[f"text_acc_{x}"] for x in subsets) / len(subsets)
    return {"dataset": s.name, "metrics": metrics, "main_metric": MAIN_METRIC, "per_item": per_item,
            "chance": s.meta.get("chance", 0.5),
            "notes": {"items_per_subset": {k: n for k, (_, n) in counts.items()}}}


DATASETS = ("sugar_crepe",)


def real_sets(root, scale, names=DATASETS) -> list[EvalSet]:
    """SugarCrepe's seven subset files with the COCO val2017 images they name."""
    from benchmark.evaluation import real_datasets as R

    def read():
        images, items = R.read_sugarcrepe(root, scale.image_size, SUBSETS)
        return EvalSet("sugar_crepe", images, items, {"subsets": list(SUBSETS), "chance": 0.5})
    return R.read_all({"sugar_crepe": read} if "sugar_crepe" in names else {})
