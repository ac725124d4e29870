"""Property-based: random expression graphs, compiled, against the numpy interpreter.

Ops are drawn in forms that keep values bounded (exp of tanh, log of 1+|x|, division by 1+|y|),
so float32 differences come from rounding alone: a chain of at most 8 ops with a few ulp each
stays inside rtol=1e-4; float64 must agree to 1e-11.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
from targets import target_params

N = 13
SHAPES = [("B", N), (N,), ("B", 1), (1, N), ()]


def _unary(kind, x):
    return {
        "exp": lambda: graphc.exp(graphc.tanh(x)),
        "log": lambda: graphc.log(graphc.abs(x) + 1.0),
        "sqrt": lambda: graphc.sqrt(graphc.abs(x) + 0.1),
        "tanh": lambda: graphc.tanh(x),
        "neg": lambda: -x,
        "sigmoid": lambda: graphc.sigmoid(x),
        "relu": lambda: graphc.relu(x),
        "square": lambda: x * x * 0.5,
    }[kind]()


def _binary(kind, x, y):
    return {
        "add": lambda: x + y,
        "sub": lambda: x - y,
        "mul": lambda: x * y,
        "div": lambda: x / (graphc.abs(y) + 1.0),
        "max": lambda: graphc.maximum(x, y),
        "min": lambda: graphc.minimum(x, y),
        "where": lambda: graphc.where(x > y, x, y * 0.5),
    }[kind]()


def _program(draw, dtype):
    n_inputs = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(SHAPES[:4])) for _ in range(n_inputs)]
    shapes[0] = ("B", N)
    steps = draw(st.lists(st.tuples(
        st.sampled_from(["unary", "binary", "binary", "reduce", "softmax", "matmul", "transpose"]),
        st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=8))

    def fn(*inputs):
        values = list(inputs)
        for kind, i, j, k in steps:
            x = values[i % len(values)]
            y = values[j % len(values)]
            if kind == "unary":
                out = _unary(["exp", "log", "sqrt", "tanh", "neg", "sigmoid", "relu", "square"][k % 8], x)
            elif kind == "binary":
                out = _binary(["add", "sub", "mul", "div", "max", "min", "where"][k % 7], x, y)
            elif kind == "reduce" and x.ndim:
                fn_ = [graphc.sum, graphc.max, graphc.mean][k % 3]
                out = fn_(x, axis=(k // 3) % x.ndim, keepdims=bool(k % 2)) * 0.25
            elif kind == "softmax" and x.ndim:
                out = graphc.softmax(x, axis=-1) if k % 2 else graphc.log_softmax(x, axis=-1)
            elif kind == "matmul" and x.ndim == 2 and x.shape[-1] == N:
                w = values[j % len(values)]
                out = x @ (graphc.transpose(w) if w.ndim == 2 and w.shape[0] == N and
                           not isinstance(w.shape[0], graphc.Dim) else graphc.reshape(
                               graphc.broadcast_to(graphc.sum(x, 0), (N,)), (N, 1))) * 0.1
            elif kind == "transpose" and x.ndim == 2 and not isinstance(x.shape[0], graphc.Dim):
                out = graphc.transpose(x)
            else:
                out = _unary("tanh", x)
            values.append(out)
        return tuple(values[n_inputs:][-2:])

    specs = [graphc.tensor(s, dtype) for s in shapes]
    return fn, specs


def _check(data, dtype, tol, build=graphc.compile):
    fn, specs = _program(data.draw, dtype)
    try:
        graph = graphc.trace(fn, *specs)
    except graphc.ShapeError:
        return  # a random program can combine shapes that do not broadcast; that is fine
    compiled = build(graph)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    for batch in (1, 6):
        arrays = [rng.uniform(-2, 2, tuple(batch if not isinstance(d, int) else d
                                           for d in s.shape)).astype(dtype) for s in specs]
        outs = compiled(*arrays)
        refs = graphc.evaluate(graph, *arrays)
        outs, refs = (outs, refs) if isinstance(outs, tuple) else ((outs,), (refs,))
        for o, r in zip(outs, refs):
            assert o.shape == r.shape and o.dtype == r.dtype
            np.testing.assert_allclose(o, r, equal_nan=True, **tol)


# Examples per target (targets.TARGETS). The stub driver and a GPU run the simulation's kernel
# code through the runtime, at the cost of a PTX build per graph: test_targets.py covers them.
RANDOM_EXAMPLES = {"cpu": 60, "cuda-sim": 25, "wasm32": 15}


@pytest.mark.parametrize("target", target_params(RANDOM_EXAMPLES))
def test_random_float32_graphs_match_reference(target):
    @settings(max_examples=RANDOM_EXAMPLES[target.name], deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data):
        _check(data, "float32", dict(rtol=1e-4, atol=1e-5),
               build=lambda graph: target.build(graph, (), None))
    check()


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_float64_graphs_match_reference(data):
    _check(data, "float64", dict(rtol=1e-11, atol=1e-12))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_graph_gradients_match_finite_differences(data):
    fn, specs = _program(data.draw, "float64")
    specs = [graphc.tensor(tuple(4 if not isinstance(d, int) else d for d in s.shape), "float64")
             for s in specs]

    def loss(*xs):
        outs = fn(*xs)
        return sum_all(outs)

    try:
        graph = graphc.trace(loss, *specs)
    except graphc.ShapeError:
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    arrays = [rng.uniform(-2, 2, s.shape) for s in specs]
    grads = graphc.compile(graphc.grad(loss, tuple(range(len(specs)))), *specs)(*arrays)
    directions = [rng.standard_normal(a.shape) for a in arrays]
    eps = 1e-6
    plus = graphc.evaluate(graph, *[a + eps * d for a, d in zip(arrays, directions)])
    minus = graphc.evaluate(graph, *[a - eps * d for a, d in zip(arrays, directions)])
    numeric = (float(plus) - float(minus)) / (2 * eps)
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, directions))
    # max/min/relu/where have kinks; a random point lands within eps of one with tiny probability
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def sum_all(outs):
    total = None
    for k, t in enumerate(outs):
        term = graphc.sum(t * (1.0 + 0.5 * k))
        total = term if total is None else total + term
    return total
