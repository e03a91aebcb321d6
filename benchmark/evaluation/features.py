"""Encode once: every evaluation image and text is encoded once per model and reused by every task.

clip_benchmark's metric functions take a model with ``encode_image``/``encode_text``, a tokenizer and a
dataloader. ``Encoder.feature_model()`` and ``Encoder.tokenizer`` give them exactly that interface over the
cached features: the dataloaders yield image features shaped [B, D, 1, 1] (a 4-D "image" every function
accepts), the "tokenizer" maps strings to rows of the cached text-feature table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmark.data.preprocess import normalize_images, tokenizer as make_tokenizer


class Encoder:
    def __init__(self, model, context_length: int, device, batch_size: int = 256, mean=None, std=None):
        self.model = model            # anything with encode_image / encode_text (a Method, an open_clip CLIP)
        self.device = torch.device(device)
        self.norm = {"mean": tuple(mean), "std": tuple(std)} if mean is not None and std is not None else {}
        self.batch_size = batch_size
        self._tokenize = make_tokenizer(context_length)
        self._images: dict[str, torch.Tensor] = {}
        self._item_rows: dict[str, torch.Tensor] = {}   # lazy (on-disk) sources: one feature per image identity
        self._rows: dict[str, int] = {}
        self._table: list[torch.Tensor] = []
        self.encoded_images = 0       # counters: the encode-once guarantee is tested on them
        self.encoded_texts = 0

    @torch.no_grad()
    def images(self, key: str, images_u8) -> torch.Tensor:
        """L2-normalised features [N, D] of the uint8 images [N, H, W, 3] of evaluation set ``key``.

        ``images_u8`` may also be a lazy source read from disk (real datasets): anything with ``item_keys``
        (one identity per image, e.g. its file path) and ``load(indices) -> uint8 [n, H, W, 3]``. Its images
        are cached per item (not per ``key``: two tasks' sets may share a name), so an image shared by two sets
        (CIFAR's test images in zero-shot classification and the linear probe) is encoded once.
        """
        if hasattr(images_u8, "item_keys"):
            return self._lazy_images(images_u8)
        if key not in self._images:
            was_training = getattr(self.model, "training", False)
            self.model.eval()
            x = torch.as_tensor(images_u8).permute(0, 3, 1, 2)
            feats = [F.normalize(self.model.encode_image(normalize_images(x[i:i + self.batch_size], self.device, **self.norm))
                                 .float(), dim=-1).cpu() for i in range(0, len(x), self.batch_size)]
            self._images[key] = torch.cat(feats)
            self.encoded_images += len(x)
            if was_training:
                self.model.train()
        return self._images[key]

    def _lazy_images(self, source) -> torch.Tensor:
        keys = list(source.item_keys)
        missing, seen = [], set()
        for i, k in enumerate(keys):
            if k not in self._item_rows and k not in seen:
                seen.add(k)
                missing.append(i)
        if missing:
            was_training = getattr(self.model, "training", False)
            self.model.eval()
            for i in range(0, len(missing), self.batch_size):
                idx = missing[i:i + self.batch_size]
                x = torch.as_tensor(source.load(idx)).permute(0, 3, 1, 2)
                feats = F.normalize(self.model.encode_image(normalize_images(x, self.device, **self.norm)).float(), dim=-1).cpu()
                for j, f in zip(idx, feats):
                    self._item_rows[keys[j]] = f
            self.encoded_images += len(missing)
            if was_training:
                self.model.train()
        return torch.stack([self._item_rows[k] for k in keys])

    @torch.no_grad()
    def texts(self, strings: list[str]) -> torch.Tensor:
        """Features [n, D] of ``strings``; strings seen before are not encoded again."""
        missing = list(dict.fromkeys(s for s in strings if s not in self._rows))
        if missing:
            was_training = getattr(self.model, "training", False)
            self.model.eval()
            for i in range(0, len(missing), self.batch_size):
                chunk = missing[i:i + self.batch_size]
                feats = F.normalize(self.model.encode_text(self._tokenize(chunk).to(self.device)).float(), dim=-1)
                for s, f in zip(chunk, feats.cpu()):
                    self._rows[s] = len(self._table)
                    self._table.append(f)
            self.encoded_texts += len(missing)
            if was_training:
                self.model.train()
        return torch.stack([self._table[self._rows[s]] for s in strings])

    def tokenizer(self, strings: list[str]) -> torch.Tensor:
        """clip_benchmark-compatible tokenizer: strings -> row indices into the text-feature table."""
        self.texts(strings)
        return torch.tensor([self._rows[s] for s in strings], dtype=torch.long)

    def feature_model(self) -> nn.Module:
        return _FeatureModel(self)


class _FeatureModel(nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1)

    def encode_text(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.encoder._table[int(i)] for i in rows])


class FeatureDataset(Dataset):
    """Image features as [D, 1, 1] "images" with their targets; ``classes`` as clip_benchmark expects."""

    def __init__(self, features: torch.Tensor, targets, classes: list[str] | None = None):
        self.features = features[:, :, None, None]
        self.targets = targets
        self.classes = classes or []

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i], self.targets[i]


def loader(dataset: Dataset, collate_fn=None, batch_size: int = 256) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_fn)
