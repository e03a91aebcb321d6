"""VQA: VQAv2's answer normalisation and soft accuracy, the pinned classifier (uses the image, reproducible
with its seed), and VQAv2's files through the reader."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.evaluation import vqa
from benchmark.evaluation.features import Encoder
from benchmark.evaluation.sets import EvalSet
from benchmark.model import build_clip
from test_eval_linear_probe import IndexedFeatures
from test_eval_readers import write_dataset_root


@pytest.mark.parametrize("raw, norm", [("Two", "2"), ("the dog.", "dog"), ("yes!", "yes"), ("A red-bus", "red bus"),
                                       ("3.5", "3.5"), ("1,000", "1000"), ("  none ", "0"), ("t-shirt", "t shirt")])
def test_answer_normalisation(raw, norm):
    assert vqa.normalize_answer(raw) == norm


def test_soft_accuracy_averages_over_the_ten_leave_one_out_subsets():
    ten = ["yes"] * 3 + ["no"] * 7
    assert vqa.answer_accuracy("yes", ten) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)    # 0.9
    assert vqa.answer_accuracy("no", ten) == 1.0
    assert vqa.answer_accuracy("yes", ["yes"] + ["no"] * 9) == pytest.approx(0.3)        # 9 subsets x 1/3
    assert vqa.answer_accuracy("maybe", ten) == 0.0
    assert vqa.answer_accuracy("2", ["two"] * 2 + ["2"] * 2 + ["3"] * 6) == 1.0           # normalised first
    assert vqa.answer_accuracy("red", ["red"]) == 1.0 and vqa.answer_accuracy("blue", ["red"]) == 0.0


class BagOfTokens(torch.nn.Module):
    """Stand-in text tower: a fixed random embedding summed over the tokens."""

    def __init__(self, image_feats, dim=16):
        super().__init__()
        self.images = IndexedFeatures(image_feats)
        self.table = torch.randn(49408, dim, generator=torch.Generator().manual_seed(0))

    def encode_image(self, x):
        return self.images.encode_image(x)

    def encode_text(self, tokens):
        return self.table[tokens].sum(1)


def synthetic_set(n_images=200, seed=0):
    """Each image has a colour and a shape (latent, read off its features); questions ask for one of them."""
    g = torch.Generator().manual_seed(seed)
    colours, shapes = ["red", "green", "blue", "white"], ["circle", "square", "star"]
    c = torch.randint(0, 4, (n_images,), generator=g)
    s = torch.randint(0, 3, (n_images,), generator=g)
    feats = F.normalize(torch.cat([F.one_hot(c, 4), F.one_hot(s, 3)], 1).float() * 3
                        + 0.3 * torch.randn(n_images, 7, generator=g), dim=-1)
    feats = torch.cat([feats, torch.zeros(n_images, 9)], 1)                        # dim 16 like the text
    items = [{"questions": [{"question": "what colour is the object", "answer": colours[c[i]]},
                            {"question": "what shape is the object", "answer": shapes[s[i]]}],
              "split": "test" if i % 4 == 0 else "train"} for i in range(n_images)]
    images = np.arange(n_images, dtype=np.uint8)[:, None, None, None].repeat(3, axis=3)
    return EvalSet("synthetic/vqa", images, items, {}), feats


def test_classifier_answers_from_the_image_not_the_question_alone():
    s, feats = synthetic_set()
    r = vqa.evaluate_set(Encoder(BagOfTokens(feats), 16, "cpu"), s)
    m = r["metrics"]
    assert m["acc"] > 0.95
    assert m["question_only_acc"] < 0.6                    # the question alone gives the answer type only
    assert r["chance"] < 0.35                              # the most frequent training answer
    assert r["notes"]["train_questions"] == 300 and r["notes"]["test_questions"] == 100


@pytest.mark.slow
def test_same_seed_same_numbers(monkeypatch):
    s, feats = synthetic_set(seed=1)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a = vqa.evaluate_set(Encoder(BagOfTokens(feats), 16, "cpu"), s)
    assert torch.equal(torch.get_rng_state(), state)       # the protocol's seed is its own
    b = vqa.evaluate_set(Encoder(BagOfTokens(feats), 16, "cpu"), s)
    assert a == b
    # the seed reaches the classifier: same seed, same weights; another seed, other weights
    monkeypatch.setattr(vqa, "MIN_STEPS", 20)
    q = vqa.Questions(feats, torch.arange(len(feats)), feats)
    targets = torch.eye(4)[torch.arange(len(feats)) % 4]
    w = [vqa.train_classifier(q, targets, seed=k)[0].weight for k in (0, 0, 1)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_vqav2_files_soft_accuracy_and_prior(smoke_scale, tmp_path):
    root = write_dataset_root(tmp_path)
    scale = dataclasses.replace(smoke_scale, data=dataclasses.replace(smoke_scale.data, kind="webdataset",
                                                                      dataset_root=str(root)))
    [s] = vqa.real_sets(str(root), scale)
    assert s.name == "vqav2" and len(s.items) == 8
    assert [it["split"] for it in s.items] == ["train"] * 6 + ["test"] * 2
    r = vqa.evaluate_set(Encoder(build_clip(scale, 0).eval(), scale.context_length, "cpu"), s)
    # training majority answers: "yes" x3 and "two" x3 -> vocabulary ["2", "yes"] (ties by name); the prior "2"
    # scores 0 on the yes/no question and 1 on the number question (6 of 10 humans said "two")
    assert r["chance"] == pytest.approx(0.5)
    assert r["notes"]["answers"] == 2
    assert set(r["metrics"]) == {"acc", "question_only_acc", "acc_yes_no", "acc_number"}
