"""Math functions for the CPU target, written as plain arithmetic (no libm calls).

A call into libm is opaque to LLVM's loop vectorizer; these bodies are selects, FMAs and bit
tricks, so a loop calling exp or tanh still vectorizes. Polynomials are Taylor series with
coefficients computed exactly here, run on a range small enough that float32 and float64
results stay within a few ulp of numpy. Special values (nan, inf, 0) are fixed up with selects.
"""
from __future__ import annotations

import math

import llvmlite.ir as ir

from .emitter import INT_OF, Emitter, Val

MANT = {"float32": 23, "float64": 52}
BIAS = {"float32": 127, "float64": 1023}
EXP_TERMS = {"float32": 8, "float64": 14}     # Taylor terms of exp on |r| <= ln2/2
LOG_TERMS = {"float32": 6, "float64": 12}     # atanh series terms on |s| <= 0.1716
TANH_ONE = {"float32": 9.0, "float64": 19.5}  # tanh(x) rounds to 1 beyond these
EXP_CLAMP = {"float32": (-110.0, 89.0), "float64": (-750.0, 710.0)}
LN2_HI, LN2_LO = 0.693145751953125, 1.42860682030941723212e-6  # ln2 = hi + lo, hi exact


def _c(e: Emitter, x: float, dtype: str) -> Val:
    return e.const(x, dtype)


def _horner(e: Emitter, x: Val, coefs) -> Val:
    """coefs[0] + coefs[1] x + ... evaluated with FMAs."""
    acc = _c(e, coefs[-1], x.dtype)
    for c in reversed(coefs[:-1]):
        acc = e.fma(acc, x, _c(e, c, x.dtype))
    return acc


def _pow2(e: Emitter, n, dtype: str) -> Val:
    """2**n for an integer-valued n within the normal exponent range, by building the bits."""
    ity = INT_OF[dtype]
    biased = e.b.add(n, ir.Constant(ity, BIAS[dtype]))
    bits = e.b.shl(biased, ir.Constant(ity, MANT[dtype]))
    return Val(e.b.bitcast(bits, _fty(dtype)), dtype)


def _fty(dtype):
    return ir.FloatType() if dtype == "float32" else ir.DoubleType()


def _is_nan(e: Emitter, x: Val) -> Val:
    return Val(e.b.fcmp_unordered("uno", x.v, x.v), "bool")


def exp(e: Emitter, x: Val) -> Val:
    dt = x.dtype
    lo, hi = EXP_CLAMP[dt]
    xc = e.select(e.cmp("<", x, _c(e, lo, dt)), _c(e, lo, dt), x)
    xc = e.select(e.cmp(">", xc, _c(e, hi, dt)), _c(e, hi, dt), xc)
    n = Val(e.intrinsic("rint", xc.v.type, [e.mul(xc, _c(e, 1 / math.log(2), dt)).v]), dt)
    r = e.fma(n, _c(e, -LN2_HI, dt), xc)
    r = e.fma(n, _c(e, -LN2_LO, dt), r)
    p = _horner(e, r, [1 / math.factorial(k) for k in range(EXP_TERMS[dt])])
    ni = e.b.fptosi(n.v, INT_OF[dt])
    half = e.b.ashr(ni, ir.Constant(INT_OF[dt], 1))  # split 2^n so both halves stay normal
    rest = e.b.sub(ni, half)
    y = e.mul(e.mul(p, _pow2(e, half, dt)), _pow2(e, rest, dt))
    return e.select(_is_nan(e, x), x, y)


def log(e: Emitter, x: Val) -> Val:
    dt = x.dtype
    ity, mant, bias = INT_OF[dt], MANT[dt], BIAS[dt]
    tiny = e.cmp("<", x, _c(e, 2.0 ** (1 - bias), dt))       # subnormal: scale into range
    shift = 24 if dt == "float32" else 54
    xs = e.select(tiny, e.mul(x, _c(e, 2.0 ** shift, dt)), x)
    bits = e.b.bitcast(xs.v, ity)
    expo = e.b.sub(e.b.lshr(bits, ir.Constant(ity, mant)), ir.Constant(ity, bias))
    mbits = e.b.or_(e.b.and_(bits, ir.Constant(ity, (1 << mant) - 1)),
                    ir.Constant(ity, bias << mant))
    m = Val(e.b.bitcast(mbits, _fty(dt)), dt)                  # m in [1, 2)
    big = e.cmp(">", m, _c(e, math.sqrt(2.0), dt))
    m = e.select(big, e.mul(m, _c(e, 0.5, dt)), m)             # m in [sqrt(1/2), sqrt(2)]
    ef = Val(e.b.sitofp(expo, _fty(dt)), dt)
    ef = e.add(ef, e.select(big, _c(e, 1.0, dt), _c(e, 0.0, dt)))
    ef = e.sub(ef, e.select(tiny, _c(e, float(shift), dt), _c(e, 0.0, dt)))
    # log m = 2 atanh(s), s = (m - 1) / (m + 1)
    s = e.div(e.sub(m, _c(e, 1.0, dt)), e.add(m, _c(e, 1.0, dt)))
    s2 = e.mul(s, s)
    series = _horner(e, s2, [2.0 / (2 * k + 1) for k in range(LOG_TERMS[dt])])
    logm = e.mul(s, series)
    y = e.fma(ef, _c(e, LN2_HI, dt), e.fma(ef, _c(e, LN2_LO, dt), logm))
    y = e.select(e.cmp("==", x, _c(e, math.inf, dt)), x, y)
    y = e.select(e.cmp("==", x, _c(e, 0.0, dt)), _c(e, -math.inf, dt), y)
    y = e.select(e.cmp("<", x, _c(e, 0.0, dt)), _c(e, math.nan, dt), y)
    return e.select(_is_nan(e, x), x, y)


def tanh(e: Emitter, x: Val) -> Val:
    """tanh|x| = expm1(2|x|) / (expm1(2|x|) + 2), with the sign of x.

    expm1(y) = 2^n (q + 1) - 1 = 2^n q + (2^n - 1), where y = n ln2 + r, |r| <= ln2/2 and
    q = expm1(r) = r (1 + r/2 + r^2/6 + ...): no cancellation near 0, one division in all.
    |x| is capped where tanh rounds to 1 (so 2^n stays a normal number).
    """
    dt = x.dtype
    a = e.abs(x)
    a = e.select(e.cmp("<", a, _c(e, TANH_ONE[dt], dt)), a, _c(e, TANH_ONE[dt], dt))
    y = e.add(a, a)
    n = Val(e.intrinsic("rint", y.v.type, [e.mul(y, _c(e, 1 / math.log(2), dt)).v]), dt)
    r = e.fma(n, _c(e, -LN2_HI, dt), y)
    r = e.fma(n, _c(e, -LN2_LO, dt), r)
    q = e.mul(r, _horner(e, r, [1 / math.factorial(k + 1) for k in range(EXP_TERMS[dt])]))
    two_n = _pow2(e, e.b.fptosi(n.v, INT_OF[dt]), dt)
    em1 = e.fma(two_n, q, e.sub(two_n, _c(e, 1.0, dt)))
    t = e.div(em1, e.add(em1, _c(e, 2.0, dt)))
    t = e.select(_is_nan(e, x), x, t)
    return Val(e.intrinsic("copysign", t.v.type, [t.v, x.v]), dt)


def sqrt(e: Emitter, x: Val) -> Val:
    return Val(e.intrinsic("sqrt", x.v.type, [x.v]), x.dtype)


def power(e: Emitter, a: Val, b: Val) -> Val:
    """numpy float power: exp(b log|a|) with the sign and special cases of IEEE pow."""
    dt = a.dtype
    r = exp(e, e.mul(b, log(e, e.abs(a))))
    b_int = e.cmp("==", Val(e.intrinsic("rint", b.v.type, [b.v]), dt), b)
    half = e.mul(b, _c(e, 0.5, dt))
    odd = e.land(b_int, e.cmp("!=", Val(e.intrinsic("rint", b.v.type, [half.v]), dt), half))
    neg = e.select(b_int, e.select(odd, e.neg(r), r), _c(e, math.nan, dt))
    y = e.select(e.cmp("<", a, _c(e, 0.0, dt)), neg, r)
    one = _c(e, 1.0, dt)
    y = e.select(e.cmp("==", a, one), one, y)
    return e.select(e.cmp("==", b, _c(e, 0.0, dt)), one, y)


MATH = {"exp": exp, "log": log, "tanh": tanh, "sqrt": sqrt, "pow": power}
