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
from .common import all_known, axis_of, is_sizes
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


# op type: (graph function (x, axes, keepdims), numpy function on known values)
REDUCTIONS = {
    "ReduceSum": (api.sum, np.sum),
    "ReduceMean": (_mean, None),
    "ReduceMax": (_max, np.max),
    "ReduceMin": (_min, np.min),
    "ReduceSumSquare": (_sum_square, lambda x, axis, keepdims: np.sum(x * x, axis, None, None,
                                                                      keepdims)),
    "ReduceL2": (_l2, None),
}


@onnx_op(*REDUCTIONS)
def _reduce(node, x, axes=None):
    graph_fn, numpy_fn = REDUCTIONS[node.op_type]
    axes = _axes(node, x, axes)
    if axes is None:
        return x
    keepdims = bool(node.attr("keepdims", 1))
    if all_known(x) and not is_sizes(x) and numpy_fn is not None and np.size(x) > 0:
        x = np.asarray(x)
        return np.asarray(numpy_fn(x, axis=axes, keepdims=keepdims)).astype(x.dtype)
    x = node.tensor(x)
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


@onnx_op("CumSum")
def _cumsum(node, x, axis):
    (axis,) = node.static_ints(axis, "the axis")
    x = node.tensor(x)
    axis = axis_of(axis, x.ndim, node)
    n = x.shape[axis]
    if isinstance(n, Dim):
        raise node.error(f"the axis {axis} has the symbolic size {n}; CumSum needs a static "
                         f"size along its axis", fix="export the model with that size fixed")
    reverse, exclusive = node.attr("reverse", 0), node.attr("exclusive", 0)
    if reverse:
        x = flip(x, axis)
    if exclusive:   # the sums before each element: shift the input by one along the axis
        head = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
        stops = tuple(n - 1 if i == axis else d for i, d in enumerate(x.shape))
        x = api.concatenate([api.zeros(head, x.dtype), api.slice_(x, (0,) * x.ndim, stops)],
                            axis)
    out = api.cumsum(x, axis)
    out = out if out.dtype == x.dtype else api.astype(out, x.dtype)
    return flip(out, axis) if reverse else out
