"""Reduction ONNX ops: ReduceSum/Mean/Max/Min/SumSquare/L2, ArgMax/ArgMin, CumSum.

The result keeps the input's dtype, as ONNX's reference does (graphc's sum of int32 is int64,
numpy's rule; the handlers cast back). Axes are an attribute before opset 18 (13 for
ReduceSum) and an input after, which must be known at import.
"""
from __future__ import annotations

import numpy as np

from ... import api
from ...ir.types import Dim
from ...ops.conv import flip
from ..importer import onnx_op, shape_of
from .common import all_known, axis_of, is_sizes, simplify_sizes
from .math import _trunc_divide

INTS = ("int32", "int64")


def _axes(node, x, axes_input) -> tuple[int, ...] | None:
    """The reduced axes, sorted and in [0, rank); None: the identity (noop_with_empty_axes)."""
    as_input = node.opset >= (13 if node.op_type == "ReduceSum" else 18)
    if as_input:
        axes = None if axes_input is None else node.static_ints(axes_input, "axes")
    else:
        axes = node.attr("axes")
    rank = len(shape_of(x))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(rank))
    out = sorted({axis_of(a, rank, node) for a in axes})
    if len(out) != len(axes):
        raise node.error(f"axes {list(axes)} name an axis twice")
    return tuple(out)


def _mean(x, axes, keepdims):
    if x.dtype in INTS:     # numpy's mean in the input's integer dtype truncates
        count = api.size_of(x, axes, x.dtype)
        return _trunc_divide(api.astype(api.sum(x, axes, keepdims), x.dtype), count)
    return api.mean(x, axes, keepdims)


def _max(x, axes, keepdims):
    if x.dtype == "bool":   # any: false over an empty set, as ONNX says
        return api.greater(api.sum(x, axes, keepdims), 0)
    return api.max(x, axes, keepdims)


def _min(x, axes, keepdims):
    if x.dtype == "bool":   # all: true over an empty set
        return api.equal(api.sum(api.logical_not(x), axes, keepdims), 0)
    return api.min(x, axes, keepdims)


def _sum_square(x, axes, keepdims):
    return api.sum(api.multiply(x, x), axes, keepdims)


def _l2(x, axes, keepdims):
    return api.sqrt(_sum_square(x, axes, keepdims))


def _l1(x, axes, keepdims):
    return api.sum(api.abs(x), axes, keepdims)


def _log_sum(x, axes, keepdims):
    return api.log(api.sum(x, axes, keepdims))


def _log_sum_exp(x, axes, keepdims):
    """max + log(sum(exp(x - max))), the max taken as 0 where it is not finite (an empty set,
    all -inf, an inf), as ONNX's reference does."""
    top = api.max(x, axes, keepdims=True)
    top = api.where(api.less(api.abs(top), np.inf), top, 0.0)
    out = api.add(api.log(api.sum(api.exp(api.subtract(x, top)), axes, keepdims=True)), top)
    return out if keepdims else api.squeeze(out, axes)


def _prod(x, axes, keepdims):
    """The product over `axes` (static sizes) as a tree of multiplies, log2 n levels
    (integers wrap as numpy's): the reduced axes are moved last and flattened into one, which
    is halved until one element is left."""
    kept = [a for a in range(x.ndim) if a not in axes]
    out_shape = tuple(1 if a in axes else d for a, d in enumerate(x.shape)) if keepdims else \
        tuple(x.shape[a] for a in kept)
    n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    if n == 0:
        return _ones(out_shape, x.dtype)
    flat = api.reshape(api.transpose(x, tuple(kept + list(axes))),
                       tuple(x.shape[a] for a in kept) + (n,))
    while n > 1:
        lead = flat.shape[:-1]
        if n % 2:
            flat = api.concatenate([flat, _ones(lead + (1,), x.dtype)], len(lead))
            n += 1
        half = n // 2
        first = api.slice_(flat, (0,) * flat.ndim, lead + (half,))
        second = api.slice_(flat, (0,) * len(lead) + (half,), lead + (n,))
        flat = api.multiply(first, second)
        n = half
    return api.reshape(flat, out_shape)


def _ones(shape, dtype):
    return api.add(api.zeros(shape, dtype), 1)


# op type: (graph function (x, axes, keepdims), numpy function on known values)
REDUCTIONS = {
    "ReduceSum": (api.sum, np.sum),
    "ReduceMean": (_mean, None),
    "ReduceMax": (_max, np.max),
    "ReduceMin": (_min, np.min),
    "ReduceSumSquare": (_sum_square, lambda x, axis, keepdims: np.sum(x * x, axis, None, None,
                                                                      keepdims)),
    "ReduceL2": (_l2, None),
    "ReduceL1": (_l1, None),
    "ReduceLogSum": (_log_sum, None),
    "ReduceLogSumExp": (_log_sum_exp, None),
    "ReduceProd": (_prod, np.prod),
}


STATIC_AXES = {"ReduceProd"}     # a tree of multiplies needs the reduced sizes


@onnx_op(*REDUCTIONS)
def _reduce(node, x, axes=None):
    graph_fn, numpy_fn = REDUCTIONS[node.op_type]
    axes = _axes(node, x, axes)
    if axes is None:
        return x
    keepdims = bool(node.attr("keepdims", 1))
    if is_sizes(x) and node.op_type == "ReduceProd":
        # exporters multiply shape entries (B * T) this way: Python's products of ints and
        # Dims, from the int 1
        out = np.prod(np.asarray(x), axis=axes, keepdims=keepdims, initial=1)
        return simplify_sizes(np.asarray(out))
    if all_known(x) and not is_sizes(x) and numpy_fn is not None and np.size(x) > 0:
        x = np.asarray(x)
        return np.asarray(numpy_fn(x, axis=axes, keepdims=keepdims)).astype(x.dtype)
    x = node.tensor(x)
    if node.op_type in STATIC_AXES:
        symbolic = [x.shape[a] for a in axes if isinstance(x.shape[a], Dim)]
        if symbolic:
            raise node.error(f"the reduced axes have the symbolic sizes "
                             f"{', '.join(map(str, symbolic))}; {node.op_type} needs them "
                             f"static", fix="export the model with those sizes fixed")
    out = graph_fn(x, axes, keepdims)
    return out if out.dtype == x.dtype else api.astype(out, x.dtype)


def _last_index(x, axis, keepdims, pick):
    """The last index of the max (min) along `axis`; the last NaN, if any, wins (numpy's
    argmax of the reversed axis)."""
    best = pick(x, axis, keepdims=True)
    hit = api.logical_or(api.equal(x, best), api.not_equal(x, x))
    n = x.shape[axis]
    shape = tuple(n if i == axis else 1 for i in range(x.ndim))
    index = api.reshape(api.astype(_iota(n), "int64"), shape)
    return api.max(api.where(hit, index, -1), axis, keepdims)


def _iota(n):
    from ...trace import apply
    return apply("iota", [], dtype="int64", shape=(n,))


@onnx_op("ArgMax", "ArgMin")
def _arg(node, x):
    x = node.tensor(x)
    axis = axis_of(node.attr("axis", 0), x.ndim, node)
    keepdims = bool(node.attr("keepdims", 1))
    if node.attr("select_last_index", 0):
        if x.dtype == "bool":
            x = api.astype(x, "int64")
        pick = api.max if node.op_type == "ArgMax" else api.min
        return _last_index(x, axis, keepdims, pick)
    fn = api.argmax if node.op_type == "ArgMax" else api.argmin
    return fn(x, axis, keepdims)


def _cumprod(x, axis):
    """Running products along `axis` (static size): a log-step scan, ceil(log2 n) shifted
    multiplies, as graphc's cumsum."""
    n, shift = x.shape[axis], 1
    while shift < n:
        head = tuple(shift if i == axis else d for i, d in enumerate(x.shape))
        stops = tuple(n - shift if i == axis else d for i, d in enumerate(x.shape))
        before = api.concatenate([_ones(head, x.dtype), api.slice_(x, (0,) * x.ndim, stops)],
                                 axis)
        x = api.multiply(x, before)
        shift *= 2
    return x


# op type: (scan along one axis, the identity shifted in by `exclusive`)
SCANS = {"CumSum": (api.cumsum, 0), "CumProd": (_cumprod, 1)}


@onnx_op(*SCANS)
def _scan(node, x, axis):
    scan, identity = SCANS[node.op_type]
    (axis,) = node.static_ints(axis, "the axis")
    x = node.tensor(x)
    axis = axis_of(axis, x.ndim, node)
    n = x.shape[axis]
    if isinstance(n, Dim):
        raise node.error(f"the axis {axis} has the symbolic size {n}; {node.op_type} needs a "
                         f"static size along its axis", fix="export the model with that size "
                                                            "fixed")
    reverse, exclusive = node.attr("reverse", 0), node.attr("exclusive", 0)
    if reverse:
        x = flip(x, axis)
    if exclusive and n > 0:   # the sums (products) before each element: shift the input by one
        head = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
        stops = tuple(n - 1 if i == axis else d for i, d in enumerate(x.shape))
        fill = api.add(api.zeros(head, x.dtype), identity)
        x = api.concatenate([fill, api.slice_(x, (0,) * x.ndim, stops)], axis)
    out = scan(x, axis)
    out = out if out.dtype == x.dtype else api.astype(out, x.dtype)
    return flip(out, axis) if reverse else out
