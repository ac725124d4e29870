"""take / take_along_axis against numpy; their gradients (scatter-adds) against np.add.at,
central differences and PyTorch; the index rule (refused at call time, clamped in kernels)."""
from __future__ import annotations

import numpy as np
import pytest

import graphc

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def spec(a):
    return graphc.tensor(a.shape, a.dtype.name)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("idx_dtype", ["int32", "int64"])
def test_take_matches_numpy_on_every_axis(dtype, idx_dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 7, 3)) * 10).astype(dtype)
    for axis in (None, 0, 1, 2, -1):
        n = x.size if axis is None else x.shape[axis]
        for ishape in [(), (4,), (2, 3)]:
            idx = rng.integers(-n, n, ishape).astype(idx_dtype)
            f = graphc.compile(lambda x, i: graphc.take(x, i, axis=axis), spec(x), spec(idx))
            out = f(x, idx)
            ref = np.take(x, idx, axis=axis)
            assert out.shape == ref.shape and out.dtype == ref.dtype
            np.testing.assert_array_equal(out, ref)


def test_take_along_axis_matches_numpy_with_broadcasting():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 5))
    for axis, ishape in [(0, (3, 6, 5)), (1, (4, 2, 5)), (2, (4, 6, 7)), (1, (1, 3, 5)),
                         (2, (4, 1, 2))]:
        idx = rng.integers(-x.shape[axis], x.shape[axis], ishape)
        f = graphc.compile(lambda x, i: graphc.take_along_axis(x, i, axis), spec(x), spec(idx))
        np.testing.assert_array_equal(f(x, idx), np.take_along_axis(x, idx, axis))


def test_picking_each_rows_label_score():
    logits = np.random.default_rng(2).standard_normal((8, 5)).astype("float32")
    labels = np.random.default_rng(3).integers(0, 5, 8)
    f = graphc.compile(lambda z, y: graphc.take_along_axis(z, y[:, None], 1)[:, 0],
                       spec(logits), spec(labels))
    np.testing.assert_array_equal(f(logits, labels), logits[np.arange(8), labels])


def test_take_gradient_accumulates_duplicates():
    rng = np.random.default_rng(4)
    table = rng.standard_normal((6, 4))
    ids = np.array([[1, 1, 5], [0, 1, -1]])
    seed = rng.standard_normal((2, 3, 4))
    f = graphc.compile(graphc.grad(lambda t, i: graphc.sum(graphc.take(t, i, axis=0) * seed)),
                       spec(table), spec(ids))
    ref = np.zeros_like(table)
    np.add.at(ref, ids.reshape(-1) % 6, seed.reshape(-1, 4))
    np.testing.assert_allclose(f(table, ids), ref, rtol=1e-15)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_take_along_axis_gradient_matches_add_at(axis):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5))
    ishape = list(x.shape)
    ishape[axis] = 6
    idx = rng.integers(0, x.shape[axis], ishape)
    seed = rng.standard_normal(ishape)
    f = graphc.compile(graphc.grad(lambda x, i: graphc.sum(
        graphc.take_along_axis(x, i, axis) * seed)), spec(x), spec(idx))
    ref = np.zeros_like(x)
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    np.add.at(ref, tuple(grid), seed)
    np.testing.assert_allclose(f(x, idx), ref, rtol=1e-15)


def test_gradients_match_central_differences_and_grad_of_grad():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3))
    idx = np.array([4, 0, 4, 2])

    def loss(x):
        return graphc.sum(graphc.take(x, idx, axis=0) ** 3)
    g = graphc.compile(graphc.grad(loss), spec(x))(x)
    value = graphc.compile(loss, spec(x))
    eps, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        num[i] = (value(x + d) - value(x - d)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-7, atol=1e-9)
    # the gradient's own gradient: d/dx sum(3 * take(x)^2 scattered) = 6 * counts * x
    gg = graphc.compile(graphc.grad(lambda x: graphc.sum(graphc.grad(loss)(x))), spec(x))(x)
    counts = np.bincount(idx, minlength=5)[:, None]
    np.testing.assert_allclose(gg, 6 * counts * x, rtol=1e-13)


@needs_torch
def test_embedding_lookup_and_gradient_match_torch():
    rng = np.random.default_rng(7)
    table = rng.standard_normal((11, 6))
    ids = rng.integers(0, 11, (4, 9))
    seed = rng.standard_normal((4, 9, 6))
    tt = torch.tensor(table, requires_grad=True)
    out = torch.nn.functional.embedding(torch.tensor(ids), tt)
    (out * torch.tensor(seed)).sum().backward()
    f = graphc.compile(graphc.value_and_grad(
        lambda t, i: graphc.sum(graphc.take(t, i, axis=0) * seed)), spec(table), spec(ids))
    val, g = f(table, ids)
    np.testing.assert_allclose(val, float((out * torch.tensor(seed)).sum().detach()),
                               rtol=1e-12)
    np.testing.assert_allclose(g, tt.grad.numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ the index rule

def test_out_of_range_index_inputs_are_refused_before_native_code():
    x = np.arange(12.0).reshape(4, 3)
    f = graphc.compile(lambda x, i: graphc.take(x, i, axis=0), graphc.tensor(("N", 3), "float64"),
                       graphc.tensor(("B",), "int64"))
    idx = np.array([0, 3, -4])
    np.testing.assert_array_equal(f(x, idx), x[[0, 3, 0]])
    idx[1] = 4                        # the same array, changed in place: still checked
    with pytest.raises(graphc.InputError, match="index 4 is out of range.*size 4"):
        f(x, idx)
    with pytest.raises(graphc.InputError, match="index -5"):
        f(x, np.array([-5]))
    f2 = graphc.compile(lambda x, i: graphc.take_along_axis(x, i, 1), spec(x),
                        graphc.tensor((4, 2), "int32"))
    with pytest.raises(graphc.InputError, match="index 3 is out of range"):
        f2(x, np.full((4, 2), 3, np.int32))


def test_constant_indices_out_of_range_fail_at_trace_time():
    with pytest.raises(graphc.ShapeError, match="index 9 is out of range") as info:
        graphc.trace(lambda x: graphc.take(x, np.array([0, 9]), axis=0), graphc.tensor((7, 2)))
    assert "test_indexing.py" in info.value.loc


def test_computed_indices_are_wrapped_once_then_clamped():
    x = np.arange(7.0)
    f = graphc.compile(lambda x, i: graphc.take(x, i * 3, axis=0), spec(x),
                       graphc.tensor((6,), "int64"))
    i = np.array([0, 1, 2, 3, -1, -3])          # i * 3: 0, 3, 6, 9, -3, -9
    expected = x[[0, 3, 6, 6, 4, 0]]            # -3 wraps to 4; 9 and -9 + 7 clamp
    np.testing.assert_array_equal(f(x, i), expected)


def test_bad_indices_raise_clear_errors():
    with pytest.raises(graphc.DTypeError, match="integers"):
        graphc.trace(lambda x: graphc.take(x, [0.5, 1.0]), graphc.tensor((3,)))
    with pytest.raises(graphc.DTypeError, match="int32 or int64"):
        graphc.trace(lambda x, i: graphc.take(x, i), graphc.tensor((3,)), graphc.tensor((2,)))
    with pytest.raises(graphc.ShapeError, match="axis 2 is out of range"):
        graphc.trace(lambda x: graphc.take(x, [0], axis=2), graphc.tensor((3, 2)))
    with pytest.raises(graphc.ShapeError, match="rank"):
        graphc.trace(lambda x: graphc.take_along_axis(x, np.array([0]), 1),
                     graphc.tensor((3, 2)))
