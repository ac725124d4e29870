"""Accuracy of the inline transcendental functions, in ulp of the result, against numpy
evaluated in float64 and rounded (the correctly rounded value in almost every case).
The bounds are the ones the benchmark notes state."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphc

# erf, sin and cos in float32 run the float64 body and round once: within 1 ulp (measured 0.5)
MAX_ULP = {"exp": 2, "log": 2, "tanh": 3, "erf": 3, "sin": 2, "cos": 2}
FN = {"exp": (graphc.exp, np.exp), "log": (graphc.log, np.log), "tanh": (graphc.tanh, np.tanh),
      "erf": (graphc.erf, np.vectorize(math.erf, otypes=[np.float64])),
      "sin": (graphc.sin, np.sin), "cos": (graphc.cos, np.cos)}
RANGES = {"exp": (-100.0, 88.0), "log": (1e-30, 1e30), "tanh": (-20.0, 20.0), "erf": (-7.0, 7.0),
          "sin": (-1e4, 1e4), "cos": (-1e4, 1e4)}


def _inputs(name, dtype):
    lo, hi = RANGES[name]
    if name == "log":
        x = np.geomspace(lo, hi, 400_001)
    else:
        x = np.concatenate([np.linspace(lo, hi, 400_001), np.geomspace(1e-30, 1.0, 100_001),
                            -np.geomspace(1e-30, 1.0, 100_001)])
    return x.astype(dtype)


def ulp_error(got, x, ref_fn, dtype):
    ref = ref_fn(x.astype(np.float64))
    finite = np.isfinite(ref) & (np.abs(ref) < np.finfo(dtype).max)
    ref_rounded = ref[finite].astype(dtype)
    spacing = np.spacing(np.abs(ref_rounded)).astype(np.float64)
    return np.abs(got[finite].astype(np.float64) - ref[finite]) / spacing


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(FN))
def test_max_ulp_error(name, dtype):
    ours, ref_fn = FN[name]
    f = graphc.compile(ours, graphc.tensor(("N",), dtype))
    x = _inputs(name, dtype)
    err = ulp_error(f(x), x, ref_fn, dtype)
    # error against the exact value: the bound, plus half an ulp for the reference's rounding
    assert err.max() <= MAX_ULP[name] + 0.5, (name, dtype, err.max(), x[np.argmax(err)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["sin", "cos"])
def test_sin_cos_stay_accurate_near_multiples_of_pi_and_sane_far_out(name, dtype):
    ours, ref_fn = FN[name]
    f = graphc.compile(ours, graphc.tensor(("N",), dtype))
    k = np.arange(-6000, 6001)
    near = (k * (np.pi / 2)).astype(dtype)             # where x - n pi/2 cancels hardest
    assert ulp_error(f(near), near, ref_fn, dtype).max() <= MAX_ULP[name] + 0.5
    far = np.geomspace(1e5, float(np.finfo(dtype).max) / 4, 2001).astype(dtype)
    got = f(np.concatenate([far, -far]))
    assert np.all(np.abs(got) <= 1.0), "sin/cos must stay within [-1, 1] for any finite x"


@pytest.mark.parametrize("name", sorted(FN))
def test_special_values(name):
    ours, ref_fn = FN[name]
    f = graphc.compile(ours, graphc.tensor(("N",)))
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-38], np.float32)
    with np.errstate(all="ignore"):
        want = ref_fn(x).astype(x.dtype)
    got = f(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.signbit(got[ok & (want == 0)]), np.signbit(want[ok & (want == 0)]))


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_follow_numpy_on_nan_and_signed_zeros(name):
    a = np.array([-0.0, 0.0, np.nan, 1.0, np.nan, -np.inf, 2.0] * 3, np.float32)
    b = np.array([0.0, -0.0, 1.0, np.nan, np.nan, np.inf, 2.0] * 3, np.float32)
    f = graphc.compile(lambda x, y: getattr(graphc, name)(x, y), graphc.tensor(("N",)),
                       graphc.tensor(("N",)))
    got, want = f(a, b), getattr(np, name)(a, b)
    np.testing.assert_array_equal(got, want)                  # NaN where numpy has NaN
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def _pow_ulp(dtype, a, b):
    f = graphc.compile(lambda x, y: x ** y, graphc.tensor(("N",), dtype),
                       graphc.tensor(("N",), dtype))
    got = f(a, b)
    with np.errstate(all="ignore"):
        ref = np.power(np.longdouble(a), np.longdouble(b))   # wider than float64 here
    with np.errstate(over="ignore"):
        rounded = ref.astype(dtype)
    ok = np.isfinite(rounded) & (np.abs(rounded) >= np.finfo(dtype).tiny)
    spacing = np.spacing(np.abs(rounded[ok])).astype(np.longdouble)
    return np.abs(np.longdouble(got[ok]) - ref[ok]) / spacing


@pytest.mark.parametrize("dtype, log_range, b_range, bound", [
    ("float32", (-5, 3), (-10, 10), 1.0),
    ("float32", (-80, 80), (-1.2, 1.2), 1.0),
    ("float64", (-5, 3), (-10, 10), 2.0),
    ("float64", (-700, 700), (-1.0, 1.0), 2.0),
    ("float64", (-3, 3), (-230, 230), 6.0),
])
def test_power_ulp_error(dtype, log_range, b_range, bound):
    rng = np.random.default_rng(7)
    a = np.exp(rng.uniform(*log_range, 300_000)).astype(dtype)
    b = rng.uniform(*b_range, 300_000).astype(dtype)
    b[:1000] = np.round(b[:1000])            # integer exponents too
    err = _pow_ulp(dtype, a, b)
    # the bound against the exact value, plus half an ulp for rounding the reference
    assert err.max() <= bound + 0.5, (dtype, float(err.max()))


def test_power_of_negative_bases_with_integer_exponents(rng):
    a = -rng.uniform(0.1, 10, 50_000)
    b = rng.integers(-12, 13, 50_000).astype(np.float64)
    for dtype in ("float32", "float64"):
        assert _pow_ulp(dtype, a.astype(dtype), b.astype(dtype)).max() <= 2.5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_power_special_values_follow_c99_like_numpy(dtype):
    values = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 2.5, -2.5, 3.0, -3.0, np.inf,
              -np.inf, np.nan, 1e-30, -1e-30, 1e30]
    a, b = np.meshgrid(np.array(values, dtype), np.array(values, dtype))
    a, b = a.ravel(), b.ravel()
    f = graphc.compile(lambda x, y: x ** y, graphc.tensor(("N",), dtype),
                       graphc.tensor(("N",), dtype))
    got = f(a, b)
    with np.errstate(all="ignore"):
        want = np.power(a, b)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=str(
        list(zip(a[np.isnan(got) != np.isnan(want)], b[np.isnan(got) != np.isnan(want)]))))
    ok = ~np.isnan(want)
    bad = ok & ((got != want) & ~np.isclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0))
    assert not bad.any(), list(zip(a[bad], b[bad], got[bad], want[bad]))
    zero = ok & (want == 0)
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]))
    inf = ok & np.isinf(want)
    np.testing.assert_array_equal(np.signbit(got[inf]), np.signbit(want[inf]))
