"""The suite: every family runs on the embedded sets, each image and text is encoded once, and zero-shot
classification / retrieval equal clip_benchmark's functions called directly (the model, images and a standard
DataLoader)."""
from __future__ import annotations

import pytest
import torch
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_classification as cb_zsc
from clip_benchmark.metrics import zeroshot_retrieval as cb_zsr
from torch.utils.data import DataLoader

from benchmark.data.preprocess import tokenizer
from benchmark.evaluation import suite
from benchmark.evaluation.features import Encoder
from benchmark.perf.evaluation import ImageItems      # the images as a standard dataset, for clip_benchmark
from benchmark.model import build_clip


class Counting(torch.nn.Module):
    """The model, counting the images and texts it encodes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images, self.texts = model, 0, 0

    def encode_image(self, x):
        self.images += len(x)
        return self.model.encode_image(x)

    def encode_text(self, t):
        self.texts += len(t)
        return self.model.encode_text(t)


@pytest.fixture(scope="module")
def model(smoke_scale):
    return build_clip(smoke_scale, 0).eval()


def _strings(task, s) -> list[str]:
    if task == "zeroshot_classification":
        return [t.format(c=c) for c in s.meta["classnames"] for t in s.meta["templates"]]
    if task == "zeroshot_retrieval":
        return [c for it in s.items for c in it["captions"]]
    if task == "compositionality":
        return [t for it in s.items for t in (it["positive"], it["negative"])]
    if task == "vqa":
        return [q["question"] for it in s.items for q in it["questions"]]
    return []


def test_every_family_runs_and_each_image_and_text_is_encoded_once(model, smoke_scale):
    counting = Counting(model)
    enc = Encoder(counting, smoke_scale.context_length, "cpu")
    out = suite.evaluate(counting, smoke_scale, smoke_scale.eval_suite, "cpu", encoder=enc)
    assert set(out) == {"zeroshot_classification", "zeroshot_retrieval", "linear_probe", "compositionality", "vqa"}
    for task, res in out.items():
        assert isinstance(res, list), (task, res)
        r = res[0]
        assert r["dataset"] == f"embedded/{task}" and r["main_metric"] in r["metrics"] and r["chance"] > 0
    sets = {t: suite.datasets_for(t, smoke_scale)[0] for t in out}
    n_images = sum(len(s.images) for s in sets.values())
    n_texts = len({x for t, s in sets.items() for x in _strings(t, s)})
    assert enc.encoded_images == counting.images == n_images
    assert enc.encoded_texts == counting.texts == n_texts
    cheap = ["zeroshot_classification", "zeroshot_retrieval", "compositionality"]     # no classifier to retrain
    again = suite.evaluate(counting, smoke_scale, cheap, "cpu", encoder=enc)
    assert counting.images == n_images and counting.texts == n_texts          # nothing encoded twice
    assert again["zeroshot_classification"][0]["metrics"] == out["zeroshot_classification"][0]["metrics"]


def test_zeroshot_classification_equals_clip_benchmark(model, smoke_scale):
    task = "zeroshot_classification"
    s = suite.datasets_for(task, smoke_scale)[0]
    ours = suite.task_module(task).evaluate_set(Encoder(model, smoke_scale.context_length, "cpu"), s)["metrics"]
    classnames, templates = s.meta["classnames"], s.meta["templates"]
    data = DataLoader(ImageItems(s.images, [it["label"] for it in s.items], classnames), batch_size=64)
    theirs = cb_zsc.evaluate(model, data, tokenizer(smoke_scale.context_length), classnames, templates,
                             device="cpu", amp=False)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert theirs["acc5"] > 0                             # not a vacuous comparison


def test_zeroshot_retrieval_equals_clip_benchmark(model, smoke_scale):
    task = "zeroshot_retrieval"
    s = suite.datasets_for(task, smoke_scale)[0]
    ours = suite.task_module(task).evaluate_set(Encoder(model, smoke_scale.context_length, "cpu"), s)["metrics"]
    data = DataLoader(ImageItems(s.images, [it["captions"] for it in s.items]), batch_size=64,
                      collate_fn=image_captions_collate_fn)
    theirs = cb_zsr.evaluate(model, data, tokenizer(smoke_scale.context_length), device="cpu", amp=False,
                             recall_k_list=[1, 5, 10])
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert theirs["text_retrieval_recall@10"] > 0


def test_every_family_saves_per_item_scores_whose_mean_is_the_main_metric(model, smoke_scale):
    """The report's bootstrap over evaluation items resamples these: they must be the main metric's items."""
    out = suite.evaluate(model, smoke_scale, smoke_scale.eval_suite, "cpu")
    for task, results in out.items():
        assert isinstance(results, list), (task, results)
        for r in results:
            items = r["per_item"]
            assert len(items) > 10 and set(items) <= {0.0, 1.0} | set(items if task == "vqa" else []), task
            assert sum(items) / len(items) == pytest.approx(r["metrics"][r["main_metric"]], abs=1e-6), task
    s = suite.datasets_for("zeroshot_retrieval", smoke_scale)[0]
    assert len(out["zeroshot_retrieval"][0]["per_item"]) == sum(len(it["captions"]) for it in s.items)  # per query
