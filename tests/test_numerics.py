"""Numerical results against numpy computed directly: result dtypes of integer reductions
(no silent wrapping)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc


@pytest.fixture(scope="module")
def int_sums():
    return graphc.compile(lambda x: (graphc.sum(x), graphc.sum(x, 0), graphc.sum(x, 1, True),
                                     x.sum()), graphc.tensor(("N", "M"), "int32"))


@given(st.integers(1, 40), st.integers(1, 9), st.sampled_from([2 ** 31 - 1, -2 ** 31, 7]),
       st.integers(0, 2 ** 32 - 1))
@settings(max_examples=30, deadline=None, derandomize=True)
def test_int32_sums_follow_numpy_and_do_not_wrap(int_sums, n, m, extreme, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2 ** 31, 2 ** 31, (n, m), dtype=np.int64).astype(np.int32)
    x[0, 0] = extreme
    total, cols, rows, method = int_sums(x)
    for got, want in ((total, np.sum(x)), (cols, np.sum(x, 0)), (rows, np.sum(x, 1, keepdims=True)),
                      (method, x.sum())):
        assert got.dtype == want.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_bool_reductions_have_numpy_dtypes(rng):
    f = graphc.compile(lambda m: (graphc.sum(m), graphc.max(m, 0), graphc.min(m)),
                       graphc.tensor((5, 4), "bool"))
    m = rng.random((5, 4)) < 0.5
    total, any_col, all_true = f(m)
    assert total.dtype == np.sum(m).dtype and total == np.sum(m)
    assert any_col.dtype == np.bool_ and (any_col == np.max(m, 0)).all()
    assert all_true.dtype == np.bool_ and all_true == np.min(m)
