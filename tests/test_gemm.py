"""The blocked matmul kernel: every tile edge, K blocking, batches, transposed operands read
in place, fused epilogues, threads. References: numpy in float64."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.codegen import gemm
from graphc.codegen.gemm import KC_MAX, SMALL_PRODUCT, tile_shape


def _ref(a, b):
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def _check(out, ref, k, dtype="float32"):
    # float32 sums of k products: error grows like sqrt(k) * eps * |a||b|
    scale = np.sqrt(max(k, 1)) * (1e-6 if dtype == "float32" else 1e-14)
    np.testing.assert_allclose(out, ref, rtol=scale * 20, atol=scale * 20 * max(1, np.abs(ref).max()))


MR, NR, _ = tile_shape("float32", graphc.compiler.CpuTarget.host().vector_bits, 10**6)


@pytest.mark.parametrize("m,k,n", [
    (1, 1, 1), (MR, 3, NR), (MR + 1, 7, NR + 1), (2 * MR - 1, 33, 3 * NR - 5),
    (5, KC_MAX + 3, 7), (37, 2 * KC_MAX + 1, 70), (200, 100, 2100), (4, 2, 4), (3, 0, 5),
])
@pytest.mark.parametrize("blocked", [False, True])
def test_matmul_shapes(m, k, n, blocked, rng, monkeypatch):
    if blocked:   # the blocked path even where small products would take plain loops
        monkeypatch.setattr(gemm, "SMALL_PRODUCT", -1)
    f = graphc.compile(lambda a, b: a @ b, graphc.tensor((m, k)), graphc.tensor((k, n)),
                       cache=not blocked)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    _check(f(a, b), _ref(a, b), k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_symbolic_sizes(dtype, rng):
    f = graphc.compile(lambda a, b: a @ b, graphc.tensor(("M", "K"), dtype),
                       graphc.tensor(("K", "N"), dtype))
    for m, k, n in [(1, 1, 1), (13, 600, 70), (100, 17, 3), (7, 1100, 33)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        _check(f(a, b), _ref(a, b), k, dtype)


def test_batched_and_broadcast_batches(rng):
    f = graphc.compile(lambda a, b: a @ b, graphc.tensor((3, 1, 9, 20)),
                       graphc.tensor((4, 20, 17)))
    a = rng.standard_normal((3, 1, 9, 20)).astype(np.float32)
    b = rng.standard_normal((4, 20, 17)).astype(np.float32)
    _check(f(a, b), _ref(a, b), 20)


@pytest.mark.parametrize("k", [20, 2 * KC_MAX + 5])   # one block of K; partial sums
def test_weight_shared_by_every_batch_entry_with_epilogue_and_threads(k, rng):
    # x @ W + bias, then relu and a residual, on (batch, T, C): B is packed once per block
    # for all batch entries; threads split the rows mid-entry
    w = rng.standard_normal((k, 2 * NR + 3)).astype(np.float32)
    bias = rng.standard_normal(w.shape[1]).astype(np.float32)
    f = graphc.compile(lambda x, r: graphc.relu(x @ w + bias) + r,
                       graphc.tensor(("B", 2 * MR + 1, k)), graphc.tensor(("B", 1, w.shape[1])))
    x = rng.standard_normal((5, 2 * MR + 1, k)).astype(np.float32)
    r = rng.standard_normal((5, 1, w.shape[1])).astype(np.float32)
    before = graphc.get_num_threads()
    try:
        graphc.set_num_threads(1)
        one = f(x, r)
        graphc.set_num_threads(3)
        three = f(x, r)
    finally:
        graphc.set_num_threads(before)
    np.testing.assert_array_equal(one, three)
    want = np.maximum(_ref(x, w) + bias, 0) + r
    _check(one, want, k)


@pytest.mark.parametrize("ta,tb", [(True, False), (False, True), (True, True)])
def test_transposed_operands_are_read_in_place(ta, tb, rng):
    def fn(a, b):
        a = graphc.transpose(a, (1, 0)) if ta else a
        b = graphc.transpose(b, (1, 0)) if tb else b
        return a @ b
    m, k, n = 45, 530, 37
    sa = (k, m) if ta else (m, k)
    sb = (n, k) if tb else (k, n)
    f = graphc.compile(fn, graphc.tensor(sa), graphc.tensor(sb))
    assert len(f.kernels) == 1 and f.kernels[0].kind == "matmul", f.kernels
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    _check(f(a, b), _ref(a.T if ta else a, b.T if tb else b), k)


def test_dense_layer_epilogue_is_one_kernel(rng):
    def dense(x, w, b, r):
        return graphc.relu(x @ w + b) * 0.5 + r
    m, k, n = 70, 700, 90
    f = graphc.compile(dense, graphc.tensor(("B", k)), graphc.tensor((k, n)),
                       graphc.tensor((n,)), graphc.tensor(("B", n)))
    assert [kk.kind for kk in f.kernels] == ["matmul"], f.kernels
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    r = rng.standard_normal((m, n)).astype(np.float32)
    ref = np.maximum(_ref(x, w) + b, 0) * 0.5 + r
    _check(f(x, w, b, r), ref, k)


def test_epilogue_with_several_outputs(rng):
    def fn(x, w):
        y = x @ w
        return y, graphc.tanh(y), y > 0
    f = graphc.compile(fn, graphc.tensor((33, 600)), graphc.tensor((600, 20)))
    x = rng.standard_normal((33, 600)).astype(np.float32)
    w = rng.standard_normal((600, 20)).astype(np.float32) / 20
    y, t, pos = f(x, w)
    ref = _ref(x, w)
    _check(y, ref, 600)
    np.testing.assert_allclose(t, np.tanh(ref), atol=1e-5)
    agree = pos == (ref > 0)
    assert agree[np.abs(ref) > 1e-4].all()


@pytest.mark.parametrize("m,n", [(301, 200), (40, 1000)])  # rows split; columns split
def test_threads_give_the_same_result(m, n, rng):
    f = graphc.compile(lambda a, b: a @ b, graphc.tensor(("M", 300)), graphc.tensor((300, n)))
    a = rng.standard_normal((m, 300)).astype(np.float32)
    b = rng.standard_normal((300, n)).astype(np.float32)
    before = graphc.get_num_threads()
    try:
        graphc.set_num_threads(1)
        one = f(a, b)
        graphc.set_num_threads(3)
        three = f(a, b)
    finally:
        graphc.set_num_threads(before)
    np.testing.assert_array_equal(one, three)  # rows split between threads: same sums
    _check(one, _ref(a, b), 300)


def test_portable_levels_build_their_own_tiles(rng):
    a = rng.standard_normal((20, 40)).astype(np.float32)
    b = rng.standard_normal((40, 50)).astype(np.float32)
    for cpu in ("x86-64-v2", "x86-64-v3"):
        f = graphc.compile(lambda x, y: x @ y, graphc.tensor((20, 40)), graphc.tensor((40, 50)),
                           cpu=cpu)
        assert "zmm" not in f.asm
        _check(f(a, b), _ref(a, b), 40)


def test_micro_kernel_keeps_accumulators_in_registers():
    f = graphc.compile(lambda a, b: a @ b, graphc.tensor((256, 256)), graphc.tensor((256, 256)))
    if graphc.compiler.CpuTarget.host().vector_bits < 512:
        pytest.skip("checks the AVX-512 micro-kernel")
    asm = f.asm
    fmas = [line for line in asm.splitlines() if "vfmadd" in line and "zmm" in line]
    assert len(fmas) >= MR * NR // 16, "the micro-kernel's FMAs are not packed zmm ops"


def test_concurrent_calls_from_python_threads_share_the_pool_safely(rng):
    # two compiled objects for one graph load the same library, so they share its thread
    # pool: a call that finds the pool busy runs its kernel on its own thread
    import threading
    fns = [graphc.compile(lambda a, b: graphc.relu(a @ b), graphc.tensor((150, 200)),
                          graphc.tensor((200, 180))) for _ in range(2)]
    assert fns[0].library_path == fns[1].library_path
    a = rng.standard_normal((150, 200)).astype(np.float32)
    b = rng.standard_normal((200, 180)).astype(np.float32)
    want = np.maximum(a.astype(np.float64) @ b, 0)
    errors = []

    def work(f):
        try:
            for _ in range(30):
                np.testing.assert_allclose(f(a, b), want, rtol=1e-4, atol=1e-3)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    before = graphc.get_num_threads()
    try:
        graphc.set_num_threads(2)
        threads = [threading.Thread(target=work, args=(fns[k % 2],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a call never returned"
    finally:
        graphc.set_num_threads(before)
    assert not errors, errors[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transposed", [False, True])
def test_constant_weights_are_stored_prepacked(dtype, transposed, rng):
    """A constant B is stored in the micro-kernel's panels at compile time (plan.packed):
    every row count (the last panel's own micro-kernel), K blocks, N past a panel edge."""
    k, n = 2 * KC_MAX + 5, 3 * NR + 7
    nr = tile_shape(dtype, graphc.compiler.CpuTarget.host().vector_bits, n)[1]
    w = (rng.standard_normal((n, k) if transposed else (k, n)) / np.sqrt(k)).astype(dtype)
    weight = (lambda: graphc.constant(w).T) if transposed else (lambda: graphc.constant(w))
    f = graphc.compile(lambda x: graphc.tanh(x @ weight() + 0.5), graphc.tensor(("B", k), dtype))
    assert list(f.plan.packed.values()) == [0]
    assert f.plan.constants[0].shape == (-(-n // nr), k, nr)   # panels, not w's layout
    dense = w.T if transposed else w
    for m in [1, 2, MR - 1, MR, MR + 1, 2 * MR + 3, 97]:
        x = rng.standard_normal((m, k)).astype(dtype)
        want = np.tanh(_ref(x, dense) + 0.5)
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(f(x), want, rtol=tol, atol=tol)


def test_constant_read_twice_keeps_its_layout(rng):
    """A constant another kernel (or the same one) also reads is not repacked."""
    w = rng.standard_normal((40, 40)).astype(np.float32)
    def fn(x):
        c = graphc.constant(w)
        return x @ c, graphc.sum(c * x, 0)
    f = graphc.compile(fn, graphc.tensor((40, 40)))
    assert f.plan.packed == {}
    x = rng.standard_normal((40, 40)).astype(np.float32)
    mm, s = f(x)
    _check(mm, _ref(x, w), 40)
    np.testing.assert_allclose(s, (w.astype(np.float64) * x).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xs,ws", [((4, 2), (2, 4)), ((4, 4), (4, 1)), ((1, 6), (6, 3)),
                                   ((3, 5, 7), (7, 2)), ((2, 3, 4), (2, 4, 5))])
def test_small_products_take_plain_loops(xs, ws, rng):
    """At most SMALL_PRODUCT multiply-adds: no packing, same answers, epilogue included."""
    bias = rng.standard_normal(ws[-1]).astype(np.float32)
    f = graphc.compile(lambda x, w, b: graphc.relu(x @ w + b), graphc.tensor(xs),
                       graphc.tensor(ws), graphc.tensor(bias.shape))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    _check(f(x, w, bias), np.maximum(_ref(x, w) + bias, 0), xs[-1])
    assert len(f.kernels) == 1 and "graphc_pack" not in f.asm and "graphc_micro" not in f.asm


def test_small_products_at_run_time_with_a_symbolic_batch(rng):
    """A symbolic size decides at run time: on both sides of SMALL_PRODUCT, and for the
    transposed product of a weight gradient (K symbolic)."""
    k = n = 16
    f = graphc.compile(lambda x, w: x @ w, graphc.tensor(("B", k)), graphc.tensor((k, n)))
    grad = graphc.compile(lambda x, g: x.T @ g, graphc.tensor(("B", k)),
                          graphc.tensor(("B", n)))
    edge = SMALL_PRODUCT // (k * n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    for batch in (1, 3, edge, edge + 1, 5 * edge):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        g = rng.standard_normal((batch, n)).astype(np.float32)
        _check(f(x, w), _ref(x, w), k)
        _check(grad(x, g), _ref(x.T, g), batch)
    assert "graphc_pack" in f.asm   # the blocked path is there for big batches
