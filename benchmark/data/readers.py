"""Readers for the on-disk formats: webdataset shards ({key}.png|jpg + {key}.txt|json) and CSV files.

A CSV follows open_clip's conventions (open_clip_train/data.py CsvDataset, read with pandas): separator, image
column and caption column from the scale's ``data.csv_*`` fields (``--csv-separator``, ``--csv-img-key``,
``--csv-caption-key``), defaulting to open_clip's tab / ``filepath`` / ``title``; a comma-separated file whose
header has ``path`` and ``caption`` (maskbench's own format) is read as such. Relative image paths are relative
to the CSV's folder. A missing or undecodable image is not skipped: one error lists them all, before training.

A corrupt or truncated shard member is skipped and counted; past ``max_bad_fraction`` the read fails with an
error that names the shard.

Images keep their aspect ratio (open_clip's transforms, open_clip/transform.py ``image_transform``): without
augmentation the shorter side is resized to the model's size and the centre cropped (the evaluation transform);
with augmentation the whole image is kept (shorter side at most twice the model's size) and the training
``RandomResizedCrop`` is cut from it at every step (``train_data.InMemoryPairs``).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import webdataset as wds
from PIL import Image, UnidentifiedImageError

from benchmark.errors import UserError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class ReadReport:
    read: int = 0
    skipped: int = 0
    last_error: str = ""


@lru_cache(maxsize=8)
def _eval_geometry(size: int):
    """Resize (shorter side, bicubic) and CenterCrop of open_clip's evaluation transform."""
    t = open_clip.image_transform(size, is_train=False)
    return t.transforms[0], t.transforms[1]


def fit_image(img: Image.Image, size: int, for_crop: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] of ``img`` for a model of ``size`` px. ``for_crop``: the whole image, its shorter side
    brought down to at most ``2 * size`` (the training crop is taken from it); else open_clip's evaluation
    geometry: shorter side resized to ``size``, centre crop ``size`` x ``size``."""
    img = img.convert("RGB")
    if for_crop:
        short = min(img.size)
        if short > 2 * size:
            w, h = img.size
            img = img.resize((max(1, round(w * 2 * size / short)), max(1, round(h * 2 * size / short))),
                             Image.Resampling.BICUBIC)
        return np.asarray(img)
    if img.size == (size, size):
        return np.asarray(img)
    resize, crop = _eval_geometry(size)
    return np.asarray(crop(resize(img)), dtype=np.uint8)


def decode_image(data: bytes, size: int | None = None, for_crop: bool = False) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    return np.asarray(img.convert("RGB")) if size is None else fit_image(img, size, for_crop)


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


def sample_image(sample: dict, size: int | None = None, for_crop: bool = False) -> np.ndarray:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return decode_image(sample[ext], size, for_crop)
    raise KeyError("image")


def read_pairs_from_shards(urls: list[str], size: int | None = None, report: ReadReport | None = None,
                           for_crop: bool = False):
    """All (image uint8 HxWx3, caption) pairs of the shards, in shard order (a list of arrays with
    ``for_crop``, else one array)."""
    report = report or ReadReport()
    images, captions = [], []
    for s in iter_shards(urls, report):
        try:
            cap = s["txt"].decode("utf-8").strip() if "txt" in s else json.loads(s["json"])["caption"]
            img = sample_image(s, size, for_crop)
        except Exception as e:   # noqa: BLE001 - counted as a bad sample
            report.read -= 1
            report.skipped += 1
            report.last_error = f"{type(e).__name__}: {e}"
            continue
        images.append(img)
        captions.append(cap)
    return (images if for_crop else np.stack(images)), captions, report


def read_eval_set(url: str, size: int | None = None):
    """(images uint8 [N,H,W,3], per-item metadata dicts) of an evaluation shard written by embedded.py."""
    report = ReadReport()
    images, metas = [], []
    for s in iter_shards([url], report, max_bad_fraction=0.0):
        images.append(sample_image(s, size))
        metas.append(json.loads(s["json"]))
    return np.stack(images), metas


def check_data_path(path: str) -> None:
    """A training-data path must be a CSV (.csv, .tsv) or webdataset shards (.tar, brace patterns, ``::``)."""
    if Path(path).is_dir():
        raise UserError(f"--data {path} is a folder; pass a CSV file (open_clip's format: tab-separated, columns "
                        "filepath and title) or webdataset shards (a brace pattern of .tar files, e.g. "
                        f"'{path.rstrip('/')}/{{00000..00009}}.tar')")
    if path.endswith((".csv", ".tsv")):
        return
    import braceexpand
    urls = [u for pattern in path.split("::") for u in braceexpand.braceexpand(pattern)]
    if not urls:
        raise UserError(f"data path {path!r} names no shards")
    not_tar = [u for u in urls if not u.endswith(".tar")]
    if not_tar:
        raise UserError(f"--data {not_tar[0]} is neither a CSV (.csv, .tsv) nor a webdataset shard (.tar); pass "
                        "a CSV of image paths and captions or a brace pattern of .tar shards")


OPEN_CLIP_CSV = ("\t", "filepath", "title")      # open_clip_train/params.py defaults
MASKBENCH_CSV = (",", "path", "caption")
SHOWN = 5                                           # bad files named in one message (then a count)


@dataclass
class CsvColumns:
    separator: str
    img_key: str
    caption_key: str
    rows: int


def _listing(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _read_csv(path: str, data) -> tuple[CsvColumns, pd.DataFrame]:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--data {p} is a folder; pass a CSV file (open_clip's format: tab-separated, columns "
                        "filepath and title) or webdataset shards (a brace pattern of .tar files)")
    if not p.exists():
        raise UserError(f"CSV {p} does not exist; pass a CSV of image paths and captions (open_clip's tab-separated "
                        "filepath/title columns, or comma-separated path,caption)")
    try:
        with open(p, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise UserError(f"CSV {p} is not UTF-8 text; pass a CSV of image paths and captions") from None
    legacy = {"path", "caption"} <= set(header.split(",")) and "\t" not in header
    default = MASKBENCH_CSV if legacy else OPEN_CLIP_CSV
    sep = data.csv_separator or default[0]
    img_key, cap_key = data.csv_img_key or default[1], data.csv_caption_key or default[2]
    try:
        df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"CSV {p} is empty; it needs a header ({img_key}{sep!r}{cap_key}) and one row per "
                        "image-caption pair") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"CSV {p} cannot be parsed with separator {sep!r} ({str(e).strip().splitlines()[-1]}); "
                        "fix the file or pass --csv-separator") from None
    missing = [k for k in (img_key, cap_key) if k not in df.columns]
    if missing:
        raise UserError(f"CSV {p} has no column(s) {', '.join(map(repr, missing))} with separator {sep!r} (found "
                        f"{', '.join(map(repr, df.columns))}); pass --csv-img-key/--csv-caption-key/--csv-separator "
                        "(open_clip's defaults: filepath, title, tab)")
    if len(df) == 0:
        raise UserError(f"CSV {p} has a header but no rows; add one row per image-caption pair")
    return CsvColumns(sep, img_key, cap_key, len(df)), df


def csv_columns(path: str, data) -> CsvColumns:
    """How the CSV at ``path`` is read under the scale's ``data`` fields (and how many pairs it holds)."""
    return _read_csv(path, data)[0]


def read_pairs_from_csv(path: str, size: int | None, data, for_crop: bool = False):
    """(images, captions) of a CSV (see the module docstring); every image is checked before any is used."""
    cols, df = _read_csv(path, data)
    folder = Path(path).parent
    images, missing, broken = [], [], []
    for rel in df[cols.img_key]:
        img_path = Path(rel).expanduser()
        img_path = img_path if img_path.is_absolute() else folder / img_path
        if not rel or not img_path.is_file():
            missing.append(str(img_path))
            continue
        try:
            with Image.open(img_path) as img:
                images.append(np.asarray(img.convert("RGB")) if size is None else fit_image(img, size, for_crop))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            broken.append(f"{img_path} ({type(e).__name__})")
    if missing or broken:
        parts = ([f"{len(missing)} missing: {_listing(missing)}"] if missing else []) + \
                ([f"{len(broken)} not readable images: {_listing(broken)}"] if broken else [])
        raise UserError(f"CSV {path}: {len(missing) + len(broken)} of {cols.rows} images cannot be used; "
                        f"{'; '.join(parts)}. Fix the paths in column {cols.img_key!r} (relative paths are relative "
                        "to the CSV's folder) or remove those rows")
    captions = [str(c) for c in df[cols.caption_key]]
    return (images if for_crop else np.stack(images)), captions
