"""Elementwise ONNX ops: arithmetic (integer Div truncates toward zero, integer Pow is exact,
Mod), comparisons, logic, casts, the basic activations, Dropout (the functions composed from
several primitives are in activation.py).

Known inputs stay known: numpy with ONNX's dtype rules (the result has the inputs' dtype), so
shape arithmetic folds at import. Sizes (object arrays of ints and Dims, from Shape) go through
SIZE_OPS and the size comparisons below; where a result is not a size graphc can express
(B + 1), the value becomes a tensor computed at run time.
"""
from __future__ import annotations

import numpy as np

from ... import api
from ...ir.types import Dim
from ..importer import DTYPES, ELEM_NAMES, dtype_of, is_tensor, onnx_op
from .common import SIZE_OPS, all_known, is_sizes, simplify_sizes

INTS = ("int32", "int64")


# ----------------------------------------------------------------- integer division

def _np_trunc_divide(a, b):
    """ONNX Div on integers truncates toward zero (C semantics), as its reference does; in
    integer arithmetic, so int64 stays exact."""
    with np.errstate(all="ignore"):
        q = np.floor_divide(a, b)
        r = np.remainder(a, b)
    return q + ((r != 0) & ((a < 0) != (b < 0))).astype(q.dtype)


def _trunc_divide(a, b):
    q = api.floor_divide(a, b)
    r = api.subtract(a, api.multiply(q, b))
    inexact = api.logical_and(api.not_equal(r, 0),
                              api.not_equal(api.less(a, 0), api.less(b, 0)))
    return api.add(q, api.astype(inexact, q.dtype))


def _divide(a, b):
    return _trunc_divide(a, b) if a.dtype in INTS else api.divide(a, b)


def _np_divide(a, b):
    if a.dtype.kind in "iu":
        return _np_trunc_divide(a, b)
    with np.errstate(all="ignore"):
        return (a / b).astype(a.dtype)


def _trunc(x):
    """Float x rounded toward zero: through int64 where |x| < 2^52 (beyond, every float is an
    integer already, and NaN and inf stay as they are)."""
    through_int = api.astype(api.astype(x, "int64"), x.dtype)
    return api.where(api.less(api.abs(x), 2.0 ** 52), through_int, x)


def _fmod(a, b):
    """C's fmod for floats: a - trunc(a / b) b, with the dividend's sign on a zero result and
    a itself for a finite a over an infinite b."""
    m = api.subtract(a, api.multiply(_trunc(api.divide(a, b)), b))
    m = api.where(api.equal(m, 0.0), api.multiply(a, 0.0), m)
    over_infinity = api.logical_and(api.equal(api.abs(b), np.inf), api.less(api.abs(a), np.inf))
    return api.where(over_infinity, a, m)


def _float_mod(a, b):
    """numpy's (Python's) float remainder: the divisor's sign, also on a zero result."""
    m = _fmod(a, b)
    wrong_sign = api.logical_and(api.not_equal(m, 0.0),
                                 api.not_equal(api.less(b, 0.0), api.less(m, 0.0)))
    m = api.where(wrong_sign, api.add(m, b), m)
    signed_zero = api.where(api.less(b, 0.0), -0.0, 0.0)
    return api.where(api.equal(m, 0.0), api.astype(signed_zero, m.dtype), m)


@onnx_op("Mod")
def _mod(node, a, b):
    """fmod=0: the remainder with the divisor's sign (numpy's mod); fmod=1: C's fmod, with
    the dividend's sign."""
    fmod = node.attr("fmod", 0)
    if all_known(a, b) and not (is_sizes(a) or is_sizes(b)):
        with np.errstate(all="ignore"):
            return np.asarray((np.fmod if fmod else np.mod)(np.asarray(a), np.asarray(b)))
    a, b = node.tensor(a), node.tensor(b)
    if a.dtype in INTS:
        q = _trunc_divide(a, b) if fmod else api.floor_divide(a, b)
        return api.subtract(a, api.multiply(q, b))
    return _fmod(a, b) if fmod else _float_mod(a, b)


# ----------------------------------------------------------------- sizes

def _order(a, b) -> int | None:
    """-1, 0 or 1 as size a is below, equal to or above b, where every value of the symbols
    (sizes are >= 0) agrees; None where it depends on them."""
    if not isinstance(a, Dim) and not isinstance(b, Dim):
        return (a > b) - (a < b)
    if isinstance(a, Dim) and isinstance(b, Dim):
        return 0 if a == b else None
    if isinstance(b, Dim):
        flipped = _order(b, a)
        return None if flipped is None else -flipped
    sign = 1 if a.coef > 0 else -1      # a: a Dim with that sign, b: an int
    return sign if b * sign < 0 else None


COMPARE = {"Equal": lambda o: o == 0, "Less": lambda o: o < 0, "Greater": lambda o: o > 0,
           "LessOrEqual": lambda o: o <= 0, "GreaterOrEqual": lambda o: o >= 0}


def _size_compare(op_type, a, b):
    """A comparison of sizes as a bool array, or None where some element depends on the
    symbols' values."""
    a, b = np.broadcast_arrays(np.asarray(a, object), np.asarray(b, object))
    out = np.empty(a.shape, bool)
    for i in np.ndindex(a.shape):
        o = _order(a[i], b[i])
        if o is None:
            return None
        out[i] = COMPARE[op_type](o)
    return out


def _size_select(pick_first_when, xs):
    """Max (Min) of sizes elementwise, or None where the order depends on the symbols."""
    arrays = np.broadcast_arrays(*[np.asarray(x, object) for x in xs])
    out = arrays[0].copy()
    for x in arrays[1:]:
        for i in np.ndindex(out.shape):
            o = _order(x[i], out[i])
            if o is None:
                return None
            if pick_first_when(o):
                out[i] = x[i]
    return simplify_sizes(out)


def _known_sizes(op_type, *xs):
    """Shape arithmetic at import: the result as sizes, or None where graphc cannot express it
    (the caller then computes it as a tensor)."""
    try:
        if op_type in SIZE_OPS:
            return simplify_sizes(np.asarray(SIZE_OPS[op_type](*xs)))
    except ValueError:
        return None
    if op_type in COMPARE:
        return _size_compare(op_type, *xs)
    return None


# ----------------------------------------------------------------- binary ops

def _binary(op_type, graph_fn, numpy_fn):
    @onnx_op(op_type)
    def handler(node, a, b):
        if all_known(a, b):
            if not (is_sizes(a) or is_sizes(b)):
                with np.errstate(all="ignore"):
                    return np.asarray(numpy_fn(np.asarray(a), np.asarray(b)))
            out = _known_sizes(op_type, a, b)
            if out is not None:
                return out
        return graph_fn(node.tensor(a), node.tensor(b))
    return handler


for _t, _g, _n in [
    ("Add", api.add, np.add), ("Sub", api.subtract, np.subtract),
    ("Mul", api.multiply, np.multiply), ("Div", _divide, _np_divide),
    ("Equal", api.equal, np.equal), ("Less", api.less, np.less),
    ("Greater", api.greater, np.greater), ("LessOrEqual", api.less_equal, np.less_equal),
    ("GreaterOrEqual", api.greater_equal, np.greater_equal),
    ("And", api.logical_and, np.logical_and), ("Or", api.logical_or, np.logical_or),
]:
    _binary(_t, _g, _n)


def _integer_power(a, b):
    """An integer base to any power, as ONNX's reference (numpy's power, cast to the base's
    dtype): exact for an integer exponent; for a float one computed in float64 and truncated,
    except where it lies within rounding of an integer (graphc's pow may be an ulp off where
    libm is exact, and truncation would turn 8.999... into 8)."""
    if b.dtype in INTS:
        return api.astype(api.power(a, b), a.dtype)
    p = api.power(api.astype(a, "float64"), api.astype(b, "float64"))
    nearest = api.astype(api.add(p, api.where(api.less(p, 0.0), -0.5, 0.5)), "int64")
    gap = api.abs(api.subtract(p, api.astype(nearest, "float64")))
    close = api.less_equal(gap, api.multiply(api.abs(p), 2.0 ** -40))
    return api.astype(api.where(close, nearest, api.astype(p, "int64")), a.dtype)


@onnx_op("Pow")
def _pow(node, a, b):
    if all_known(a, b) and not (is_sizes(a) or is_sizes(b)):
        with np.errstate(all="ignore"):
            return np.power(a, b).astype(np.asarray(a).dtype)
    a = node.tensor(a)
    if a.dtype in INTS:
        return _integer_power(a, node.tensor(b))
    if all_known(b) and not is_sizes(b) and np.size(b) == 1 and np.ndim(b) <= a.ndim:
        # a scalar exponent as a number: x^2, x^0.5, x^-1 become a multiply, sqrt, divide
        return api.power(a, float(np.asarray(b).reshape(())))
    return api.power(a, node.tensor(b, a.dtype))   # the result has the base's dtype


# ----------------------------------------------------------------- variadic ops

_VARIADIC = {"Max": (api.maximum, np.maximum), "Min": (api.minimum, np.minimum),
             "Sum": (api.add, np.add), "Mean": (api.add, np.add)}


@onnx_op("Max", "Min", "Sum", "Mean")
def _variadic(node, *xs):
    graph_fn, numpy_fn = _VARIADIC[node.op_type]
    xs = [x for x in xs if x is not None]
    if all_known(*xs):
        if not any(is_sizes(x) for x in xs):
            out = np.asarray(xs[0])
            for x in xs[1:]:
                out = numpy_fn(out, np.asarray(x))
            return (out / len(xs)).astype(out.dtype) if node.op_type == "Mean" else out
        if node.op_type in ("Max", "Min"):
            out = _size_select((lambda o: o > 0) if node.op_type == "Max" else
                               (lambda o: o < 0), xs)
        elif node.op_type == "Sum":
            out = xs[0]
            for x in xs[1:]:
                out = out if out is None else _known_sizes("Add", out, x)
        else:
            out = None
        if out is not None:
            return out
    out = node.tensor(xs[0])
    for x in xs[1:]:
        out = graph_fn(out, node.tensor(x))
    if node.op_type == "Mean":
        out = _divide(out, node.tensor(np.array(len(xs), out.dtype)))
    return out


# ----------------------------------------------------------------- unary ops

def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


# op type: (graph function, numpy function on known values (None: always a graph value));
# numpy keeps a float input's dtype, as ONNX does
_UNARY = {
    "Relu": (api.relu, lambda x: np.maximum(x, np.zeros((), x.dtype))),
    "Abs": (api.abs, np.abs), "Not": (api.logical_not, np.logical_not),
    "Exp": (api.exp, np.exp), "Log": (api.log, np.log), "Sqrt": (api.sqrt, np.sqrt),
    "Sin": (api.sin, np.sin), "Cos": (api.cos, np.cos), "Tanh": (api.tanh, np.tanh),
    "Sigmoid": (api.sigmoid, _np_sigmoid), "Reciprocal": (lambda x: api.divide(1.0, x),
                                                          np.reciprocal),
    "Erf": (api.erf, None), "Softplus": (api.softplus, None),
}


def _nonnegative_sizes(op_type, x):
    """Abs or Relu of sizes: a Dim with a positive coefficient is its own value."""
    out = np.asarray(x, object).copy()
    for i in np.ndindex(out.shape):
        v = out[i]
        if isinstance(v, Dim):
            if v.coef < 0:
                return None
        else:
            out[i] = abs(v) if op_type == "Abs" else max(v, 0)
    return out


def _unary(op_type, graph_fn, numpy_fn):
    @onnx_op(op_type)
    def handler(node, x):
        if all_known(x):
            if is_sizes(x) and op_type in ("Abs", "Relu"):
                out = _nonnegative_sizes(op_type, x)
                if out is not None:
                    return out
            if not is_sizes(x) and numpy_fn is not None:
                with np.errstate(all="ignore"):
                    x = np.asarray(x)
                    out = np.asarray(numpy_fn(x))
                return out if out.dtype == bool else out.astype(x.dtype)
        return graph_fn(node.tensor(x))
    return handler


for _t, (_g, _n) in _UNARY.items():
    _unary(_t, _g, _n)


@onnx_op("Neg")
def _neg(node, x):
    if all_known(x):
        return simplify_sizes(np.asarray(SIZE_OPS["Neg"](x))) if is_sizes(x) else -np.asarray(x)
    return api.negative(x)


@onnx_op("LeakyRelu")
def _leaky_relu(node, x):
    x = node.tensor(x)
    alpha = node.attr("alpha", 0.01)
    return api.where(api.greater_equal(x, 0.0), x, api.multiply(x, alpha))


@onnx_op("Gelu")
def _gelu(node, x):
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise node.error(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return api.gelu(node.tensor(x), approximate=approximate == "tanh")


@onnx_op("Xor")
def _xor(node, a, b):
    if all_known(a, b):
        return np.logical_xor(a, b)
    return api.not_equal(node.tensor(a), node.tensor(b))


@onnx_op("Clip")
def _clip(node, x, lo=None, hi=None):
    if node.opset < 11:                  # bounds were attributes
        lo, hi = node.attr("min"), node.attr("max")
    if all_known(x, lo, hi) and not any(is_sizes(v) for v in (x, lo, hi)):
        out = np.asarray(x)
        if lo is not None:
            out = np.maximum(out, np.asarray(lo, out.dtype))
        if hi is not None:
            out = np.minimum(out, np.asarray(hi, out.dtype))
        return out
    x = node.tensor(x)
    if lo is not None:
        x = api.maximum(x, node.tensor(lo, x.dtype))
    if hi is not None:
        x = api.minimum(x, node.tensor(hi, x.dtype))
    return x


@onnx_op("Where")
def _where(node, c, a, b):
    if all_known(c, a, b) and not is_sizes(c):
        if is_sizes(a) or is_sizes(b):   # picking between sizes keeps them sizes
            return simplify_sizes(np.where(c, np.asarray(a, object), np.asarray(b, object)))
        return np.where(c, a, b)
    return api.where(node.tensor(c), node.tensor(a), node.tensor(b))


@onnx_op("Cast")
def _cast(node, x):
    to = node.attr("to")
    if to not in DTYPES:
        raise node.error(f"casting to {ELEM_NAMES.get(to, to)} is not supported (graphc "
                         f"computes in {', '.join(DTYPES.values())})")
    return _cast_to(node, x, DTYPES[to])


@onnx_op("CastLike")
def _cast_like(node, x, like):
    return _cast_to(node, x, "int64" if is_sizes(like) else dtype_of(like))


def _cast_to(node, x, dtype: str):
    if all_known(x):
        if not is_sizes(x):
            with np.errstate(all="ignore"):
                return np.asarray(x).astype(dtype)
        if dtype == "int64":             # sizes are int64 already
            return np.asarray(x)
    x = node.tensor(x)
    return x if x.dtype == dtype else api.astype(x, dtype)


@onnx_op("Identity")
def _identity(node, x):
    return x


@onnx_op("Dropout")
def _dropout(node, x, ratio=None, training_mode=None):
    """Inference: the identity (mask all true). Training mode (opset 12+, a true training_mode
    input): graphc's counter-based generator, seeded by the `seed` attribute, so the mask is
    reproducible but not the one another implementation draws."""
    training = False
    if node.opset >= 12 and training_mode is not None:
        training = bool(node.known(training_mode, "training_mode").reshape(()))
    rate = 0.5
    if ratio is not None:
        rate = float(node.known(ratio, "the ratio").reshape(()))
    elif node.opset < 12:
        rate = node.attr("ratio", 0.5)
    if not training or rate == 0.0:
        if node.num_outputs == 1:
            return x
        mask = np.ones(np.shape(x), bool) if not is_tensor(x) else \
            api.broadcast_to(node.tensor(np.array(True)), x.shape)
        return [x, mask]
    if not 0.0 <= rate < 1.0:
        raise node.error(f"ratio must be in [0, 1), got {rate}")
    x = node.tensor(x)
    key = node.tensor(np.array(node.attr("seed", 0), np.int64))
    keep = api.greater_equal(api.random_uniform(key, x.shape), rate)
    out = api.where(keep, api.multiply(x, 1.0 / (1.0 - rate)), 0.0)
    return [out, keep] if node.num_outputs > 1 else out

