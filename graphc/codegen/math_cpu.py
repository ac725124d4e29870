"""Math functions for the CPU target, written as plain arithmetic (no libm calls).

A call into libm is opaque to LLVM's loop vectorizer; these bodies are selects, FMAs and bit
tricks, so a loop calling exp or tanh still vectorizes. Polynomials are Taylor series with
coefficients computed exactly here (erf's tail: a Chebyshev series fitted here from decimal
samples), run on a range small enough that float32 and float64 results stay within a few ulp
of numpy. Special values (nan, inf, 0) are fixed up with selects.
"""
from __future__ import annotations

import decimal
import math

import llvmlite.ir as ir
import numpy as np
from numpy.polynomial import chebyshev

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
    if "ldexp" in e.math_table:   # p 2^n in one instruction (AVX-512: vscalefps)
        y = e.math_table["ldexp"](e, p, n)
    else:
        ni = e.b.fptosi(n.v, INT_OF[dt])
        half = e.b.ashr(ni, ir.Constant(INT_OF[dt], 1))  # split 2^n: both halves stay normal
        rest = e.b.sub(ni, half)
        y = e.mul(e.mul(p, _pow2(e, half, dt)), _pow2(e, rest, dt))
    return e.select(_is_nan(e, x), x, y)


def ldexp(e: Emitter, x: Val, n: Val) -> Val:
    """x 2^n for an integer-valued float n (|n| small enough for i32), subnormal results
    included: llvm.ldexp, which AVX-512 lowers to vscalef (elsewhere it is a libm call per
    element, so only the AVX-512 table has it)."""
    dt = x.dtype
    suffix = "f32" if dt == "float32" else "f64"
    name = f"llvm.ldexp.{suffix}.i32"
    fn = e.module.globals.get(name) or ir.Function(
        e.module, ir.FunctionType(_fty(dt), [_fty(dt), ir.IntType(32)]), name)
    return Val(e.b.call(fn, [x.v, e.b.fptosi(n.v, ir.IntType(32))]), dt)


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


def _in_float64(fn):
    """A float32 body that runs the float64 one and rounds once (within 1 ulp)."""
    def run(e: Emitter, x: Val) -> Val:
        if x.dtype == "float32":
            return e.cast(fn(e, e.cast(x, "float64")), "float32")
        return fn(e, x)
    run.__doc__ = fn.__doc__
    return run


ERF_SMALL = 0.75       # erf by its Taylor series below, by erfc = t exp(h(t) - x^2) above
ERF_TAYLOR = 16        # terms of the odd series on |x| <= 0.75 (last term < 2^-57)
ERF_ONE = 6.0          # erf rounds to 1 in float64 beyond 5.93
ERF_K = 2.0            # t = K / (K + |x|) maps [0.75, 6] onto [0.25, 0.727]
ERF_T = (ERF_K / (ERF_K + ERF_ONE), ERF_K / (ERF_K + ERF_SMALL))


PI_DIGITS = "3.14159265358979323846264338327950288419716939937510582097494459"


def _erfc_decimal(x: float, d) -> object:
    """erfc(x) in decimal: 1 - 2/sqrt(pi) exp(-x^2) sum 2^n x^(2n+1) / (1 3 ... (2n+1)), a
    series of positive terms (math.erfc loses about x^2 ulp in the tail)."""
    term, total, n = x, x, 0
    while term > total * d("1e-45"):
        n += 1
        term = term * 2 * x * x / (2 * n + 1)
        total += term
    return 1 - 2 / d(PI_DIGITS).sqrt() * (-x * x).exp() * total


def _erf_tail_coefficients(degree: int = 18) -> np.ndarray:
    """Chebyshev coefficients of h(t) = log(erfc(x) / t) + x^2 over t in ERF_T (the form of
    Numerical Recipes' erfccheb): 19 terms keep erf within 3 ulp (tests/test_math.py).
    The samples are computed in 45-digit decimal: log(erfc) and x^2 reach 36 and cancel."""
    lo, hi = ERF_T

    def h_at(t: float) -> float:
        with decimal.localcontext() as ctx:
            ctx.prec = 45
            d = decimal.Decimal
            x = d(ERF_K) / d(t) - d(ERF_K)     # exactly the x this t stands for
            return float(_erfc_decimal(x, d).ln() - d(t).ln() + x * x)

    def h(s):
        t = (s * (hi - lo) + (lo + hi)) / 2
        return np.array([h_at(w) for w in t])
    return chebyshev.chebinterpolate(h, degree)


ERF_TAIL = tuple(float(c) for c in _erf_tail_coefficients())


def _clenshaw(e: Emitter, s: Val, coefs) -> Val:
    """sum coefs[k] T_k(s) for s in [-1, 1], by Clenshaw's recurrence."""
    dt = s.dtype
    two_s = e.add(s, s)
    b1, b2 = _c(e, 0.0, dt), _c(e, 0.0, dt)
    for c in reversed(coefs[1:]):
        b1, b2 = e.fma(two_s, b1, e.sub(_c(e, c, dt), b2)), b1
    return e.fma(s, b1, e.sub(_c(e, coefs[0], dt), b2))


@_in_float64
def erf(e: Emitter, x: Val) -> Val:
    """erf: x P(x^2) (Taylor) for |x| <= 0.75; 1 - t exp(h(t) - x^2), t = 2 / (2 + |x|), with
    h a Chebyshev series, up to 6; 1 beyond; the sign of x; NaN stays NaN."""
    dt = x.dtype
    a = e.abs(x)
    x2 = e.mul(x, x)
    series = [2 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
              for n in range(ERF_TAYLOR)]
    small = e.mul(x, _horner(e, x2, series))
    ac = e.select(e.cmp("<", a, _c(e, ERF_ONE, dt)), a, _c(e, ERF_ONE, dt))
    t = e.div(_c(e, ERF_K, dt), e.add(_c(e, ERF_K, dt), ac))
    lo, hi = ERF_T
    s = e.fma(t, _c(e, 2 / (hi - lo), dt), _c(e, -(lo + hi) / (hi - lo), dt))
    h = _clenshaw(e, s, ERF_TAIL)
    erfc = e.mul(t, exp(e, e.sub(h, e.mul(ac, ac))))
    big = e.sub(_c(e, 1.0, dt), erfc)
    big = e.select(e.cmp("<", a, _c(e, ERF_ONE, dt)), big, _c(e, 1.0, dt))
    big = Val(e.intrinsic("copysign", big.v.type, [big.v, x.v]), dt)
    y = e.select(e.cmp("<=", a, _c(e, ERF_SMALL, dt)), small, big)
    return e.select(_is_nan(e, x), x, y)


# pi/2 in three parts, the first two of 33 bits (fdlibm's pio2_1, pio2_2, pio2_2t): n * PIO2[0]
# and n * PIO2[1] are exact for |n| < 2^20, so x - n pi/2 loses nothing for |x| up to about
# 1.6e6; beyond, the result degrades gradually but stays in [-1, 1].
PIO2 = (1.57079632673412561417e+00, 6.07710050630396597660e-11, 2.02226624879595063154e-21)
SIN_TERMS, COS_TERMS = 10, 11    # Taylor terms on |r| <= pi/4 (last term < 2^-60)


def _quadrant(e: Emitter, x: Val, shift: float) -> tuple[Val, Val]:
    """x = n pi/2 + r with |r| <= pi/4; returns r and (n + shift) mod 4 as a float in 0..3."""
    dt = x.dtype
    n = Val(e.intrinsic("rint", x.v.type, [e.mul(x, _c(e, 2 / math.pi, dt)).v]), dt)
    r = x
    for part in PIO2:
        r = e.fma(n, _c(e, -part, dt), r)
    # past the exact range r may exceed pi/4: clamp it so the kernels stay within [-1, 1]
    # (a NaN r, from an inf or NaN x, passes through both compares unchanged)
    quarter = _c(e, math.pi / 4, dt)
    r = e.select(e.cmp(">", r, quarter), quarter, r)
    r = e.select(e.cmp("<", r, e.neg(quarter)), e.neg(quarter), r)
    q = e.add(n, _c(e, shift, dt))
    q = e.sub(q, e.mul(Val(e.intrinsic("floor", q.v.type, [e.mul(q, _c(e, 0.25, dt)).v]), dt),
                       _c(e, 4.0, dt)))
    return r, q


def _sin_cos_kernels(e: Emitter, r: Val) -> tuple[Val, Val]:
    dt = r.dtype
    r2 = e.mul(r, r)
    sin_tail = _horner(e, r2, [(-1) ** (k + 1) / math.factorial(2 * k + 3)
                               for k in range(SIN_TERMS - 1)])
    sin_r = e.fma(e.mul(r, r2), sin_tail, r)
    cos_tail = _horner(e, r2, [(-1) ** k / math.factorial(2 * k + 4)
                               for k in range(COS_TERMS - 2)])
    half = e.mul(r2, _c(e, 0.5, dt))
    w = e.sub(_c(e, 1.0, dt), half)
    # 1 - r^2/2 rounds; its rounding error ((1 - w) - r^2/2) is added back with the tail
    fix = e.sub(e.sub(_c(e, 1.0, dt), w), half)
    cos_r = e.add(w, e.fma(e.mul(r2, r2), cos_tail, fix))
    return sin_r, cos_r


def _sin_shifted(e: Emitter, x: Val, shift: float) -> Val:
    """sin(x + shift pi/2): pick +-sin r or +-cos r by the quadrant."""
    dt = x.dtype
    r, q = _quadrant(e, x, shift)
    sin_r, cos_r = _sin_cos_kernels(e, r)
    odd = e.lor(e.cmp("==", q, _c(e, 1.0, dt)), e.cmp("==", q, _c(e, 3.0, dt)))
    y = e.select(odd, cos_r, sin_r)
    y = e.select(e.cmp(">=", q, _c(e, 2.0, dt)), e.neg(y), y)
    return e.select(_is_nan(e, r), r, y)     # inf - inf: NaN for +-inf and NaN inputs


@_in_float64
def sin(e: Emitter, x: Val) -> Val:
    """sin: Cody-Waite reduction by pi/2 in three parts, Taylor kernels on |r| <= pi/4."""
    y = _sin_shifted(e, x, 0.0)
    return e.select(e.cmp("==", x, _c(e, 0.0, x.dtype)), x, y)    # sin(-0) = -0


@_in_float64
def cos(e: Emitter, x: Val) -> Val:
    """cos x = sin(x + pi/2), taken as a quadrant shift (exact), not an addition."""
    return _sin_shifted(e, x, 1.0)


MATH = {"exp": exp, "log": log, "tanh": tanh, "sqrt": sqrt, "pow": power, "erf": erf,
        "sin": sin, "cos": cos}
MATH_AVX512 = {**MATH, "ldexp": ldexp}   # targets whose vectors are 512 bits (AVX-512F)
