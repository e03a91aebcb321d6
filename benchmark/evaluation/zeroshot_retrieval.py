"""Zero-shot retrieval: image->text and text->image R@1/5/10 with clip_benchmark's function."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_retrieval as cb

from benchmark.evaluation.features import Encoder, FeatureDataset, loader
from benchmark.evaluation.sets import EvalSet

TASK = "zeroshot_retrieval"
MAIN_METRIC = "image_retrieval_recall@1"
RECALL_K = [1, 5, 10]


def evaluate_set(encoder: Encoder, s: EvalSet) -> dict:
    captions = [it["captions"] for it in s.items]
    encoder.texts([c for cs in captions for c in cs])
    feats = encoder.images(s.name, s.images)
    metrics = cb.evaluate(encoder.feature_model(), loader(FeatureDataset(feats, captions), image_captions_collate_fn),
                          encoder.tokenizer, device="cpu", amp=False, recall_k_list=RECALL_K)
    return {"dataset": s.name, "metrics": metrics, "main_metric": MAIN_METRIC,
            "per_item": _per_caption_hit(encoder, feats, captions), "chance": 1 / len(s.items)}


def _per_caption_hit(encoder: Encoder, feats, captions) -> list[float]:
    """Per caption (text -> image retrieval, the main metric): is its image the top-1, as clip_benchmark's
    ``recall_at_k`` ranks it (``topk`` over text x image scores); their mean is image_retrieval_recall@1."""
    texts = F.normalize(encoder.texts([c for cs in captions for c in cs]), dim=-1)
    image_of = torch.tensor([i for i, cs in enumerate(captions) for _ in cs])
    scores = texts @ F.normalize(feats.flatten(1), dim=-1).t()
    return (scores.topk(1, dim=1).indices[:, 0] == image_of).float().tolist()


DATASETS = ("mscoco_captions", "flickr30k")         # paper scales: the Karpathy test splits (5k and 1k images)


def real_sets(root, scale, names=DATASETS) -> list[EvalSet]:
    """MSCOCO captions (Karpathy 5k test) and Flickr30k (Karpathy 1k test) from ``root``."""
    from benchmark.evaluation import real_datasets as R

    def read(name):
        images, captions = (R.read_coco_captions(root, scale.image_size) if name == "mscoco_captions"
                            else R.read_flickr(root, scale.image_size))
        return EvalSet(name, images, [{"captions": c} for c in captions], {"chance": 1 / len(captions)})
    return R.read_all({name: (lambda n=name: read(n)) for name in names})
