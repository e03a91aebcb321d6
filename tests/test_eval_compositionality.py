"""Compositionality: per-subset text accuracy equals clip_benchmark's image-caption selection run on the model
and images directly (embedded set, and SugarCrepe's own files through our reader)."""
from __future__ import annotations

import dataclasses

import pytest
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import image_caption_selection as cb
from torch.utils.data import DataLoader

from benchmark.data.preprocess import tokenizer
from benchmark.evaluation import compositionality as comp
from benchmark.evaluation import suite
from benchmark.evaluation.features import Encoder
from benchmark.evaluation.sets import EvalSet
from benchmark.model import build_clip
from benchmark.perf.evaluation import ImageItems      # the images as a standard dataset, for clip_benchmark
from test_eval_readers import TRANSFORM, write_dataset_root


@pytest.fixture(scope="module")
def model(smoke_scale):
    return build_clip(smoke_scale, 0).eval()


@pytest.fixture(scope="module")
def embedded(smoke_scale):
    return suite.datasets_for("compositionality", smoke_scale)[0]


def test_per_subset_accuracy_equals_clip_benchmark(model, smoke_scale, embedded):
    r = comp.evaluate_set(Encoder(model, smoke_scale.context_length, "cpu"), embedded)
    assert r["main_metric"] == "text_acc" and r["chance"] == 0.5
    tok = tokenizer(smoke_scale.context_length)
    correct = total = 0
    for subset in comp.SUBSETS:
        idx = [i for i, it in enumerate(embedded.items) if it["subset"] == subset]
        data = DataLoader(ImageItems(embedded.images[idx], [[embedded.items[i]["positive"], embedded.items[i]["negative"]]
                                                         for i in idx]), batch_size=64,
                          collate_fn=image_captions_collate_fn)
        theirs = cb.evaluate(model, data, tok, device="cpu", amp=False)
        assert r["metrics"][f"text_acc_{subset}"] == pytest.approx(theirs["text_acc"], abs=1e-7), subset
        correct += round(theirs["text_acc"] * len(idx))
        total += len(idx)
    assert r["metrics"]["text_acc"] == pytest.approx(correct / total)             # micro average
    assert r["metrics"]["text_acc_macro"] == pytest.approx(
        sum(r["metrics"][f"text_acc_{x}"] for x in comp.SUBSETS) / len(comp.SUBSETS))


def test_swapping_true_and_negative_caption_flips_every_subset(model, smoke_scale, embedded):
    enc = Encoder(model, smoke_scale.context_length, "cpu")
    r = comp.evaluate_set(enc, embedded)["metrics"]
    swapped = dataclasses.replace(embedded, items=[{**it, "positive": it["negative"], "negative": it["positive"]}
                                                   for it in embedded.items])
    f = comp.evaluate_set(enc, swapped)["metrics"]
    for key in r:
        assert f[key] == pytest.approx(1 - r[key], abs=1e-6), key


def test_sugarcrepe_files_equal_clip_benchmark_dataset(model, smoke_scale, tmp_path):
    from clip_benchmark.datasets.sugar_crepe import SugarCrepe
    root = write_dataset_root(tmp_path)
    scale = dataclasses.replace(smoke_scale, data=dataclasses.replace(smoke_scale.data, kind="webdataset",
                                                                      dataset_root=str(root)))
    [s] = comp.real_sets(str(root), scale)
    assert isinstance(s, EvalSet) and s.name == "sugar_crepe"
    r = comp.evaluate_set(Encoder(model, scale.context_length, "cpu"), s)["metrics"]
    tok = tokenizer(scale.context_length)
    for subset in comp.SUBSETS:
        ref = SugarCrepe(str(root / "sugar_crepe" / "val2017"), str(root / "sugar_crepe" / f"{subset}.json"),
                         transform=TRANSFORM)
        theirs = cb.evaluate(model, DataLoader(ref, batch_size=64, collate_fn=image_captions_collate_fn), tok,
                             device="cpu", amp=False)
        assert r[f"text_acc_{subset}"] == pytest.approx(theirs["text_acc"], abs=1e-7), subset
