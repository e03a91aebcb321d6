"""Preprocessing every consumer shares (training data, streaming, evaluation, perf): open_clip's OpenAI image
mean/std, the normalisation of uint8 images on the model's device, and the CLIP tokenizer."""
from __future__ import annotations

import open_clip
import torch

OPENAI_MEAN = open_clip.OPENAI_DATASET_MEAN
OPENAI_STD = open_clip.OPENAI_DATASET_STD


def tokenizer(context_length: int) -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=context_length)


def normalize_images(images_u8: torch.Tensor, device, dtype=torch.float32, mean=OPENAI_MEAN,
                     std=OPENAI_STD) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float on ``device`` (open_clip's OpenAI mean/std unless given: an
    external model's ``preprocess_cfg``)."""
    x = images_u8.to(device, non_blocking=True).to(dtype).div_(255)
    mean = torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std
