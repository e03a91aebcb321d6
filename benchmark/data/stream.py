"""Streaming training data for datasets larger than memory (the paper scales: CC3M, CC12M, YFCC-15M shards).

webdataset with resampling (a run of any length is defined), a shuffle buffer, decoding and open_clip's training
transform (RandomResizedCrop at the scale's crop_scale, bicubic, OpenAI mean/std) in DataLoader workers, batches per rank.
The stream of step ``t`` is seeded by (seed, rank, t) when it (re)starts, so a resumed run continues with a fresh,
seeded stream: the same distribution and samples-seen count, though not the identical batches an in-memory run
replays (exact replay would need a pass over the shards up to the resume point).
"""
from __future__ import annotations

import hashlib

import open_clip
import torch
import webdataset as wds
from open_clip.transform import AugmentationCfg

from benchmark.data.readers import IMAGE_EXTS
from benchmark.data.preprocess import OPENAI_MEAN, OPENAI_STD, tokenizer


class StreamingPairs:
    def __init__(self, urls: list[str], image_size: int, context_length: int, augment: bool = True,
                 workers: int = 8, shuffle_buffer: int = 5000, crop_scale: tuple[float, float] = (0.9, 1.0)):
        self.urls = urls
        self.transform = open_clip.image_transform(image_size, is_train=augment, mean=OPENAI_MEAN, std=OPENAI_STD,
                                                   aug_cfg=AugmentationCfg(scale=tuple(crop_scale)))
        self.tokenize = tokenizer(context_length)
        self.workers = workers
        self.shuffle_buffer = shuffle_buffer
        self.fingerprint = hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]
        self.skipped = 0
        self._it = None
        self._next = None

    def _skip(self, exn) -> bool:
        self.skipped += 1          # counted in this process; workers warn through webdataset
        return True

    def _pipeline(self, seed: int, per_rank: int):
        ds = (wds.WebDataset(self.urls, resampled=True, shardshuffle=False, seed=seed, nodesplitter=None,
                             handler=wds.warn_and_continue, empty_check=False)
              .shuffle(self.shuffle_buffer, seed=seed)
              .decode("pil", handler=wds.warn_and_continue)
              .to_tuple(";".join(IMAGE_EXTS), "txt", handler=wds.warn_and_continue)
              .map_tuple(self.transform, lambda t: self.tokenize([t])[0], handler=wds.warn_and_continue)
              .batched(per_rank, partial=False))
        return wds.WebLoader(ds, batch_size=None, num_workers=self.workers, persistent_workers=False,
                             worker_init_fn=lambda w: torch.manual_seed(seed + w))

    def batch(self, step: int, batch_size: int, seed: int, device, rank: int = 0, world_size: int = 1) -> dict:
        if self._it is None or step != self._next:
            self._it = iter(self._pipeline(hash((seed, rank, step)) % (2 ** 31), batch_size // world_size))
        images, texts = next(self._it)
        self._next = step + 1
        return {"images": images.to(device, non_blocking=True), "texts": texts.to(device, non_blocking=True)}
