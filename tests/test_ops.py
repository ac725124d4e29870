"""Every op in the registry, compiled, against the numpy reference at several shapes and dtypes."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.ops import OPS
from graphc.ops.registry import ELEMENTWISE
from graphc.trace import apply
from helpers import assert_matches, sample

ELEMENTWISE_OPS = sorted(n for n, op in OPS.items() if op.kind == ELEMENTWISE and n != "astype")
SIZES = [1, 7, 16, 1023]  # one compilation with a symbolic N serves them all


def _cases():
    for name in ELEMENTWISE_OPS:
        for dtype in OPS[name].dtypes:
            if dtype in ("float32", "float64", "int32", "bool"):
                yield name, dtype


@pytest.mark.parametrize("name,dtype", list(_cases()), ids=lambda x: str(x))
def test_elementwise_op_matches_numpy(name, dtype, rng):
    op = OPS[name]
    specs = [graphc.tensor(("N",), dtype) for _ in range(op.arity)]
    if name == "where":
        specs[0] = graphc.tensor(("N",), "bool")
    compiled = graphc.compile(lambda *xs: apply(name, list(xs)), *specs)
    for n in SIZES:
        arrays = [sample((n,), s.dtype, rng, op.domain) for s in specs]
        assert_matches(compiled, arrays)


BROADCASTS = [((), ()), ((1,), (5,)), ((3, 1), (1, 5)), ((2, 3, 4), (3, 1)), ((4, 1, 6), (5, 1)),
              ((0, 3), (3,))]


@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("name", ["add", "multiply", "maximum", "power", "greater"])
def test_binary_broadcasting(name, shapes, rng):
    a, b = shapes
    compiled = graphc.compile(lambda x, y: apply(name, [x, y]), graphc.tensor(a), graphc.tensor(b))
    arrays = [sample(a, "float32", rng, OPS[name].domain), sample(b, "float32", rng, OPS[name].domain)]
    out = assert_matches(compiled, arrays)
    assert out.shape == np.broadcast_shapes(a, b)


@pytest.mark.parametrize("src", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("dst", ["float32", "float64", "int32", "int64", "bool"])
def test_astype(src, dst, rng):
    compiled = graphc.compile(lambda x: graphc.astype(x, dst), graphc.tensor((7, 5), src))
    assert_matches(compiled, [sample((7, 5), src, rng, (-50, 50))])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn", ["exp", "log", "tanh", "sqrt", "sigmoid"])
def test_math_special_values_flow_like_numpy(fn, dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 700.0, -700.0,
                  1e-40, 20.0, -20.0, 0.5, 1.0], dtype)
    compiled = graphc.compile(lambda v: getattr(graphc, fn)(v), graphc.tensor(("N",), dtype))
    assert_matches(compiled, [x])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_math_accuracy_over_wide_range(dtype, rng):
    x = np.concatenate([rng.uniform(-80, 80, 4000), rng.uniform(-1, 1, 4000),
                        np.geomspace(1e-6, 1e3, 2000)]).astype(dtype)
    compiled = graphc.compile(lambda v: (graphc.exp(v), graphc.tanh(v), graphc.log(graphc.abs(v))),
                              graphc.tensor(("N",), dtype))
    tol = dict(rtol=1e-6, atol=0) if dtype == "float32" else dict(rtol=5e-15, atol=0)
    assert_matches(compiled, [x], tol=tol)


def test_power_of_negative_base_follows_numpy():
    a = np.array([-2.0, -2.0, -2.0, 0.0, 0.0, 0.0, 3.0, np.nan, 1.0], np.float64)
    b = np.array([3.0, 2.0, 0.5, 2.0, -1.0, 0.0, 0.0, 0.0, np.nan], np.float64)
    compiled = graphc.compile(lambda x, y: graphc.power(x, y), graphc.tensor((9,), "float64"),
                              graphc.tensor((9,), "float64"))
    assert_matches(compiled, [a, b])


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_floor_divide_rounds_down_and_guards_zero_and_minus_one(dtype):
    info = np.iinfo(dtype)
    a = np.array([7, -7, 7, -7, 6, -6, 0, 5, -5, info.min, info.min, info.max, 3], dtype)
    b = np.array([2, 2, -2, -2, 3, 3, 4, 0, 0, -1, 1, -1, 7], dtype)
    compiled = graphc.compile(graphc.floor_divide, graphc.tensor(("N",), dtype),
                              graphc.tensor(("N",), dtype))
    with np.errstate(all="ignore"):
        want = np.floor_divide(a, b)
    np.testing.assert_array_equal(compiled(a, b), want)
    assert compiled(a, b).dtype == dtype


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_power_is_exact_and_wraps_like_numpy(dtype, rng):
    # 3^33 needs every bit of int64 (float64 pow is an ulp off); 3^45 and 7^40 wrap
    a = np.concatenate([[3, -3, 2, 7, 3, 7, 0, 1, -1, 5], rng.integers(-9, 10, 50)])
    b = np.concatenate([[33, 21, 52, 18, 45, 40, 0, 97, 7, 0], rng.integers(0, 70, 50)])
    a, b = a.astype(dtype), b.astype(dtype)
    compiled = graphc.compile(graphc.power, graphc.tensor(("N",), dtype),
                              graphc.tensor(("N",), dtype))
    out = compiled(a, b)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.power(a, b))


def test_integer_power_of_a_negative_exponent_truncates():
    a = np.array([1, -1, -1, 2, -2, 0, 5], np.int64)
    b = np.array([-3, -3, -2, -1, -5, -1, -2], np.int64)
    compiled = graphc.compile(graphc.power, graphc.tensor((7,), "int64"),
                              graphc.tensor((7,), "int64"))
    np.testing.assert_array_equal(compiled(a, b), [1, -1, 1, 0, 0, 0, 0])


def test_floor_divide_refuses_floats():
    with pytest.raises(graphc.DTypeError, match="floor_divide: needs integer operands"):
        graphc.trace(graphc.floor_divide, graphc.tensor((3,)), graphc.tensor((3,)))


REDUCE_AXES = [None, 0, 1, 2, -1, (0, 2), (1, 2), (0, 1, 2)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", REDUCE_AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "max", "min", "mean"])
def test_reductions(name, axis, keepdims, rng):
    compiled = graphc.compile(lambda x: getattr(graphc, name)(x, axis=axis, keepdims=keepdims),
                              graphc.tensor(("B", 5, 33)))
    for b in (1, 3):
        x = sample((b, 5, 33), "float32", rng)
        assert_matches(compiled, [x], tol=dict(rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("dtype", ["int32", "int64", "float64"])
def test_reductions_of_other_dtypes(dtype, rng):
    compiled = graphc.compile(lambda x: (graphc.sum(x, 1), graphc.max(x, 0)),
                              graphc.tensor((6, 1023), dtype))
    assert_matches(compiled, [sample((6, 1023), dtype, rng, (-100, 100))])


def test_max_propagates_nan_like_numpy():
    x = np.arange(40, dtype=np.float32).reshape(4, 10)
    x[1, 3] = np.nan
    compiled = graphc.compile(lambda v: (graphc.max(v, -1), graphc.softmax(v)), graphc.tensor((4, 10)))
    assert_matches(compiled, [x])


@pytest.mark.parametrize("a,b", [((5, 7), (7, 3)), ((1, 1), (1, 1)), ((17, 33), (33, 65)),
                                 ((2, 5, 7), (7, 4)), ((2, 5, 7), (2, 7, 4)), ((3, 1, 4, 5), (2, 5, 6)),
                                 ((7,), (7, 3)), ((5, 7), (7,)), ((7,), (7,))], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_matmul_numpy_semantics(a, b, dtype, rng):
    compiled = graphc.compile(lambda x, y: x @ y, graphc.tensor(a, dtype), graphc.tensor(b, dtype))
    out = assert_matches(compiled, [sample(a, dtype, rng), sample(b, dtype, rng)],
                         tol=dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else None)
    assert out.shape == np.matmul(np.ones(a), np.ones(b)).shape


def test_matmul_with_symbolic_batch(rng):
    compiled = graphc.compile(lambda x, w: x @ w, graphc.tensor(("B", 13)), graphc.tensor((13, 9)))
    for batch in (1, 2, 31):
        assert_matches(compiled, [sample((batch, 13), "float32", rng), sample((13, 9), "float32", rng)],
                       tol=dict(rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("fn", [
    lambda x: graphc.reshape(x, (-1,)),
    lambda x: graphc.reshape(x, (3, -1)) * 2,
    lambda x: graphc.transpose(x),
    lambda x: graphc.transpose(x, (1, 0, 2)) + 1,
    lambda x: graphc.expand_dims(x, 1) * 1,
    lambda x: graphc.squeeze(graphc.sum(x, 1, keepdims=True)),
    lambda x: graphc.broadcast_to(graphc.sum(x, 0, keepdims=True), (3, 4, 5)),
    lambda x: graphc.concatenate([x, x * 2, x], axis=1),
    lambda x: graphc.concatenate([x, graphc.exp(x)], axis=0),
], ids=["flatten", "reshape-1", "transpose", "transpose-perm", "expand_dims", "squeeze",
        "broadcast_to", "concat-axis1", "concat-axis0"])
def test_movement_ops(fn, rng):
    compiled = graphc.compile(fn, graphc.tensor((3, 4, 5)))
    assert_matches(compiled, [sample((3, 4, 5), "float32", rng)])


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_ops(fn, axis, dtype, rng):
    compiled = graphc.compile(lambda x: getattr(graphc, fn)(x, axis=axis), graphc.tensor((9, 1023), dtype))
    assert_matches(compiled, [sample((9, 1023), dtype, rng, (-20, 20))])


def test_composites_match_numpy_formulas(rng):
    x = sample((4, 7), "float64", rng)
    compiled = graphc.compile(lambda v: (graphc.relu(v), graphc.sigmoid(v),
                                         graphc.gelu(v, approximate=True),
                                         graphc.var(v, 1), graphc.rsqrt(graphc.abs(v) + 1)),
                              graphc.tensor((4, 7), "float64"))
    relu, sig, gelu, var, rsq = compiled(x)
    np.testing.assert_allclose(relu, np.maximum(x, 0))
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(
        gelu, 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))), rtol=1e-13)
    np.testing.assert_allclose(var, np.var(x, axis=1), rtol=1e-13)
    np.testing.assert_allclose(rsq, 1 / np.sqrt(np.abs(x) + 1), rtol=1e-14)


def test_one_hot_and_where(rng):
    labels = rng.integers(0, 10, 37)
    compiled = graphc.compile(lambda l, x: (graphc.one_hot(l, 10), graphc.where(x > 0, x, 0.1 * x)),
                              graphc.tensor(("B",), "int64"), graphc.tensor(("B", 10)))
    x = sample((37, 10), "float32", rng)
    oh, leaky = compiled(labels, x)
    np.testing.assert_array_equal(oh, np.eye(10, dtype=np.float32)[labels])
    np.testing.assert_allclose(leaky, np.where(x > 0, x, np.float32(0.1) * x))


def test_python_scalars_follow_numpy_promotion(rng):
    compiled = graphc.compile(lambda f, i: (f * 2, f + 1.5, i * 2, i / 2, i + 0.5, f < 1),
                              graphc.tensor((3,), "float32"), graphc.tensor((3,), "int32"))
    f = np.array([1, 2, 3], np.float32)
    i = np.array([1, 2, 3], np.int32)
    outs = compiled(f, i)
    expected = (f * 2, f + 1.5, i * 2, i / 2, i + 0.5, f < 1)
    for o, e in zip(outs, expected):
        assert o.dtype == e.dtype, (o.dtype, e.dtype)
        np.testing.assert_array_equal(o, e)


def test_nan_and_inf_flow_through(rng):
    x = np.array([[np.nan, 1.0, np.inf], [-np.inf, 0.0, 2.0]], np.float32)
    compiled = graphc.compile(lambda v: (v * 2 + 1, graphc.sum(v, 1), graphc.relu(v), v @ v.T),
                              graphc.tensor((2, 3)))
    assert_matches(compiled, [x])


def test_float64_is_tight(rng):
    x = sample((33, 17), "float64", rng)
    compiled = graphc.compile(lambda v: graphc.log_softmax(graphc.tanh(v) @ v.T * 3.0),
                              graphc.tensor((33, 17), "float64"))
    assert_matches(compiled, [x], tol=dict(rtol=1e-12, atol=1e-12))


def test_constants_from_numpy_arrays(rng):
    w = rng.standard_normal((5, 3)).astype(np.float32)
    bias = np.arange(3, dtype=np.float32)
    compiled = graphc.compile(lambda x: x @ w + bias, graphc.tensor(("B", 5)))
    x = sample((4, 5), "float32", rng)
    np.testing.assert_allclose(compiled(x), x @ w + bias, rtol=1e-5, atol=1e-6)


def test_empty_batch(rng):
    compiled = graphc.compile(lambda x: graphc.softmax(x) * 2, graphc.tensor(("B", 5)))
    assert compiled(np.zeros((0, 5), np.float32)).shape == (0, 5)



@pytest.mark.parametrize("key", [0, -1, (slice(None), 1), (Ellipsis, 2), (slice(None), None, 1, slice(1, 3)),
                                 (-1, -1, -1), (slice(None), slice(2, 1)), (slice(1, None),)],
                         ids=str)
def test_basic_indexing_matches_numpy(key):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    compiled = graphc.compile(lambda t: t[key] * 1.0, graphc.tensor((2, 3, 4)))
    np.testing.assert_array_equal(compiled(x), x[key])


def test_a_symbolic_axis_cannot_be_strided():
    with pytest.raises(graphc.GraphcError, match="only be taken whole"):
        graphc.trace(lambda t: t[::-1], graphc.tensor(("B", 3)))


def test_indexing_a_symbolic_axis_whole(rng):
    compiled = graphc.compile(lambda t: t[:, 0] + t[:, 2], graphc.tensor(("B", 3)))
    x = sample((5, 3), "float32", rng)
    np.testing.assert_array_equal(compiled(x), x[:, 0] + x[:, 2])


@pytest.mark.parametrize("key", [(slice(None, None, 2),), (slice(None, None, -1),),
                                 (slice(None), slice(3, 0, -2), 1), (slice(10, -10, -1),),
                                 (slice(2, None, -1), None, slice(None, None, 3)),
                                 (slice(None), slice(0, 0, -1))], ids=str)
def test_strided_slices_match_numpy(key):
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    compiled = graphc.compile(lambda t: t[key] * 1.0, graphc.tensor((3, 4, 5)))
    np.testing.assert_array_equal(compiled(x), x[key])


def test_a_strided_slice_gradient_scatters_back():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    dx = graphc.grad(lambda t: (t[::-1, ::2] * t[::-1, ::2]).sum(), 0)
    want = np.zeros_like(x)
    want[:, ::2] = 2 * x[:, ::2]
    np.testing.assert_allclose(graphc.compile(dx, graphc.tensor((3, 4), "float64"))(x), want)


@pytest.mark.parametrize("key,message", [((slice(None, None, 0),), "step cannot be zero"),
                                         ((5,), "out of bounds"),
                                         ((0, 0, 0, 0), "too many indices")])
def test_bad_indexing_is_an_error(key, message):
    with pytest.raises(graphc.GraphcError, match=message):
        graphc.trace(lambda t: t[key], graphc.tensor((2, 3, 4)))
