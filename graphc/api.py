"""Public tensor functions. Primitives are created with `apply`; composites are built from them.

Composite ops (mean, softmax, gelu, ...) add no primitive: fusion and code generation see only
the primitives they are made of.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DTypeError, ShapeError, TraceError
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


def floor_divide(a, b) -> Tensor:
    """numpy's a // b for integer tensors: rounds toward -inf (-7 // 2 == -4); x // 0 is 0.

        >>> q = graphc.floor_divide(i, 4)       # int32/int64, broadcast like add
    """
    a, b = promote(a, b)
    if a.dtype not in INTS:
        raise DTypeError(f"floor_divide: needs integer operands, got {a.dtype}",
                         op="floor_divide", loc=user_location(),
                         fix="cast to int32/int64 first, or use divide for floats")
    return apply("floor_divide", [a, b])


def power(a, b) -> Tensor:
    """a ** b. Small integer and half-integer constant exponents become multiplies / sqrt.
    An integer to an integer power is an integer, exact (wrapping) as numpy's; a negative
    integer exponent gives 1 / a^-b truncated toward zero (numpy refuses it)."""
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
    x, y = promote(a, b)
    if x.dtype in INTS and y.dtype in INTS:
        return apply("power", [x, y])
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


def gelu(x, approximate=False) -> Tensor:
    """GELU as PyTorch: exact by default, 0.5 x (1 + erf(x / sqrt 2)); approximate=True (or
    "tanh") is the tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Same shape out.

        >>> y = graphc.gelu(x)                      # torch.nn.functional.gelu(x)
        >>> y = graphc.gelu(x, approximate="tanh")  # gelu(x, approximate="tanh")
    """
    if approximate not in (False, True, "none", "tanh"):
        raise TraceError(f"gelu: approximate must be False/'none' or True/'tanh', got "
                         f"{approximate!r}", op="gelu", loc=user_location(),
                         fix="use gelu(x) for the erf form or gelu(x, approximate='tanh')")
    x = _as_float(x)
    if approximate in (True, "tanh"):
        inner = multiply(add(x, multiply(multiply(multiply(x, x), x), 0.044715)),
                         math.sqrt(2.0 / math.pi))
        return multiply(multiply(x, 0.5), add(tanh(inner), 1.0))
    return multiply(multiply(x, 0.5), add(erf(multiply(x, 1.0 / math.sqrt(2.0))), 1.0))


def _log1p(u: Tensor) -> Tensor:
    """log(1 + u) without losing a tiny u: log(w) u / (w - 1), w = 1 + u (Goldberg's trick;
    the divisor is kept away from 0 so the unused branch has a finite gradient)."""
    w = add(u, 1.0)
    rounded_away = equal(w, 1.0)
    return where(rounded_away, u, divide(multiply(log(w), u), where(rounded_away, 1.0,
                                                                   subtract(w, 1.0))))


def softplus(x, beta=1.0, threshold=20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta as torch.nn.functional.softplus: x itself where
    beta x > threshold. Computed as max(bx, 0) + log1p(exp(-|bx|)), which never overflows.

        >>> y = graphc.softplus(x)             # same shape as x
    """
    for value, what in ((beta, "beta"), (threshold, "threshold")):
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise TraceError(f"softplus: {what} must be a number, got {value!r}", op="softplus",
                             loc=user_location(), fix="pass a Python float, as torch does")
    if beta == 0:
        raise TraceError("softplus: beta must not be 0", op="softplus", loc=user_location())
    x = _as_float(x)
    bx = multiply(x, beta)
    soft = add(maximum(bx, 0.0), _log1p(exp(negative(abs(bx)))))
    return where(greater(bx, threshold), x, divide(soft, beta) if beta != 1 else soft)


def clip(x, lo=None, hi=None) -> Tensor:
    """numpy.clip: min(max(x, lo), hi) elementwise; lo and hi are scalars, tensors or None.

        >>> y = graphc.clip(x, 0.0, 6.0)       # relu6
    """
    if lo is None and hi is None:
        raise TraceError("clip: give lo, hi or both", op="clip", loc=user_location(),
                         fix="clip(x, lo, hi); pass None for a side with no bound")
    out = as_tensor(x)
    if lo is not None:
        out = maximum(out, lo)
    if hi is not None:
        out = minimum(out, hi)
    return out


def _triangle(x, k, keep, name) -> Tensor:
    x = as_tensor(x)
    if x.ndim < 2:
        raise ShapeError(f"{name}: needs at least 2 dimensions, got shape {fmt_shape(x.shape)}",
                         op=name, loc=user_location(), fix="reshape x to (..., M, N)")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TraceError(f"{name}: k must be an int, got {k!r}", op=name, loc=user_location())
    rows = reshape(apply("iota", [], dtype="int64", shape=(x.shape[-2],)), (x.shape[-2], 1))
    cols = apply("iota", [], dtype="int64", shape=(x.shape[-1],))
    return where(keep(subtract(cols, rows), int(k)), x, constant(0, x.dtype))


def triu(x, k=0) -> Tensor:
    """numpy.triu: zeros below the k-th diagonal of the last two axes (j - i < k).

        >>> upper = graphc.triu(x)        # (..., M, N) -> (..., M, N)
        >>> future = graphc.triu(ones, 1)   # the positions a causal mask hides
    """
    return _triangle(x, k, greater_equal, "triu")


def tril(x, k=0) -> Tensor:
    """numpy.tril: zeros above the k-th diagonal of the last two axes (j - i > k)."""
    return _triangle(x, k, less_equal, "tril")


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


def _one_axis(x: Tensor, axis, name: str) -> int:
    """One axis in [0, ndim) from an int (negative counts from the end)."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise ShapeError(f"{name}: axis must be an int or None, got {axis!r}", op=name,
                         loc=user_location())
    (axis,) = _axes(x, axis)
    return axis


def _arg_select(x, axis, keepdims, pick, name) -> Tensor:
    """The first index of the max (min) along one axis; a NaN, if any, wins, as in numpy."""
    x = as_tensor(x)
    if axis is None:
        flat = _arg_select(reshape(x, (-1,)), 0, False, pick, name)
        return reshape(flat, (1,) * x.ndim) if keepdims else flat
    axis = _one_axis(x, axis, name)
    n = x.shape[axis]
    if not isinstance(n, Dim) and n == 0:
        raise ShapeError(f"{name}: axis {axis} of shape {fmt_shape(x.shape)} is empty",
                         op=name, loc=user_location(), fix="reduce over a non-empty axis")
    if x.dtype == "bool":
        x = cast(x, "int64")
    best = pick(x, axis, keepdims=True)
    hit = logical_or(equal(x, best), not_equal(x, x))   # x != x: the NaNs
    shape = tuple(n if i == axis else 1 for i in range(x.ndim))
    index = reshape(apply("iota", [], dtype="int64", shape=(n,)), shape)
    past_end = size_of(x, (axis,), "int64")
    return min(where(hit, index, past_end), axis, keepdims)


def argmax(x, axis=None, keepdims=False) -> Tensor:
    """numpy.argmax: int64 indices of the largest values along `axis` (None: of the flattened
    x); ties give the first index, and the first NaN wins.

        >>> i = graphc.argmax(logits, axis=-1)   # (B, C) -> (B,) int64
    """
    return _arg_select(x, axis, keepdims, max, "argmax")


def argmin(x, axis=None, keepdims=False) -> Tensor:
    """numpy.argmin: int64 indices of the smallest values (see argmax)."""
    return _arg_select(x, axis, keepdims, min, "argmin")


def cumsum(x, axis=None, dtype=None) -> Tensor:
    """numpy.cumsum: running sums along `axis` (None: of the flattened x); bool and int32
    accumulate in int64 as numpy does. A log-step scan: ceil(log2 n) shifted adds.

        >>> c = graphc.cumsum(x, axis=1)       # (B, T) -> (B, T)
    """
    x = as_tensor(x)
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    if dtype is not None:
        x = cast(x, dtype_name(dtype))
    elif x.dtype in ("bool", "int32"):
        x = cast(x, "int64")
    axis = _one_axis(x, axis, "cumsum")
    n = x.shape[axis]
    if isinstance(n, Dim):
        raise ShapeError(f"cumsum: axis {axis} has the symbolic size {n}", op="cumsum",
                         loc=user_location(), fix="cumsum along an axis of static size")
    shift = 1
    while shift < n:
        head = tuple(shift if i == axis else d for i, d in enumerate(x.shape))
        starts = (0,) * x.ndim
        stops = tuple(n - shift if i == axis else d for i, d in enumerate(x.shape))
        before = concatenate([zeros(head, x.dtype), slice_(x, starts, stops)], axis)
        x = add(x, before)
        shift *= 2
    return x


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


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    """torch.nn.functional.layer_norm: (x - mean) / sqrt(var + eps) * weight + bias over the
    last len(normalized_shape) axes (biased variance); one fused row kernel.

        >>> y = graphc.layer_norm(x, (D,), gamma, beta)   # (B, T, D) -> (B, T, D)
    """
    x = _as_float(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else \
        tuple(normalized_shape)
    if not shape or len(shape) > x.ndim or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ShapeError(f"layer_norm: normalized_shape {shape} does not match the last axes "
                         f"of x {fmt_shape(x.shape)}", op="layer_norm", loc=user_location(),
                         fix="pass the trailing sizes of x, e.g. (x.shape[-1],)")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    d = subtract(x, mean(x, axes, keepdims=True))
    out = multiply(d, rsqrt(add(mean(multiply(d, d), axes, keepdims=True), eps)))
    for param, what in ((weight, "weight"), (bias, "bias")):
        if param is not None and tuple(as_tensor(param).shape) != shape:
            raise ShapeError(f"layer_norm: {what} has shape {fmt_shape(as_tensor(param).shape)},"
                             f" not normalized_shape {shape}", op="layer_norm",
                             loc=user_location())
    if weight is not None:
        out = multiply(out, weight)
    if bias is not None:
        out = add(out, bias)
    return out


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    """torch.nn.functional.batch_norm over x (N, C, ...): per channel C, normalized by the
    batch's mean and biased variance when training, else by running_mean / running_var.
    The running statistics are not updated here (nn.BatchNorm1d does that; momentum is
    accepted for the signature).

        >>> y = graphc.batch_norm(x, mu, var, gamma, beta)    # (N, C) -> (N, C)
    """
    x = _as_float(x)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: x must be (N, C, ...), got {fmt_shape(x.shape)}",
                         op="batch_norm", loc=user_location(), fix="reshape x to (N, C)")
    channels = x.shape[1]
    per_channel = (1, channels) + (1,) * (x.ndim - 2)

    def channel(v, what):
        v = as_tensor(v)
        if tuple(v.shape) != (channels,):
            raise ShapeError(f"batch_norm: {what} has shape {fmt_shape(v.shape)}, not "
                             f"({channels},) for x {fmt_shape(x.shape)}", op="batch_norm",
                             loc=user_location(), fix="give one value per channel (axis 1)")
        return reshape(v, per_channel)

    if training:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        mu = mean(x, axes, keepdims=True)
        d = subtract(x, mu)
        variance = mean(multiply(d, d), axes, keepdims=True)
    else:
        if running_mean is None or running_var is None:
            raise TraceError("batch_norm: running_mean and running_var are needed when not "
                             "training", op="batch_norm", loc=user_location(),
                             fix="pass them, or training=True to use the batch statistics")
        d = subtract(x, channel(running_mean, "running_mean"))
        variance = channel(running_var, "running_var")
    out = multiply(d, rsqrt(add(variance, eps)))
    if weight is not None:
        out = multiply(out, channel(weight, "weight"))
    if bias is not None:
        out = add(out, channel(bias, "bias"))
    return out


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
    """Basic indexing: ints, slices (any step, negative included), None and ...; symbolic
    axes only whole. A slice with a step other than 1 reads its entries with one take."""
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
    starts, stops, drop, new_axes, strided, axis = [], [], [], [], [], 0
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
            if k.step == 0:
                raise TraceError("slice step cannot be zero", loc=user_location())
            if isinstance(d, Dim):
                if k.start not in (None, 0) or k.stop is not None or k.step not in (None, 1):
                    raise ShapeError(f"symbolic axis {axis} ({d}) can only be taken whole",
                                     loc=user_location())
                starts.append(0)
                stops.append(d)
            else:
                picked = range(*k.indices(d))
                if len(picked) <= 1 or picked.step == 1:
                    a = picked[0] if len(picked) else 0
                    starts.append(a)
                    stops.append(a + len(picked))
                else:   # the box the entries lie in, then the entries (box-relative)
                    lo, hi = sorted((picked[0], picked[-1]))   # (api's min/max are ops)
                    starts.append(lo)
                    stops.append(hi + 1)
                    strided.append((axis, np.array(picked, np.int64) - lo))
            out_axis += 1
        else:
            raise TraceError(f"unsupported index {k!r}: use ints, slices, None or ...",
                             loc=user_location())
        axis += 1
    out = x
    if tuple(starts) != (0,) * x.ndim or tuple(stops) != tuple(x.shape):
        out = slice_(x, starts, stops)
    if strided:
        from .ops.indexing import take
        for a, picked in strided:
            out = take(out, picked, axis=a)
    shape = [d for i, d in enumerate(out.shape) if i not in drop]
    for a in new_axes:
        shape.insert(a, 1)
    return reshape(out, tuple(shape))


def _pad_widths(x: Tensor, pad_width) -> list[tuple[int, int]]:
    """numpy's pad_width forms: p, (p,), (before, after), or one (before, after) per axis."""
    widths = np.asarray(pad_width, dtype=object)
    if widths.ndim == 0:
        widths = widths.reshape(1, 1)
    elif widths.ndim == 1:
        widths = widths.reshape(1, -1)
    if widths.ndim != 2 or widths.shape[1] not in (1, 2) or widths.shape[0] not in (1, x.ndim):
        raise ShapeError(f"pad: pad_width {pad_width!r} does not fit a tensor of shape "
                         f"{fmt_shape(x.shape)}", op="pad", loc=user_location(),
                         fix=f"give p, (before, after) or {x.ndim} (before, after) pairs")
    widths = np.broadcast_to(widths, (x.ndim, 2))
    out = []
    for before, after in widths:
        for w in (before, after):
            if not isinstance(w, (int, np.integer)) or isinstance(w, bool) or w < 0:
                raise ShapeError(f"pad: widths must be non-negative ints, got {pad_width!r}",
                                 op="pad", loc=user_location())
        out.append((int(before), int(after)))
    return out


def pad(x, pad_width, mode="constant", value=0) -> Tensor:
    """numpy.pad for mode "constant" (filled with `value`), "reflect" (mirrored about the
    edge, the edge itself not repeated; each width must be below the axis size) and "edge"
    (the edge value repeated). One gather kernel; its gradient another.

        >>> y = graphc.pad(x, ((0, 0), (1, 2)))            # (B, T) -> (B, T + 3)
        >>> y = graphc.pad(x, 2, mode="reflect")           # every axis, both sides
    """
    x = as_tensor(x)
    if mode not in ("constant", "reflect", "edge"):
        raise TraceError(f"pad: mode {mode!r} is not supported", op="pad", loc=user_location(),
                         fix='use mode="constant", "reflect" or "edge"')
    if not isinstance(value, (int, float, bool, np.number)):
        raise TraceError(f"pad: value must be a number, got {type(value).__name__}", op="pad",
                         loc=user_location())
    widths = _pad_widths(x, pad_width)
    for axis, (before, after) in enumerate(widths):
        n = x.shape[axis]
        if (before or after) and isinstance(n, Dim):
            raise ShapeError(f"pad: axis {axis} has the symbolic size {n}", op="pad",
                             loc=user_location(), fix="pad only axes of static size")
        if mode == "reflect" and (before or after) and (before >= n or after >= n):
            raise ShapeError(f"pad: reflect widths ({before}, {after}) must be below the size "
                             f"{n} of axis {axis}", op="pad", loc=user_location(),
                             fix="use smaller widths, or mode='constant'")
    if all(b == a == 0 for b, a in widths):
        return x
    return apply("pad", [x], pads=tuple(widths), mode=mode, value=float(value))
