"""Linear probe on frozen image features: clip_benchmark's protocol, on CPU or GPU.

clip_benchmark.metrics.linear_probe.evaluate (CLIP paper App. A.3, with AdamW on a linear layer instead of
L-BFGS) asserts CUDA. ``probe`` runs the same procedure on any device, step for step and draw for draw:

1. carve a validation split (``VAL_PROPORTION`` of train) with ``torch.utils.data.random_split`` after
   ``torch.manual_seed(seed)``, as clip_benchmark's CLI does with ``--val_proportion``;
2. order the remaining train features by ``torch.randperm`` (clip_benchmark's few-shot selection, k = -1);
3. choose the L2 penalty (AdamW weight decay) on the validation split: 7 coarse values of logspace(-6, 2, 97),
   then refine around the best with spans 8, 4, 2, 1; each candidate is a fresh fit from the same seed (a value
   already scored is not fit again: same seed, same fit, same score);
4. refit on train + validation with the chosen value and score top-1 / top-5 / mean per-class recall on test.

One fit: ``nn.Linear`` (seeded init), AdamW(lr=LR, weight_decay), cross-entropy, ``EPOCHS`` epochs of shuffled
batches of ``BATCH_SIZE``, cosine learning-rate decay without warmup. Features are L2-normalised (the
encoder's). ``clip_benchmark_probe`` calls clip_benchmark's own function on the same features; the two agree
exactly (tests/test_eval_linear_probe.py). The protocol is written down in docs/evaluation.md.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager, redirect_stdout
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from clip_benchmark.metrics.zeroshot_classification import accuracy
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.utils.data import random_split

from benchmark.evaluation.features import Encoder
from benchmark.evaluation.sets import EvalSet

TASK = "linear_probe"
MAIN_METRIC = "lp_acc1"
DATASETS = ("cifar10", "cifar100", "imagenet1k")     # paper scales: train split -> test (ImageNet: val) split

# clip_benchmark's CLI defaults (--fewshot_lr, --fewshot_epochs, --batch_size); the validation share is ours [I].
LR = 0.1
EPOCHS = 10
BATCH_SIZE = 64
VAL_PROPORTION = 0.2
SEED = 0
WD_GRID = np.logspace(-6, 2, num=97).tolist()
WD_COARSE = [i for i, v in enumerate(WD_GRID) if v in np.logspace(-6, 2, num=7).tolist()]


def _epoch_batches(n: int) -> tuple[torch.Tensor, ...]:
    """The index batches of one epoch of ``DataLoader(shuffle=True, batch_size=BATCH_SIZE)`` over ``n`` rows, drawn
    as torch 2's loader draws them from the global generator: the iterator's base seed first (used by loader
    workers only), then ``RandomSampler``'s seed for its own generator's ``randperm``. Without the loader's
    per-batch machinery (a fifth of a fit); tests/test_eval_linear_probe.py holds it to clip_benchmark's loader."""
    torch.empty((), dtype=torch.int64).random_()                         # _BaseDataLoaderIter._base_seed
    seed = int(torch.empty((), dtype=torch.int64).random_().item())      # RandomSampler.__iter__
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).split(BATCH_SIZE)


def _fit(x, y, n_classes: int, weight_decay: float, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], n_classes).to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=weight_decay)
    per_epoch = -(-len(x) // BATCH_SIZE)
    total = EPOCHS * per_epoch
    for epoch in range(EPOCHS):
        for i, idx in enumerate(_epoch_batches(len(x))):
            xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
            step = i + epoch * per_epoch
            for g in opt.param_groups:                     # cosine decay, no warmup
                g["lr"] = 0.5 * (1 + np.cos(np.pi * (step - 0.0) / (total - 0.0))) * LR
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model


@torch.no_grad()
def _top1(model, x, y) -> float:
    return accuracy(model(x).float(), y.float(), topk=(1,))[0]


def _best_weight_decay(xtr, ytr, xva, yva, n_classes: int, seed: int) -> float:
    scores: dict[int, float] = {}      # a fit is a function of its weight decay: the centre is not refit

    def peak(candidates):
        best, best_acc = 0, 0
        for idx in candidates:
            if idx not in scores:
                scores[idx] = _top1(_fit(xtr, ytr, n_classes, WD_GRID[idx], seed), xva, yva)
            acc = scores[idx]
            if best_acc < acc:
                best, best_acc = idx, acc
        return best
    idx = peak(WD_COARSE)
    span = 8
    while span > 0:
        idx = peak([max(idx - span, 0), idx, min(idx + span, len(WD_GRID) - 1)])
        span //= 2
    return WD_GRID[idx]


@contextmanager
def one_cpu_thread(device: torch.device):
    """The probe's matmuls are tiny: on CPU, threads only add contention (7x slower on a loaded 2-core box)."""
    n = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def split_train_val(n: int, seed: int):
    """Indices (train, val) of the validation split: random_split right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    tr, va = random_split(range(n), [1 - VAL_PROPORTION, VAL_PROPORTION])
    return list(tr.indices), list(va.indices)


def probe(train_x, train_y, test_x, test_y, seed: int = SEED, device="cpu") -> dict:
    """clip_benchmark's linear-probe metrics of L2-normalised features (see the module docstring)."""
    return probe_with_items(train_x, train_y, test_x, test_y, seed, device)[0]


def probe_with_items(train_x, train_y, test_x, test_y, seed: int = SEED, device="cpu") -> tuple[dict, list[float]]:
    """``probe``'s metrics and, per test item, whether its top-1 prediction is right (their mean is lp_acc1)."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), one_cpu_thread(device):   # seeded as clip_benchmark; restored
        train_x, test_x = torch.as_tensor(train_x).float(), torch.as_tensor(test_x).float()
        train_y, test_y = torch.as_tensor(train_y).long(), torch.as_tensor(test_y).long()
        tr, va = split_train_val(len(train_x), seed)
        xtr, ytr, xva, yva = train_x[tr], train_y[tr], train_x[va], train_y[va]
        order = torch.randperm(len(xtr))
        xtr, ytr = xtr[order], ytr[order]
        n_classes = int(ytr.max()) + 1                         # as clip_benchmark: from the train part
        xtr, ytr, xva, yva = (t.to(device) for t in (xtr, ytr, xva, yva))
        wd = _best_weight_decay(xtr, ytr, xva, yva, n_classes, seed)
        model = _fit(torch.cat([xtr, xva]), torch.cat([ytr, yva]), n_classes, wd, seed)
        with torch.no_grad():
            logits = model(test_x.to(device)).float().cpu()
    pred = logits.argmax(dim=1)
    if test_y.max() >= 5:
        acc1, acc5 = accuracy(logits, test_y.float(), topk=(1, 5))
    else:
        acc1, acc5 = accuracy(logits, test_y.float(), topk=(1,))[0], float("nan")
    per_item = (logits.topk(1, dim=1).indices[:, 0] == test_y).float().tolist()     # as accuracy() ranks
    return {"lp_acc1": acc1, "lp_acc5": acc5, "lp_mean_per_class_recall": balanced_accuracy_score(test_y, pred),
            "weight_decay": wd}, per_item


# ---- clip_benchmark's own implementation, on the same features ---------------------------------------------
class _Features(nn.Module):
    def encode_image(self, x):
        return x


class _CudaNamedCpu(str):
    """'cpu' that compares equal to 'cuda': passes clip_benchmark's ``assert device == 'cuda'``, runs on CPU."""

    def __eq__(self, other):
        return other == "cuda" or str.__eq__(self, other)

    __hash__ = str.__hash__


@contextmanager
def clip_benchmark_on_cpu():
    """Run clip_benchmark's CUDA-only linear probe on CPU (tests and the P4 baseline): ``.cuda()`` becomes a
    no-op and the device is CPU under the name 'cuda' (DataParallel without GPUs is a pass-through)."""
    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):
        yield _CudaNamedCpu("cpu")


def clip_benchmark_probe(train_x, train_y, test_x, test_y, seed: int = SEED, device="cuda") -> dict:
    """clip_benchmark.metrics.linear_probe.evaluate on these features, with our validation split (the split
    its CLI makes with --val_proportion) and hyperparameters. Needs CUDA, or ``clip_benchmark_on_cpu()``."""
    from clip_benchmark.metrics import linear_probe as cb
    train_x, test_x = torch.as_tensor(train_x).float(), torch.as_tensor(test_x).float()
    train_y, test_y = torch.as_tensor(train_y).long(), torch.as_tensor(test_y).long()
    with tempfile.TemporaryDirectory() as root, torch.random.fork_rng(devices=[]):
        tr, va = split_train_val(len(train_x), seed)        # leaves the RNG where clip_benchmark's CLI leaves it
        folder = os.path.join(root, "probe")
        os.makedirs(folder)
        for name, x, y in (("train", train_x[tr], train_y[tr]), ("val", train_x[va], train_y[va]),
                           ("test", test_x, test_y)):
            torch.save(x, os.path.join(folder, f"features_{name}.pt"))   # cached features: no re-encoding
            torch.save(y, os.path.join(folder, f"targets_{name}.pt"))
        with open(os.devnull, "w") as null, redirect_stdout(null), one_cpu_thread(torch.device(str(device))):
            out = cb.evaluate(_Features(), [], [], fewshot_k=-1, batch_size=BATCH_SIZE, num_workers=0, lr=LR,
                              epochs=EPOCHS, model_id="probe", seed=seed, feature_root=root, device=device,
                              val_dataloader=[], normalize=True, amp=False)
    return {k: out[k] for k in ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "weight_decay")}


# ---- the task ---------------------------------------------------------------------------------------------
def evaluate_set(encoder: Encoder, s: EvalSet) -> dict:
    feats = encoder.images(s.name, s.images)
    labels = torch.tensor([it["label"] for it in s.items])
    train = [i for i, it in enumerate(s.items) if it["split"] == "train"]
    test = [i for i, it in enumerate(s.items) if it["split"] == "test"]
    metrics, per_item = probe_with_items(feats[train], labels[train], feats[test], labels[test], SEED, encoder.device)
    return {"dataset": s.name, "metrics": metrics, "main_metric": MAIN_METRIC, "per_item": per_item,
            "chance": s.meta.get("chance"),
            "notes": {"protocol": "clip_benchmark linear probe", "lr": LR, "epochs": EPOCHS, "batch_size": BATCH_SIZE,
                      "val_proportion": VAL_PROPORTION, "seed": SEED, "n_train": len(train), "n_test": len(test)}}


def real_sets(root, scale, names=DATASETS) -> list[EvalSet]:
    """CIFAR-10, CIFAR-100 (train -> test) and ImageNet-1k (train -> val) from ``root``."""
    from benchmark.evaluation import real_datasets as R

    def read(name):
        tr_images, tr_labels, classes = R.read_classification(root, name, "train", scale.image_size)
        te_images, te_labels, _ = R.read_classification(root, name, "test", scale.image_size)
        items = [{"label": y, "split": "train"} for y in tr_labels] + [{"label": y, "split": "test"} for y in te_labels]
        # ImageNet labels are indices in the fixed 1,000-class list (a partial copy: chance over its train classes)
        n = len(set(tr_labels)) if name == "imagenet1k" else len(classes)
        return EvalSet(name, R.concat(tr_images, te_images), items, {"classnames": classes, "chance": 1 / n})
    return R.read_all({name: (lambda n=name: read(n)) for name in names})
