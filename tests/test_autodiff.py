"""Reverse-mode gradients against central finite differences in float64."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.ops import OPS
from graphc.ops.flash import fused_attention
from graphc.ops.registry import SOURCE

F64 = "float64"


def directional_check(fn, arrays, rng, argnums=None, eps=1e-6, rtol=1e-6, atol=1e-8):
    """<grad fn(x), v> (compiled) == (fn(x + eps v) - fn(x - eps v)) / 2 eps (numpy reference)."""
    argnums = tuple(range(len(arrays))) if argnums is None else argnums
    specs = [graphc.tensor(a.shape, a.dtype) for a in arrays]
    grads = graphc.compile(graphc.grad(fn, argnums), *specs)(*arrays)
    graph = graphc.trace(fn, *specs)
    directions = {k: rng.standard_normal(arrays[k].shape) for k in argnums}

    def shifted(sign):
        moved = [a + sign * eps * directions[k] if k in directions else a
                 for k, a in enumerate(arrays)]
        return float(graphc.evaluate(graph, *moved))

    numeric = (shifted(+1) - shifted(-1)) / (2 * eps)
    analytic = sum(float(np.sum(g * directions[k])) for k, g in zip(argnums, grads))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)
    return grads


def draw(shape, rng, domain=(-2.0, 2.0)):
    return rng.uniform(*domain, size=shape)


def weighted(fn, shape_out):
    """A scalar loss: a fixed random projection of fn's output (exercises every element)."""
    w = np.random.default_rng(7).standard_normal(shape_out)
    return lambda *xs: graphc.sum(fn(*xs) * w)


# One case per differentiable primitive: (op, function of inputs, input shapes, domain).
CASES = {
    "negative": (lambda x: -x, [(3, 4)], None),
    "abs": (lambda x: graphc.abs(x), [(3, 4)], (0.2, 2.0)),
    "exp": (graphc.exp, [(3, 4)], None),
    "log": (graphc.log, [(3, 4)], (0.2, 3.0)),
    "sqrt": (graphc.sqrt, [(3, 4)], (0.2, 3.0)),
    "rsqrt": (graphc.rsqrt, [(3, 4)], (0.2, 3.0)),
    "tanh": (graphc.tanh, [(3, 4)], None),
    "erf": (graphc.erf, [(3, 4)], None),
    "sin": (graphc.sin, [(3, 4)], (-6.0, 6.0)),
    "cos": (graphc.cos, [(3, 4)], (-6.0, 6.0)),
    "add": (lambda a, b: a + b, [(3, 4), (4,)], None),
    "subtract": (lambda a, b: a - b, [(3, 1), (1, 4)], None),
    "multiply": (lambda a, b: a * b, [(3, 4), (3, 4)], None),
    "divide": (lambda a, b: a / b, [(3, 4), (4,)], (0.5, 2.0)),
    "power": (lambda a, b: graphc.power(a, b), [(3, 4), (3, 4)], (0.5, 2.0)),
    "maximum": (lambda a, b: graphc.maximum(a, b), [(3, 4), (3, 4)], None),
    "minimum": (lambda a, b: graphc.minimum(a, b), [(3, 4), (3, 4)], None),
    "where": (lambda a, b: graphc.where(a > b, a * 2, b), [(3, 4), (3, 4)], None),
    "astype": (lambda x: graphc.astype(graphc.astype(x, "float32"), "float64") + x, [(3, 4)], None),
    "copy": (lambda x: graphc.tanh(x), [(3, 4)], None),
    "sum": (lambda x: graphc.sum(x, 1, keepdims=True) * x, [(3, 4)], None),
    "max": (lambda x: graphc.max(x, 0), [(3, 4)], None),
    "min": (lambda x: graphc.min(x, (0, 1)), [(3, 4)], None),
    "reshape": (lambda x: graphc.reshape(x, (2, 6)) * 1.5, [(3, 4)], None),
    "transpose": (lambda x: graphc.transpose(x) @ x, [(3, 4)], None),
    "broadcast_to": (lambda x: graphc.broadcast_to(x, (5, 3, 4)), [(3, 1)], None),
    "concatenate": (lambda a, b: graphc.concatenate([a, b * 2], 1), [(3, 4), (3, 2)], None),
    "slice": (lambda x: x[1:, :3], [(3, 4)], None),
    "matmul": (lambda a, b: a @ b, [(2, 3, 4), (4, 5)], None),
    "random_uniform": (lambda x: x * graphc.random_uniform(graphc.constant(np.int64(3)), x.shape),
                       [(3, 4)], None),
    "stop_gradient": (lambda x: graphc.exp(x) + graphc.stop_gradient(x * 0.0), [(3, 4)], None),
    "window": (lambda x, w: graphc.conv2d(x, w, stride=2, padding=(1, 2), dilation=(2, 1)),
               [(2, 2, 6, 5), (3, 2, 2, 3)], None),
    "window_adjoint": (lambda x, w: graphc.conv_transpose2d(x, w, stride=(2, 1), padding=1,
                                                            output_padding=(1, 0)),
                       [(1, 2, 3, 4), (2, 3, 3, 3)], None),
    "flip": (lambda x: graphc.flip(x, 1) * x, [(3, 4)], None),
    "attention": (lambda q, k, v: fused_attention(q, k, v, scale=0.5, causal=True),
                  [(2, 4, 3), (2, 5, 3), (2, 5, 2)], None),
    "take": (lambda x: graphc.take(x, np.array([[2, 0], [2, -1]]), axis=1), [(3, 4)], None),
    "take_along_axis": (lambda x: graphc.take_along_axis(x, np.array([[3, 3, 0]] * 3), 1),
                        [(3, 4)], None),
    "scatter_add": (lambda x: graphc.grad(lambda t: graphc.sum(graphc.take(
        t, np.array([1, 1, 0]), axis=0) * x))(x[:2] * 1.0) * x[:2], [(3, 4)], None),
}


def test_every_differentiable_op_has_a_gradient_case():
    differentiable = {n for n, op in OPS.items() if op.vjp is not None and op.kind != SOURCE}
    assert differentiable <= set(CASES), differentiable - set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vjp_matches_central_differences(name, rng):
    fn, shapes, domain = CASES[name]
    arrays = [draw(s, rng, domain or (-2.0, 2.0)) for s in shapes]
    out_shape = graphc.trace(fn, *[graphc.tensor(s, F64) for s in shapes]).nodes[-1].shape
    # a float32 round trip is only differentiable to float32 resolution: wider step, looser check
    loose = dict(eps=1e-3, rtol=1e-4) if name == "astype" else {}
    directional_check(weighted(fn, out_shape), arrays, rng, **loose)


def test_stop_gradient_blocks_the_gradient(rng):
    x = draw((5,), rng)
    g = graphc.grad(lambda v: graphc.sum(v * graphc.stop_gradient(v)))(x)
    np.testing.assert_allclose(g, x)  # d/dv (v * c) with c = v held constant


def test_fan_out_accumulates_and_broadcast_sums_back(rng):
    x, b = draw((4, 3), rng), draw((3,), rng)
    gx, gb = graphc.grad(lambda x, b: graphc.sum((x + b) * (x + b) + x), (0, 1))(x, b)
    np.testing.assert_allclose(gx, 2 * (x + b) + 1)
    np.testing.assert_allclose(gb, np.sum(2 * (x + b), axis=0))


def test_unused_input_gets_zeros_of_its_shape(rng):
    x, y = draw((4, 3), rng), draw((2, 5), rng)
    gx, gy = graphc.grad(lambda x, y: graphc.sum(x * x), (0, 1))(x, y)
    np.testing.assert_allclose(gx, 2 * x)
    assert gy.shape == (2, 5) and not gy.any()


def test_value_and_grad_returns_both(rng):
    x = draw((6,), rng)
    value, g = graphc.value_and_grad(lambda v: graphc.sum(graphc.exp(v)))(x)
    np.testing.assert_allclose(value, np.sum(np.exp(x)))
    np.testing.assert_allclose(g, np.exp(x))


@pytest.mark.parametrize("fn", [
    lambda x: graphc.sum(graphc.tanh(x) * graphc.exp(x * 0.5)),
    lambda x: graphc.sum(graphc.log_softmax(x, -1) * graphc.sigmoid(x)),
    lambda x: graphc.sum((x @ graphc.transpose(x)) ** 2),
    lambda x: graphc.mean(graphc.max(x, 1) * graphc.sum(x * x, 0)[:3]),
], ids=["elementwise", "row-ops", "matmul", "reductions"])
def test_grad_of_grad_matches_finite_differences_of_grad(fn, rng):
    x = draw((3, 4), rng)
    v = rng.standard_normal((3, 4))
    # d/dx <grad f(x), v> is the Hessian-vector product, itself a gradient
    hvp = lambda x: graphc.sum(graphc.grad(fn)(x) * v)  # noqa: E731
    directional_check(hvp, [x], rng, rtol=1e-5, atol=1e-7)


def test_gradients_fuse_with_the_forward_pass():
    compiled = graphc.compile(graphc.grad(lambda w, x: graphc.sum(graphc.tanh(x @ w) ** 2)),
                              graphc.tensor((3, 2)), graphc.tensor(("B", 3)))
    fused = [k for k in compiled.kernels if "tanh" in k.ops]
    assert len(fused) == 1 and "subtract" in fused[0].ops  # tanh' = 1 - y^2 in the same loop
    assert len(compiled.kernels) <= 4


def test_gradient_graph_is_an_ordinary_graph(rng):
    graph = graphc.trace(graphc.grad(lambda w: graphc.sum(graphc.exp(w))), graphc.tensor((3,), F64))
    assert "exp" in str(graph)
    w = draw((3,), rng)
    np.testing.assert_allclose(graphc.evaluate(graph, w), np.exp(w))


@pytest.mark.parametrize("fn,args,message", [
    (lambda x, labels: graphc.sum(x), (1,), "dtype int64: only float32/float64"),
    (lambda x, labels: x * 2, (0,), "scalar float output"),
    (lambda x, labels: graphc.sum(x), (5,), "out of range"),
])
def test_grad_errors(fn, args, message):
    with pytest.raises(graphc.GradError, match=message):
        graphc.trace(graphc.grad(fn, args), graphc.tensor((3,)), graphc.tensor((3,), "int64"))


def test_through_integer_values_no_gradient_flows(rng):
    x = draw((5,), rng, (0.5, 4.0))
    g = graphc.grad(lambda v: graphc.sum(graphc.astype(graphc.astype(v, "int32"), "float64") * v))(x)
    np.testing.assert_allclose(g, np.floor(x))


def test_grad_with_pytorch_when_installed(rng):
    torch = pytest.importorskip("torch")
    x = draw((4, 5), rng)
    w = draw((5, 3), rng)
    fn = lambda x, w: graphc.sum(graphc.log_softmax(graphc.tanh(x @ w), -1) * 0.3)  # noqa: E731
    gx, gw = graphc.grad(fn, (0, 1))(x, w)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    (torch.log_softmax(torch.tanh(tx @ tw), -1) * 0.3).sum().backward()
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-10)


TORCH_TWINS = {
    "exp": ("exp", 1), "log": ("log", 1), "sqrt": ("sqrt", 1), "rsqrt": ("rsqrt", 1),
    "tanh": ("tanh", 1), "abs": ("abs", 1), "negative": ("neg", 1), "add": ("add", 2),
    "erf": ("erf", 1), "sin": ("sin", 1), "cos": ("cos", 1),
    "subtract": ("sub", 2), "multiply": ("mul", 2), "divide": ("div", 2), "power": ("pow", 2),
    "maximum": ("maximum", 2), "minimum": ("minimum", 2), "matmul": ("matmul", 2),
}


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
def test_vjp_matches_pytorch_autograd(name, rng):
    torch = pytest.importorskip("torch")
    fn, shapes, domain = CASES[name]
    arrays = [draw(s, rng, domain or (-2.0, 2.0)) for s in shapes]
    out_shape = graphc.trace(fn, *[graphc.tensor(s, F64) for s in shapes]).nodes[-1].shape
    w = rng.standard_normal(out_shape)
    grads = graphc.grad(lambda *xs: graphc.sum(fn(*xs) * w), tuple(range(len(shapes))))(*arrays)
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    (getattr(torch, TORCH_TWINS[name][0])(*ts) * torch.tensor(w)).sum().backward()
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_grad_of_a_deep_chain_needs_no_recursion(rng):
    """Tracing, differentiating, fusing and generating code walk the graph with explicit
    stacks: with Python's recursion limit far below the graph's depth it still compiles."""
    import sys

    def chain(x):
        for _ in range(400):
            x = graphc.tanh(x * 0.5 + 0.25)
        return graphc.sum(x)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(250)   # the chain and its gradient are ~2,400 nodes deep
    try:
        f = graphc.compile(graphc.grad(chain), graphc.tensor((16,), "float64"), cache=False)
    finally:
        sys.setrecursionlimit(limit)
    x = rng.uniform(-1, 1, 16)
    xs = [x]
    for _ in range(400):
        xs.append(np.tanh(xs[-1] * 0.5 + 0.25))
    want = np.ones(16)
    for k in range(400, 0, -1):
        want = want * (1 - xs[k] ** 2) * 0.5
    np.testing.assert_allclose(f(x), want, rtol=1e-9, atol=1e-300)
