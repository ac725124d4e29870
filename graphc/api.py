"""Public tensor functions. Primitives are created with `apply`; composites are built from them.

Composite ops (mean, softmax, gelu, ...) add no primitive: fusion and code generation see only
the primitives they are made of.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ShapeError, TraceError
from .ir.types import FLOATS, INTS, Dim, dtype_name, fmt_shape, numel
from .trace import Tensor, apply, as_tensor, cast, constant, float_dtype, promote, user_location


# ----------------------------------------------------------------- elementwise

def _binary(op: str, a, b) -> Tensor:
    a, b = promote(a, b)
    return apply(op, [a, b])


def _float_binary(op: str, a, b) -> Tensor:
    a, b = promote(a, b)
    dt = float_dtype(a.dtype)
    return apply(op, [cast(a, dt), cast(b, dt)])


def _float_unary(op: str, x) -> Tensor:
    x = as_tensor(x)
    return apply(op, [cast(x, float_dtype(x.dtype))])


def add(a, b): return _binary("add", a, b)
def subtract(a, b): return _binary("subtract", a, b)
def multiply(a, b): return _binary("multiply", a, b)
def divide(a, b): return _float_binary("divide", a, b)
def maximum(a, b): return _binary("maximum", a, b)
def minimum(a, b): return _binary("minimum", a, b)
def less(a, b): return _binary("less", a, b)
def less_equal(a, b): return _binary("less_equal", a, b)
def greater(a, b): return _binary("greater", a, b)
def greater_equal(a, b): return _binary("greater_equal", a, b)
def equal(a, b): return _binary("equal", a, b)
def not_equal(a, b): return _binary("not_equal", a, b)
def logical_and(a, b): return apply("logical_and", [as_tensor(a), as_tensor(b)])
def logical_or(a, b): return apply("logical_or", [as_tensor(a), as_tensor(b)])
def logical_not(x): return apply("logical_not", [as_tensor(x)])
def negative(x): return apply("negative", [as_tensor(x)])
def abs(x): return apply("abs", [as_tensor(x)])  # noqa: A001 - numpy's name
def exp(x): return _float_unary("exp", x)
def log(x): return _float_unary("log", x)
def sqrt(x): return _float_unary("sqrt", x)
def rsqrt(x): return _float_unary("rsqrt", x)
def tanh(x): return _float_unary("tanh", x)
def erf(x): return _float_unary("erf", x)
def sin(x): return _float_unary("sin", x)
def cos(x): return _float_unary("cos", x)


def power(a, b) -> Tensor:
    """a ** b. Small integer and half-integer constant exponents become multiplies / sqrt."""
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if b == int(b) and 0 <= b <= 4:
            if b == 0:
                return add(multiply(a, 0), 1)
            out = a
            for _ in range(int(b) - 1):
                out = multiply(out, a)
            return out
        if a.dtype in FLOATS or a.dtype in INTS:
            if b == -1:
                return divide(1, a)
            if b == 0.5:
                return sqrt(a)
            if b == -0.5:
                return rsqrt(a)
    return _float_binary("power", a, b)


def where(cond, a, b) -> Tensor:
    """Elementwise cond ? a : b with numpy broadcasting."""
    cond = as_tensor(cond)
    if cond.dtype != "bool":
        cond = not_equal(cond, 0)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a, b = as_tensor(a), as_tensor(b)
    a, b = promote(a, b)
    return apply("where", [cond, a, b])


def astype(x, dtype) -> Tensor:
    return cast(as_tensor(x), dtype_name(dtype))


def sigmoid(x) -> Tensor:
    """1 / (1 + exp(-x)); exp overflow gives inf and the result 0, as it should."""
    x = _as_float(x)
    return divide(1.0, add(exp(negative(x)), 1.0))


def relu(x) -> Tensor:
    return maximum(as_tensor(x), 0)


def gelu(x, approximate: bool = True) -> Tensor:
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if not approximate:
        raise TraceError("gelu(approximate=False) (the erf form) is not available yet",
                         loc=user_location(), fix="use gelu(x) (the tanh approximation)")
    x = _as_float(x)
    inner = multiply(add(x, multiply(multiply(multiply(x, x), x), 0.044715)),
                     math.sqrt(2.0 / math.pi))
    return multiply(multiply(x, 0.5), add(tanh(inner), 1.0))


def _as_float(x) -> Tensor:
    x = as_tensor(x)
    return cast(x, float_dtype(x.dtype))


# ----------------------------------------------------------------- reductions

def _axes(x: Tensor, axis) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -x.ndim <= a < x.ndim:
            raise ShapeError(f"axis {a} is out of range for a tensor of shape {fmt_shape(x.shape)}",
                             loc=user_location(), fix=f"use an axis in [-{x.ndim}, {x.ndim})")
        a = int(a) % x.ndim
        if a in out:
            raise ShapeError(f"axis {a} repeated in {axis}", loc=user_location())
        out.append(a)
    return tuple(sorted(out))


def _reduce(op: str, x, axis, keepdims) -> Tensor:
    x = as_tensor(x)
    axes = _axes(x, axis)
    if x.dtype == "bool":   # max/min of bools are bools, as in numpy
        return cast(apply(op, [cast(x, "int64")], axis=axes, keepdims=bool(keepdims)), "bool")
    return apply(op, [x], axis=axes, keepdims=bool(keepdims))


def sum(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """Sum over `axis` (int, tuple or None for all), numpy semantics: bool and int32 sums
    accumulate and return int64 (numpy's platform integer), so they do not wrap at 2**31."""
    x = as_tensor(x)
    if x.dtype in ("bool", "int32"):
        x = cast(x, "int64")
    return _reduce("sum", x, axis, keepdims)


def max(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    return _reduce("max", x, axis, keepdims)


def min(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    return _reduce("min", x, axis, keepdims)


def size_of(x: Tensor, axes, dtype: str) -> Tensor:
    """The number of elements along `axes` as a 0-d tensor (symbolic sizes bound at run time)."""
    n = numel([x.shape[a] for a in axes])
    if isinstance(n, Dim):
        return apply("size", [], value=n, dtype=dtype, shape=())
    return constant(n, dtype)


def mean(x, axis=None, keepdims=False) -> Tensor:
    x = _as_float(x)
    axes = _axes(x, axis)
    return divide(sum(x, axes, keepdims), size_of(x, axes, x.dtype))


def var(x, axis=None, keepdims=False) -> Tensor:
    """Population variance (ddof=0), two-pass for accuracy."""
    x = _as_float(x)
    d = subtract(x, mean(x, axis, keepdims=True))
    return mean(multiply(d, d), axis, keepdims)


def softmax(x, axis=-1) -> Tensor:
    """exp(x - max) / sum(exp(x - max)) along `axis`; fuses into one row kernel."""
    x = _as_float(x)
    e = exp(subtract(x, max(x, axis, keepdims=True)))
    return divide(e, sum(e, axis, keepdims=True))


def log_softmax(x, axis=-1) -> Tensor:
    """x - max - log(sum(exp(x - max))) along `axis`."""
    x = _as_float(x)
    shifted = subtract(x, max(x, axis, keepdims=True))
    return subtract(shifted, log(sum(exp(shifted), axis, keepdims=True)))


# ----------------------------------------------------------------- shapes

def reshape(x, shape) -> Tensor:
    """numpy reshape (one entry may be -1); a view, never a copy."""
    x = as_tensor(x)
    shape = (shape,) if isinstance(shape, (int, str, Dim)) else tuple(shape)
    shape = tuple(Dim((d,)) if isinstance(d, str) else d for d in shape)
    if sum_count(shape, -1) > 1:
        raise ShapeError(f"reshape: only one -1 allowed in {shape}", loc=user_location())
    if -1 in shape:
        known = numel([d for d in shape if d != -1])
        total = numel(x.shape)
        if isinstance(total, Dim):
            rest = total.divide(known)
        elif isinstance(known, Dim) or known == 0 or total % known:
            rest = None
        else:
            rest = total // known
        if rest is None:
            raise ShapeError(f"reshape: cannot reshape {fmt_shape(x.shape)} into {shape}",
                             op="reshape", loc=user_location())
        shape = tuple(rest if d == -1 else d for d in shape)
    for d in shape:
        if not isinstance(d, Dim) and (not isinstance(d, (int, np.integer)) or d < 0):
            raise ShapeError(f"reshape: invalid size {d!r} in {shape}", loc=user_location())
    shape = tuple(d if isinstance(d, Dim) else int(d) for d in shape)
    if shape == tuple(x.shape):
        return x
    return apply("reshape", [x], shape=shape)


def sum_count(items, value) -> int:
    return len([i for i in items if not isinstance(i, Dim) and i == value])


def expand_dims(x, axis) -> Tensor:
    x = as_tensor(x)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    rank = x.ndim + len(axes)
    axes = sorted(a % rank if -rank <= a < rank else _bad_axis(a, rank) for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return reshape(x, tuple(shape))


def _bad_axis(a, rank):
    raise ShapeError(f"axis {a} is out of range for rank {rank}", loc=user_location())


def squeeze(x, axis=None) -> Tensor:
    x = as_tensor(x)
    axes = [i for i, d in enumerate(x.shape) if d == 1] if axis is None else _axes(x, axis)
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"squeeze: axis {a} has size {x.shape[a]}, not 1 "
                             f"(shape {fmt_shape(x.shape)})", op="squeeze", loc=user_location())
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def transpose(x, axes=None) -> Tensor:
    x = as_tensor(x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(
        a % x.ndim if isinstance(a, int) and -x.ndim <= a < x.ndim else _bad_axis(a, x.ndim)
        for a in axes)
    if axes == tuple(range(x.ndim)):
        return x
    return apply("transpose", [x], axes=axes)


def broadcast_to(x, shape) -> Tensor:
    x = as_tensor(x)
    shape = tuple(Dim((d,)) if isinstance(d, str) else d for d in
                  ((shape,) if isinstance(shape, (int, str, Dim)) else shape))
    if shape == tuple(x.shape):
        return x
    return apply("broadcast_to", [x], shape=shape)


def concatenate(xs, axis=0) -> Tensor:
    xs = list(xs)
    if not xs:
        raise ShapeError("concatenate needs at least one tensor", loc=user_location())
    xs = promote(*xs)
    if len(xs) == 1:
        return xs[0]
    rank = xs[0].ndim
    if not -rank <= axis < rank:
        _bad_axis(axis, rank)
    return apply("concatenate", xs, axis=axis % rank)


def matmul(a, b) -> Tensor:
    """numpy matmul: 2-D, batched (broadcast batch dims) and 1-D operands."""
    a, b = promote(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: operands must be at least 1-D, got {fmt_shape(a.shape)} @ "
                         f"{fmt_shape(b.shape)}", op="matmul", loc=user_location(),
                         fix="use * to multiply by a scalar")
    if a.dtype == "bool":
        a, b = cast(a, "int64"), cast(b, "int64")
    a2 = reshape(a, (1,) + tuple(a.shape)) if a.ndim == 1 else a
    b2 = reshape(b, tuple(b.shape) + (1,)) if b.ndim == 1 else b
    out = apply("matmul", [a2, b2])
    if a.ndim == 1:
        out = squeeze(out, -2)
    if b.ndim == 1:
        out = squeeze(out, -1)
    return out


def one_hot(labels, num_classes: int, dtype="float32") -> Tensor:
    """labels (..., ) int -> (..., num_classes): 1 where the class matches, else 0."""
    labels = as_tensor(labels)
    if labels.dtype not in INTS:
        raise TraceError(f"one_hot: labels must be int32 or int64, got {labels.dtype}",
                         op="one_hot", loc=user_location(), fix="labels.astype('int64')")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise TraceError(f"one_hot: num_classes must be a positive int, got {num_classes!r}",
                         op="one_hot", loc=user_location())
    classes = apply("iota", [], dtype=labels.dtype, shape=(num_classes,))
    return astype(equal(expand_dims(labels, -1), classes), dtype)


def zeros(shape, dtype="float32") -> Tensor:
    """A tensor of zeros (computed inline; costs no memory traffic until stored)."""
    return broadcast_to(constant(0, dtype_name(dtype)), shape)


def slice_(x, starts, stops) -> Tensor:
    """x[starts[0]:stops[0], starts[1]:stops[1], ...] (static bounds)."""
    return apply("slice", [as_tensor(x)], starts=tuple(starts), stops=tuple(stops))


def random_uniform(key, shape) -> Tensor:
    """Uniform [0, 1) float32 numbers from an int64 0-d key, computed inside the kernel that
    uses them; the same key gives the same numbers."""
    key = as_tensor(key)
    shape = tuple(Dim((d,)) if isinstance(d, str) else d for d in
                  ((shape,) if isinstance(shape, (int, str, Dim)) else shape))
    return apply("random_uniform", [cast(key, "int64")], shape=shape)


def getitem(x, key):
    """Basic indexing: ints, slices with step 1, None and ...; symbolic axes only whole."""
    x = as_tensor(x)
    key = key if isinstance(key, tuple) else (key,)
    if sum_count([k is Ellipsis for k in key], True) > 1:
        raise TraceError("an index can only have a single ellipsis (...)", loc=user_location())
    n_axes = len([k for k in key if k is not None and k is not Ellipsis])
    if n_axes > x.ndim:
        raise ShapeError(f"too many indices ({n_axes}) for a tensor of shape {fmt_shape(x.shape)}",
                         loc=user_location())
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - n_axes) + key[i + 1:]
    else:
        key = key + (slice(None),) * (x.ndim - n_axes)
    starts, stops, drop, new_axes, axis = [], [], [], [], 0
    out_axis = 0
    for k in key:
        if k is None:
            new_axes.append(out_axis)
            out_axis += 1
            continue
        d = x.shape[axis]
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            if isinstance(d, Dim) or not -d <= k < d:
                raise ShapeError(f"index {k} is out of bounds for axis {axis} of size {d}",
                                 loc=user_location())
            k = int(k) % d
            starts.append(k)
            stops.append(k + 1)
            drop.append(axis)
        elif isinstance(k, slice):
            if k.step not in (None, 1):
                raise TraceError("slices with a step are not supported", loc=user_location())
            if isinstance(d, Dim):
                if k.start not in (None, 0) or k.stop is not None:
                    raise ShapeError(f"symbolic axis {axis} ({d}) can only be taken whole",
                                     loc=user_location())
                starts.append(0)
                stops.append(d)
            else:
                a, b, _ = k.indices(d)
                starts.append(a)
                stops.append(b if b > a else a)
            out_axis += 1
        else:
            raise TraceError(f"unsupported index {k!r}: use ints, slices, None or ...",
                             loc=user_location())
        axis += 1
    out = x
    if tuple(starts) != (0,) * x.ndim or tuple(stops) != tuple(x.shape):
        out = slice_(x, starts, stops)
    shape = [d for i, d in enumerate(out.shape) if i not in drop]
    for a in new_axes:
        shape.insert(a, 1)
    return reshape(out, tuple(shape))
