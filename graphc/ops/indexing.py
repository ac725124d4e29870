"""Reads at computed indices: take, take_along_axis, and their VJP, scatter_add.

Index rule (every target): an index i into an axis of size n reads entry i, or i + n when
-n <= i < 0 (numpy's wrap-around); anything else is clamped into [0, n - 1] inside kernels.
Where the indices are an input of the compiled function, the runtime refuses out-of-range
values before any native code runs (graphc.signature.index_bounds), so only indices computed
inside the graph are ever clamped.
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir.types import (ALL_DTYPES, INTS, NUMERIC, Dim, TensorType, broadcast_shapes,
                        fmt_shape)
from ..trace import Tensor, apply, as_tensor, user_location
from .. import api as G
from .registry import GATHER, OPS, SCATTER, defop


def wrap_clamp(i: np.ndarray, n: int) -> np.ndarray:
    """The index rule above, in numpy."""
    i = np.where(i < 0, i + n, i)
    return np.clip(i, 0, max(n - 1, 0)).astype(np.int64)


def _kernel_index(ix, i, n):
    """The index rule in generated code (i, n: i64 values)."""
    return ix.wrap_clamp(i, n)


# ------------------------------------------------------------------ take

def _take_infer(types, axis):
    x, idx = types
    if idx.dtype not in INTS:
        raise ValueError(f"indices must be int32 or int64, got {idx.dtype}")
    if not 0 <= axis < x.rank:
        raise ValueError(f"axis {axis} is out of range for rank {x.rank}")
    return TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)


def _take_reference(x, idx, axis):
    n = x.shape[axis]
    if n == 0:
        return np.zeros(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)
    return np.ascontiguousarray(np.take(x, wrap_clamp(idx, n), axis=axis))


def _take_gather(ix, coords, axis):
    r = len(ix.shape(1))
    n = ix.size(ix.shape(0)[axis])
    i = _kernel_index(ix, ix.index(1, coords[axis:axis + r]), n)
    src = coords[:axis] + [i] + coords[axis + r:]
    return ix.read(0, src, ix.lt(ix.const(0), n), 0)


def _take_vjp(g, y, x, idx, axis):
    return [apply("scatter_add", [g, idx], axis=axis, size=x.shape[axis], along=False), None]


def _bounds(types, axis):
    return 1, types[0].shape[axis]


take_op = defop("take", GATHER, arity=2, dtypes=ALL_DTYPES, infer=_take_infer,
                reference=_take_reference, gather=_take_gather, vjp=_take_vjp, bounds=_bounds,
                fix="indices must be an integer tensor")


# ------------------------------------------------------------------ take_along_axis

def _along_infer(types, axis):
    x, idx = types
    if idx.dtype not in INTS:
        raise ValueError(f"indices must be int32 or int64, got {idx.dtype}")
    if idx.rank != x.rank:
        raise ValueError(f"indices {fmt_shape(idx.shape)} must have the rank of the input "
                         f"{fmt_shape(x.shape)}")
    if not 0 <= axis < x.rank:
        raise ValueError(f"axis {axis} is out of range for rank {x.rank}")
    rest = broadcast_shapes(tuple(d for a, d in enumerate(x.shape) if a != axis),
                            tuple(d for a, d in enumerate(idx.shape) if a != axis))
    shape = list(rest)
    shape.insert(axis, idx.shape[axis])
    return TensorType(tuple(shape), x.dtype)


def _along_reference(x, idx, axis):
    n = x.shape[axis]
    shape = _along_infer([TensorType(x.shape, x.dtype.name), TensorType(idx.shape, "int64")],
                         axis).shape
    if n == 0:
        return np.zeros(shape, x.dtype)
    bx = np.broadcast_to(x, tuple(n if a == axis else d for a, d in enumerate(shape)))
    bi = np.broadcast_to(wrap_clamp(idx, n), shape)
    return np.ascontiguousarray(np.take_along_axis(bx, bi, axis=axis))


def _broadcast_coords(ix, shape, out_shape, coords):
    return [ix.const(0) if d == 1 and o != 1 else c for d, o, c in zip(shape, out_shape, coords)]


def _along_gather(ix, coords, axis):
    xs, ids = ix.shape(0), ix.shape(1)
    out = ix.node.shape
    n = ix.size(xs[axis])
    i = _kernel_index(ix, ix.index(1, _broadcast_coords(ix, ids, out, coords)), n)
    src = _broadcast_coords(ix, xs, out, coords)
    src[axis] = i
    return ix.read(0, src, ix.lt(ix.const(0), n), 0)


def _along_vjp(g, y, x, idx, axis):
    idx = G.broadcast_to(idx, g.shape) if tuple(idx.shape) != tuple(g.shape) else idx
    dx = apply("scatter_add", [g, idx], axis=axis, size=x.shape[axis], along=True)
    # (x broadcast against the indices: autodiff sums dx back to x's shape)
    return [dx, None]


along_op = defop("take_along_axis", GATHER, arity=2, dtypes=ALL_DTYPES, infer=_along_infer,
                 reference=_along_reference, gather=_along_gather, vjp=_along_vjp,
                 bounds=_bounds)


# ------------------------------------------------------------------ scatter_add

def _scatter_infer(types, axis, size, along):
    g, idx = types
    if idx.dtype not in INTS:
        raise ValueError(f"indices must be int32 or int64, got {idx.dtype}")
    if along:
        if tuple(idx.shape) != tuple(g.shape):
            raise ValueError(f"indices {fmt_shape(idx.shape)} must have the shape of the "
                             f"updates {fmt_shape(g.shape)}")
        return TensorType(g.shape[:axis] + (size,) + g.shape[axis + 1:], g.dtype)
    r = idx.rank
    if tuple(g.shape[axis:axis + r]) != tuple(idx.shape):
        raise ValueError(f"updates {fmt_shape(g.shape)} do not hold the index shape "
                         f"{fmt_shape(idx.shape)} at axis {axis}")
    return TensorType(g.shape[:axis] + (size,) + g.shape[axis + r:], g.dtype)


def _scatter_reference(g, idx, axis, size, along):
    """out[..., idx[j], ...] += g[..., j, ...] (numpy's add.at: duplicates accumulate)."""
    shape = _scatter_infer([TensorType(g.shape, g.dtype.name),
                            TensorType(idx.shape, "int64")], axis, size, along).shape
    out = np.zeros(shape, g.dtype)
    if size == 0:
        return out
    i = wrap_clamp(idx, size)
    if along:
        grid = list(np.indices(g.shape, sparse=True))
        grid[axis] = i
        np.add.at(out, tuple(grid), g)
    else:
        moved = np.moveaxis(out, axis, 0)
        gm = g.reshape(g.shape[:axis] + (-1,) + g.shape[axis + idx.ndim:])
        np.add.at(moved, i.reshape(-1), np.moveaxis(gm, axis, 0))
    return out


def _scatter_vjp(g, y, upd, idx, axis, size, along):
    op = "take_along_axis" if along else "take"
    return [apply(op, [g, idx], axis=axis), None]


scatter_add = defop("scatter_add", SCATTER, arity=2, dtypes=NUMERIC, infer=_scatter_infer,
                    reference=_scatter_reference, vjp=_scatter_vjp)


# ------------------------------------------------------------------ functions

def _indices(indices, fn: str) -> Tensor:
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
        indices = np.asarray(indices, np.int64)
    elif isinstance(indices, (list, tuple, np.ndarray)):
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise DTypeError(f"{fn}: indices must be integers, got {indices.dtype}", op=fn,
                             loc=user_location())
        indices = indices.astype(np.int64)
    idx = as_tensor(indices)
    if idx.dtype not in INTS:
        raise DTypeError(f"{fn}: indices must be int32 or int64, got {idx.dtype}", op=fn,
                         loc=user_location(), fix="convert them with .astype('int64')")
    return idx


def _check_constant(x: Tensor, idx: Tensor, axis: int, fn: str) -> None:
    """Indices known at trace time are checked at once (numpy's range rule)."""
    node = idx.node
    if OPS[node.op].source != "constant" or isinstance(x.shape[axis], Dim):
        return
    values, n = np.asarray(node.attrs["value"]), x.shape[axis]
    if values.size and (values.min() < -n or values.max() >= n):
        bad = values[(values < -n) | (values >= n)].reshape(-1)[0]
        raise ShapeError(f"{fn}: index {bad} is out of range for axis {axis} of size {n}",
                         op=fn, loc=user_location())


def _axis(x: Tensor, axis, fn: str) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or \
            not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"{fn}: axis {axis!r} is out of range for shape {fmt_shape(x.shape)}",
                         op=fn, loc=user_location())
    return int(axis) % x.ndim


def take(x, indices, axis=None) -> Tensor:
    """numpy.take: x's entries at `indices` (int32/int64, any shape) along `axis` (None:
    of the flattened x). Negative indices count from the end; see the module docstring for
    indices out of range (refused at call time when they are an input, clamped otherwise).
    Its gradient adds into x's positions, duplicates accumulating (an embedding's backward).

        >>> vectors = graphc.take(table, token_ids, axis=0)   # (V, D), (B, T) -> (B, T, D)
    """
    x, idx = as_tensor(x), _indices(indices, "take")
    if axis is None:
        x, axis = G.reshape(x, (-1,)), 0
    axis = _axis(x, axis, "take")
    if isinstance(x.shape[axis], int) and x.shape[axis] == 0 and \
            not any(d == 0 for d in idx.shape):
        raise ShapeError(f"take: cannot take from the empty axis {axis} of "
                         f"{fmt_shape(x.shape)}", op="take", loc=user_location())
    _check_constant(x, idx, axis, "take")
    return apply("take", [x, idx], axis=axis)


def take_along_axis(x, indices, axis) -> Tensor:
    """numpy.take_along_axis: out[..., j, ...] = x[..., indices[..., j, ...], ...] along
    `axis`, indices of x's rank broadcast against x elsewhere (e.g. picking each row's label
    score). Same index rule as take; the gradient scatters back, duplicates accumulating."""
    x, idx = as_tensor(x), _indices(indices, "take_along_axis")
    if axis is None:
        x, axis = G.reshape(x, (-1,)), 0
    axis = _axis(x, axis, "take_along_axis")
    if idx.ndim != x.ndim:
        raise ShapeError(f"take_along_axis: indices {fmt_shape(idx.shape)} must have the rank "
                         f"of x {fmt_shape(x.shape)}", op="take_along_axis", loc=user_location())
    _check_constant(x, idx, axis, "take_along_axis")
    return apply("take_along_axis", [x, idx], axis=axis)


__all__ = ["take", "take_along_axis", "wrap_clamp"]
