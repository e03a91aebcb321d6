"""Readers for the on-disk formats: webdataset shards ({key}.png|jpg + {key}.txt|json) and CSV (path, caption).

A corrupt or truncated shard member is skipped and counted; past ``max_bad_fraction`` the read fails with an
error that names the shard.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from benchmark.errors import UserError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class ReadReport:
    read: int = 0
    skipped: int = 0
    last_error: str = ""


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


def iter_shards(urls: list[str], report: ReadReport, max_bad_fraction: float = 0.01):
    """Yield webdataset samples (dicts of bytes) from ``urls``; bad members are skipped and counted."""
    def handler(exn):
        report.skipped += 1
        report.last_error = f"{type(exn).__name__}: {exn}"
        return True
    for url in urls:
        if not Path(url).exists():
            raise UserError(f"shard {url} does not exist; check the data path of the scale or --data")
        # nodesplitter=None: this process reads every shard it is given, also inside a multi-process (DDP) run
        for sample in wds.WebDataset(url, shardshuffle=False, handler=handler, empty_check=False, nodesplitter=None):
            if not any(ext in sample for ext in IMAGE_EXTS):
                handler(ValueError(f"{url}: sample {sample.get('__key__')} has no image"))
                continue
            report.read += 1
            yield sample
    total = report.read + report.skipped
    if total == 0:
        raise UserError(f"no readable samples in {', '.join(urls)}; the shards are empty or corrupt")
    if report.skipped / total > max_bad_fraction:
        raise UserError(f"{report.skipped} of {total} samples in {', '.join(urls)} are corrupt "
                        f"(more than {max_bad_fraction:.0%}; last error: {report.last_error}); "
                        "re-create the shards")


def sample_image(sample: dict, size: int | None = None) -> np.ndarray:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return decode_image(sample[ext], size)
    raise KeyError("image")


def read_pairs_from_shards(urls: list[str], size: int | None = None, report: ReadReport | None = None):
    """All (image uint8 HxWx3, caption) pairs of the shards, in shard order."""
    report = report or ReadReport()
    images, captions = [], []
    for s in iter_shards(urls, report):
        try:
            cap = s["txt"].decode("utf-8").strip() if "txt" in s else json.loads(s["json"])["caption"]
            img = sample_image(s, size)
        except Exception as e:   # noqa: BLE001 - counted as a bad sample
            report.read -= 1
            report.skipped += 1
            report.last_error = f"{type(e).__name__}: {e}"
            continue
        images.append(img)
        captions.append(cap)
    return np.stack(images), captions, report


def read_eval_set(url: str, size: int | None = None):
    """(images uint8 [N,H,W,3], per-item metadata dicts) of an evaluation shard written by embedded.py."""
    report = ReadReport()
    images, metas = [], []
    for s in iter_shards([url], report, max_bad_fraction=0.0):
        images.append(sample_image(s, size))
        metas.append(json.loads(s["json"]))
    return np.stack(images), metas


def read_pairs_from_csv(path: str, size: int | None = None):
    """A CSV with columns ``path`` and ``caption`` (relative paths are relative to the CSV's folder)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"CSV {p} does not exist; pass a file with columns path,caption")
    images, captions = [], []
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "caption"} <= set(reader.fieldnames):
            raise UserError(f"CSV {p} must have a header with columns 'path' and 'caption', "
                            f"found {reader.fieldnames}")
        for row in reader:
            img_path = Path(row["path"]) if Path(row["path"]).is_absolute() else p.parent / row["path"]
            images.append(decode_image(img_path.read_bytes(), size))
            captions.append(row["caption"])
    return np.stack(images), captions
