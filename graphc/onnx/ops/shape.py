"""Shape and movement ONNX ops. Known inputs (shapes computed at import) stay known: numpy on
arrays of ints and symbolic Dims, so exporters' shape arithmetic folds into static shapes."""
from __future__ import annotations

import numpy as np

from ... import api
from ...ir.types import Dim, broadcast_shapes, fmt_shape, numel
from ...ops.einsum import einsum
from ...ops.indexing import take, take_along_axis
from ...trace import apply
from ..importer import DTYPES, is_tensor, onnx_op, shape_of
from .common import all_known, axis_of, is_sizes, simplify_sizes, sizes_array

INT_MAX = 2 ** 31 - 1     # exporters write INT32_MAX or INT64_MAX for "to the end"


def _known(value) -> np.ndarray:
    """A known result: object arrays whose entries are all ints become int64 again."""
    arr = np.asarray(value)
    return simplify_sizes(arr) if arr.dtype == object else arr


def _is_static(dims) -> bool:
    return all(not isinstance(d, Dim) for d in dims)


# ---------------------------------------------------------------- constants

@onnx_op("Constant")
def _constant(node):
    from onnx import numpy_helper
    attrs = node.attrs
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    if "sparse_value" in attrs:
        return _sparse_to_dense(attrs["sparse_value"])
    forms = {"value_float": np.float32, "value_floats": np.float32,
             "value_int": np.int64, "value_ints": np.int64}
    for key, dtype in forms.items():
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    if "value_string" in attrs or "value_strings" in attrs:
        raise node.error("string constants are not supported (graphc computes on numbers)")
    raise node.error(f"no value attribute (got {', '.join(attrs) or 'none'})",
                     fix="give one of value, value_float(s), value_int(s), sparse_value")


def _sparse_to_dense(sparse) -> np.ndarray:
    from onnx import numpy_helper
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    out = np.zeros(dims, values.dtype)
    if indices.ndim == 1:      # linear indices into the flattened tensor
        out.reshape(-1)[indices] = values
    else:                      # one row of coordinates per value
        out[tuple(indices.T)] = values
    return out


@onnx_op("ConstantOfShape")
def _constant_of_shape(node, shape):
    from onnx import numpy_helper
    value = node.attr("value")
    fill = numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    dims = node.ints(shape, "the shape")
    if _is_static(dims):
        return np.full(dims, fill, fill.dtype)
    return api.broadcast_to(node.tensor(fill), tuple(dims))


@onnx_op("Range")
def _range(node, start, limit, delta):
    s = node.known(start, "start").reshape(())
    lim = node.known(limit, "limit").reshape(())
    d = node.known(delta, "delta").reshape(())
    if s.dtype != object and lim.dtype != object and d.dtype != object:
        # ONNX: max(ceil((limit - start) / delta), 0) entries start + i * delta
        n = max(int(np.ceil((float(lim) - float(s)) / float(d))), 0)
        return (s + np.arange(n).astype(s.dtype) * d).astype(s.dtype)
    s, lim, d = s.item(), lim.item(), d.item()
    length = lim.divide(d) if isinstance(lim, Dim) and s == 0 and not isinstance(d, Dim) \
        and d > 0 else None
    if length is None or isinstance(length, int):
        raise node.error(f"Range({s}, {lim}, {d}) has a length graphc cannot express",
                         fix="graphc's symbolic ranges start at 0 and step by a divisor of the "
                             "limit")
    dtype = "int64" if np.asarray(start).dtype == object else np.asarray(start).dtype.name
    out = apply("iota", [], dtype=dtype, shape=(length,))
    return out if d == 1 else api.multiply(out, np.asarray(d, dtype))


# ---------------------------------------------------------------- shapes as values

@onnx_op("Shape")
def _shape(node, x):
    dims = list(shape_of(x))
    start, end = node.attr("start", 0), node.attr("end", None)
    return sizes_array(dims[slice(start, end)])   # (Python's slice clamps as ONNX does)


@onnx_op("Size")
def _size(node, x):
    return sizes_array([numel(shape_of(x))]).reshape(())


# ---------------------------------------------------------------- views

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
                                 f"{fmt_shape(dims)} does not have")
            d = dims[i]
        elif isinstance(d, int) and d < -1:
            raise node.error(f"target shape {want} has the negative size {d}")
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
            raise node.error(f"cannot reshape {fmt_shape(dims)} into {tuple(want)}")
        out[out.index(-1)] = rest
    if numel(out) != numel(dims):
        raise node.error(f"cannot reshape {fmt_shape(dims)} ({numel(dims)} elements) into "
                         f"{fmt_shape(out)} ({numel(out)} elements)")
    return tuple(out)


def _view(x, shape: tuple):
    """x reshaped: numpy for known values, graphc's reshape for tensors."""
    if not is_tensor(x):
        return _known(np.asarray(x).reshape(shape))
    return api.reshape(x, shape)


@onnx_op("Reshape")
def _reshape(node, x, shape=None):
    shape = node.attr("shape") if shape is None else shape   # (opset < 5: an attribute)
    return _view(x, _target_shape(node, x, shape))


@onnx_op("Flatten")
def _flatten(node, x):
    dims = shape_of(x)
    axis = node.attr("axis", 1)
    if not -len(dims) <= axis <= len(dims):
        raise node.error(f"axis {axis} is out of range for a rank-{len(dims)} input")
    axis = axis + len(dims) if axis < 0 else axis
    return _view(x, (numel(dims[:axis]), numel(dims[axis:])))


def _axes(node, axes_input, what="axes"):
    """Squeeze/Unsqueeze axes: an attribute before opset 13, an input since."""
    if node.opset >= 13 and "axes" not in node.attrs:
        return None if axes_input is None else node.static_ints(axes_input, what)
    return node.attr("axes")


@onnx_op("Unsqueeze")
def _unsqueeze(node, x, axes=None):
    axes = _axes(node, axes)
    if axes is None:
        raise node.error("needs axes")
    rank = len(shape_of(x)) + len(axes)
    axes = sorted(axis_of(a, rank, node) for a in axes)
    if len(set(axes)) != len(axes):
        raise node.error(f"axes {axes} repeat an axis")
    dims = list(shape_of(x))
    for a in axes:
        dims.insert(a, 1)
    return _view(x, tuple(dims))


@onnx_op("Squeeze")
def _squeeze(node, x, axes=None):
    axes = _axes(node, axes)
    dims = list(shape_of(x))
    if axes is None:
        axes = [i for i, d in enumerate(dims) if d == 1]
    axes = {axis_of(a, len(dims), node) for a in axes}
    for a in axes:
        if dims[a] != 1:
            raise node.error(f"cannot squeeze axis {a} of size {dims[a]} (shape "
                             f"{fmt_shape(dims)})")
    return _view(x, tuple(d for i, d in enumerate(dims) if i not in axes))


@onnx_op("Transpose")
def _transpose(node, x):
    rank = len(shape_of(x))
    perm = node.attr("perm") or list(reversed(range(rank)))
    if sorted(axis_of(p, rank, node, "perm entry") for p in perm) != list(range(rank)):
        raise node.error(f"perm {list(perm)} is not a permutation of {rank} axes")
    if not is_tensor(x):
        return np.transpose(np.asarray(x), perm)
    return api.transpose(x, tuple(perm))


# ---------------------------------------------------------------- joins and splits

@onnx_op("Concat")
def _concat(node, *xs):
    xs = [x for x in xs if x is not None]
    axis = node.attr("axis")
    rank = len(shape_of(xs[0]))
    axis = axis_of(axis, rank, node)
    if all_known(*xs):
        if any(is_sizes(x) for x in xs):
            return _known(np.concatenate([np.asarray(x, object) for x in xs], axis))
        return np.concatenate([np.asarray(x) for x in xs], axis)
    # (an empty operand adds nothing; ONNX allows it, even of another rank's shape [0])
    tensors = [node.tensor(x) for x in xs if not (numel(shape_of(x)) == 0 and
                                                  len(shape_of(x)) != rank)]
    return api.concatenate(tensors, axis)


def _split_sizes(node, n, split) -> list:
    """The parts' sizes along the axis: the split input/attribute, else equal parts (the last
    one smaller when num_outputs does not divide the axis, opset 18)."""
    if node.opset < 13:
        split = node.attr("split")
    elif split is not None:
        split = node.static_ints(split, "split")
    parts = node.attr("num_outputs", node.num_outputs)
    if split is not None and len(split):
        if len(split) != node.num_outputs:
            raise node.error(f"split {split} has {len(split)} parts for {node.num_outputs} "
                             f"outputs")
        if isinstance(n, int) and sum(split) != n:
            raise node.error(f"split {split} does not add up to the axis size {n}")
        return list(split)
    if isinstance(n, Dim):
        if parts == 1:
            return [n]
        part = n.divide(parts)
        if part is None:
            raise node.error(f"cannot split the symbolic size {n} into {parts} equal parts")
        return [part] * parts
    if n % parts and node.opset < 18:
        raise node.error(f"the axis size {n} does not split into {parts} equal parts")
    part = -(-n // parts)
    return [part] * (parts - 1) + [n - part * (parts - 1)]


@onnx_op("Split")
def _split(node, x, split=None):
    dims = list(shape_of(x))
    axis = axis_of(node.attr("axis", 0), len(dims), node)
    sizes = _split_sizes(node, dims[axis], split)
    outs, offset = [], 0
    for size in sizes:
        if isinstance(size, Dim) and len(sizes) > 1:
            raise node.error(f"cannot split the symbolic axis {axis} ({dims[axis]}) into parts")
        index = [slice(None)] * len(dims)
        index[axis] = slice(offset, None if isinstance(size, Dim) else offset + size)
        outs.append(_known(np.asarray(x)[tuple(index)]) if not is_tensor(x) else
                    x[tuple(index)])
        offset = offset if isinstance(size, Dim) else offset + size
    return outs


# ---------------------------------------------------------------- slices and gathers

def _slice_range(start: int, end: int, step: int, n: int) -> slice:
    """ONNX's rule for one axis (negative values count from the end, then clamped: into
    [0, n] for a positive step, [-1, n - 1] for a negative one) as a Python slice."""
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return slice(start, None if end < 0 else end, step)


@onnx_op("Slice")
def _slice(node, x, starts=None, ends=None, axes=None, steps=None):
    dims = list(shape_of(x))
    if node.opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
    else:
        starts, ends = node.ints(starts, "starts"), node.ints(ends, "ends")
        axes = None if axes is None else node.static_ints(axes, "axes")
        steps = None if steps is None else node.static_ints(steps, "steps")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise node.error(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ "
                         f"in length")
    index = [slice(None)] * len(dims)
    seen, reversed_axes = set(), []
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = axis_of(a, len(dims), node)
        if a in seen:
            raise node.error(f"axes {axes} repeat axis {a}")
        seen.add(a)
        if st == 0:
            raise node.error("a step of 0")
        n = dims[a]
        if isinstance(n, Dim):
            if _reverses_whole(n, s, e, st):
                reversed_axes.append(a)
            else:
                index[a] = _symbolic_slice(node, a, n, s, e, st)
            continue
        if isinstance(s, Dim) or isinstance(e, Dim):
            raise node.error(f"symbolic bounds {s}:{e} on the axis {a} of static size {n}")
        index[a] = _slice_range(s, e, st, n)
    if not is_tensor(x):
        return _known(np.asarray(x)[tuple(index)])
    y = x[tuple(index)]
    for a in reversed_axes:      # entry i reads n - 1 - i, n known at run time
        n = dims[a]
        last = api.subtract(apply("size", [], value=n, dtype="int64", shape=()), np.int64(1))
        y = take(y, api.subtract(last, apply("iota", [], dtype="int64", shape=(n,))), axis=a)
    return y


def _reverses_whole(n, start, end, step) -> bool:
    """[n - 1, ..., 0] of a symbolic axis: step -1 from the end (-1 or "past the end") to
    past the front (an end of -n or less clamps to -1)."""
    from_end = start == -1 or start == n or (isinstance(start, int) and start >= INT_MAX)
    to_front = isinstance(end, int) and end <= -INT_MAX
    return step == -1 and from_end and to_front


def _symbolic_slice(node, axis, n, start, end, step) -> slice:
    """A symbolic axis can only be taken whole: [0, n) (an end of n or "to the end")."""
    whole_end = end == n or (isinstance(end, int) and end >= INT_MAX)
    if step == 1 and start == 0 and whole_end:
        return slice(None)
    raise node.error(f"slice {start}:{end}:{step} of the symbolic axis {axis} ({n}): graphc "
                     f"takes symbolic axes only whole",
                     fix="export the model with a static size for this axis, or fix it with "
                         "graphc.onnx.load(..., dims={name: size})")


@onnx_op("Gather")
def _gather(node, x, indices):
    axis = node.attr("axis", 0)
    if all_known(x, indices):
        arr = np.asarray(x)
        idx = np.asarray(indices)
        axis = axis_of(axis, arr.ndim, node)
        n = arr.shape[axis]
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise node.error(f"indices {idx.tolist()} out of range for an axis of size {n}")
        return _known(np.take(arr, idx, axis=axis))
    x = node.tensor(x)
    return take(x, node.tensor(indices), axis=axis_of(axis, x.ndim, node))


@onnx_op("GatherElements")
def _gather_elements(node, x, indices):
    x, indices = node.tensor(x), node.tensor(indices)
    axis = axis_of(node.attr("axis", 0), x.ndim, node)
    if indices.ndim != x.ndim:
        raise node.error(f"indices {fmt_shape(indices.shape)} must have the rank of the data "
                         f"{fmt_shape(x.shape)}")
    # the output has the indices' shape: off the axis, the data is read only that far
    box = tuple(slice(None) if a == axis or d == n else slice(0, d)
                for a, (d, n) in enumerate(zip(indices.shape, x.shape)))
    return take_along_axis(x[box], indices, axis)


# ---------------------------------------------------------------- broadcasts and copies

@onnx_op("Expand")
def _expand(node, x, shape):
    dims = node.ints(shape, "the shape")
    try:
        out = broadcast_shapes(tuple(shape_of(x)), tuple(dims))
    except ValueError as err:
        raise node.error(f"cannot expand {fmt_shape(shape_of(x))} to {fmt_shape(dims)}: {err}") \
            from None
    if not is_tensor(x) and _is_static(out):
        return _known(np.broadcast_to(np.asarray(x), out).copy())
    return api.broadcast_to(node.tensor(x), out)


@onnx_op("Tile")
def _tile(node, x, repeats):
    reps = node.static_ints(repeats, "repeats")
    dims = list(shape_of(x))
    if len(reps) != len(dims):
        raise node.error(f"repeats {reps} need one entry per axis of {fmt_shape(dims)}")
    if any(r < 0 for r in reps):
        raise node.error(f"repeats {reps} must be non-negative")
    if not is_tensor(x):
        return _known(np.tile(np.asarray(x), reps))
    # (r0, d0, r1, d1, ...) broadcast from (1, d0, 1, d1, ...), then merged pairwise
    spread = tuple(v for d in dims for v in (1, d))
    wide = tuple(v for r, d in zip(reps, dims) for v in (r, d))
    out = api.broadcast_to(api.reshape(x, spread), wide)
    return api.reshape(out, tuple(r * d if r != 1 else d for r, d in zip(reps, dims)))


def _pads_of(node, x, pads, value, axes):
    """(per-axis (before, after) widths, fill value) from the attributes (opset < 11) or the
    inputs; the widths are [begin..., end...] over `axes` (default: every axis)."""
    rank = len(shape_of(x))
    if node.opset < 11:
        pads = node.attr("pads", node.attr("paddings"))
        value = node.attr("value", 0.0)
    else:
        pads = node.static_ints(pads, "pads")
        value = 0 if value is None else node.known(value, "the constant value").reshape(())
        value = value.item() if isinstance(value, np.ndarray) else value
    axes = list(range(rank)) if axes is None else [
        axis_of(a, rank, node) for a in node.static_ints(axes, "axes")]
    if len(pads) != 2 * len(axes):
        raise node.error(f"pads {list(pads)} need a begin and an end for each of the axes "
                         f"{axes}")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (int(pads[i]), int(pads[i + len(axes)]))
    return widths, value


def _wrap(x, widths):
    """Pad with the tensor's periodic continuation: one take per padded axis."""
    for axis, (lo, hi) in enumerate(widths):
        if lo or hi:
            n = x.shape[axis]
            x = take(x, (np.arange(-lo, n + hi) % n).astype(np.int64), axis=axis)
    return x


@onnx_op("Pad")
def _pad(node, x, pads=None, value=None, axes=None):
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise node.error(f"mode {mode!r} is not supported",
                         fix="use constant, reflect, edge or wrap")
    widths, value = _pads_of(node, x, pads, value, axes)
    if not is_tensor(x):
        x = node.tensor(x)
    # negative widths crop first
    crop = tuple(slice(max(-lo, 0), None if hi >= 0 else hi) for lo, hi in widths)
    if any(lo < 0 or hi < 0 for lo, hi in widths):
        x = x[crop]
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    for axis, ((lo, hi), n) in enumerate(zip(widths, x.shape)):
        if (lo or hi) and isinstance(n, Dim):
            raise node.error(f"cannot pad the symbolic axis {axis} ({n})")
        if (lo or hi) and n == 0 and mode != "constant":
            raise node.error(f"{mode} padding of the empty axis {axis}")
    if mode == "wrap":
        return _wrap(x, widths)
    if mode == "constant":
        value = np.asarray(value).astype(x.dtype).item()
        return api.pad(x, widths, mode="constant", value=value)
    return api.pad(x, widths, mode=mode)


@onnx_op("Trilu")
def _trilu(node, x, k=None):
    k = 0 if k is None else node.static_ints(k, "k")[0]
    upper = node.attr("upper", 1)
    if not is_tensor(x):
        arr = np.asarray(x)
        return np.triu(arr, k) if upper else np.tril(arr, k)
    return api.triu(x, k) if upper else api.tril(x, k)


# ---------------------------------------------------------------- contractions

@onnx_op("Einsum")
def _einsum(node, *xs):
    equation = node.attr("equation")
    if equation is None:
        raise node.error("needs its equation attribute")
    tensors = [node.tensor(x) for x in xs]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1 or not dtypes <= set(DTYPES.values()) - {"bool"}:
        raise node.error(f"operands of dtypes {sorted(dtypes)}: Einsum needs one numeric dtype")
    return einsum(equation.replace(" ", ""), *tensors)
