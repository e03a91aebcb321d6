"""P4: evaluating one model on every task family, encode-once suite against clip_benchmark once per task.

Contenders, on the same model (a randomly initialised pocket-scale CLIP: timing does not depend on the
weights) and the same embedded evaluation sets, interleaved round-robin (``benchmark.perf.timing``):

- ``suite``: ``benchmark.evaluation.suite.evaluate`` with a fresh ``Encoder``: every image and text encoded
  once, in batches, every metric computed on the cached features;
- ``clip_benchmark``: its evaluate functions called once per task with a standard DataLoader over the images
  (batch 64, clip_benchmark's CLI default; per-item normalisation as a transform would do, no file decoding):
  zero-shot classification, zero-shot retrieval, linear probe (its CUDA-only code run on CPU through
  ``linear_probe.clip_benchmark_on_cpu``, on one thread as ours runs, features re-extracted into a fresh
  feature folder each call, as a new run would), image-caption selection once per SugarCrepe subset.
  clip_benchmark has no VQA; that family
  runs our protocol with its own fresh encoder, the same work on both sides.

Reported: median and minimum seconds per contender, the ratio clip_benchmark / suite (above 1: the suite is
faster), per-family seconds of the clip_benchmark side, and whether both sides produced the same metrics.

Goal: the encode-once suite at least 1.5x faster than clip_benchmark per task.

    python -m benchmark.perf.evaluation [--repeats 3] [--scale pocket]   (or: python -m benchmark perf --measures p4)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout

import torch
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import image_caption_selection as cb_ics
from clip_benchmark.metrics import linear_probe as cb_lp
from clip_benchmark.metrics import zeroshot_classification as cb_zsc
from clip_benchmark.metrics import zeroshot_retrieval as cb_zsr
from torch.utils.data import DataLoader, Dataset, Subset

from benchmark.data.preprocess import normalize_images, tokenizer
from benchmark.evaluation import linear_probe as lp
from benchmark.evaluation import suite, vqa
from benchmark.evaluation.features import Encoder
from benchmark.model import build_clip
from benchmark.perf.timing import interleave, ratio, summary
from benchmark.scales import get_scale

CB_BATCH = 64                      # clip_benchmark's CLI default --batch_size
GOAL = "encode-once >= 1.5x faster than clip_benchmark per task"
GOAL_RATIO = 1.5


class ImageItems(Dataset):
    """A standard evaluation dataset: one normalised [3, H, W] image tensor per item, with its target."""

    def __init__(self, images_u8, targets, classes=None):
        self.images, self.targets, self.classes = images_u8, targets, classes or []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.as_tensor(self.images[i]).permute(2, 0, 1)[None]
        return normalize_images(x, "cpu")[0], self.targets[i]


def clip_benchmark_task(task: str, model, s, context_length: int):
    """The metrics of ``task`` on set ``s`` from clip_benchmark's own function (VQA: our protocol, fresh
    encoder)."""
    tok = tokenizer(context_length)
    if task == "zeroshot_classification":
        data = DataLoader(ImageItems(s.images, [it["label"] for it in s.items], s.meta["classnames"]), CB_BATCH)
        return cb_zsc.evaluate(model, data, tok, s.meta["classnames"], s.meta["templates"], "cpu", amp=False)
    if task == "zeroshot_retrieval":
        data = DataLoader(ImageItems(s.images, [it["captions"] for it in s.items]), CB_BATCH,
                          collate_fn=image_captions_collate_fn)
        return cb_zsr.evaluate(model, data, tok, "cpu", amp=False, recall_k_list=[1, 5, 10])
    if task == "linear_probe":
        items = ImageItems(s.images, [it["label"] for it in s.items])
        train = [i for i, it in enumerate(s.items) if it["split"] == "train"]
        test = [i for i, it in enumerate(s.items) if it["split"] == "test"]
        with tempfile.TemporaryDirectory() as root, lp.clip_benchmark_on_cpu() as device, \
                torch.random.fork_rng(devices=[]), lp.one_cpu_thread(torch.device("cpu")):
            tr, va = lp.split_train_val(len(train), lp.SEED)          # as its CLI's --val_proportion
            loaders = [DataLoader(Subset(items, [train[i] for i in idx]), CB_BATCH) for idx in (tr, va)]
            out = cb_lp.evaluate(model, loaders[0], DataLoader(Subset(items, test), CB_BATCH), fewshot_k=-1,
                                 batch_size=lp.BATCH_SIZE, num_workers=0, lr=lp.LR, epochs=lp.EPOCHS,
                                 model_id="p4", seed=lp.SEED, feature_root=root, device=device,
                                 val_dataloader=loaders[1], normalize=True, amp=False)
        return {k: out[k] for k in ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "weight_decay")}
    if task == "compositionality":
        out = {}
        for subset in s.meta["subsets"]:
            idx = [i for i, it in enumerate(s.items) if it["subset"] == subset]
            pairs = [[s.items[i]["positive"], s.items[i]["negative"]] for i in idx]
            data = DataLoader(ImageItems(s.images[idx], pairs), CB_BATCH, collate_fn=image_captions_collate_fn)
            out[f"text_acc_{subset}"] = cb_ics.evaluate(model, data, tok, "cpu", amp=False)["text_acc"]
        return out
    if task == "vqa":
        return vqa.evaluate_set(Encoder(model, context_length, "cpu"), s)["metrics"]
    raise ValueError(task)


def _quiet():
    null = open(os.devnull, "w")
    return null, redirect_stdout(null), redirect_stderr(null)


def _agree(a: dict, b: dict) -> bool:
    keys = set(a) & set(b)
    return bool(keys) and all(abs(a[k] - b[k]) <= 1e-6 or (a[k] != a[k] and b[k] != b[k]) for k in keys)


MAIN = {"zeroshot_classification": "acc1", "zeroshot_retrieval": "image_retrieval_recall@1",
        "linear_probe": "lp_acc1", "compositionality": "text_acc_replace_obj", "vqa": "acc"}


def measure(repeats: int, scale_name: str = "pocket") -> dict:
    """P4 for ``benchmark perf``: ``compare`` with the goal, and the error (not raised) when it cannot run."""
    try:
        result = compare(repeats, scale_name=scale_name)
    except Exception as e:  # noqa: BLE001 - one measure failing must not lose the others
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "goal": GOAL}
    speedup = result["ratio_clip_benchmark_over_suite"]["median"]
    return {"goal": GOAL, **result, "met": speedup >= GOAL_RATIO}


def compare(repeats: int, scale_name: str = "pocket", seed: int = 0) -> dict:
    """Interleaved timings of the two contenders (``repeats`` rounds after one warm-up round)."""
    scale = get_scale(scale_name)
    model = build_clip(scale, seed).eval()
    tasks = list(scale.eval_suite)
    sets = {t: suite.datasets_for(t, scale)[0] for t in tasks}          # read once, outside the timings
    results: dict = {}
    family_s = {side: {t: [] for t in tasks} for side in ("suite", "clip_benchmark")}

    def ours():                    # suite.evaluate's loop (one shared Encoder), timed per family
        encoder, out = Encoder(model, scale.context_length, "cpu"), {}
        for t in tasks:
            t0 = time.perf_counter()
            out[t] = [suite.task_module(t).evaluate_set(encoder, sets[t])]
            family_s["suite"][t].append(time.perf_counter() - t0)
        results["suite"] = out

    def theirs():
        out = {}
        for t in tasks:
            t0 = time.perf_counter()
            out[t] = clip_benchmark_task(t, model, sets[t], scale.context_length)
            family_s["clip_benchmark"][t].append(time.perf_counter() - t0)
        results["clip_benchmark"] = out

    null, out_ctx, err_ctx = _quiet()
    with null, out_ctx, err_ctx:
        samples = interleave({"suite": ours, "clip_benchmark": theirs}, repeats, warmup=1)
    same = {t: _agree(results["suite"][t][0]["metrics"], results["clip_benchmark"][t]) for t in tasks}
    main = {t: [results["suite"][t][0]["metrics"][MAIN[t]], results["clip_benchmark"][t][MAIN[t]]] for t in tasks}
    family = {side: {t: round(statistics.median(v[1:] or v), 3) for t, v in d.items()}    # first call = warm-up
              for side, d in family_s.items()}
    r = ratio(samples["clip_benchmark"], samples["suite"])
    with_cb = [t for t in tasks if t != "vqa"]                  # the families clip_benchmark has a function for
    sub = {side: [sum(d[t][i] for t in with_cb) for i in range(1, len(d[tasks[0]]))] for side, d in family_s.items()}
    res = {"scale": scale.name, "model": "randomly initialised CLIP of the scale", "tasks": tasks,
           "images": {t: len(s.images) for t, s in sets.items()}, "repeats": repeats,
           "suite": summary(samples["suite"]), "clip_benchmark": summary(samples["clip_benchmark"]),
           "ratio_clip_benchmark_over_suite": r,
           "ratio_without_vqa": ratio(sub["clip_benchmark"], sub["suite"]), "family_median_s": family,
           "same_metrics": same, "main_metric_suite_vs_clip_benchmark": main,
           "samples_s": {k: [round(x, 4) for x in v] for k, v in samples.items()},
           "threads": torch.get_num_threads()}
    res["markdown"] = render(res)
    return res


def render(res: dict) -> str:
    s, c, r = res["suite"], res["clip_benchmark"], res["ratio_clip_benchmark_over_suite"]
    lines = [f"One {res['scale']} model, all {len(res['tasks'])} families, {res['repeats']} interleaved rounds "
             f"(median / min seconds):", "",
             "| contender | seconds (median / min) |", "|---|---|",
             f"| encode-once suite | {s['median_ms'] / 1e3:.2f} / {s['min_ms'] / 1e3:.2f} |",
             f"| clip_benchmark, once per task | {c['median_ms'] / 1e3:.2f} / {c['min_ms'] / 1e3:.2f} |", "",
             f"Ratio clip_benchmark / suite: **{r['median']:.2f}x** (median), {r['min']:.2f}x (min); "
             f"over the four families clip_benchmark has a function for (all but VQA): "
             f"**{res['ratio_without_vqa']['median']:.2f}x** (median), {res['ratio_without_vqa']['min']:.2f}x (min).",
             "",
             "| family | images | suite s | clip_benchmark s | ratio | same metrics "
             "| main metric, suite / clip_benchmark |",
             "|---|---|---|---|---|---|---|"]
    fam = res["family_median_s"]
    for t in res["tasks"]:
        a, b = res["main_metric_suite_vs_clip_benchmark"][t]
        ours, theirs = fam["suite"][t], fam["clip_benchmark"][t]
        lines.append(f"| {t} | {res['images'][t]} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}x | "
                     f"{'yes' if res['same_metrics'][t] else 'no'} | {MAIN[t]} {a:.4f} / {b:.4f} |")
    lines += ["", "Per-family seconds are medians of the timed rounds; in the suite, a family's time includes "
              "encoding whatever the earlier families had not already encoded."]
    lines += ["", "VQA has no clip_benchmark function: both sides run the pinned protocol (same work).",
              "Linear probe: clip_benchmark extracts its features through DataLoaders, whose iterators draw from "
              "the global RNG before its training-order permutation, so its probe trains on another order than a "
              "probe on cached features; on the same cached features the two are identical "
              "(tests/test_eval_linear_probe.py)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf.evaluation", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", default="pocket")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    res = compare(args.repeats, args.scale)
    print(res["markdown"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in res.items() if k != "markdown"}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
