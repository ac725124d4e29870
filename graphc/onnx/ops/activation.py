"""Activations and elementwise functions graphc has no primitive for, composed from its
primitives (so they fuse): rounding, (inverse) trigonometric and hyperbolic functions, the ELU
family, hard sigmoid and swish, PRelu, IsInf/IsNaN. Each keeps its input's dtype.
"""
from __future__ import annotations

import math

import numpy as np

from ... import api
from ..importer import onnx_op
from .math import INTS, _trunc, _unary


def _expm1(x):
    """exp(x) - 1 without losing a small x: (u - 1) x / log u, u = exp(x) (Kahan's trick)."""
    u = api.exp(x)
    um1 = api.subtract(u, 1.0)
    ratio = api.divide(api.multiply(um1, x), api.log(api.where(api.equal(u, 1.0), 2.0, u)))
    out = api.where(api.equal(u, 1.0), x, api.where(api.equal(um1, -1.0), -1.0, ratio))
    return api.where(api.equal(u, np.inf), u, out)


def _floor(x):
    t = _trunc(x)
    return api.subtract(t, api.astype(api.greater(t, x), x.dtype))


def _ceil(x):
    t = _trunc(x)
    return api.add(t, api.astype(api.less(t, x), x.dtype))


def _round_half_even(x):
    """numpy's round: to the nearest integer, ties to the even one."""
    down = _floor(x)
    frac = api.subtract(x, down)                 # exact for |x| < 2^52
    odd = api.not_equal(api.subtract(down, api.multiply(_floor(api.multiply(down, 0.5)),
                                                        2.0)), 0.0)
    up = api.logical_or(api.greater(frac, 0.5), api.logical_and(api.equal(frac, 0.5), odd))
    return api.add(down, api.astype(up, x.dtype))


def _sign(x):
    one = 1 if x.dtype in INTS else 1.0
    out = api.where(api.greater(x, 0), one, api.where(api.less(x, 0), -one, 0 * one))
    out = api.astype(out, x.dtype)
    return out if x.dtype in INTS else api.where(api.not_equal(x, x), x, out)   # NaN stays


def _sinh(x):
    # (e^x - e^-x) / 2 cancels for small |x|: there, the series x + x^3/6 + x^5/120 + x^7/5040
    x2 = api.multiply(x, x)
    series = api.multiply(x, api.add(1.0, api.multiply(x2, api.add(
        1.0 / 6, api.multiply(x2, api.add(1.0 / 120, api.multiply(x2, 1.0 / 5040)))))))
    e = api.exp(x)
    big = api.multiply(api.subtract(e, api.divide(1.0, e)), 0.5)
    return api.where(api.less(api.abs(x), 0.125), series, big)


def _cosh(x):
    e = api.exp(api.abs(x))
    return api.multiply(api.add(e, api.divide(1.0, e)), 0.5)


def _atan(x):
    """atan by range reduction and a series: atan x = sign(x) pi/2 - atan(1/x) for |x| > 1,
    then twice the half-angle step t -> t / (1 + sqrt(1 + t^2)) (|t| <= tan(pi/16)), where
    t - t^3/3 + t^5/5 - ... to t^27 is below float64's rounding."""
    big = api.greater(api.abs(x), 1.0)
    t = api.where(big, api.divide(1.0, x), x)
    for _ in range(2):
        t = api.divide(t, api.add(api.sqrt(api.add(api.multiply(t, t), 1.0)), 1.0))
    t2 = api.multiply(t, t)
    series = api.add(api.multiply(t2, 0.0), -1.0 / 27)       # k = 13: -t^27 / 27
    for k in range(12, -1, -1):                              # Horner in t^2
        series = api.add(api.multiply(series, t2), (-1) ** k / (2 * k + 1))
    small = api.multiply(api.multiply(t, series), 4.0)
    half_pi = api.astype(api.where(api.less(x, 0.0), -np.pi / 2, np.pi / 2), x.dtype)
    return api.where(big, api.subtract(half_pi, small), small)


def _log1p(u):
    """log(1 + u) without losing a small u (Goldberg: log(w) u / (w - 1), w = 1 + u)."""
    w = api.add(u, 1.0)
    exact = api.equal(w, 1.0)
    ratio = api.divide(api.multiply(api.log(w), u), api.where(exact, 1.0, api.subtract(w, 1.0)))
    return api.where(exact, u, api.where(api.equal(w, np.inf), w, ratio))


def _asin(x):
    # x / sqrt((1 - x)(1 + x)): +-inf at |x| = 1, and atan takes it to +-pi/2
    root = api.sqrt(api.multiply(api.subtract(1.0, x), api.add(x, 1.0)))
    return _atan(api.divide(x, root))


def _acos(x):
    # 2 atan(sqrt((1 - x) / (1 + x))): accurate near x = 1, where pi/2 - asin x cancels
    return api.multiply(_atan(api.sqrt(api.divide(api.subtract(1.0, x), api.add(x, 1.0)))), 2.0)


def _asinh(x):
    """sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))); log 2|x| where x^2 would overflow."""
    a = api.abs(x)
    huge = api.greater(a, 1e8)
    safe = api.where(huge, 1.0, a)
    a2 = api.multiply(safe, safe)
    small = _log1p(api.add(safe, api.divide(a2, api.add(api.sqrt(api.add(a2, 1.0)), 1.0))))
    out = api.where(huge, api.add(api.log(a), math.log(2.0)), small)
    return api.where(api.less(x, 0.0), api.negative(out), out)


def _acosh(x):
    """log1p((x - 1) + sqrt((x - 1)(x + 1))), accurate near 1; log 2x for a huge x."""
    huge = api.greater(x, 1e8)
    safe = api.where(huge, 1.0, x)
    d = api.subtract(safe, 1.0)
    small = _log1p(api.add(d, api.sqrt(api.multiply(d, api.add(safe, 1.0)))))
    return api.where(huge, api.add(api.log(x), math.log(2.0)), small)


def _atanh(x):
    # sign(x) 1/2 log1p(2|x| / (1 - |x|)): the log1p argument stays >= 0, so 1 + u is exact
    a = api.abs(x)
    out = api.multiply(_log1p(api.divide(api.multiply(a, 2.0), api.subtract(1.0, a))), 0.5)
    return api.where(api.less(x, 0.0), api.negative(out), out)


_MORE_UNARY = {
    "Atan": (_atan, np.arctan), "Asin": (_asin, np.arcsin), "Acos": (_acos, np.arccos),
    "Asinh": (_asinh, np.arcsinh), "Acosh": (_acosh, np.arccosh),
    "Atanh": (_atanh, np.arctanh),
    "Floor": (_floor, np.floor), "Ceil": (_ceil, np.ceil), "Round": (_round_half_even, np.round),
    "Sign": (_sign, np.sign), "Sinh": (_sinh, np.sinh), "Cosh": (_cosh, np.cosh),
    "Tan": (lambda x: api.divide(api.sin(x), api.cos(x)), np.tan),
    "Softsign": (lambda x: api.divide(x, api.add(api.abs(x), 1.0)), None),
    "Mish": (lambda x: api.multiply(x, api.tanh(api.softplus(x))), None),
    "IsNaN": (lambda x: api.not_equal(x, x), np.isnan),
}
for _t, (_g, _n) in _MORE_UNARY.items():
    _unary(_t, _g, _n)


@onnx_op("Elu", "Selu", "Celu")
def _elu(node, x):
    x = node.tensor(x)
    default_alpha = 1.67326319217681884765625 if node.op_type == "Selu" else 1.0
    alpha = node.attr("alpha", default_alpha)
    if node.op_type == "Celu":       # max(0, x) + min(0, alpha (e^(x/alpha) - 1))
        return api.where(api.greater(x, 0.0), x,
                         api.multiply(_expm1(api.divide(x, alpha)), alpha))
    out = api.where(api.greater(x, 0.0), x, api.multiply(_expm1(x), alpha))
    if node.op_type == "Selu":
        out = api.multiply(out, node.attr("gamma", 1.05070102214813232421875))
    return out


@onnx_op("HardSigmoid", "HardSwish")
def _hard_sigmoid(node, x):
    x = node.tensor(x)
    alpha, beta = (node.attr("alpha", 0.2), node.attr("beta", 0.5)) \
        if node.op_type == "HardSigmoid" else (1.0 / 6, 0.5)
    y = api.maximum(api.minimum(api.add(api.multiply(x, alpha), beta), 1.0), 0.0)
    return y if node.op_type == "HardSigmoid" else api.multiply(x, y)


@onnx_op("ThresholdedRelu")
def _thresholded_relu(node, x):
    x = node.tensor(x)
    return api.where(api.greater(x, node.attr("alpha", 1.0)), x, 0.0)


@onnx_op("Shrink")
def _shrink(node, x):
    x = node.tensor(x)
    bias, lambd = node.attr("bias", 0.0), node.attr("lambd", 0.5)
    if x.dtype in INTS:
        bias, lambd = int(bias), int(lambd)
    return api.where(api.less(x, -lambd), api.add(x, bias),
                     api.where(api.greater(x, lambd), api.subtract(x, bias), 0))


@onnx_op("Swish")
def _swish(node, x):
    x = node.tensor(x)
    return api.multiply(x, api.sigmoid(api.multiply(x, node.attr("alpha", 1.0))))


@onnx_op("PRelu")
def _prelu(node, x, slope):
    x = node.tensor(x)
    slope = node.tensor(slope, x.dtype)
    return api.where(api.greater(x, 0), x, api.multiply(x, slope))


@onnx_op("IsInf")
def _is_inf(node, x):
    x = node.tensor(x)
    negative, positive = node.attr("detect_negative", 1), node.attr("detect_positive", 1)
    out = api.equal(x, np.inf) if positive else None
    if negative:
        low = api.equal(x, -np.inf)
        out = low if out is None else api.logical_or(out, low)
    return out if out is not None else api.logical_and(api.not_equal(x, x), api.equal(x, x))
