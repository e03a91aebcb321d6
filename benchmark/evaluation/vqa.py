"""VQA with frozen encoders: the protocol this suite pins (no public tool evaluates CLIP-style models on VQA).

Written down in docs/evaluation.md. In short:
- features: the L2-normalised image embedding and the question embedded by the model's own text tower (the raw
  question string, no template), both frozen and encoded once;
- answer vocabulary: the ``MAX_ANSWERS`` most frequent (normalised) majority answers of the training questions;
- classifier: an MLP on [img, txt, img * txt] with one hidden layer of ``HIDDEN`` units (GELU), trained from
  ``SEED`` with AdamW (lr ``LR``, weight decay ``WEIGHT_DECAY``), batch ``BATCH_SIZE``, ``EPOCHS`` epochs but
  at least ``MIN_STEPS`` steps, cosine decay without warmup, on the soft-target cross-entropy (the target
  distributes over the question's human answers that are in the vocabulary);
- score on the held-out questions: VQAv2's accuracy (each answer averaged over the ten leave-one-out subsets of
  the ten human answers, min(#matching humans / 3, 1), after VQAv2's answer normalisation) where ten human
  answers exist; exact match with the single answer otherwise (the embedded set).
- reference levels: ``chance`` is the accuracy of always giving the most frequent training answer (the prior);
  ``question_only_acc`` is the same classifier trained with the image features zeroed (what the question alone
  gives away).
Same seed, same numbers (on CPU: one thread, a seeded generator for init and batch order).
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.evaluation.features import Encoder
from benchmark.evaluation.sets import EvalSet

TASK = "vqa"
MAIN_METRIC = "acc"
SEED = 0
HIDDEN = 256
EPOCHS = 20
MIN_STEPS = 500
BATCH_SIZE = 256
LR = 2e-3
WEIGHT_DECAY = 1e-4
MAX_ANSWERS = 3129          # the usual VQAv2 vocabulary size (answers seen at least 9 times in train)


# ---- VQAv2 answer normalisation and accuracy -----------------------------------------------------------------
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"(?!<=\d)(\.)(?!\d)")


@lru_cache(maxsize=1 << 18)
def normalize_answer(text: str) -> str:
    """VQAv2's evaluation normalisation: punctuation, number words to digits, articles dropped, lower case
    (its contraction table, e.g. "dont" -> "don't", is not applied)."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    keep_tight = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _PUNCT:
        out = out.replace(p, "" if keep_tight or (p + " " in text or " " + p in text) else " ")
    out = _PERIOD_NOT_DECIMAL.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def answer_accuracy(pred: str, answers: list[str]) -> float:
    """VQAv2 accuracy of ``pred`` against the human ``answers`` (ten of them); exact match when fewer exist."""
    gts = [normalize_answer(a) for a in answers]
    if len(gts) < 10:
        return float(pred == gts[0])
    hits = [g == pred for g in gts]
    total = sum(hits)
    return float(np.mean([min(1.0, (total - h) / 3.0) for h in hits]))


# ---- the classifier ---------------------------------------------------------------------------------------
class Questions:
    """Classifier inputs [img, txt, img * txt] built batch by batch (VQAv2 has 650k questions)."""

    def __init__(self, image_feats: torch.Tensor, image_index: torch.Tensor, text_feats: torch.Tensor):
        self.image_feats, self.image_index, self.text_feats = image_feats, image_index, text_feats

    def __len__(self):
        return len(self.text_feats)

    @property
    def dim(self) -> int:
        return 3 * self.text_feats.shape[1]

    def batch(self, idx: torch.Tensor, device) -> torch.Tensor:
        img = self.image_feats[self.image_index[idx]].to(device)
        txt = self.text_feats[idx].to(device)
        return torch.cat([img, txt, img * txt], dim=1)

    def subset(self, idx) -> "Questions":
        return Questions(self.image_feats, self.image_index[idx], self.text_feats[idx])

    def without_images(self) -> "Questions":
        return Questions(torch.zeros_like(self.image_feats), self.image_index, self.text_feats)


def training_steps(n_questions: int) -> int:
    """The fixed budget: ``EPOCHS`` epochs, but at least ``MIN_STEPS`` steps (small sets need the steps)."""
    return max(EPOCHS * -(-n_questions // BATCH_SIZE), MIN_STEPS)


def train_classifier(q: Questions, targets: torch.Tensor, seed: int = SEED, device="cpu") -> nn.Module:
    """The pinned answer classifier: an MLP from [img, txt, img * txt] to answer logits, soft targets [N, A]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(q.dim, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, targets.shape[1]))
    model = model.to(device)
    targets = targets.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    per_epoch = -(-len(q) // BATCH_SIZE)
    total = training_steps(len(q))
    for step in range(total):
        i = step % per_epoch
        if i == 0:                                          # a fresh shuffle every epoch
            order = torch.randperm(len(q), generator=gen)
        for g in opt.param_groups:                          # cosine decay, no warmup
            g["lr"] = 0.5 * (1 + np.cos(np.pi * step / total)) * LR
        b = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
        loss = -(targets[b.to(device)] * F.log_softmax(model(q.batch(b, device)), dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, q: Questions, device="cpu") -> list[int]:
    out = []
    for i in range(0, len(q), 4096):
        out += model(q.batch(torch.arange(i, min(i + 4096, len(q))), device)).argmax(1).cpu().tolist()
    return out


def _questions(s: EvalSet):
    """Flat (image index, question, human answers, split) over the set's two item layouts: embedded (one
    image, several questions) and VQAv2 (one entry per question)."""
    rows = []
    for i, it in enumerate(s.items):
        if "questions" in it:
            rows += [(i, q["question"], [q["answer"]], it["split"]) for q in it["questions"]]
        else:
            rows.append((i, it["question"], it["answers"], it["split"]))
    return rows


def _soft_targets(answers: list[list[str]], vocab: dict[str, int]) -> tuple[torch.Tensor, list[int]]:
    rows, kept = [], []
    for j, ans in enumerate(answers):
        counts = Counter(a for a in (normalize_answer(x) for x in ans) if a in vocab)
        if counts:
            t = torch.zeros(len(vocab))
            for a, c in counts.items():
                t[vocab[a]] = c
            rows.append(t / t.sum())
            kept.append(j)
    return torch.stack(rows), kept


def _fit_and_predict(train_q: Questions, targets, test_q: Questions, seed: int, device) -> list[int]:
    n = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)                    # small matmuls: threads only add contention; and determinism
    try:
        return predict(train_classifier(train_q, targets, seed, device), test_q, device)
    finally:
        torch.set_num_threads(n)


def evaluate_set(encoder: Encoder, s: EvalSet, seed: int = SEED) -> dict:
    rows = _questions(s)
    train = [r for r in rows if r[3] == "train"]
    test = [r for r in rows if r[3] == "test"]
    if not train or not test:
        raise ValueError(f"{s.name}: VQA needs training and held-out questions (got {len(train)} and {len(test)})")
    txt = encoder.texts([r[1] for r in rows])
    feats = encoder.images(s.name, s.images)
    q = Questions(feats, torch.tensor([r[0] for r in rows]), txt)
    train_idx = torch.tensor([j for j, r in enumerate(rows) if r[3] == "train"])
    test_q = q.subset(torch.tensor([j for j, r in enumerate(rows) if r[3] == "test"]))
    majority = Counter(normalize_answer(Counter(r[2]).most_common(1)[0][0]) for r in train)
    vocab_list = [a for a, _ in sorted(majority.items(), key=lambda kv: (-kv[1], kv[0]))][:MAX_ANSWERS]
    vocab = {a: i for i, a in enumerate(vocab_list)}
    targets, kept = _soft_targets([r[2] for r in train], vocab)
    train_q = q.subset(train_idx[kept])
    device = encoder.device

    def score(pred):
        return [answer_accuracy(vocab_list[p], r[2]) for p, r in zip(pred, test)]

    scores = score(_fit_and_predict(train_q, targets, test_q, seed, device))
    blind_scores = score(_fit_and_predict(train_q.without_images(), targets, test_q.without_images(), seed, device))
    prior = float(np.mean([answer_accuracy(vocab_list[0], r[2]) for r in test]))
    metrics = {"acc": float(np.mean(scores)), "question_only_acc": float(np.mean(blind_scores))}
    types = [s.items[r[0]].get("answer_type", "") for r in test]
    for t in sorted(set(types) - {""}):
        metrics[f"acc_{t.replace('/', '_')}"] = float(np.mean([a for a, ty in zip(scores, types) if ty == t]))
    return {"dataset": s.name, "metrics": metrics, "main_metric": MAIN_METRIC, "chance": prior, "per_item": scores,
            "notes": {"chance": "accuracy of always answering the most frequent training answer",
                      "answers": len(vocab_list), "train_questions": len(kept), "test_questions": len(test),
                      "seed": seed, "hidden": HIDDEN, "steps": training_steps(len(kept)), "batch_size": BATCH_SIZE,
                      "lr": LR, "weight_decay": WEIGHT_DECAY}}


DATASETS = ("vqav2",)


def real_sets(root, scale, names=DATASETS) -> list[EvalSet]:
    """VQAv2: classifier trained on the train2014 questions, scored on the val2014 questions."""
    from benchmark.evaluation import real_datasets as R

    def read():
        tr_images, tr_items = R.read_vqav2(root, "train2014", scale.image_size)
        va_images, va_items = R.read_vqav2(root, "val2014", scale.image_size)
        items = [{**it, "split": "train"} for it in tr_items] + [{**it, "split": "test"} for it in va_items]
        return EvalSet("vqav2", R.concat(tr_images, va_images), items, {})
    return R.read_all({"vqav2": read} if "vqav2" in names else {})
