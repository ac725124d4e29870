"""graphc.scan: against plain Python/numpy loops, through every stage, and its gradients."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_outputs_match
from test_autodiff import directional_check

import graphc
from graphc.ops import OPS
from graphc.ops.registry import LOOP

F64 = "float64"


def run_both(fn, specs, arrays):
    """The compiled result and the interpreter's, which must agree."""
    compiled = graphc.compile(fn, *specs)
    out = compiled(*arrays)
    assert_outputs_match(_flat(out), _flat(graphc.evaluate(compiled.graph, *arrays)))
    return compiled, out


def _flat(tree):
    return tuple(graphc.tree.leaves(tree))


def loops_in(graph):
    return [n for n in graph.nodes if OPS[n.op].kind == LOOP]


# ------------------------------------------------------------------ forward

def decay_step(c, x):
    c = c * 0.5 + x
    return c, c * 2.0


def numpy_decay(c, xs):
    ys = []
    for x in xs:
        c = c * 0.5 + x
        ys.append(c * 2.0)
    return c, np.array(ys, c.dtype).reshape((len(xs),) + c.shape)


@pytest.mark.parametrize("T", [0, 1, 2, 7, 33])
def test_one_build_serves_every_length(T, rng):
    f = graphc.compile(lambda c, xs: graphc.scan(decay_step, c, xs),
                       graphc.tensor((3,)), graphc.tensor(("T", 3)))
    c = rng.standard_normal(3).astype(np.float32)
    xs = rng.standard_normal((T, 3)).astype(np.float32)
    got_c, got_ys = f(c, xs)
    want_c, want_ys = numpy_decay(c, xs)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6, atol=1e-6)
    assert got_ys.shape == (T, 3)
    np.testing.assert_allclose(got_ys, want_ys, rtol=1e-6, atol=1e-6)


def test_the_loop_is_one_node_and_not_unrolled():
    f = graphc.compile(lambda c, xs: graphc.scan(decay_step, c, xs),
                       graphc.tensor((3,)), graphc.tensor(("T", 3)))
    (loop,) = loops_in(f.graph)
    assert loop.attrs["length"] == graphc.dim("T")
    assert len(f.kernels) == 1 and f.kernels[0].kind == "scan"
    assert len(f.kernels[0].body[1]) == 1          # the body fuses into one kernel
    assert "scan_decay_step" in str(f.graph)        # the printed graph shows the body
    assert len(f.plan.loops) == 1


def rnn_step(p):
    def step(h, x):
        h = graphc.tanh(x @ p["w"] + h @ p["u"] + p["b"])
        return h, graphc.sum(h * h, axis=1)
    return step


def numpy_rnn(p, h, xs):
    ys = []
    for x in xs:
        h = np.tanh(x @ p["w"] + h @ p["u"] + p["b"])
        ys.append((h * h).sum(1))
    return h, np.array(ys).reshape(len(xs), h.shape[0])


def test_closed_over_parameters_become_inputs_of_the_loop(rng):
    B, I, H, T = 2, 3, 4, 6
    p = {"w": rng.standard_normal((I, H)), "u": rng.standard_normal((H, H)) * 0.5,
         "b": rng.standard_normal(H)}
    h0, xs = rng.standard_normal((B, H)), rng.standard_normal((T, B, I))
    specs = ({k: graphc.tensor(v.shape, F64) for k, v in p.items()},
             graphc.tensor(("B", H), F64), graphc.tensor(("T", "B", I), F64))
    compiled, (h, ys) = run_both(lambda p, h0, xs: graphc.scan(rnn_step(p), h0, xs), specs,
                                 (p, h0, xs))
    want_h, want_ys = numpy_rnn(p, h0, xs)
    np.testing.assert_allclose(h, want_h, rtol=1e-12)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12)
    (loop,) = loops_in(compiled.graph)
    body = loop.attrs["body"]
    assert len(loop.inputs) == 2 + 3                # h0, xs, then the three parameters
    assert [body[i].attrs["name"] for i in body.inputs][2:] == \
        ["capture0", "capture1", "capture2"]


def test_pytree_carry_and_xs_and_ys(rng):
    def step(carry, x):
        a, b = x
        total = carry["sum"] + a * b
        return {"sum": total, "n": carry["n"] + 1}, {"prod": a * b, "n": carry["n"]}

    def fn(init, xs):
        return graphc.scan(step, init, xs)

    T = 5
    init = {"sum": np.zeros(4, np.float32), "n": np.array(0, np.int32)}
    xs = (rng.standard_normal((T, 4)).astype(np.float32),
          rng.standard_normal((T, 4)).astype(np.float32))
    specs = ({"sum": graphc.tensor((4,)), "n": graphc.tensor((), "int32")},
             (graphc.tensor(("T", 4)), graphc.tensor(("T", 4))))
    _, (carry, ys) = run_both(fn, specs, (init, xs))
    np.testing.assert_allclose(carry["sum"], (xs[0] * xs[1]).sum(0), rtol=1e-5)
    assert carry["n"] == T and carry["n"].dtype == np.int32
    np.testing.assert_allclose(ys["prod"], xs[0] * xs[1], rtol=1e-6)
    np.testing.assert_array_equal(ys["n"], np.arange(T, dtype=np.int32))


@pytest.mark.parametrize("T", [0, 1, 6])
def test_reverse_runs_from_the_last_slice_and_keeps_ys_in_order(T, rng):
    def step(c, x):
        c = c * 0.9 + graphc.sin(x)
        return c, c + x

    c0 = rng.standard_normal((2, 3))
    xs = rng.standard_normal((T, 2, 3))
    specs = (graphc.tensor((2, 3), F64), graphc.tensor(("T", 2, 3), F64))
    _, (c, ys) = run_both(lambda c, xs: graphc.scan(step, c, xs, reverse=True), specs,
                          (c0, xs))
    want = c0.copy()
    want_ys = np.zeros_like(xs)
    for t in reversed(range(T)):
        want = want * 0.9 + np.sin(xs[t])
        want_ys[t] = want + xs[t]
    np.testing.assert_allclose(c, want, rtol=1e-12)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12)


def test_xs_none_with_a_length_as_in_jax():
    def fn(c):
        return graphc.scan(lambda c, _: (c * 2.0, c + 1.0), c, None, length=4)

    c, ys = run_both(fn, (graphc.tensor((2,), F64),), (np.array([1.0, -1.0]),))[1]
    np.testing.assert_allclose(c, [16.0, -16.0])
    np.testing.assert_allclose(ys, [[2.0, 0.0], [3.0, -1.0], [5.0, -3.0], [9.0, -7.0]])


def test_length_zero_returns_init_and_empty_ys():
    def fn(c, xs):
        return graphc.scan(decay_step, c, xs)

    c0 = np.array([1.0, 2.0, 3.0], np.float32)
    _, (c, ys) = run_both(fn, (graphc.tensor((3,)), graphc.tensor(("T", 3))),
                          (c0, np.zeros((0, 3), np.float32)))
    np.testing.assert_array_equal(c, c0)
    assert ys.shape == (0, 3)


def test_unused_results_still_run_the_loop(rng):
    xs = rng.standard_normal((5, 3)).astype(np.float32)
    c0 = np.zeros(3, np.float32)
    want_c, want_ys = numpy_decay(c0, xs)
    only_ys = lambda c, xs: graphc.scan(decay_step, c, xs)[1]
    only_c = lambda c, xs: graphc.scan(decay_step, c, xs)[0]
    specs = (graphc.tensor((3,)), graphc.tensor(("T", 3)))
    np.testing.assert_allclose(run_both(only_ys, specs, (c0, xs))[1], want_ys, rtol=1e-6)
    compiled, got_c = run_both(only_c, specs, (c0, xs))
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
    (loop,) = loops_in(compiled.graph)
    assert len(loop.attrs["body"].outputs) == 1               # unread ys leave the body


def test_unread_ys_leave_the_body_and_results_keep_their_values(rng):
    def fn(c, xs):
        c, (_, _, d) = graphc.scan(lambda c, x: (c + x, (c * 2.0, graphc.exp(x), c - x)), c, xs)
        return d, c

    c0, xs = rng.standard_normal(3), rng.standard_normal((4, 3))
    compiled, (d, c) = run_both(fn, (graphc.tensor((3,), F64), graphc.tensor(("T", 3), F64)),
                                (c0, xs))
    (loop,) = loops_in(compiled.graph)
    assert len(loop.attrs["body"].outputs) == 2                # the carry and d
    assert "exp" not in [n.op for n in loop.attrs["body"].nodes]
    before = c0 + np.concatenate([[0 * c0], np.cumsum(xs, 0)[:-1]])
    np.testing.assert_allclose(d, before - xs, rtol=1e-12)
    np.testing.assert_allclose(c, c0 + xs.sum(0), rtol=1e-12)


def test_body_constants_and_scalars(rng):
    table = np.arange(6, dtype=np.float32).reshape(2, 3)

    def step(c, x):
        return c + x * table, graphc.max(c, axis=1) + 1.0

    xs = rng.standard_normal((4, 2, 3)).astype(np.float32)
    _, (c, ys) = run_both(lambda c, xs: graphc.scan(step, c, xs),
                          (graphc.tensor((2, 3)), graphc.tensor(("T", 2, 3))),
                          (np.zeros((2, 3), np.float32), xs))
    want, want_ys = np.zeros((2, 3), np.float32), []
    for x in xs:
        want_ys.append(want.max(1) + 1.0)
        want = want + x * table
    np.testing.assert_allclose(c, want, rtol=1e-6)
    np.testing.assert_allclose(ys, np.array(want_ys), rtol=1e-6)


def test_carry_passed_through_and_closure_as_y(rng):
    def fn(c, w, xs):
        return graphc.scan(lambda c, x: (c, w), c, xs)

    c0, w = rng.standard_normal(3), rng.standard_normal(2)
    xs = rng.standard_normal((3, 1))
    specs = (graphc.tensor((3,), F64), graphc.tensor((2,), F64), graphc.tensor(("T", 1), F64))
    _, (c, ys) = run_both(fn, specs, (c0, w, xs))
    np.testing.assert_array_equal(c, c0)
    np.testing.assert_array_equal(ys, np.tile(w, (3, 1)))


def test_two_scans_in_sequence_and_a_long_loop(rng):
    def fn(c, xs):
        c1, ys = graphc.scan(decay_step, c, xs)
        return graphc.scan(decay_step, c1, ys, reverse=True)

    xs = rng.standard_normal((3000, 3)).astype(np.float32) * 0.1
    c0 = np.zeros(3, np.float32)
    _, (c, ys) = run_both(fn, (graphc.tensor((3,)), graphc.tensor(("T", 3))), (c0, xs))
    c1, ys1 = numpy_decay(c0, xs)
    c2, ys2 = numpy_decay(c1, ys1[::-1])
    np.testing.assert_allclose(c, c2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys, ys2[::-1], rtol=1e-5, atol=1e-6)


def test_scan_on_numpy_arrays_runs_eagerly():
    c, ys = graphc.scan(decay_step, np.ones(2, np.float32), np.ones((3, 2), np.float32))
    want_c, want_ys = numpy_decay(np.ones(2, np.float32), np.ones((3, 2), np.float32))
    np.testing.assert_allclose(c, want_c)
    np.testing.assert_allclose(ys, want_ys)


def test_unfused_build_matches(rng):
    fn = lambda p, h0, xs: graphc.scan(rnn_step(p), h0, xs)
    p = {"w": rng.standard_normal((3, 4)), "u": rng.standard_normal((4, 4)) * 0.5,
         "b": rng.standard_normal(4)}
    h0, xs = rng.standard_normal((2, 4)), rng.standard_normal((5, 2, 3))
    specs = ({k: graphc.tensor(v.shape, F64) for k, v in p.items()},
             graphc.tensor((2, 4), F64), graphc.tensor(("T", 2, 3), F64))
    eager = graphc.compile(fn, *specs, fuse_ops=False)
    assert len(eager.kernels[0].body[1]) > 1
    for got, want in zip(_flat(eager(p, h0, xs)), _flat(numpy_rnn(p, h0, xs))):
        np.testing.assert_allclose(got, want, rtol=1e-12)


# ------------------------------------------------------------------ gradients

def rnn_loss(p, h0, xs):
    h, ys = graphc.scan(rnn_step(p), h0, xs)
    return graphc.sum(h * h) + graphc.sum(ys * np.arange(1.0, 3.0))


def unrolled_rnn_loss(p, h0, xs):
    h, total = h0, 0.0
    for t in range(xs.shape[0]):
        h = graphc.tanh(xs[t] @ p["w"] + h @ p["u"] + p["b"])
        total = total + graphc.sum(graphc.sum(h * h, axis=1) * np.arange(1.0, 3.0))
    return graphc.sum(h * h) + total


def _rnn_case(rng, T=5):
    p = {"w": rng.standard_normal((3, 4)), "u": rng.standard_normal((4, 4)) * 0.5,
         "b": rng.standard_normal(4)}
    return p, rng.standard_normal((2, 4)), rng.standard_normal((T, 2, 3))


def test_grad_through_scan_matches_central_differences(rng):
    p, h0, xs = _rnn_case(rng)
    flat = lambda w, u, b, h0, xs: rnn_loss({"w": w, "u": u, "b": b}, h0, xs)
    directional_check(flat, [p["w"], p["u"], p["b"], h0, xs], rng)


def test_grad_through_scan_matches_the_unrolled_loop(rng):
    p, h0, xs = _rnn_case(rng)
    got = graphc.grad(rnn_loss, argnums=(0, 1, 2))(p, h0, xs)
    want = graphc.grad(unrolled_rnn_loss, argnums=(0, 1, 2))(p, h0, xs)
    for g, w in zip(_flat(got), _flat(want)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_one_gradient_build_serves_every_length(rng):
    specs = ({"w": graphc.tensor((3, 4), F64), "u": graphc.tensor((4, 4), F64),
              "b": graphc.tensor((4,), F64)},
             graphc.tensor((2, 4), F64), graphc.tensor(("T", 2, 3), F64))
    f = graphc.compile(graphc.value_and_grad(rnn_loss, argnums=(0, 1, 2)), *specs)
    for T in (0, 1, 4):
        p, h0, xs = _rnn_case(rng, T)
        _, got = f(p, h0, xs)
        want = graphc.grad(unrolled_rnn_loss, argnums=(0, 1, 2))(p, h0, xs) if T else None
        if T == 0:
            np.testing.assert_allclose(got[1], 2 * h0)     # d sum(h0^2) / d h0
            assert np.all(got[0]["w"] == 0) and got[2].shape == (0, 2, 3)
            continue
        for g, w in zip(_flat(got), _flat(want)):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_the_gradient_runs_the_forward_loop_once():
    specs = ({"w": graphc.tensor((3, 4), F64), "u": graphc.tensor((4, 4), F64),
              "b": graphc.tensor((4,), F64)},
             graphc.tensor((2, 4), F64), graphc.tensor(("T", 2, 3), F64))
    traced = graphc.trace(graphc.value_and_grad(rnn_loss, argnums=(0, 1, 2)), *specs)
    assert len(loops_in(traced)) == 3      # forward, forward saving the carries, backward
    f = graphc.compile(graphc.value_and_grad(rnn_loss, argnums=(0, 1, 2)), *specs)
    forward, backward = loops_in(f.graph)   # the first two are one loop after simplify
    assert forward.attrs["body"].name.endswith("_saving")
    assert backward.attrs["reverse"] and not forward.attrs["reverse"]


def test_a_gradient_not_asked_for_xs_computes_none_for_them(rng):
    specs = ({"w": graphc.tensor((3, 4), F64), "u": graphc.tensor((4, 4), F64),
              "b": graphc.tensor((4,), F64)},
             graphc.tensor((2, 4), F64), graphc.tensor(("T", 2, 3), F64))
    f = graphc.compile(graphc.grad(rnn_loss), *specs)
    _, backward = loops_in(f.graph)
    assert len(backward.attrs["body"].outputs) == backward.attrs["num_carry"]
    p, h0, xs = _rnn_case(rng)
    want = graphc.grad(unrolled_rnn_loss)(p, h0, xs)
    for g, w in zip(_flat(f(p, h0, xs)), _flat(want)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_grad_of_reverse_scan_with_a_pytree_carry(rng):
    def loss(c, w, xs):
        def step(carry, x):
            a, b = carry
            a2 = graphc.tanh(a * w + x[0] * b)
            return (a2, b * 0.5 + x[1]), a2 * b
        (a, b), ys = graphc.scan(step, c, xs, reverse=True)
        return graphc.sum(a) + graphc.sum(b * b) + graphc.sum(ys * ys)

    def unrolled(c, w, xs):
        (a, b), total = c, 0.0
        for t in reversed(range(xs[0].shape[0])):
            a2 = graphc.tanh(a * w + xs[0][t] * b)
            a, b, y = a2, b * 0.5 + xs[1][t], a2 * b
            total = total + graphc.sum(y * y)
        return graphc.sum(a) + graphc.sum(b * b) + total

    c = (rng.standard_normal(3), rng.standard_normal(3))
    w = rng.standard_normal(3)
    xs = (rng.standard_normal((4, 3)), rng.standard_normal((4, 3)))
    got = graphc.grad(loss, argnums=(0, 1, 2))(c, w, xs)
    want = graphc.grad(unrolled, argnums=(0, 1, 2))(c, w, xs)
    for g, v in zip(_flat(got), _flat(want)):
        np.testing.assert_allclose(g, v, rtol=1e-10, atol=1e-12)
    flat = lambda a, b, w, x0, x1: loss((a, b), w, (x0, x1))
    directional_check(flat, [c[0], c[1], w, xs[0], xs[1]], rng)


def test_second_order_gradient_through_scan(rng):
    def f(w, xs):
        return graphc.sum(graphc.scan(lambda c, x: (graphc.tanh(c * w + x), c), 0.0 * w,
                                      xs)[0])

    def unrolled(w, xs):
        c = 0.0 * w
        for t in range(xs.shape[0]):
            c = graphc.tanh(c * w + xs[t])
        return graphc.sum(c)

    w, xs = rng.standard_normal(3), rng.standard_normal((4, 3))
    hess = lambda fn: graphc.grad(lambda w, xs: graphc.sum(graphc.grad(fn)(w, xs)))
    np.testing.assert_allclose(hess(f)(w, xs), hess(unrolled)(w, xs), rtol=1e-10)


# ------------------------------------------------------------------ errors

def _trace(fn, *specs):
    return graphc.trace(fn, *specs)


def test_carry_with_another_shape_names_the_leaf():
    def fn(c, xs):
        return graphc.scan(lambda c, x: ({"h": c["h"][:, :2]}, x), c, xs)

    with pytest.raises(graphc.ShapeError, match=r"carry\['h'\].*f32\[2, 2\].*init has f32\[2, 3\]"
                       ) as err:
        _trace(fn, {"h": graphc.tensor((2, 3))}, graphc.tensor((4, 1)))
    assert "test_scan.py" in str(err.value)


def test_carry_with_another_dtype_is_refused():
    with pytest.raises(graphc.ShapeError, match=r"carry.*f64\[3\].*init has f32\[3\]"):
        _trace(lambda c, xs: graphc.scan(lambda c, x: (c.astype("float64"), x), c, xs),
               graphc.tensor((3,)), graphc.tensor((4, 1)))


def test_carry_with_another_structure_is_refused():
    with pytest.raises(graphc.TraceError, match="carry structured as"):
        _trace(lambda c, xs: graphc.scan(lambda c, x: ((c, c), x), c, xs),
               graphc.tensor((3,)), graphc.tensor((4, 1)))


def test_xs_with_different_leading_sizes_are_refused():
    with pytest.raises(graphc.ShapeError, match=r"different leading sizes: xs\[0\] has 4, "
                                                r"xs\[1\] has 5"):
        _trace(lambda c, a, b: graphc.scan(lambda c, x: (c, x[0]), c, (a, b)),
               graphc.tensor((3,)), graphc.tensor((4, 1)), graphc.tensor((5, 1)))


def test_length_that_disagrees_with_xs_is_refused():
    with pytest.raises(graphc.ShapeError, match="length=3 but the xs leaves have leading size 4"):
        _trace(lambda c, xs: graphc.scan(lambda c, x: (c, x), c, xs, length=3),
               graphc.tensor((3,)), graphc.tensor((4, 1)))


def test_xs_none_needs_a_length():
    with pytest.raises(graphc.TraceError, match="length= must say how many steps"):
        _trace(lambda c: graphc.scan(lambda c, x: (c, c), c, None), graphc.tensor((3,)))


def test_a_body_that_does_not_return_a_pair_is_refused():
    with pytest.raises(graphc.TraceError, match=r"must return a pair \(carry, y\)"):
        _trace(lambda c, xs: graphc.scan(lambda c, x: c, c, xs),
               graphc.tensor((3,)), graphc.tensor((4, 1)))


def test_scan_inside_a_scan_body_is_refused_clearly():
    def inner(c, x):
        return graphc.scan(lambda a, b: (a, b), c, x[None]), x

    with pytest.raises(graphc.TraceError, match="scan inside the body of another scan"):
        _trace(lambda c, xs: graphc.scan(inner, c, xs),
               graphc.tensor((1,)), graphc.tensor((4, 1)))


# ------------------------------------------------------------------ the rest of the pipeline

def test_the_body_may_use_the_symbolic_length(rng):
    def fn(c, xs):
        return graphc.scan(lambda c, x: (c + graphc.mean(xs, axis=0) * x, c), c, xs)

    specs = (graphc.tensor((3,), F64), graphc.tensor(("T", 3), F64))
    f = graphc.compile(fn, *specs)
    for T in (1, 4):
        c0, xs = rng.standard_normal(3), rng.standard_normal((T, 3))
        c, ys = f(c0, xs)
        want, want_ys = c0.copy(), []
        for x in xs:
            want_ys.append(want)
            want = want + xs.mean(0) * x
        np.testing.assert_allclose(c, want, rtol=1e-12)
        np.testing.assert_allclose(ys, np.array(want_ys), rtol=1e-12)


def test_an_exported_artifact_runs_the_loop(rng, tmp_path):
    import graphc_runtime

    f = graphc.compile(lambda c, xs: graphc.scan(decay_step, c, xs),
                       graphc.tensor((3,)), graphc.tensor(("T", 3)))
    path = f.export(str(tmp_path / "scan.graphc"))
    loaded = graphc_runtime.load(path)
    c0 = rng.standard_normal(3).astype(np.float32)
    xs = rng.standard_normal((6, 3)).astype(np.float32)
    for got, want in zip(loaded(c0, xs), numpy_decay(c0, xs)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_final_carry_written_in_place_into_init(rng):
    f = graphc.compile(lambda c, xs: graphc.scan(decay_step, c, xs)[0],
                       graphc.tensor((3,)), graphc.tensor(("T", 3)), inplace={0: 0})
    c0 = rng.standard_normal(3).astype(np.float32)
    xs = rng.standard_normal((4, 3)).astype(np.float32)
    want, _ = numpy_decay(c0, xs)
    state = c0.copy()
    f(state, xs)
    np.testing.assert_allclose(state, want, rtol=1e-6)


def test_explain_and_the_plan_show_the_loop():
    f = graphc.compile(lambda c, xs: graphc.scan(decay_step, c, xs),
                       graphc.tensor((3,)), graphc.tensor(("T", 3)))
    text = str(f.explain())
    assert "k0_scan" in text and "body, each step: scan_decay_step: 1 kernel(s)" in text
    text = str(f.plan)
    assert "body scan_decay_step" in text and "s2_k0_multiply_add" in text


def test_a_hand_built_loop_inside_a_loop_body_is_refused_by_the_compiler():
    from graphc.ops.control import _loop

    inner = graphc.trace(lambda c, xs: graphc.scan(decay_step, c, xs),
                         graphc.tensor((3,)), graphc.tensor((4, 3)))

    def outer(c, xss):
        return tuple(_loop([c, xss], inner, 1, 1, xss.shape[0], False))

    specs = (graphc.tensor((3,)), graphc.tensor((5, 4, 3)))
    c0, xss = np.ones(3, np.float32), np.ones((5, 4, 3), np.float32)
    _, ys = graphc.evaluate(graphc.trace(outer, *specs), c0, xss)   # the interpreter runs it
    assert ys.shape == (5, 4, 3)
    with pytest.raises(graphc.CompileError, match="a loop inside a loop's body"):
        graphc.compile(outer, *specs)


def test_the_cache_key_covers_the_bodys_constants():
    def build(value):
        table = np.full(3, value, np.float32)
        return graphc.compile(lambda c, xs: graphc.scan(lambda c, x: (c + x * table, c), c, xs),
                              graphc.tensor((3,)), graphc.tensor(("T", 3)))

    a, b, again = build(1.0), build(2.0), build(1.0)
    assert a.key != b.key and a.key == again.key
    xs = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(b(np.zeros(3, np.float32), xs)[0], np.full(3, 4.0))


# ------------------------------------------------------------------ on the GPU (stub driver)

def test_the_cuda_launch_plan_steps_the_loop_in_the_runtime(monkeypatch, rng):
    """target="cuda": the loop is a LoopLaunch whose body kernels the runtime launches once
    per step (the stub driver counts them); the plan survives its JSON."""
    import fake_cuda
    from graphc_runtime.launch import LaunchPlan

    fake = fake_cuda.install(monkeypatch)
    f = graphc.compile(lambda c, xs: graphc.scan(decay_step, c, xs),
                       graphc.tensor((3,)), graphc.tensor(("T", 3)), target="cuda")
    (entry,) = f.launch["kernels"]
    body = [k["name"] for k in entry["loop"]["body"]]
    assert body and entry["loop"]["length"] == [1, ["T"]]
    assert LaunchPlan.from_json(f.launch).to_json() == f.launch
    for T in (0, 3, 4):
        c0 = rng.standard_normal(3).astype(np.float32)
        xs = rng.standard_normal((T, 3)).astype(np.float32)
        fake.launches.clear()
        got_c, got_ys = f(c0, xs)
        want_c, want_ys = numpy_decay(c0, xs)
        np.testing.assert_allclose(got_c, want_c, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got_ys, want_ys, rtol=1e-6, atol=1e-6)
        assert [n for n, _, _ in fake.launches] == body * T
    assert not fake.errors


def test_a_malformed_loop_in_a_launch_plan_is_a_clear_error():
    from graphc_runtime.launch import LaunchPlan

    f = graphc.compile(lambda c, xs: graphc.scan(decay_step, c, xs),
                       graphc.tensor((3,)), graphc.tensor(("T", 3)), target="cuda")
    data = f.launch
    data["kernels"][0]["loop"]["body"][0]["args"][0] = ["carry", 5]
    with pytest.raises(ValueError, match="no carry 5"):
        LaunchPlan.from_json(data)
    data["kernels"][0]["loop"]["body"][0]["args"][0] = ["heap", 0, 12]
    with pytest.raises(ValueError, match="unknown buffer space 'heap'"):
        LaunchPlan.from_json(data)


def test_a_captured_constant_stays_a_constant_and_its_transpose_folds(rng):
    # h @ W^T with a constant W (an imported LSTM's R): transposed once at compile time,
    # not at every step
    w = rng.standard_normal((5, 5)).astype(np.float32)

    def fn(xs):
        def step(h, x):
            h = graphc.tanh(h @ graphc.transpose(w, (1, 0)) + x)
            return h, h
        return graphc.scan(step, graphc.zeros((xs.shape[1], 5)), xs)[1]

    xs = rng.standard_normal((6, 3, 5)).astype(np.float32)
    compiled, out = run_both(fn, [graphc.tensor((6, "B", 5))], [xs])
    (loop,) = loops_in(compiled.graph)
    assert "transpose" not in [n.op for n in loop.attrs["body"].nodes]
    h, want = np.zeros((3, 5)), []
    for x in xs:
        h = np.tanh(h @ w.T + x)
        want.append(h)
    np.testing.assert_allclose(out, np.array(want), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ batch bands
# A body that treats its batch rows independently runs as one thread-pool task over bands of
# rows (codegen/cpu.py row_separable): each thread runs every step on its rows.

def banded(compiled) -> bool:
    return ".rows(" in compiled.llvm_ir


@pytest.mark.parametrize("threads", [1, 2])
def test_a_body_with_independent_rows_runs_in_bands_of_rows(threads, rng):
    H, I = 16, 8
    p = {"w": rng.standard_normal((I, H)) * 0.3, "b": rng.standard_normal(H)}
    u = rng.standard_normal((H, H)) * 0.3

    def step(h, x):   # captured weights, a constant, a per-row reduction, a row slice
        h = graphc.tanh(x @ p["w"] + h @ graphc.constant(u) + p["b"])
        return h, graphc.sum(h[:, 2:9] * h[:, :7], axis=1)
    f = graphc.compile(lambda h0, xs: graphc.scan(step, h0, xs),
                       graphc.tensor(("B", H), F64), graphc.tensor(("T", "B", I), F64))
    assert banded(f)
    before = graphc.get_num_threads()
    graphc.set_num_threads(threads)
    try:
        for B, T in [(1, 3), (2, 0), (5, 1), (7, 2), (13, 5), (64, 40)]:
            h0, xs = rng.standard_normal((B, H)), rng.standard_normal((T, B, I))
            h, ys = f(h0, xs)
            want_ys = []
            want = h0
            for x in xs:
                want = np.tanh(x @ p["w"] + want @ u + p["b"])
                want_ys.append((want[:, 2:9] * want[:, :7]).sum(1))
            np.testing.assert_allclose(h, want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(ys, np.array(want_ys).reshape(T, B), rtol=1e-12,
                                       atol=1e-12)
    finally:
        graphc.set_num_threads(before)


@pytest.mark.parametrize("mix", ["mean over the batch", "rows reversed", "computed rows reversed",
                                 "rows multiplied"])
def test_a_body_that_mixes_rows_keeps_one_launch_per_kernel(mix, rng):
    B, H = 64, 48   # big enough to split between threads
    m = rng.standard_normal((B, B)) * 0.1

    def step(h, x):
        if mix == "mean over the batch":
            h = graphc.tanh(h - graphc.mean(h, axis=0) + x)
        elif mix == "rows reversed":
            h = graphc.tanh(graphc.flip(h, 0) * 0.9 + x)
        elif mix == "computed rows reversed":   # the flip reads a value the kernel computes
            h = graphc.tanh(graphc.flip(graphc.tanh(h) * 0.9, 0) + x)
        else:
            h = graphc.tanh(graphc.constant(m) @ h + x)
        return h, h
    f = graphc.compile(lambda h0, xs: graphc.scan(step, h0, xs),
                       graphc.tensor((B, H), F64), graphc.tensor((12, B, H), F64))
    assert not banded(f)
    h0, xs = rng.standard_normal((B, H)), rng.standard_normal((12, B, H))
    want = h0
    for x in xs:
        if mix == "mean over the batch":
            want = np.tanh(want - want.mean(0) + x)
        elif mix == "rows reversed":
            want = np.tanh(want[::-1] * 0.9 + x)
        elif mix == "computed rows reversed":
            want = np.tanh((np.tanh(want) * 0.9)[::-1] + x)
        else:
            want = np.tanh(m @ want + x)
    before = graphc.get_num_threads()
    graphc.set_num_threads(2)
    try:
        np.testing.assert_allclose(f(h0, xs)[0], want, rtol=1e-12, atol=1e-12)
    finally:
        graphc.set_num_threads(before)


def test_gradients_of_a_square_rnn_on_two_threads_match_the_unrolled_loop(rng):
    """Batch, features and hidden size all 48, big enough to split: the backward loop sums
    over the batch (weight gradients), so it must not run in bands; the forward one may."""
    n, T = 48, 8
    p = {"w": rng.standard_normal((n, n)) * 0.2, "u": rng.standard_normal((n, n)) * 0.2,
         "b": rng.standard_normal(n)}
    h0, xs, wy = rng.standard_normal((n, n)), rng.standard_normal((T, n, n)), \
        rng.standard_normal((T, n))

    def loss(p, h0, xs):
        h, ys = graphc.scan(rnn_step(p), h0, xs)
        return graphc.sum(h * h) + graphc.sum(ys * wy)

    def unrolled(p, h0, xs):
        h, total = h0, 0.0
        for t in range(T):
            h = graphc.tanh(xs[t] @ p["w"] + h @ p["u"] + p["b"])
            total = total + graphc.sum(graphc.sum(h * h, axis=1) * wy[t])
        return graphc.sum(h * h) + total
    before = graphc.get_num_threads()
    graphc.set_num_threads(2)
    try:
        got = graphc.grad(loss, argnums=(0, 1, 2))(p, h0, xs)
        want = graphc.grad(unrolled, argnums=(0, 1, 2))(p, h0, xs)
    finally:
        graphc.set_num_threads(before)
    for g, w in zip(_flat(got), _flat(want)):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)
