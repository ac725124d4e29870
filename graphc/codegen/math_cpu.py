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


def _split(e: Emitter, x: Val) -> tuple[Val, Val]:
    """x = 2^ef * m with m in [sqrt(1/2), sqrt(2)] (x > 0 finite; subnormals scaled first)."""
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
    return ef, m


def _atanh_tail(e: Emitter, s: Val) -> Val:
    """2 atanh(s) - 2s = 2 s^3 / 3 + 2 s^5 / 5 + ... for |s| <= 0.1716."""
    s2 = e.mul(s, s)
    series = _horner(e, s2, [2.0 / (2 * k + 3) for k in range(LOG_TERMS[s.dtype] - 1)])
    return e.mul(e.mul(s, s2), series)


def log(e: Emitter, x: Val) -> Val:
    dt = x.dtype
    ef, m = _split(e, x)
    # log m = 2 atanh(s), s = (m - 1) / (m + 1)
    s = e.div(e.sub(m, _c(e, 1.0, dt)), e.add(m, _c(e, 1.0, dt)))
    logm = e.add(e.add(s, s), _atanh_tail(e, s))
    y = e.fma(ef, _c(e, LN2_HI, dt), e.fma(ef, _c(e, LN2_LO, dt), logm))
    y = e.select(e.cmp("==", x, _c(e, math.inf, dt)), x, y)
    y = e.select(e.cmp("==", x, _c(e, 0.0, dt)), _c(e, -math.inf, dt), y)
    y = e.select(e.cmp("<", x, _c(e, 0.0, dt)), _c(e, math.nan, dt), y)
    return e.select(_is_nan(e, x), x, y)


def _log_dd(e: Emitter, x: Val) -> tuple[Val, Val]:
    """log x as hi + lo (relative error about 2^-60) for finite x > 0: pow's exponent b log x
    must be known past double precision, since exp scales its absolute error into ulp.
    s = f / (2 + f), f = m - 1 (exact), is carried as sh + sl; 2s dominates the series."""
    dt = x.dtype
    ef, m = _split(e, x)
    one, two = _c(e, 1.0, dt), _c(e, 2.0, dt)
    f = e.sub(m, one)
    u = e.add(two, f)
    u_err = e.add(e.sub(two, u), f)                     # 2 + f = u + u_err exactly
    sh = e.div(f, u)
    residual = e.sub(e.fma(e.neg(sh), u, f), e.mul(sh, u_err))
    sl = e.div(residual, u)
    hi, lo = e.add(sh, sh), e.add(e.add(sl, sl), _atanh_tail(e, sh))
    # + ef ln2: ef * LN2_HI is exact (LN2_HI has 16 significant bits); two-sum with hi
    k = e.mul(ef, _c(e, LN2_HI, dt))
    total = e.add(k, hi)
    back = e.sub(total, k)
    err = e.add(e.sub(k, e.sub(total, back)), e.sub(hi, back))
    tail = e.add(err, e.fma(ef, _c(e, LN2_LO, dt), lo))
    # renormalize (fast two-sum): |lo| <= ulp(hi) / 2, so exp(y_lo) = 1 + y_lo holds
    hi = e.add(total, tail)
    return hi, e.sub(tail, e.sub(hi, total))


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


def _signbit(e: Emitter, x: Val) -> Val:
    """True for -0.0, negative numbers and -inf (and NaNs with the sign bit)."""
    ity = INT_OF[x.dtype]
    bits = e.b.bitcast(x.v, ity)
    return Val(e.b.icmp_signed("<", bits, ir.Constant(ity, 0)), "bool")


def _exp_dd(e: Emitter, b: Val, x: Val) -> Val:
    """x^b = exp(b log x) for x >= 0 with b log x = yh + yl: exp(yh) (1 + yl)."""
    dt = x.dtype
    lh, ll = _log_dd(e, x)
    lh = e.select(e.cmp("==", x, _c(e, 0.0, dt)), _c(e, -math.inf, dt), lh)
    lh = e.select(e.cmp("==", x, _c(e, math.inf, dt)), x, lh)
    lh = e.select(_is_nan(e, x), x, lh)
    yh = e.mul(b, lh)
    yl = e.add(e.fma(b, lh, e.neg(yh)), e.mul(b, ll))
    inf = _c(e, math.inf, dt)
    yl = e.select(e.cmp("<", e.abs(yh), inf), yl, _c(e, 0.0, dt))   # y = +-inf: yl is NaN
    big = exp(e, yh)
    finite = e.cmp("<", e.abs(big), inf)                  # false for inf and NaN
    return e.select(finite, e.fma(big, yl, big), big)     # (inf * 0 would be NaN)


def power(e: Emitter, a: Val, b: Val) -> Val:
    """numpy's float power: |a|^b = exp(b log|a|), with C99 pow's special cases.

    float32 is computed in float64 and rounded once (within 1 ulp of the correctly rounded
    result). float64 carries log|a| and b log|a| in two doubles, so exp's own error is nearly
    all that is left: within 2 ulp while |b ln a| <= 64, within 6 ulp up to overflow
    (tests/test_math.py).
    Special values: x^0 = 1 and 1^y = 1 even for NaN; (-1)^(+-inf) = 1; a negative base
    (including -0 and -inf) keeps its sign for odd integer exponents; a finite negative base
    with a finite non-integer exponent gives NaN.
    """
    dt = a.dtype
    if dt == "float32":
        a64, b64 = e.cast(a, "float64"), e.cast(b, "float64")
        mag = e.cast(exp(e, e.mul(b64, log(e, e.abs(a64)))), dt)
    else:
        mag = _exp_dd(e, b, e.abs(a))
    one, inf = _c(e, 1.0, dt), _c(e, math.inf, dt)
    # |a| == 1 with b = +-inf: inf * log 1 = inf * 0 would be NaN
    mag = e.select(e.land(e.cmp("==", e.abs(a), one), e.cmp("==", e.abs(b), inf)), one, mag)
    b_int = e.cmp("==", Val(e.intrinsic("rint", b.v.type, [b.v]), dt), b)
    half = e.mul(b, _c(e, 0.5, dt))
    odd = e.land(b_int, e.cmp("!=", Val(e.intrinsic("rint", b.v.type, [half.v]), dt), half))
    y = e.select(e.land(_signbit(e, a), odd), e.neg(mag), mag)
    finite_negative = e.land(e.cmp("<", a, _c(e, 0.0, dt)), e.cmp("!=", a, e.neg(inf)))
    bad = e.land(finite_negative, e.land(e.cmp("!=", e.abs(b), inf), e.lnot(b_int)))
    y = e.select(bad, _c(e, math.nan, dt), y)
    y = e.select(e.cmp("==", a, one), one, y)
    return e.select(e.cmp("==", b, _c(e, 0.0, dt)), one, y)


MATH = {"exp": exp, "log": log, "tanh": tanh, "sqrt": sqrt, "pow": power}
