"""Training data for the trainer: a deterministic batch for every step.

The batch of step ``t`` is a pure function of (seed, t): the sample stream is the concatenation of one seeded
permutation of the dataset per epoch (resampling, so a run of any length is defined). A resumed run therefore
continues with exactly the batches it would have seen. Images are held in memory as uint8 and normalised on
the model's device; captions are tokenised once and cached beside the data.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.transform import AugmentationCfg

from benchmark.data import embedded
from benchmark.data.preprocess import normalize_images, tokenizer
from benchmark.data.readers import check_data_path, read_pairs_from_csv, read_pairs_from_shards
from benchmark.errors import UserError
from benchmark.scales import Scale


def tokenize_cached(captions: list[str], context_length: int, cache_dir: Path | None) -> torch.Tensor:
    """Tokens [N, L] of ``captions``; cached as .npy in ``cache_dir`` keyed by the captions' hash."""
    key = hashlib.sha256(("\n".join(captions) + f"|{context_length}").encode()).hexdigest()[:16]
    path = cache_dir / f"tokens-{key}.npy" if cache_dir else None
    if path is not None and _cached(path):
        return torch.from_numpy(np.load(path))
    tokens = tokenizer(context_length)(captions)
    if path is not None:
        embedded.write_cached(path, embedded.npy_bytes(tokens.numpy()))
    return tokens


def _cached(path: Path) -> bool:
    """A derived cache file that matches the digest beside it; a damaged one is named and rebuilt."""
    if embedded.cached_ok(path):
        return True
    if path.exists():
        print(f"warning: {path} does not match its sha256 (damaged, or written before digests were kept); "
              "rebuilding it", file=sys.stderr)
    return False


class InMemoryPairs:
    """Image-caption pairs in memory, served as deterministic per-step batches.

    ``images``: uint8 [N, H, W, 3] (every image at the model's size) or, with ``augment``, a list of uint8
    [h, w, 3] arrays of any shape, from which open_clip's training RandomResizedCrop (``crop_scale``, bicubic) cuts
    ``image_size`` x ``image_size`` at every step, seeded by (seed, step, rank).
    """

    def __init__(self, images, tokens: torch.Tensor, fingerprint: str, augment: bool = False,
                 image_size: int | None = None, crop_scale: tuple[float, float] = (0.9, 1.0)):
        if isinstance(images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # [N,3,H,W] uint8
        else:
            self.images = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in images]
        self.tokens = tokens
        self.fingerprint = fingerprint
        self.augment = augment
        self.image_size = image_size or int(self.images[0].shape[-1])
        self.crop = open_clip.image_transform(self.image_size, is_train=True, aug_cfg=AugmentationCfg(
            scale=tuple(crop_scale))).transforms[0] if augment else None
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def _perm(self, seed: int, epoch: int) -> np.ndarray:
        if (seed, epoch) not in self._perms:
            self._perms = {(seed, epoch): np.random.default_rng([seed, epoch]).permutation(len(self))}
        return self._perms[(seed, epoch)]

    def indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        start = step * batch_size
        pos = np.arange(start, start + batch_size)
        epochs, offsets = pos // len(self), pos % len(self)
        out = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(seed, int(e))[offsets[sel]]
        return out

    def batch(self, step: int, batch_size: int, seed: int, device, rank: int = 0, world_size: int = 1) -> dict:
        """The global batch of ``step``; with several processes, this rank's contiguous slice of it."""
        idx = self.indices(step, batch_size, seed)
        per = batch_size // world_size
        idx = torch.from_numpy(idx[rank * per:(rank + 1) * per])
        if self.augment:
            images = self._random_resized_crops([self.images[int(i)] for i in idx], (seed, step, rank))
        else:
            images = self.images[idx] if isinstance(self.images, torch.Tensor) \
                else torch.stack([self.images[int(i)] for i in idx])
        return {"images": normalize_images(images, device), "texts": self.tokens[idx].to(device),
                "indices": idx}

    def _random_resized_crops(self, images: list[torch.Tensor], key: tuple[int, int, int]) -> torch.Tensor:
        """open_clip's RandomResizedCrop of each image; its draws seeded by ``key``, the global RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.default_rng(list(key)).integers(2 ** 62)))
            return torch.stack([self.crop(img) for img in images])


def _decoded_cached(folder: Path, size: int) -> tuple[np.ndarray, list[str]]:
    """Decoding 30k PNGs takes ~15 s here; the decoded uint8 array is cached beside the shards."""
    arr, caps = embedded.decoded_train_paths(folder, size)
    if _cached(arr) and _cached(caps):
        return np.load(arr), json.loads(caps.read_text())
    urls = sorted(str(p) for p in folder.glob("train-*.tar"))
    images, captions, _ = read_pairs_from_shards(urls, size)
    embedded.write_cached(arr, embedded.npy_bytes(images))
    embedded.write_cached(caps, json.dumps(captions).encode())
    return images, captions


def load_training_data(scale: Scale, data_override: str | None = None):
    """The scale's training pairs. Embedded data is generated (or taken from the cache) first. A path that is
    neither a CSV nor webdataset shards, or a file that cannot be used, is a UserError naming it."""
    spec = scale.data
    path = data_override or spec.path
    if spec.kind == "embedded" and not data_override:
        folder = embedded.ensure(scale.image_size, spec.train_size, spec.eval_size)
        images, captions = _decoded_cached(folder, scale.image_size)
        tokens = tokenize_cached(captions, scale.context_length, folder)
        if spec.augment:
            images = list(images)
        return InMemoryPairs(images, tokens, embedded.fingerprint(folder), augment=spec.augment,
                             image_size=scale.image_size, crop_scale=spec.crop_scale)
    check_data_path(path)
    if path.endswith((".csv", ".tsv")):
        images, captions = read_pairs_from_csv(path, scale.image_size, spec, for_crop=spec.augment)
    else:
        import braceexpand
        urls = [u for pattern in path.split("::") for u in braceexpand.braceexpand(pattern)]
        if spec.stream:
            from benchmark.data.stream import StreamingPairs
            return StreamingPairs(urls, scale.image_size, scale.context_length, spec.augment, spec.workers,
                                  crop_scale=spec.crop_scale)
        images, captions, report = read_pairs_from_shards(urls, scale.image_size, for_crop=spec.augment)
        if report.skipped:
            print(f"warning: skipped {report.skipped} unreadable sample(s) in {path} ({report.read} read; last "
                  f"error: {report.last_error})", file=sys.stderr)
    tokens = tokenize_cached(captions, scale.context_length, None)
    digest = hashlib.sha256("\n".join(captions).encode())
    for img in (images if isinstance(images, list) else [images]):
        digest.update(np.ascontiguousarray(img).data)          # every pixel: a replaced image changes it
    return InMemoryPairs(images, tokens, digest.hexdigest()[:16], augment=spec.augment,
                         image_size=scale.image_size, crop_scale=spec.crop_scale)
