"""Shape and movement ONNX ops. Known inputs (shapes computed at import) stay known: numpy on
arrays of ints and symbolic Dims, so exporters' shape arithmetic folds into static shapes."""
from __future__ import annotations

import numpy as np

from ... import api
from ...ir.types import Dim, numel
from ..importer import is_tensor, onnx_op, shape_of
from .common import all_known, axis_of, is_sizes, simplify_sizes, sizes_array


@onnx_op("Constant")
def _constant(node):
    from onnx import numpy_helper
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            v = node.attrs[key]
            if key == "value":
                return numpy_helper.to_array(v)
            dtype = np.float32 if "float" in key else np.int64
            return np.asarray(v, dtype)
    raise node.error(f"unsupported Constant attribute ({', '.join(node.attrs)})")


@onnx_op("Shape")
def _shape(node, x):
    dims = list(shape_of(x))
    start, end = node.attr("start", 0), node.attr("end", None)
    return sizes_array(dims[slice(start, end)])


@onnx_op("Size")
def _size(node, x):
    n = numel(shape_of(x))
    return sizes_array([n]).reshape(())


def _target_shape(node, x, shape) -> tuple:
    """Reshape's target: 0 copies the input's size (unless allowzero), -1 is inferred."""
    want = node.ints(shape, "the target shape")
    dims = list(shape_of(x))
    allowzero = node.attr("allowzero", 0)
    out = []
    for i, d in enumerate(want):
        if isinstance(d, int) and d == 0 and not allowzero:
            if i >= len(dims):
                raise node.error(f"target shape {want}: 0 at axis {i} copies an axis the input "
                                 f"{tuple(dims)} does not have")
            d = dims[i]
        out.append(d)
    if out.count(-1) > 1:
        raise node.error(f"target shape {want} has more than one -1")
    if -1 in out:
        known = numel([d for d in out if not (isinstance(d, int) and d == -1)])
        total = numel(dims)
        if isinstance(total, Dim):
            rest = total.divide(known)
        elif isinstance(known, Dim):
            rest = None
        else:
            rest = total // known if known and total % known == 0 else None
        if rest is None:
            raise node.error(f"cannot reshape {tuple(dims)} into {tuple(want)}")
        out[out.index(-1)] = rest
    return tuple(out)


@onnx_op("Reshape")
def _reshape(node, x, shape=None):
    shape = node.attr("shape") if shape is None else shape   # (opset < 5: an attribute)
    target = _target_shape(node, x, shape)
    if not is_tensor(x):
        return np.asarray(x).reshape(target)
    return api.reshape(x, target)


@onnx_op("Flatten")
def _flatten(node, x):
    dims = shape_of(x)
    axis = node.attr("axis", 1)
    axis = axis + len(dims) if axis < 0 else axis
    target = (numel(dims[:axis]), numel(dims[axis:]))
    return np.asarray(x).reshape(target) if not is_tensor(x) else api.reshape(x, target)


@onnx_op("Transpose")
def _transpose(node, x):
    perm = node.attr("perm") or list(reversed(range(len(shape_of(x)))))
    return np.transpose(x, perm) if not is_tensor(x) else api.transpose(x, tuple(perm))


def _axes(node, axes_input, what="axes"):
    if node.opset >= 13 and "axes" not in node.attrs:
        return None if axes_input is None else node.static_ints(axes_input, what)
    return node.attr("axes")


@onnx_op("Unsqueeze")
def _unsqueeze(node, x, axes=None):
    axes = _axes(node, axes)
    rank = len(shape_of(x)) + len(axes)
    axes = sorted(axis_of(a, rank, node) for a in axes)
    dims = list(shape_of(x))
    for a in axes:
        dims.insert(a, 1)
    return np.asarray(x).reshape(dims) if not is_tensor(x) else api.reshape(x, tuple(dims))


@onnx_op("Squeeze")
def _squeeze(node, x, axes=None):
    axes = _axes(node, axes)
    dims = list(shape_of(x))
    if axes is None:
        axes = [i for i, d in enumerate(dims) if d == 1]
    axes = {axis_of(a, len(dims), node) for a in axes}
    for a in axes:
        if dims[a] != 1:
            raise node.error(f"cannot squeeze axis {a} of size {dims[a]}")
    keep = tuple(d for i, d in enumerate(dims) if i not in axes)
    return np.asarray(x).reshape(keep) if not is_tensor(x) else api.reshape(x, keep)


@onnx_op("Concat")
def _concat(node, *xs):
    xs = [x for x in xs if x is not None]
    axis = node.attr("axis")
    if all_known(*xs):
        if any(is_sizes(x) for x in xs):
            return simplify_sizes(np.concatenate([np.asarray(x, object) for x in xs], axis))
        return np.concatenate([np.asarray(x) for x in xs], axis)
    rank = len(shape_of(xs[0]))
    tensors = [node.tensor(x) for x in xs]
    return api.concatenate(tensors, axis_of(axis, rank, node))


@onnx_op("Gather")
def _gather(node, x, indices):
    axis = node.attr("axis", 0)
    if all_known(x, indices):
        return np.take(np.asarray(x), np.asarray(indices), axis=axis)
    from ...ops.indexing import take
    x = node.tensor(x)
    return take(x, node.tensor(indices), axis=axis_of(axis, x.ndim, node))


@onnx_op("ConstantOfShape")
def _constant_of_shape(node, shape):
    from onnx import numpy_helper
    value = node.attr("value")
    fill = numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    dims = node.ints(shape, "the shape")
    if all(isinstance(d, int) for d in dims):
        return np.full(dims, fill, fill.dtype)
    return api.broadcast_to(node.tensor(fill), tuple(dims))


@onnx_op("Expand")
def _expand(node, x, shape):
    dims = node.ints(shape, "the shape")
    have = list(shape_of(x))
    rank = max(len(dims), len(have))
    dims = [1] * (rank - len(dims)) + list(dims)
    have = [1] * (rank - len(have)) + have
    out = tuple(h if d == 1 else d for d, h in zip(dims, have))
    if all_known(x) and not is_sizes(x) and all(isinstance(d, int) for d in out):
        return np.broadcast_to(np.asarray(x).reshape(have), out).copy()
    return api.broadcast_to(api.reshape(node.tensor(x), tuple(have)), out)


@onnx_op("Range")
def _range(node, start, limit, delta):
    if all_known(start, limit, delta) and not any(is_sizes(v) for v in (start, limit, delta)):
        s, lim, d = (np.asarray(v).reshape(()) for v in (start, limit, delta))
        return np.arange(s, lim, d).astype(s.dtype)
    raise node.error("Range needs its start, limit and delta known at import")


@onnx_op("Slice")
def _slice(node, x, starts=None, ends=None, axes=None, steps=None):
    dims = list(shape_of(x))
    if node.opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
    else:
        starts, ends = node.static_ints(starts, "starts"), node.ints(ends, "ends")
        axes = None if axes is None else node.static_ints(axes, "axes")
        steps = None if steps is None else node.static_ints(steps, "steps")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * len(dims)
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = axis_of(a, len(dims), node)
        if isinstance(e, Dim):
            if e != dims[a]:
                raise node.error(f"slice end {e} on an axis of size {dims[a]}")
            e = None
        index[a] = slice(s, e, st)
    if all_known(x):
        return np.asarray(x)[tuple(index)]
    return x[tuple(index)]
