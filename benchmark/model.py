"""The model: the scale's open_clip CLIP, built from a seed, and loaded back from a saved state dict.

Every run trains ``build_clip(scale, seed)`` (wrapped by its method); ``runs`` saves the method's ``export()`` as
``model.pt``, and every evaluation, ``benchmark eval`` and a method's teacher load it with ``load_clip``: strictly,
into a fresh open_clip CLIP of the scale's architecture, with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from benchmark.errors import UserError


def build_clip(scale, seed: int) -> open_clip.CLIP:
    """The scale's open_clip CLIP, its initialisation fixed by ``seed``."""
    torch.manual_seed(seed)
    return open_clip.CLIP(**scale.model)


def load_clip(path: str | Path, scale, device="cpu", what: str = "model", model: dict | None = None) -> open_clip.CLIP:
    """A state dict at ``path`` (a benchmark ``model.pt``, or an open_clip training checkpoint: ``state_dict`` with
    ``module.`` prefixes) loaded strictly into a fresh CLIP of ``scale``'s architecture (or of ``model``, the
    open_clip.CLIP kwargs of a run with its own, e.g. ``clip@wide``), in eval mode on ``device``. A file of another
    architecture is a UserError naming ``what`` it is and the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; give the path of an open_clip checkpoint of the "
                        f"{scale.name} model")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    arch = "the scale's architecture" if model is None else f"the architecture of its run ({model})"
    clip = open_clip.CLIP(**(scale.model if model is None else model))
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{what} {path} does not fit the {scale.name} model ({first}); it must have {arch}") \
            from None
    return clip.to(device).eval()
