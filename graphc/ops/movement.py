"""Data movement: views (reshape), affine reads (transpose, broadcast_to), concatenate; sources."""
from __future__ import annotations

import numpy as np

from ..ir.types import ALL_DTYPES, Dim, TensorType, broadcast_shapes, fmt_shape, numel
from .. import api as G
from .registry import CONCAT, LAYOUT, SLICE, SOURCE, VIEW, defop


def _inverse(axes):
    out = [0] * len(axes)
    for i, a in enumerate(axes):
        out[a] = i
    return tuple(out)


def _concat_vjp(g, y, *xs, axis):
    out, offset = [], 0
    for x in xs:
        starts = tuple(offset if i == axis else 0 for i in range(g.ndim))
        stops = tuple(offset + x.shape[axis] if i == axis else d for i, d in enumerate(g.shape))
        out.append(G.slice_(g, starts, stops))
        offset += x.shape[axis]
    return out


def _slice_vjp(g, y, x, starts, stops):
    # pad g with zeros back to x's shape, one axis at a time
    for axis, (a, b, d) in enumerate(zip(starts, stops, x.shape)):
        parts = []
        if a > 0:
            parts.append(G.zeros(g.shape[:axis] + (a,) + g.shape[axis + 1:], g.dtype))
        parts.append(g)
        if not isinstance(d, Dim) and b < d:
            parts.append(G.zeros(g.shape[:axis] + (d - b,) + g.shape[axis + 1:], g.dtype))
        g = G.concatenate(parts, axis) if len(parts) > 1 else g
    return [g]


def _source_infer(types, dtype, shape, **_):
    return TensorType(tuple(shape), dtype)


def _bound_by_caller(*_, **__):
    raise AssertionError("graph inputs are created by trace and bound by the caller")


input_ = defop("input", SOURCE, arity=0, dtypes=(), reference=_bound_by_caller,
               infer=_bound_by_caller, source="input")
constant = defop("constant", SOURCE, arity=0, dtypes=(), infer=_source_infer,
                 reference=lambda value, dtype, shape: value, source="constant")
# iota(n)[i] == i; used by one_hot so a one-hot matrix is computed, never stored.
iota = defop("iota", SOURCE, arity=0, dtypes=(), infer=_source_infer,
             reference=lambda dtype, shape: np.arange(shape[0], dtype=dtype), source="iota")
# The runtime value of a (possibly symbolic) size as a 0-d tensor, e.g. the divisor of mean.
size = defop("size", SOURCE, arity=0, dtypes=(), infer=_source_infer,
             reference=lambda value, dtype, shape: np.asarray(value, dtype=dtype), source="size")


def _reshape_infer(types, shape):
    (x,) = types
    if numel(x.shape) != numel(shape):
        raise ValueError(f"cannot reshape {fmt_shape(x.shape)} into {fmt_shape(shape)}: "
                         f"{numel(x.shape)} vs {numel(shape)} elements")
    return TensorType(tuple(shape), x.dtype)


reshape = defop("reshape", VIEW, arity=1, dtypes=ALL_DTYPES, infer=_reshape_infer,
                vjp=lambda g, y, x, shape: [G.reshape(g, x.shape)],
                reference=lambda x, shape: np.reshape(x, shape))


def _transpose_infer(types, axes):
    (x,) = types
    if sorted(axes) != list(range(x.rank)):
        raise ValueError(f"axes {axes} are not a permutation of {x.rank} axes")
    return TensorType(tuple(x.shape[a] for a in axes), x.dtype)


transpose = defop("transpose", LAYOUT, arity=1, dtypes=ALL_DTYPES, infer=_transpose_infer,
                  vjp=lambda g, y, x, axes: [G.transpose(g, _inverse(axes))],
                  permutation=lambda axes: tuple(axes),
                  reference=lambda x, axes: np.ascontiguousarray(np.transpose(x, axes)))


def _broadcast_to_infer(types, shape):
    (x,) = types
    if broadcast_shapes(x.shape, shape) != tuple(shape):
        raise ValueError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(shape)}")
    return TensorType(tuple(shape), x.dtype)


broadcast_to = defop("broadcast_to", LAYOUT, arity=1, dtypes=ALL_DTYPES,
                     infer=_broadcast_to_infer, vjp=lambda g, y, x, shape: [g],
                     reference=lambda x, shape: np.ascontiguousarray(np.broadcast_to(x, shape)))


def _concat_infer(types, axis):
    first = types[0]
    if any(t.dtype != first.dtype for t in types):
        raise ValueError("inputs must share a dtype after promotion")
    if any(t.rank != first.rank for t in types):
        raise ValueError(f"inputs must have the same rank, got "
                         f"{', '.join(fmt_shape(t.shape) for t in types)}")
    if not 0 <= axis < first.rank:
        raise ValueError(f"axis {axis} is out of range for rank {first.rank}")
    total = 0
    for t in types:
        for i, (a, b) in enumerate(zip(t.shape, first.shape)):
            if i != axis and a != b:
                raise ValueError(f"shapes {fmt_shape(first.shape)} and {fmt_shape(t.shape)} "
                                 f"differ at axis {i}, not only at the concatenation axis {axis}")
        if isinstance(t.shape[axis], Dim):
            raise ValueError("concatenation along a symbolic axis is not supported")
        total += t.shape[axis]
    return TensorType(first.shape[:axis] + (total,) + first.shape[axis + 1:], first.dtype)


concatenate = defop("concatenate", CONCAT, arity=None, dtypes=ALL_DTYPES, infer=_concat_infer,
                    vjp=_concat_vjp,
                    reference=lambda *xs, axis: np.concatenate(xs, axis=axis))


def _slice_infer(types, starts, stops):
    (x,) = types
    if len(starts) != x.rank or len(stops) != x.rank:
        raise ValueError(f"slice needs one start and stop per axis of {fmt_shape(x.shape)}")
    shape = []
    for d, a, b in zip(x.shape, starts, stops):
        if isinstance(b, Dim) or isinstance(d, Dim):
            if a != 0 or b != d:
                raise ValueError(f"a symbolic axis ({d}) can only be taken whole")
            shape.append(d)
            continue
        if not 0 <= a <= b <= d:
            raise ValueError(f"slice [{a}:{b}] is out of bounds for an axis of size {d}")
        shape.append(b - a)
    return TensorType(tuple(shape), x.dtype)


slice_ = defop("slice", SLICE, arity=1, dtypes=ALL_DTYPES, infer=_slice_infer, vjp=_slice_vjp,
               reference=lambda x, starts, stops: np.ascontiguousarray(
                   x[tuple(slice(a, b) for a, b in zip(starts, stops))]))
