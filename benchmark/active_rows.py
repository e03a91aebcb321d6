"""Train only the token-embedding rows the training captions use: the same training, without the dense gradient.

A text tower's token embedding has a row for each of open_clip's 49,408 tokens; a batch touches a few dozen. The
dense backward still writes a zero gradient for every other row, and AdamW still steps over them: on the pocket
CPU step that is about 8 % of the time (the zero-fill alone, 6 ms of 85). Rows that no training caption contains
get a zero gradient at every step, so their Adam moments stay exactly zero and AdamW's only change to them is its
decoupled weight decay, ``w <- w * (1 - lr * wd)``. ``ActiveRowsEmbedding`` trains the used rows as a small
parameter and applies exactly that decay to the others after each optimizer step (``follow``), with the same
floating-point operation as torch's fused AdamW, so the weights equal the dense run's bit for bit
(``tests/test_active_rows.py``). Its state dict holds the full ``weight`` as ``nn.Embedding``'s does: checkpoints
and exports are unchanged.

The harness applies it (``restrict_to_used_rows``) on CPU to trainable token embeddings when the training tokens
are known up front (in-memory data). A method whose loss reads the embedding matrix itself, e.g. a masked-language
head tied to it, gives every row a gradient; it sets ``Method.dense_token_embedding = True`` and is left dense.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ActiveRowsEmbedding(nn.Module):
    """An ``nn.Embedding`` whose rows outside ``rows`` are never looked up in training (their gradient is zero)."""

    def __init__(self, embedding: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        weight = embedding.weight.detach()
        rows = torch.unique(rows.to(weight.device))                       # sorted
        index = torch.full((self.num_embeddings,), -1, dtype=torch.long, device=weight.device)
        index[rows] = torch.arange(len(rows), device=weight.device)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("index", index, persistent=False)            # token id -> row of ``active``, or -1
        self.register_buffer("others", weight.clone(), persistent=False)  # every row; only the unused ones are read
        self.active = nn.Parameter(weight[rows].clone())

    @property
    def weight(self):
        raise RuntimeError("this token embedding trains only the rows the training captions use "
                           "(benchmark/active_rows.py); a method that reads the embedding matrix itself sets "
                           "dense_token_embedding = True on its Method class")

    def full_weight(self) -> torch.Tensor:
        """The whole matrix as the dense embedding would hold it (no gradient)."""
        w = self.others.clone()
        w[self.rows] = self.active.detach()
        return w

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.index[ids]
        if bool((pos >= 0).all()):
            return F.embedding(pos, self.active)
        if torch.is_grad_enabled() and self.active.requires_grad:
            unused = sorted(set(ids[pos < 0].tolist()))[:5]
            raise ValueError(f"token ids {unused} are not in the training captions, so this embedding cannot give "
                             "them a gradient; look them up under torch.no_grad(), or keep the embedding dense")
        return F.embedding(ids, self.full_weight())      # evaluation prompts may use tokens training never saw

    def decay_unused(self, factor: float) -> None:
        """AdamW's decoupled weight decay on the rows that get no gradient (torch's fused kernel: w * (1 - lr wd))."""
        self.others.mul_(factor)

    # ---- the state dict of an nn.Embedding: {prefix}weight, the full matrix --------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.full_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        w = state_dict[key]
        if tuple(w.shape) != (self.num_embeddings, self.embedding_dim):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(w.shape)}, the shape in "
                              f"the current model is {(self.num_embeddings, self.embedding_dim)}")
            return
        with torch.no_grad():
            self.others.copy_(w)
            self.active.copy_(w.to(self.others.device)[self.rows])


def restrict_to_used_rows(module: nn.Module, tokens: torch.Tensor) -> int:
    """Replace every trainable ``token_embedding`` under ``module`` by an ``ActiveRowsEmbedding`` over the ids in
    ``tokens`` (the training captions, tokenized). Returns how many were replaced. Call before the optimizer is
    made; ``benchmark.train.make_optimizer`` then calls ``follow``."""
    used = torch.unique(tokens)
    replaced = 0
    for parent in list(module.modules()):
        emb = getattr(parent, "token_embedding", None)
        if isinstance(emb, nn.Embedding) and emb.weight.requires_grad and emb.padding_idx is None \
                and emb.max_norm is None and not emb.sparse:
            parent.token_embedding = ActiveRowsEmbedding(emb, used)
            replaced += 1
    return replaced


def follow(module: nn.Module, opt: torch.optim.Optimizer) -> None:
    """After each step of ``opt``, decay the unused rows of every ``ActiveRowsEmbedding`` under ``module`` by the
    weight decay and learning rate of the parameter group that holds its used rows, as AdamW decays a row with a
    zero gradient and zero moments."""
    embeddings = [m for m in module.modules() if isinstance(m, ActiveRowsEmbedding)]
    if not embeddings:
        return
    if not isinstance(opt, torch.optim.AdamW):
        raise TypeError("ActiveRowsEmbedding reproduces AdamW's step on unused rows; this optimizer is "
                        f"{type(opt).__name__}")

    def group_of(p):   # looked up at each step: Optimizer.load_state_dict (a resume) replaces the group dicts
        return next(g for g in opt.param_groups if any(q is p for q in g["params"]))

    def after_step(optimizer, args, kwargs):
        for m in embeddings:
            g = group_of(m.active)
            if g["weight_decay"]:
                m.decay_unused(1 - g["lr"] * g["weight_decay"])

    opt.register_step_post_hook(after_step)


def for_training(method: nn.Module, data, device) -> int:
    """``restrict_to_used_rows`` where it applies: on CPU (on a GPU the dense gradient costs little), with the
    training tokens known up front (``InMemoryPairs.tokens``; streamed data is not), unless the method declares
    ``dense_token_embedding``."""
    tokens = getattr(data, "tokens", None)
    if torch.device(device).type != "cpu" or tokens is None or getattr(method, "dense_token_embedding", False):
        return 0
    return restrict_to_used_rows(method, tokens)
