"""Fusion: kernel counts for the patterns the design promises, and results still match numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphc
from helpers import assert_matches, sample


def tanh_gelu(a, b, c):
    x = a * b + c
    return 0.5 * x * (1 + graphc.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def test_tanh_gelu_of_fma_is_exactly_one_kernel(rng):
    spec = graphc.tensor(("N",))
    compiled = graphc.compile(tanh_gelu, spec, spec, spec)
    assert len(compiled.kernels) == 1
    assert {"multiply", "add", "tanh"} <= set(compiled.kernels[0].ops)
    assert_matches(compiled, [sample((1000,), "float32", rng) for _ in range(3)])


def test_builtin_gelu_with_broadcast_bias_is_one_kernel(rng):
    compiled = graphc.compile(lambda a, b, c: graphc.gelu(a * b + c), graphc.tensor(("B", 64)),
                              graphc.tensor(("B", 64)), graphc.tensor((64,)))
    assert len(compiled.kernels) == 1
    assert_matches(compiled, [sample((5, 64), "float32", rng), sample((5, 64), "float32", rng),
                              sample((64,), "float32", rng)])


@pytest.mark.parametrize("fn", [graphc.softmax, graphc.log_softmax])
def test_row_softmax_is_one_kernel(fn, rng):
    compiled = graphc.compile(lambda x: fn(x), graphc.tensor(("B", 100)))
    assert len(compiled.kernels) == 1
    assert compiled.kernels[0].kind == "rows"
    assert_matches(compiled, [sample((7, 100), "float32", rng, (-10, 10))])


def test_layernorm_is_one_kernel(rng):
    def layernorm(x, gamma, beta):
        mu = graphc.mean(x, -1, keepdims=True)
        d = x - mu
        var = graphc.mean(d * d, -1, keepdims=True)
        return d * graphc.rsqrt(var + 1e-5) * gamma + beta

    compiled = graphc.compile(layernorm, graphc.tensor(("B", 65)), graphc.tensor((65,)),
                              graphc.tensor((65,)))
    assert len(compiled.kernels) == 1
    assert_matches(compiled, [sample((9, 65), "float32", rng), sample((65,), "float32", rng),
                              sample((65,), "float32", rng)], tol=dict(rtol=1e-5, atol=1e-5))


def test_reduction_fuses_with_its_elementwise_producers(rng):
    compiled = graphc.compile(lambda x, y: graphc.sum(graphc.exp(x) * y + 1.0, axis=1),
                              graphc.tensor(("B", 30)), graphc.tensor(("B", 30)))
    assert len(compiled.kernels) == 1
    assert compiled.kernels[0].ops == ["exp", "multiply", "add", "sum"]
    assert_matches(compiled, [sample((4, 30), "float32", rng) for _ in range(2)],
                   tol=dict(rtol=1e-5, atol=1e-5))


def test_column_reduction_fuses_with_producer(rng):
    compiled = graphc.compile(lambda x: graphc.sum(x * x, axis=0), graphc.tensor(("B", 30)))
    assert len(compiled.kernels) == 1
    assert_matches(compiled, [sample((17, 30), "float32", rng)], tol=dict(rtol=1e-5, atol=1e-5))


def test_intermediate_used_twice_is_computed_once_per_kernel(rng):
    # y is both an output and the input of a reduction: one rows kernel writes y and sums it.
    compiled = graphc.compile(lambda x: (graphc.tanh(x), graphc.sum(graphc.tanh(x), 1)),
                              graphc.tensor(("B", 30)))
    assert_matches(compiled, [sample((3, 30), "float32", rng)], tol=dict(rtol=1e-5, atol=1e-5))


def test_no_fusion_across_a_different_reduction_axis(rng):
    # Both reductions read y; they reduce different axes, so they are different kernels,
    # and merging must not create a cycle.
    def fn(x):
        y = graphc.exp(x)
        return y / graphc.sum(y, 0, keepdims=True) + graphc.sum(y, 1, keepdims=True)

    compiled = graphc.compile(fn, graphc.tensor((6, 8)))
    assert len(compiled.kernels) >= 2
    assert_matches(compiled, [sample((6, 8), "float32", rng)])


def test_matmul_epilogue_joins_the_matmul_kernel(rng):
    compiled = graphc.compile(lambda x, w, b: graphc.relu(x @ w + b), graphc.tensor(("B", 8)),
                              graphc.tensor((8, 4)), graphc.tensor((4,)))
    kinds = [k.kind for k in compiled.kernels]
    assert kinds == ["matmul"]
    assert compiled.kernels[0].ops == ["matmul", "add", "maximum"]
    assert_matches(compiled, [sample((5, 8), "float32", rng), sample((8, 4), "float32", rng),
                              sample((4,), "float32", rng)], tol=dict(rtol=1e-5, atol=1e-5))


def test_transposed_constant_weight_is_stored_transposed(rng):
    # x @ W.T with a constant (out, in) weight, as a Linear layer or ONNX's Gemm(transB=1)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    compiled = graphc.compile(lambda x: x @ graphc.transpose(w, (1, 0)), graphc.tensor(("B", 8)))
    assert [n.op for n in compiled.graph.nodes if n.op == "transpose"] == []
    assert compiled.kernels[0].ops == ["matmul"]
    (weight,) = [n.attrs["value"] for n in compiled.graph.nodes if n.attrs.get("shape") == (8, 6)]
    np.testing.assert_array_equal(weight, w.T)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(compiled(x), x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


def test_convolution_epilogue_joins_the_conv_kernel(rng):
    # bias, ReLU and a residual run as the convolution's tiles are stored
    w = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    compiled = graphc.compile(lambda x: graphc.relu(graphc.conv2d(x, w, b, padding=1) + x),
                              graphc.tensor(("B", 8, 9, 21)))
    assert [k.kind for k in compiled.kernels] == ["conv"]
    assert compiled.kernels[0].ops[1:] == ["add", "add", "maximum"]
    assert_matches(compiled, [sample((3, 8, 9, 21), "float32", rng)],
                   tol=dict(rtol=1e-5, atol=1e-5))


def test_matmul_epilogue_updates_an_input_in_place(rng):
    # w_new = w - 0.1 * (x^T @ g) written into w's array by the matmul kernel itself: K (1100)
    # then runs in one block, since partial sums in w's memory would destroy w
    def step(w, x, g):
        return w - 0.1 * (graphc.transpose(x, (1, 0)) @ g)
    compiled = graphc.compile(step, graphc.tensor((600, 5)), graphc.tensor((1100, 600)),
                              graphc.tensor((1100, 5)), inplace={0: 0})
    assert [k.kind for k in compiled.kernels] == ["matmul"]
    w, x, g = (sample(s, "float32", rng) for s in ((600, 5), (1100, 600), (1100, 5)))
    want = w - 0.1 * (x.T.astype(np.float64) @ g)
    compiled(w, x, g)
    np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-3)


def test_matmul_reading_the_array_it_overwrites_is_not_fused(rng):
    # w_new = w - w @ a: the product reads other elements of w, so the update is its own kernel
    compiled = graphc.compile(lambda w, a: w - w @ a, graphc.tensor((30, 30)),
                              graphc.tensor((30, 30)), inplace={0: 0})
    assert [k.kind for k in compiled.kernels] == ["matmul", "map"]
    w, a = sample((30, 30), "float32", rng), sample((30, 30), "float32", rng) / 30
    want = w - w.astype(np.float64) @ a
    compiled(w, a)
    np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-4)


def test_unfused_mode_has_one_kernel_per_op(rng):
    spec = graphc.tensor(("N",))
    fused = graphc.compile(tanh_gelu, spec, spec, spec)
    eager = graphc.compile(tanh_gelu, spec, spec, spec, fuse_ops=False)
    computing = [n for n in eager.graph.nodes if n.op not in ("input", "constant")]
    assert len(eager.kernels) == len(computing) > 1
    arrays = [sample((100,), "float32", rng) for _ in range(3)]
    np.testing.assert_allclose(eager(*arrays), fused(*arrays), rtol=1e-6, atol=1e-6)


def test_views_do_not_get_kernels(rng):
    compiled = graphc.compile(lambda x: graphc.reshape(graphc.exp(x), (-1,)) * 2,
                              graphc.tensor((4, 5)))
    assert all("reshape" not in k.ops for k in compiled.kernels)
    assert_matches(compiled, [sample((4, 5), "float32", rng)])


def test_buffer_plan_reuses_workspace_slots(rng):
    def chain(x, w):
        for _ in range(7):
            x = graphc.relu(x @ w)
        return x

    compiled = graphc.compile(chain, graphc.tensor(("B", 16)), graphc.tensor((16, 16)))
    intermediates = [k for k in compiled.kernels if k.outputs[0] not in compiled.graph.outputs]
    assert len(intermediates) == 6
    assert len(compiled.plan.slots) <= 2  # liveness lets them share two slots
    assert_matches(compiled, [sample((3, 16), "float32", rng), sample((16, 16), "float32", rng)],
                   tol=dict(rtol=1e-4, atol=1e-5))


def test_reduction_without_keepdims_then_expand_dims_still_fuses(rng):
    compiled = graphc.compile(lambda x: x / graphc.expand_dims(graphc.sum(graphc.exp(x), -1), -1),
                              graphc.tensor(("B", 7)))
    assert len(compiled.kernels) == 1
    assert compiled.kernels[0].ops.count("sum") == 1
    assert_matches(compiled, [sample((3, 7), "float32", rng)])


def test_siblings_reading_the_same_input_share_one_loop(rng):
    compiled = graphc.compile(
        lambda a: (graphc.exp(a), graphc.tanh(a) * 2, graphc.sum(a, -1), graphc.max(a, -1)),
        graphc.tensor(("B", 129)))
    assert sorted(k.kind for k in compiled.kernels) == ["map", "rows"]
    assert all(len(k.outputs) == 2 for k in compiled.kernels)
    assert_matches(compiled, [sample((5, 129), "float32", rng)], tol=dict(rtol=1e-5, atol=1e-5))


def test_siblings_with_a_path_through_a_third_kernel_stay_apart(rng):
    # k_b needs the concatenation, which needs k_a: merging k_a and k_b would be a cycle.
    def fn(x, w):
        a = graphc.exp(x)
        return a, graphc.tanh(x) + graphc.concatenate([a, w], 0)[2:6]

    compiled = graphc.compile(fn, graphc.tensor((4, 4)), graphc.tensor((4, 4)))
    # (the slice is a gather: the last map reads its box in its own loop)
    assert [k.kind for k in compiled.kernels] == ["map", "concat", "map"]
    assert not any({"exp", "tanh"} <= set(k.ops) for k in compiled.kernels)
    assert_matches(compiled, [sample((4, 4), "float32", rng), sample((4, 4), "float32", rng)],
                   tol=dict(rtol=1e-5, atol=1e-5))


def test_merging_never_makes_a_cycle_through_a_view(rng):
    # A consumer that reads a third kernel's output through a reshape must count that edge
    # when deciding to join a producer's kernel (regression: found by grad of grad).
    def fn(x):
        s = graphc.sum(x * x, 0)            # kernel A (column sums)
        m = graphc.max(x, 1)                # kernel B
        return m * graphc.reshape(s, (4,))[:3] + graphc.max(x * 2.0, 1)

    compiled = graphc.compile(fn, graphc.tensor((3, 4), "float64"))
    assert_matches(compiled, [sample((3, 4), "float64", rng)])
    v = rng.standard_normal((3, 4))
    hvp = graphc.grad(lambda x: graphc.sum(graphc.grad(
        lambda y: graphc.mean(graphc.max(y, 1) * graphc.sum(y * y, 0)[:3]))(x) * v))
    compiled = graphc.compile(hvp, graphc.tensor((3, 4), "float64"))
    assert_matches(compiled, [sample((3, 4), "float64", rng)])


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (300, 77), (3, 4, 130)])
def test_column_sums_over_leading_axes(shape, rng):
    # bias-gradient shape: sums over the batch axes, plus an elementwise output in the same loop
    axes = tuple(range(len(shape) - 1))

    def fn(g, h):
        masked = graphc.where(h > 0, g, 0.0)
        return graphc.sum(masked, axes), graphc.max(g * h, axes), masked * 2.0
    compiled = graphc.compile(fn, graphc.tensor(shape), graphc.tensor(shape))
    assert [k.kind for k in compiled.kernels] == ["rows"]
    arrays = [sample(shape, "float32", rng), sample(shape, "float32", rng)]
    assert_matches(compiled, arrays, tol=dict(rtol=1e-5, atol=1e-4))
    before = graphc.get_num_threads()
    try:
        graphc.set_num_threads(2)
        big = [sample((600, 500), "float32", rng) for _ in range(2)]
        wide = graphc.compile(fn, graphc.tensor((600, 500)), graphc.tensor((600, 500)))
        assert_matches(wide, big, tol=dict(rtol=1e-4, atol=1e-3))
    finally:
        graphc.set_num_threads(before)


def test_backward_ops_whose_forward_kernel_is_a_cycle_join_a_map_instead(rng):
    """In a CNN's gradient the pooling backward's ops read the forward pooling kernel (its max
    and tie count) and the backward pass: joining the forward kernel would be a cycle, so
    they join the backward map kernel (g * hit / count in one kernel; the relu backward in
    the window adjoint's). Gradients checked against PyTorch."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def f(x, w1, w2, g, lib=graphc):
        relu, pool = (graphc.relu, graphc.max_pool2d) if lib is graphc else (F.relu, F.max_pool2d)
        conv = graphc.conv2d if lib is graphc else F.conv2d
        h = pool(relu(conv(x, w1, padding=1)), 2)
        h = pool(relu(conv(h, w2, padding=1)), 2)
        return (h * g).sum()
    shapes = [(2, 3, 8, 8), (4, 3, 3, 3), (4, 4, 3, 3), (2, 4, 2, 2)]
    args = [rng.standard_normal(s) for s in shapes]
    c = graphc.compile(graphc.grad(f, (0, 1, 2)), *[graphc.tensor(s, "float64") for s in shapes])
    kernel_of = {n: k.name for k in c.kernels for n in k.nodes}
    g = c.graph
    divides = [n for n in g.nodes if n.op == "divide" and g[n.inputs[0]].op == "multiply"]
    assert divides and all(kernel_of[d.id] == kernel_of[d.inputs[0]] for d in divides)
    adjoint_kernels = {kernel_of[n.id] for n in g.nodes if n.op == "window_adjoint"}
    assert any(kernel_of.get(n.id) in adjoint_kernels for n in g.nodes if n.op == "where"), \
        "the relu backward runs in the window adjoint's kernel"
    t = [torch.tensor(a, requires_grad=True) for a in args]
    f(*t, lib=torch).backward()
    for got, want in zip(c(*args), t[:3]):
        np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_a_transpose_of_a_transpose_is_its_input(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    f = graphc.compile(lambda x: graphc.transpose(graphc.transpose(x)) * 2.0,
                       graphc.tensor(x.shape))
    assert [n.op for n in f.graph.nodes if n.op == "transpose"] == []
    np.testing.assert_array_equal(f(x), x * 2.0)


def test_a_transposed_matmul_is_the_matmul_of_swapped_operands(rng):
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 9))
    f = graphc.compile(lambda a, b: graphc.transpose(a @ b) + 1.0,
                       graphc.tensor(a.shape, "float64"), graphc.tensor(b.shape, "float64"))
    (mm,) = [n for n in f.graph.nodes if n.op == "matmul"]
    assert [f.graph[i].op for i in mm.inputs] == ["transpose", "transpose"]
    assert len(f.kernels) == 1   # the transposes read in place, the + 1 in the epilogue
    np.testing.assert_allclose(f(a, b), (a @ b).T + 1.0, rtol=1e-12)
    # the product read elsewhere too: one matmul, transposed once
    def both(a, b):
        m = a @ b
        return graphc.transpose(m), m
    g = graphc.compile(both, graphc.tensor(a.shape, "float64"), graphc.tensor(b.shape, "float64"))
    assert sum(n.op == "matmul" for n in g.graph.nodes) == 1
    got = g(a, b)
    np.testing.assert_allclose(got[0], (a @ b).T, rtol=1e-12)
    np.testing.assert_allclose(got[1], a @ b, rtol=1e-12)


def test_a_scans_weight_gradient_accumulates_without_transposes(rng):
    """The backward loop of an RNN: the weight's gradient is summed in the weight's layout
    (g^T h in place, the accumulation in the matmul's epilogue), and the forward step's
    transposed weight is read as the weight itself."""
    w = rng.standard_normal((8, 8)) * 0.3

    def loss(w, h0, xs):
        def step(h, x):
            h = graphc.tanh(h @ graphc.transpose(w) + x)
            return h, h
        _, hs = graphc.scan(step, h0, xs)
        return graphc.sum(hs * hs)
    specs = [graphc.tensor((8, 8), "float64"), graphc.tensor((3, 8), "float64"),
             graphc.tensor((5, 3, 8), "float64")]
    f = graphc.compile(graphc.grad(loss), *specs)
    bodies = [k.body for k in f.kernels if k.body is not None]
    assert bodies
    for _, kernels in bodies:
        assert not [k.name for k in kernels if k.ops == ["transpose"]]
    h0, xs = rng.standard_normal((3, 8)), rng.standard_normal((5, 3, 8))
    torch = pytest.importorskip("torch")
    tw = torch.tensor(w, requires_grad=True)
    h, total = torch.tensor(h0), 0
    for t in range(5):
        h = torch.tanh(h @ tw.T + torch.tensor(xs[t]))
        total = total + (h * h).sum()
    total.backward()
    np.testing.assert_allclose(f(w, h0, xs), tw.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_repeated_subexpressions_are_computed_once(rng):
    """simplify merges nodes with the same op, inputs and attributes: layernorm's mean and
    var's own mean are one sum; a subexpression written twice is one node; values that only
    look alike (other attributes, other inputs) stay apart. Results against numpy."""
    def layernorm(x):
        m = graphc.mean(x, -1, keepdims=True)
        v = graphc.var(x, -1, keepdims=True)
        return (x - m) * graphc.rsqrt(v + 1e-5)

    x = rng.standard_normal((6, 40)).astype(np.float32)
    f = graphc.compile(layernorm, graphc.tensor(x.shape))
    assert [n.op for n in f.graph.nodes].count("sum") == 2
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.astype(np.float64).var(-1, keepdims=True)
                                                    + 1e-5)
    np.testing.assert_allclose(f(x), ref, rtol=1e-4, atol=1e-5)

    def twice(x, y):
        return graphc.tanh(x * y) + graphc.tanh(x * y) + graphc.tanh(y * x) + \
            graphc.sum(x, 0) + graphc.sum(x, 1, keepdims=True).T[0][:, None].T
    y = rng.standard_normal((40, 40)).astype(np.float32)
    x2 = rng.standard_normal((40, 40)).astype(np.float32)
    g = graphc.compile(twice, graphc.tensor(x2.shape), graphc.tensor(y.shape))
    ops = [n.op for n in g.graph.nodes]
    assert ops.count("tanh") == 2 and ops.count("multiply") == 2 and ops.count("sum") == 2
    t = np.tanh(x2.astype(np.float64) * y)
    np.testing.assert_allclose(g(x2, y), 3 * t + x2.sum(0) + x2.sum(1)[None, :], rtol=1e-4,
                               atol=1e-4)
