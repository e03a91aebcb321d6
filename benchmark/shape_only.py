"""Running a training step for its shapes only: FLOPs and activation memory of a step without its memory.

A *shape-only* model holds its parameters (and large buffers) on PyTorch's ``meta`` device: tensors with a shape
and dtype but no storage, on which every aten operator computes only the shape of its result, autograd included.
``FlopCounterMode`` counts an operator from its shapes alone, so a step run on a shape-only model is counted
exactly as the same step on real weights, for the cost of dispatching it (a ViT-B/16 step costs the same at any
batch size, and no memory).

What stays real is what a step decides from its *data*: the batch, the random draws (masks come from the same
torch RNG, in the same order, as on real weights), small buffers (a threshold), and everything computed from
those alone, for example cluster masking's patch similarities from the real pixels and its batch-uniform kept
length, or the caption words a masked-language loss selects. ``ShapeOnly`` (a dispatch mode) moves the real
inputs of an operator that also has a meta input to the meta device; a boolean mask computed from real data may
index a meta tensor (the result's shape follows from the mask). A decision taken on a value computed from the
weights cannot be planned this way: it raises ``NeedsRealValues``, naming the operator (a caller that holds the
real method counts the real step instead). A float read from a meta tensor (a statistic for the log,
``loss.item()``) reads NaN.

While ``tracked()``, the live bytes of meta results (views excluded) are summed; their peak is the step's
activation and gradient memory at the dtype the step ran in.
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

aten = torch.ops.aten

# Buffers with more elements than this are built on the meta device; smaller ones (a threshold, a centre, the
# causal mask) stay real, so a step may read them. Parameters are all meta: their gradients are.
REAL_BUFFER_MAX_NUMEL = 1 << 16
# While building, factories of more elements than this give meta tensors (weights before they become parameters).
_BUILD_META_ABOVE = 1024

_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_SCALAR = aten._local_scalar_dense.default
_META = torch.device("meta")


class NeedsRealValues(RuntimeError):
    """A step took a decision (a shape, a branch) on a value computed from the shape-only weights."""


def is_meta(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_meta


def _long_indices(indices, op) -> list:
    """Boolean masks among ``indices`` as the long index tensors they select (``nonzero`` on the real mask)."""
    out = []
    for idx in indices:
        if isinstance(idx, torch.Tensor) and idx.dtype in (torch.bool, torch.uint8):
            if idx.is_meta:
                raise NeedsRealValues(f"{op}: a boolean mask computed from the model's weights selects the result's "
                                      "shape")
            out.extend(idx.nonzero().unbind(1))
        else:
            out.append(idx)
    return out


class ShapeOnly(TorchDispatchMode):
    """Dispatch mode of shape-only models (module docstring). ``building=True``: large factories give meta
    tensors too (a model under construction)."""

    def __init__(self, building: bool = False):
        super().__init__()
        self.building = building
        self.tracking = False
        self.live_bytes = 0
        self.peak_bytes = 0

    @contextmanager
    def tracked(self):
        self.tracking, self.live_bytes, self.peak_bytes = True, 0, 0
        try:
            yield self
        finally:
            self.tracking = False

    def _free(self, nbytes: int) -> None:
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        meta = any(t.is_meta for t in tensors)
        if func is _SCALAR and meta:
            t = args[0]
            if t.dtype.is_floating_point or t.dtype.is_complex:
                return math.nan                          # a statistic read for the log
            raise NeedsRealValues(f"an integer or boolean value of a tensor computed from the model's weights "
                                  f"({tuple(t.shape)}, {t.dtype}) decides the step's control flow or shapes")
        if not meta:
            if self.building and not tensors and any(a.name == "device" for a in func._schema.arguments):
                out = func(*args, **{**kwargs, "device": _META})        # a factory: its size first, for free
                if isinstance(out, torch.Tensor) and out.numel() > _BUILD_META_ABOVE:
                    return out
            return func(*args, **kwargs)
        if func in _INDEXING:
            args = (args[0], _long_indices(args[1], func), *args[2:])
            flat, spec = tree_flatten((args, kwargs))
        flat = [a.to(_META) if isinstance(a, torch.Tensor) and not a.is_meta else a for a in flat]
        flat = [_META if isinstance(a, torch.device) else a for a in flat]
        args, kwargs = tree_unflatten(flat, spec)
        out = func(*args, **kwargs)
        if self.tracking:
            returns = func._schema.returns
            for i, t in enumerate(out if isinstance(out, (tuple, list)) else (out,)):
                if is_meta(t) and not (i < len(returns) and returns[i].alias_info is not None):
                    nbytes = t.numel() * t.element_size()
                    self.live_bytes += nbytes
                    self.peak_bytes = max(self.peak_bytes, self.live_bytes)
                    weakref.finalize(t, self._free, nbytes)
        return out


def to_shape_only(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter, and every buffer above ``REAL_BUFFER_MAX_NUMEL`` elements, moved to the meta device."""
    moved: dict[int, torch.nn.Parameter] = {}          # a parameter shared by two modules stays shared
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is None:
                continue
            if id(p) not in moved:
                moved[id(p)] = torch.nn.Parameter(p.detach().to(_META), requires_grad=p.requires_grad)
            m._parameters[name] = moved[id(p)]
        for name, b in list(m._buffers.items()):
            if b is not None and not b.is_meta and b.numel() > REAL_BUFFER_MAX_NUMEL:
                m._buffers[name] = b.to(_META)
    return module


@contextmanager
def building():
    """``with building(): model = Model(...)``: large tensors are made on the meta device as the model is built
    (no memory, no initialisation time); call ``to_shape_only`` on the result."""
    with ShapeOnly(building=True):
        yield
