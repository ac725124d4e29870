"""Data movement: views (reshape), affine reads (transpose, broadcast_to), concatenate, slices
and padding (gathers); sources."""
from __future__ import annotations

import numpy as np

from ..ir.types import (ALL_DTYPES, NUMERIC, Dim, TensorType, broadcast_shapes, fmt_shape,
                        numel)
from .. import api as G
from ..trace import apply as apply_op
from .registry import CONCAT, GATHER, LAYOUT, SOURCE, VIEW, defop


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


def _slice_gather(ix, coords, starts, stops):
    return ix.read(0, [c if a == 0 else ix.add(c, ix.const(a)) for c, a in zip(coords, starts)])


# a gather: its consumers read the box in the loop that computes them (an LSTM's four gate
# slices of one matmul's output join the gate arithmetic's kernel)
slice_ = defop("slice", GATHER, arity=1, dtypes=ALL_DTYPES, infer=_slice_infer, vjp=_slice_vjp,
               gather=_slice_gather,
               keeps_rows=lambda shape, starts, stops: starts[0] == 0 and stops[0] == shape[0],
               reference=lambda x, starts, stops: np.ascontiguousarray(
                   x[tuple(slice(a, b) for a, b in zip(starts, stops))]))


# ------------------------------------------------------------------ pad
# pad: out[i] = x[src(i)] per axis: i - lo inside; outside, `value` (constant), the mirror
# image about the edge without repeating it (reflect), or the edge itself (edge).
# pad_adjoint: its transpose for the modes that read x more than once: each x[i] sums the
# output positions that read it (per axis at most 3: itself, and one reflection per side).

PAD_MODES = ("constant", "reflect", "edge")


def _pad_infer(types, pads, mode, value):
    (x,) = types
    if len(pads) != x.rank:
        raise ValueError(f"pad needs one (before, after) pair per axis of {fmt_shape(x.shape)}")
    shape = []
    for d, (lo, hi) in zip(x.shape, pads):
        if lo == hi == 0:
            shape.append(d)
            continue
        if isinstance(d, Dim):
            raise ValueError(f"a symbolic axis ({d}) cannot be padded")
        if mode == "reflect" and (lo >= d or hi >= d):
            raise ValueError(f"reflect widths ({lo}, {hi}) must be below the axis size {d}")
        if mode == "edge" and d == 0:
            raise ValueError("an empty axis has no edge to repeat")
        shape.append(d + lo + hi)
    return TensorType(tuple(shape), x.dtype)


def _pad_reference(x, pads, mode, value):
    if mode == "constant":
        return np.pad(x, pads, mode="constant", constant_values=np.asarray(value, x.dtype))
    return np.pad(x, pads, mode=mode)


def _pad_source(ix, i, lo, n, mode):
    """(coordinate in x, validity or None) of output coordinate i along one axis."""
    p = ix.sub(i, ix.const(lo))
    nn = ix.size(n)
    if mode == "constant":
        return p, [ix.ge(p, ix.const(0)), ix.lt(p, nn)]
    if mode == "edge":
        return ix.clamp(p, nn), None
    p = ix.select(ix.lt(p, ix.const(0)), ix.sub(ix.const(0), p), p)     # reflect
    top = ix.sub(nn, ix.const(1))
    return ix.select(ix.lt(top, p), ix.sub(ix.add(top, top), p), p), None


def _pad_gather(ix, coords, pads, mode, value):
    shape = ix.shape(0)
    src, valid = [], []
    for i, (c, (lo, hi), n) in enumerate(zip(coords, pads, shape)):
        if lo == hi == 0:
            src.append(c)
            continue
        p, conds = _pad_source(ix, c, lo, n, mode)
        src.append(p)
        valid += conds or []
    return ix.read(0, src, ix.all(valid) if valid else None, value)


def _pad_vjp(g, y, x, pads, mode, value):
    if mode == "constant":
        starts = tuple(lo for lo, _ in pads)
        stops = tuple(lo + d for (lo, _), d in zip(pads, x.shape))
        return [G.slice_(g, starts, stops)]
    return [apply_op("pad_adjoint", [g], pads=pads, mode=mode, size=tuple(x.shape))]


def _adjoint_candidates(ix, i, lo, hi, n, mode):
    """Output coordinates j (with validity) along one axis that read x[i]."""
    j = ix.add(i, ix.const(lo))
    out = [(j, None)]
    if mode == "reflect":
        # left mirror: j = lo - i for 1 <= i <= lo; right: j = lo + 2 (n - 1) - i for
        # n - 1 - hi <= i <= n - 2
        out.append((ix.sub(ix.const(lo), i), [ix.ge(i, ix.const(1)), ix.lt(i, ix.const(lo + 1))]))
        out.append((ix.sub(ix.const(lo + 2 * (n - 1)), i),
                    [ix.ge(i, ix.const(n - 1 - hi)), ix.lt(i, ix.const(n - 1))]))
    else:   # edge: the first x reads the lo cells before it, the last the hi after it
        for k in range(lo):
            out.append((ix.const(k), [ix.eq(i, ix.const(0))]))
        for k in range(hi):
            out.append((ix.const(lo + n + k), [ix.eq(i, ix.const(n - 1))]))
    return out


def _pad_adjoint_gather(ix, coords, pads, mode, size):
    import itertools
    per_axis = []
    for c, (lo, hi), n in zip(coords, pads, size):
        per_axis.append([(c, None)] if lo == hi == 0 else
                        _adjoint_candidates(ix, c, lo, hi, n, mode))
    total = None
    for combo in itertools.product(*per_axis):
        src = [j for j, _ in combo]
        conds = [p for _, cs in combo if cs for p in cs]
        term = ix.read(0, src, ix.all(conds) if conds else None, 0.0)
        total = term if total is None else ix.e.add(total, term)
    return total


def _pad_adjoint_infer(types, pads, mode, size):
    (g,) = types
    want = _pad_infer([TensorType(tuple(size), g.dtype)], pads, mode, 0).shape
    if tuple(g.shape) != tuple(want):
        raise ValueError(f"a pad gradient {fmt_shape(g.shape)} does not fit {fmt_shape(want)}")
    return TensorType(tuple(size), g.dtype)


def _pad_adjoint_reference(g, pads, mode, size):
    out = np.zeros(size, g.dtype)
    grids = []
    for (lo, hi), n in zip(pads, size):
        j = np.arange(n + lo + hi) - lo
        if mode == "reflect":
            j = np.abs(j)
            j = np.where(j > n - 1, 2 * (n - 1) - j, j)
        else:
            j = np.clip(j, 0, n - 1)
        grids.append(j)
    np.add.at(out, np.ix_(*grids), g)
    return out


pad_op = defop("pad", GATHER, arity=1, dtypes=ALL_DTYPES, infer=_pad_infer,
               reference=_pad_reference, gather=_pad_gather, vjp=_pad_vjp)
pad_adjoint = defop("pad_adjoint", GATHER, arity=1, dtypes=NUMERIC, infer=_pad_adjoint_infer,
                    reference=_pad_adjoint_reference, gather=_pad_adjoint_gather,
                    vjp=lambda g, y, x, pads, mode, size: [apply_op("pad", [g], pads=pads,
                                                                    mode=mode, value=0.0)])
