"""Elementwise primitives: out[i] = f(inputs broadcast to the output shape)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import DTypeError
from ..ir.types import ALL_DTYPES, FLOATS, INTS, NUMERIC, TensorType, broadcast_shapes
from .. import api as G
from .registry import ELEMENTWISE, defop

# vjp rules: (g, y, *inputs, **attrs) -> one cotangent per input (None: no gradient), written
# in graphc ops so the backward pass fuses and can be differentiated again. Cotangents may
# have the broadcast output shape; autodiff sums them back to each input's shape.


def same_dtype_broadcast(types, **_):
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:   # the tracer promotes first: only a hand-built graph gets here
        raise DTypeError(f"operands must have one dtype, got {', '.join(sorted(dtypes))}",
                         fix="cast the operands to one dtype with .astype(...)")
    return TensorType(broadcast_shapes(*[t.shape for t in types]), types[0].dtype)


def bool_broadcast(types, **_):
    return TensorType(same_dtype_broadcast(types).shape, "bool")


def _quiet(fn):
    """numpy reference without floating-point warnings (inf/nan flow through silently)."""
    def run(*args, **attrs):
        with np.errstate(all="ignore"):
            return np.asarray(fn(*args, **attrs))
    return run


def unary(name, reference, scalar, vjp=None, dtypes=FLOATS, domain=(-3.0, 3.0), doc="",
          costly=False, vector_rule=False):
    return defop(name, ELEMENTWISE, arity=1, dtypes=dtypes, infer=same_dtype_broadcast,
                 reference=_quiet(reference), scalar=scalar, vjp=vjp, domain=domain, doc=doc,
                 costly=costly, vector_rule=vector_rule)


def binary(name, reference, scalar, vjp=None, dtypes=NUMERIC, infer=same_dtype_broadcast,
           domain=(-3.0, 3.0), doc="", costly=False, divides=False, vector_rule=False):
    return defop(name, ELEMENTWISE, arity=2, dtypes=dtypes, infer=infer,
                 reference=_quiet(reference), scalar=scalar, vjp=vjp, domain=domain, doc=doc,
                 costly=costly, divides=divides, vector_rule=vector_rule)


def _tie_split(g, a, b, wins):
    """Cotangent of a for max/min-like selection: all of g where a wins, half on ties."""
    return G.where(wins, g, G.where(G.equal(a, b), g * 0.5, 0.0))


negative = unary("negative", np.negative, lambda e, x: e.neg(x), dtypes=NUMERIC,
                 vjp=lambda g, y, x: [-g], vector_rule=True)
abs_ = unary("abs", np.abs, lambda e, x: e.abs(x), dtypes=NUMERIC,  # d|x| = sign(x), 0 at 0
             vjp=lambda g, y, x: [G.where(x > 0, g, G.where(x < 0, -g, 0.0))], vector_rule=True)
exp = unary("exp", np.exp, lambda e, x: e.math("exp", x), vjp=lambda g, y, x: [g * y],
            costly=True)
log = unary("log", np.log, lambda e, x: e.math("log", x), domain=(0.05, 5.0),
            vjp=lambda g, y, x: [g / x], costly=True)
sqrt = unary("sqrt", np.sqrt, lambda e, x: e.math("sqrt", x), domain=(0.05, 5.0),
             vjp=lambda g, y, x: [g * 0.5 / y])
rsqrt = unary("rsqrt", lambda x: 1 / np.sqrt(x),
              lambda e, x: e.div(e.const(1, x.dtype), e.math("sqrt", x)), domain=(0.05, 5.0),
              vjp=lambda g, y, x: [g * -0.5 * y / x])  # d x^-1/2 = -1/2 x^-3/2
tanh = unary("tanh", np.tanh, lambda e, x: e.math("tanh", x), domain=(-6.0, 6.0),
             vjp=lambda g, y, x: [g * (1.0 - y * y)], costly=True)
def _erf_reference(x):
    """math.erf per element (numpy has no erf), rounded to x's dtype."""
    x = np.asarray(x)
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


# d erf(x) = 2/sqrt(pi) exp(-x^2); d sin = cos; d cos = -sin
erf = unary("erf", _erf_reference, lambda e, x: e.math("erf", x),
            vjp=lambda g, y, x: [g * (2 / math.sqrt(math.pi)) * G.exp(-(x * x))], costly=True)
sin = unary("sin", np.sin, lambda e, x: e.math("sin", x), domain=(-10.0, 10.0),
            vjp=lambda g, y, x: [g * G.cos(x)], costly=True)
cos = unary("cos", np.cos, lambda e, x: e.math("cos", x), domain=(-10.0, 10.0),
            vjp=lambda g, y, x: [-g * G.sin(x)], costly=True)

add = binary("add", np.add, lambda e, a, b: e.add(a, b), vjp=lambda g, y, a, b: [g, g],
             vector_rule=True)
subtract = binary("subtract", np.subtract, lambda e, a, b: e.sub(a, b),
                  vjp=lambda g, y, a, b: [g, -g], vector_rule=True)
multiply = binary("multiply", np.multiply, lambda e, a, b: e.mul(a, b),
                  vjp=lambda g, y, a, b: [g * b, g * a], vector_rule=True)
divide = binary("divide", np.divide, lambda e, a, b: e.div(a, b), dtypes=FLOATS,
                domain=(0.5, 3.0), vjp=lambda g, y, a, b: [g / b, -g * y / b], divides=True,
                vector_rule=True)
# numpy's // on integers (rounds down; x // 0 is 0); piecewise constant, so no gradient
floor_divide = binary("floor_divide", np.floor_divide, lambda e, a, b: e.floordiv(a, b),
                      dtypes=INTS, domain=(-7.0, 7.0))
def _power_reference(a, b):
    """numpy's power; for integers, a negative exponent (which numpy refuses) gives 1 / a^-b
    truncated toward zero, as the integer scalar rule does."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "i":
        return np.power(a, b)
    negative = b < 0
    out = np.power(a, np.where(negative, 0, b))
    truncated = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 1, -1, 1), 0))
    return np.where(negative, truncated, out).astype(out.dtype)


def _power_scalar(e, a, b):
    return e.math("pow", a, b) if a.is_float else e.ipow(a, b)


# d a^b / da = b a^(b-1); d a^b / db = a^b log a (taken as 0 where a <= 0, as JAX does)
power = binary("power", _power_reference, _power_scalar, dtypes=NUMERIC,
               domain=(0.1, 3.0), costly=True,
               vjp=lambda g, y, a, b: [g * b * G.power(a, b - 1.0),
                                       g * y * G.log(G.where(a > 0, a, 1.0))])
maximum = binary("maximum", np.maximum, lambda e, a, b: e.maximum(a, b),
                 vjp=lambda g, y, a, b: [_tie_split(g, a, b, a > b), _tie_split(g, b, a, b > a)],
                 vector_rule=True)
minimum = binary("minimum", np.minimum, lambda e, a, b: e.minimum(a, b),
                 vjp=lambda g, y, a, b: [_tie_split(g, a, b, a < b), _tie_split(g, b, a, b < a)],
                 vector_rule=True)

for _name, _pred in [("less", "<"), ("less_equal", "<="), ("greater", ">"),
                     ("greater_equal", ">="), ("equal", "=="), ("not_equal", "!=")]:
    binary(_name, getattr(np, _name), (lambda p: lambda e, a, b: e.cmp(p, a, b))(_pred),
           dtypes=ALL_DTYPES, infer=bool_broadcast, vector_rule=True)

logical_and = binary("logical_and", np.logical_and, lambda e, a, b: e.land(a, b),
                     dtypes=("bool",))
logical_or = binary("logical_or", np.logical_or, lambda e, a, b: e.lor(a, b), dtypes=("bool",))
logical_not = unary("logical_not", np.logical_not, lambda e, x: e.lnot(x), dtypes=("bool",))


def _where_infer(types, **_):
    cond, a, b = types
    if cond.dtype != "bool":
        raise ValueError(f"the condition must be bool, got {cond.dtype}")
    if a.dtype != b.dtype:
        raise ValueError(f"branches must share a dtype after promotion: {a.dtype} vs {b.dtype}")
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), a.dtype)


where = defop("where", ELEMENTWISE, arity=3, dtypes=ALL_DTYPES, infer=_where_infer,
              reference=np.where, scalar=lambda e, c, a, b: e.select(c, a, b),
              vjp=lambda g, y, c, a, b: [None, G.where(c, g, 0.0), G.where(c, 0.0, g)],
              vector_rule=True)


def _astype_infer(types, dtype):
    return TensorType(types[0].shape, dtype)


astype = defop("astype", ELEMENTWISE, arity=1, dtypes=ALL_DTYPES, infer=_astype_infer,
               reference=_quiet(lambda x, dtype: np.asarray(x).astype(dtype)),
               scalar=lambda e, x, dtype: e.cast(x, dtype),
               # float <-> float carries the gradient back; nothing flows through integers
               vjp=lambda g, y, x, dtype: [G.astype(g, x.dtype) if x.dtype in FLOATS else None],
               vector_rule=True)

# An explicit copy: used where an output must not share memory with an input or another output.
copy = defop("copy", ELEMENTWISE, arity=1, dtypes=ALL_DTYPES, infer=same_dtype_broadcast,
             reference=lambda x: np.array(x, copy=True), scalar=lambda e, x: x,
             vjp=lambda g, y, x: [g], vector_rule=True)

# The identity for the forward pass, a wall for gradients.
stop_gradient = defop("stop_gradient", ELEMENTWISE, arity=1, dtypes=ALL_DTYPES,
                      infer=same_dtype_broadcast, reference=lambda x: np.array(x, copy=True),
                      scalar=lambda e, x: x, vjp=lambda g, y, x: [None])
