"""Float sums are accurate over long rows: their error does not grow with the row's length.

Each case compares against the exactly rounded sum (math.fsum), with an error bound in units
of eps * sum(|x|). The accuracy bounds are ones that graphc's sums before blocked
accumulation (a few vector accumulators, each lane a running sum over n / 32 elements)
failed, except where a comment says otherwise: e.g. 2**19 float32 values near 1e6 were off
by ~1600 eps, now ~3 eps. The other tests check that results, inf and NaN stay exact.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc

EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def values(rng, shape, dtype, offset, alternating=False):
    """offset + uniform [0, 1); with alternating signs along the last axis if asked."""
    x = offset + rng.random(shape)
    if alternating:
        x[..., 1::2] *= -1
    return x.astype(dtype)


def exact_sum(x, axis):
    """The sum over `axis` (an int, a tuple or None) of float64(x), correctly rounded."""
    axes = range(x.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
    axes = [a % x.ndim for a in axes]
    kept = [a for a in range(x.ndim) if a not in axes]
    rows = np.transpose(x, kept + axes).astype(np.float64)
    shape = rows.shape[:len(kept)]
    return np.array([math.fsum(r) for r in rows.reshape(math.prod(shape), -1)]).reshape(shape)


def assert_sum_close(got, x, axis, dtype, ulps):
    """|got - exact| <= ulps * eps * sum(|x|); one running sum's error grows like
    n * eps * sum(|x|)."""
    err = np.abs(np.asarray(got, np.float64) - exact_sum(x, axis))
    scale = exact_sum(np.abs(x), axis)
    assert np.all(err <= ulps * EPS[dtype] * scale), \
        f"error {np.max(err / scale) / EPS[dtype]:.3g} eps * sum|x|, bound {ulps}"


ULPS = {np.float32: 8, np.float64: 1}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [1e3, 1e4, 1e6])
def test_sum_over_a_long_last_axis_is_accurate(dtype, offset, rng):
    # float32 near 1e3 was already within the bound at this size (0.2 eps; see the mean of
    # 2**24 values below)
    x = values(rng, (2, 2**19), dtype, offset)
    f = graphc.compile(lambda x: graphc.sum(x, -1), graphc.tensor(x.shape, dtype))
    assert_sum_close(f(x), x, -1, dtype, ULPS[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_with_alternating_signs_is_accurate(dtype, rng):
    x = values(rng, (2**20,), dtype, 1e3, alternating=True)
    f = graphc.compile(lambda x: graphc.sum(x), graphc.tensor(x.shape, dtype))
    # lanes 64 apart have the same sign: each vector lane summed ~1e3 * n / 64 before
    assert_sum_close(f(x), x, None, dtype, ulps=0.25)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_over_all_axes_is_accurate(dtype, rng):
    x = values(rng, (256, 4096), dtype, 1e6)
    f = graphc.compile(lambda x: graphc.sum(x), graphc.tensor(x.shape, dtype))
    assert_sum_close(f(x), x, None, dtype, ULPS[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", [((2**16, 48), 0), ((2**12, 16, 40), (0, 1))],
                         ids=["one-leading-axis", "two-leading-axes"])
def test_column_sums_over_many_rows_are_accurate(dtype, shape, axis, rng):
    x = values(rng, shape, dtype, 1e3)
    f = graphc.compile(lambda x: graphc.sum(x, axis), graphc.tensor(shape, dtype))
    assert_sum_close(f(x), x, axis, dtype, ULPS[dtype])


@pytest.mark.parametrize("columns", [1, 63, 4096 + 65, 9000])
def test_column_sums_of_any_width_match_numpy(columns, rng):
    # widths around the thread split (64) and the column tile (4096), with a max (not
    # compensated) and an elementwise output in the same kernel
    def fn(x):
        y = x + 1.0
        return graphc.sum(y, 0), graphc.max(x, 0), y
    x = values(rng, (300, columns), np.float32, 1e3)
    f = graphc.compile(fn, graphc.tensor(x.shape))
    assert len(f.kernels) == 1, "one column-sums kernel"
    total, top, y = f(x)
    np.testing.assert_array_equal(y, x + np.float32(1))
    assert_sum_close(total, y, 0, np.float32, ULPS[np.float32])
    np.testing.assert_array_equal(top, x.max(0))


def test_mean_of_2_24_values_near_1000_matches_numpy(rng):
    # the case: one running sum was off by 4e-3 relative, numpy by 8e-9
    x = values(rng, (2**24,), np.float32, 1e3)
    f = graphc.compile(lambda x: graphc.mean(x), graphc.tensor(x.shape))
    exact = np.mean(x.astype(np.float64))
    assert abs(float(f(x)) - exact) <= 2e-7 * exact


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_var_of_a_long_row_with_a_large_offset_is_accurate(dtype, rng):
    x = (1e3 + rng.standard_normal((2, 2**20))).astype(dtype)
    f = graphc.compile(lambda x: graphc.var(x, -1), graphc.tensor(x.shape, dtype))
    exact = np.var(x.astype(np.float64), axis=-1)
    # before: 2.8e-6 (float32), 1.3e-15 (float64)
    np.testing.assert_allclose(f(x), exact, rtol=5e-7 if dtype == np.float32 else 4e-16)


def test_softmax_of_a_long_row_is_accurate(rng):
    x = rng.random((2, 2**20)).astype(np.float32)
    f = graphc.compile(lambda x: graphc.softmax(x, -1), graphc.tensor(x.shape))
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    np.testing.assert_allclose(f(x), e / e.sum(-1, keepdims=True), rtol=3e-7)  # before: 7e-7


def test_layernorm_of_long_rows_with_a_large_offset_is_accurate(rng):
    def layernorm(x):   # nn.LayerNorm's normalization
        d = x - graphc.mean(x, -1, keepdims=True)
        return d * graphc.rsqrt(graphc.mean(d * d, -1, keepdims=True) + 1e-5)
    x = (1e3 + rng.standard_normal((2, 2**20))).astype(np.float32)
    f = graphc.compile(layernorm, graphc.tensor(x.shape))
    assert len(f.kernels) == 1, "one fused rows kernel"
    x64 = x.astype(np.float64)
    d = x64 - x64.mean(-1, keepdims=True)
    exact = d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(f(x), exact, atol=1e-4)  # before: 2.7e-4


@given(n=st.integers(1, 2**16), offset=st.sampled_from([0.0, 1.0, 1e3, 1e6]),
       alternating=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_sums_are_accurate_for_any_length_and_offset(n, offset, alternating, dtype):
    x = values(np.random.default_rng(n), (n,), dtype, offset, alternating)
    f = graphc.compile(lambda x: graphc.sum(x), graphc.tensor(("N",), dtype))
    assert_sum_close(f(x), x, None, dtype, 2 * ULPS[dtype])


def test_sums_keep_numpys_inf_and_nan():
    f = graphc.compile(lambda x: graphc.sum(x, -1), graphc.tensor((4, 5000)))
    x = np.ones((4, 5000), np.float32)
    x[0, 3000], x[1, 10] = np.inf, -np.inf
    x[2, 10], x[2, 4000] = np.inf, -np.inf
    x[3, 2500] = np.nan
    got = f(x)
    assert got[0] == np.inf and got[1] == -np.inf
    assert np.isnan(got[2]) and np.isnan(got[3])


def test_blocked_row_sum_still_vectorizes():
    compiled = graphc.compile(lambda x: graphc.sum(x, -1), graphc.tensor(("B", "N")))
    (kernel,) = compiled.kernels
    asm = compiled.asm
    body = asm[asm.index(f"{kernel.name}:"):asm.index(".Lfunc_end", asm.index(f"{kernel.name}:"))]
    assert "vaddps" in body and ("zmm" in body or "ymm" in body), "the block loop is scalar"


@pytest.mark.parametrize("case", ["last-axis", "column", "mean"])
def test_gpu_kernels_sum_long_rows_accurately(case, rng):
    # simulated GPU, 4 threads per block: each thread's strided share of a row is 2**16 long
    # (before: ~3000 eps)
    from gpu_sim import SimulatedGpu
    fns = {"last-axis": lambda x: graphc.sum(x, -1), "column": lambda x: graphc.sum(x, 0),
           "mean": lambda x: graphc.mean(x)}
    shape = {"last-axis": (2, 2**17), "column": (2**17, 2), "mean": (2**18,)}[case]
    axis = {"last-axis": -1, "column": 0, "mean": None}[case]
    x = values(rng, shape, np.float32, 1e3)
    sim = SimulatedGpu(fns[case], graphc.tensor(shape), blocks=3, threads=4)
    got = sim(x)
    if case == "mean":
        got = got * x.size
    assert_sum_close(got, x, axis, np.float32, ULPS[np.float32])
