"""Convolutions and pooling against numpy computed directly, PyTorch, and float64 central
differences; the window primitives' VJPs; shapes, symbolic sizes and bad input."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphc
from helpers import central_differences

try:
    import torch
    import torch.nn.functional as F
except ImportError:     # the numpy references still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


# ------------------------------------------------------------------ numpy references

def np_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """A direct N-d convolution: pad, then for every output position and kernel position
    multiply-accumulate (cross-correlation, as PyTorch)."""
    r = x.ndim - 2
    stride, dilation = (_t(stride, r), _t(dilation, r))
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(w.shape[2:], dilation)]
        pads = [(t // 2, t - t // 2) for t in total]
    elif padding == "valid":
        pads = [(0, 0)] * r
    else:
        pads = [(p, p) for p in _t(padding, r)]
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    n, c = x.shape[:2]
    o, cg, *k = w.shape
    og = o // groups
    out_sizes = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
                 for i in range(r)]
    y = np.zeros((n, o, *out_sizes), np.float64)
    for pos in itertools.product(*[range(s) for s in out_sizes]):
        for kk in itertools.product(*[range(s) for s in k]):
            idx = tuple(p * s + q * d for p, s, q, d in zip(pos, stride, kk, dilation))
            patch = xp[(slice(None), slice(None)) + idx]       # (n, c)
            for g in range(groups):
                y[(slice(None), slice(g * og, (g + 1) * og)) + pos] += \
                    patch[:, g * cg:(g + 1) * cg] @ w[(slice(g * og, (g + 1) * og),
                                                       slice(None)) + kk].T
    if b is not None:
        y += b.reshape((1, -1) + (1,) * r)
    return y.astype(x.dtype)


def np_conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1,
                        groups=1):
    """The scatter form: every input value adds w * value into its output window."""
    s, p, op, d = _t(stride, 2), _t(padding, 2), _t(output_padding, 2), _t(dilation, 2)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // groups
    full = [(h - 1) * s[0] + d[0] * (kh - 1) + 1 + op[0],
            (wd - 1) * s[1] + d[1] * (kw - 1) + 1 + op[1]]
    y = np.zeros((n, og * groups, *full), np.float64)
    for i, j, a, bb in itertools.product(range(h), range(wd), range(kh), range(kw)):
        for g in range(groups):
            y[:, g * og:(g + 1) * og, i * s[0] + a * d[0], j * s[1] + bb * d[1]] += \
                x[:, g * cg:(g + 1) * cg, i, j] @ w[g * cg:(g + 1) * cg, :, a, bb]
    y = y[:, :, p[0]:full[0] - p[0], p[1]:full[1] - p[1]]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y.astype(x.dtype)


def np_pool(x, k, stride=None, padding=0, op="max", ceil_mode=False, include_pad=True):
    """max / average pooling straight from the definition (PyTorch's window rules)."""
    k, s, p = _t(k, 2), _t(stride or k, 2), _t(padding, 2)
    n, c, h, w = x.shape
    sizes = []
    for i, size in enumerate((h, w)):
        span = size + 2 * p[i] - k[i]
        out = (-(-span // s[i]) if ceil_mode else span // s[i]) + 1
        if ceil_mode and (out - 1) * s[i] >= size + p[i]:
            out -= 1
        sizes.append(out)
    y = np.zeros((n, c, *sizes), x.dtype)
    for oi, oj in itertools.product(range(sizes[0]), range(sizes[1])):
        i0, j0 = oi * s[0] - p[0], oj * s[1] - p[1]
        i1, j1 = min(i0 + k[0], h + p[0]), min(j0 + k[1], w + p[1])
        cells = (i1 - i0) * (j1 - j0)
        a, bnd = max(i0, 0), max(j0, 0)
        block = x[:, :, a:min(i1, h), bnd:min(j1, w)]
        if op == "max":
            y[:, :, oi, oj] = block.max(axis=(2, 3))
        else:
            count = cells if include_pad else block.shape[2] * block.shape[3]
            y[:, :, oi, oj] = block.sum(axis=(2, 3)) / count
    return y


def _t(v, r):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * r


def compiled(fn, *arrays):
    return graphc.compile(fn, *[graphc.tensor(a.shape, a.dtype) for a in arrays])


def rng_arrays(seed, *shapes, dtype="float64"):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# ------------------------------------------------------------------ forward

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [
    dict(), dict(padding=1), dict(stride=2, padding=1), dict(stride=(2, 3), padding=(1, 0)),
    dict(dilation=2, padding=2), dict(groups=2, padding="same"), dict(padding="valid"),
    dict(groups=6, padding=1),    # depthwise
])
def test_conv2d_matches_numpy(kw, dtype):
    groups = kw.get("groups", 1)
    x, w, b = rng_arrays(0, (2, 6, 9, 7), (12, 6 // groups, 3, 3), (12,), dtype=dtype)
    f = compiled(lambda x, w, b: graphc.conv2d(x, w, b, **kw), x, w, b)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f(x, w, b), np_conv(x, w, b, **kw), **tol)


@pytest.mark.parametrize("shape, kw", [((2, 16, 16, 16), dict(padding=1)),
                                       ((3, 8, 15, 16), dict(padding=1)),
                                       ((2, 8, 31, 32), dict(stride=2, padding=1))])
def test_conv2d_on_rows_of_one_vector_matches_numpy(shape, kw):
    # output rows of at most one vector: the register tile spans two output rows
    x, w, b = rng_arrays(1, shape, (40, shape[1], 3, 3), (40,), dtype="float32")
    f = compiled(lambda x, w, b: graphc.conv2d(x, w, b, **kw), x, w, b)
    np.testing.assert_allclose(f(x, w, b), np_conv(x.astype(np.float64), w, b, **kw),
                               rtol=1e-4, atol=1e-4)


def test_conv1d_and_even_kernels_match_numpy():
    x, w, b = rng_arrays(1, (3, 4, 17), (5, 4, 4), (5,))
    for kw in (dict(stride=2, padding=3), dict(padding="same", dilation=3), dict()):
        f = compiled(lambda x, w, b: graphc.conv1d(x, w, b, **kw), x, w, b)
        np.testing.assert_allclose(f(x, w, b), np_conv(x, w, b, **kw), rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("padding", [((1, 2), (0, 1)), ((0, 0), (2, 0)), ((2, 1), (1, 2))])
def test_conv2d_pads_each_side_apart(padding):
    x, w, b = rng_arrays(5, (2, 3, 8, 7), (4, 3, 3, 3), (4,))
    f = compiled(lambda x, w, b: graphc.conv2d(x, w, b, stride=(1, 2), padding=padding),
                 x, w, b)
    want = np_conv(np.pad(x, ((0, 0), (0, 0)) + padding), w, b, stride=(1, 2))
    np.testing.assert_allclose(f(x, w, b), want, rtol=1e-12, atol=1e-12)


def test_conv_transpose2d_pads_each_side_apart():
    """Padding (lo, hi) crops lo outputs at the start of an axis and hi at its end."""
    x, w, b = rng_arrays(6, (2, 4, 5, 6), (4, 3, 3, 3), (3,))
    padding = ((0, 2), (1, 0))
    f = compiled(lambda x, w, b: graphc.conv_transpose2d(x, w, b, stride=2, padding=padding),
                 x, w, b)
    full = np_conv_transpose2d(x, w, b, stride=2)
    np.testing.assert_allclose(f(x, w, b), full[:, :, :-2, 1:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2), dict(stride=2, padding=1,
                                                                output_padding=1),
                                dict(stride=(3, 2), padding=(2, 0), dilation=2),
                                dict(groups=2, stride=2)])
def test_conv_transpose2d_matches_numpy(kw):
    g = kw.get("groups", 1)
    x, w, b = rng_arrays(2, (2, 4, 5, 6), (4, 6 // g, 3, 3), (6,))
    f = compiled(lambda x, w, b: graphc.conv_transpose2d(x, w, b, **kw), x, w, b)
    np.testing.assert_allclose(f(x, w, b), np_conv_transpose2d(x, w, b, **kw), rtol=1e-12,
                               atol=1e-12)


_POOLS = [dict(k=2), dict(k=3, stride=2, padding=1), dict(k=3, stride=2, ceil_mode=True),
          dict(k=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True)]
_AVG_ONLY = [dict(k=3, stride=2, padding=1, include_pad=False),
             dict(k=3, stride=2, padding=1, ceil_mode=True, include_pad=False)]


@pytest.mark.parametrize("op,kw", [("max", kw) for kw in _POOLS] +
                         [("avg", kw) for kw in _POOLS + _AVG_ONLY])
def test_pooling_matches_numpy(op, kw):
    (x,) = rng_arrays(3, (2, 3, 10, 9))
    args = dict(kernel_size=kw["k"], stride=kw.get("stride"), padding=kw.get("padding", 0),
                ceil_mode=kw.get("ceil_mode", False))
    if op == "max":
        f = compiled(lambda x: graphc.max_pool2d(x, **args), x)
    else:
        f = compiled(lambda x: graphc.avg_pool2d(
            x, count_include_pad=kw.get("include_pad", True), **args), x)
    np.testing.assert_allclose(f(x), np_pool(x, kw["k"], kw.get("stride"),
                                             kw.get("padding", 0), op,
                                             kw.get("ceil_mode", False),
                                             kw.get("include_pad", True)), rtol=1e-12)


def test_max_pool_of_ints_and_unbatched_inputs():
    x = np.random.default_rng(4).integers(-50, 50, (3, 7, 8)).astype("int32")
    f = compiled(lambda x: graphc.max_pool2d(x, 3, 2, 1), x)
    np.testing.assert_array_equal(f(x), np_pool(x[None].astype(np.float64), 3, 2, 1)[0]
                                  .astype("int32"))


@pytest.mark.parametrize("size", [1, (3, 4), (4, 3), (2, 5), (5, 7)])
def test_adaptive_avg_pool2d_matches_definition(size):
    (x,) = rng_arrays(5, (2, 3, 9, 8))
    f = compiled(lambda x: graphc.adaptive_avg_pool2d(x, size), x)
    oh, ow = _t(size, 2)
    ref = np.zeros((2, 3, oh, ow))
    for i, j in itertools.product(range(oh), range(ow)):
        a, b = (i * 9) // oh, -(-((i + 1) * 9) // oh)
        c, d = (j * 8) // ow, -(-((j + 1) * 8) // ow)
        ref[:, :, i, j] = x[:, :, a:b, c:d].mean(axis=(2, 3))
    np.testing.assert_allclose(f(x), ref, rtol=1e-12)


def test_flip_matches_numpy():
    x = np.arange(24.).reshape(2, 3, 4)
    for axis in (None, 0, (1, 2), -1):
        f = compiled(lambda x: graphc.flip(x, axis), x)
        np.testing.assert_array_equal(f(x), np.flip(x, axis))


# ------------------------------------------------------------------ the channel-blocked kernel
# (codegen/conv_blocked.py: constant weights packed at compile time, vectors along output
# channels). Images 40 columns wide have tiles at the padding and tiles inside the row.

def blocked(f) -> bool:
    """Whether a compiled function's convolution ran the blocked kernel (its weights packed)."""
    return bool(f.plan.packed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c_in, c_out, k, kw", [
    (5, 32, 3, dict(padding=1)),                          # edge and interior tiles
    (5, 24, 3, dict(stride=2, padding=1)),                # O not a multiple of 16, stride 2
    (4, 32, 3, dict(stride=(1, 2), padding=(2, 0))),
    (4, 16, 3, dict(dilation=2, padding=2)),
    (6, 32, 3, dict(padding=((0, 2), (1, 0)))),           # padding asymmetric
    (1, 32, 7, dict(padding=3)),                          # one input channel
    (32, 32, 1, dict()), (32, 40, 1, dict(stride=2)),     # 1x1
])
def test_blocked_conv2d_matches_numpy(c_in, c_out, k, kw, dtype):
    x, w = rng_arrays(30, (2, c_in, 9, 40), (c_out, c_in, k, k), dtype=dtype)
    f = compiled(lambda x: graphc.conv2d(x, graphc.constant(w), **kw), x)
    padding = kw.get("padding", 0)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        want = np_conv(np.pad(x, ((0, 0), (0, 0)) + padding), w, stride=kw.get("stride", 1))
    else:
        want = np_conv(x, w, **kw)
    tol = 1e-4 if dtype == "float32" else 1e-12
    assert blocked(f)
    np.testing.assert_allclose(f(x), want, rtol=tol, atol=tol)


@needs_torch
def test_blocked_conv2d_fuses_bias_relu_and_a_residual_add():
    x, w, b, r = rng_arrays(31, (3, 8, 11, 40), (32, 8, 3, 3), (32,), (3, 32, 6, 20),
                            dtype="float32")
    f = compiled(lambda x, r: graphc.relu(graphc.conv2d(
        x, graphc.constant(w), graphc.constant(b), stride=2, padding=1) + r), x, r)
    assert blocked(f) and len(f.kernels) == 1
    want = torch.relu(F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=2,
                               padding=1) + torch.tensor(r)).numpy()
    np.testing.assert_allclose(f(x, r), want, rtol=1e-4, atol=1e-4)


def test_weights_as_inputs_give_what_constant_weights_give():
    x, w = rng_arrays(32, (2, 16, 10, 40), (32, 16, 3, 3), dtype="float32")
    const = compiled(lambda x: graphc.conv2d(x, graphc.constant(w), padding=1), x)
    given = compiled(lambda x, w: graphc.conv2d(x, w, padding=1), x, w)
    assert blocked(const) and not blocked(given)
    np.testing.assert_allclose(const(x), given(x, w), rtol=1e-5, atol=1e-5)


def test_weights_read_twice_keep_their_layout():
    """A constant that two kernels read is not packed for one of them (plan._prepack)."""
    x, w = rng_arrays(33, (2, 16, 10, 12), (16, 16, 3, 3))

    def fn(x):
        wc = graphc.constant(w)
        return graphc.conv2d(x, wc, padding=1) + graphc.conv2d(x, wc, stride=2,
                                                                padding=1).sum()
    f = compiled(fn, x)
    assert not blocked(f)
    np.testing.assert_allclose(
        f(x), np_conv(x, w, padding=1) + np_conv(x, w, stride=2, padding=1).sum(),
        rtol=1e-12, atol=1e-12)


def test_blocked_conv2d_serves_every_batch_size():
    (w,) = rng_arrays(34, (32, 8, 3, 3), dtype="float32")
    f = graphc.compile(lambda x: graphc.relu(graphc.conv2d(x, graphc.constant(w), padding=1)),
                       graphc.tensor(("N", 8, 12, 20), "float32"))
    assert blocked(f)
    for n in (1, 3):
        (x,) = rng_arrays(35, (n, 8, 12, 20), dtype="float32")
        np.testing.assert_allclose(f(x), np.maximum(np_conv(x, w, padding=1), 0), rtol=1e-4,
                                   atol=1e-4)


def test_blocked_conv2d_on_256_bit_vectors_matches_numpy():
    x, w = rng_arrays(36, (2, 8, 7, 30), (24, 8, 5, 5), dtype="float32")
    f = graphc.compile(lambda x: graphc.conv2d(x, graphc.constant(w), padding=2),
                       graphc.tensor(x.shape, "float32"), cpu="x86-64-v3")
    assert blocked(f)
    np.testing.assert_allclose(f(x), np_conv(x, w, padding=2), rtol=1e-4, atol=1e-4)


def test_blocked_conv2d_hot_loop_is_broadcast_fmas_without_spills():
    """AVX-512 code (read, not run): a 3x3 tile's channel step is zmm multiply-adds of weight
    vectors and broadcast x, every accumulator in a register (no stack access)."""
    (w,) = rng_arrays(38, (32, 32, 3, 3), dtype="float32")
    f = graphc.compile(lambda x: graphc.conv2d(x, graphc.constant(w), padding=1),
                       graphc.tensor((2, 32, 32, 32), "float32"), cpu="x86-64-v4")
    # basic blocks: from a label to the first jump (the loop's back edge)
    blocks = [re.split(r"\n\tj", text)[0] for text in re.split(r"\n\.LBB\S*:", f.asm)]
    hot = max(blocks, key=lambda text: text.count("vfmadd231ps"))
    assert hot.count("vfmadd231ps") >= 60 and "zmm" in hot
    assert "vbroadcastss" in hot and "rsp" not in hot


# ------------------------------------------------------------------ symbolic sizes

def test_one_compile_serves_every_batch_and_image_size():
    w, b = rng_arrays(6, (5, 3, 3, 3), (5,))
    f = graphc.compile(lambda x, w, b: graphc.max_pool2d(graphc.relu(
        graphc.conv2d(x, w, b, padding="same")), 1), graphc.tensor(("N", 3, "H", "W"),
                                                                 "float64"),
        graphc.tensor(w.shape, "float64"), graphc.tensor(b.shape, "float64"))
    for shape in [(1, 3, 5, 5), (4, 3, 8, 11), (2, 3, 1, 1)]:
        (x,) = rng_arrays(7, shape)
        np.testing.assert_allclose(f(x, w, b), np.maximum(np_conv(x, w, b, padding="same"), 0),
                                   rtol=1e-12, atol=1e-12)


def test_symbolic_sizes_that_tile_the_axis():
    f = graphc.compile(lambda x: graphc.avg_pool2d(x, 1), graphc.tensor(("N", 2, "H", "W")))
    x = np.random.default_rng(8).standard_normal((3, 2, 4, 5)).astype("float32")
    np.testing.assert_allclose(f(x), x)
    with pytest.raises(graphc.ShapeError, match="symbolic"):
        graphc.trace(lambda x: graphc.max_pool2d(x, 2), graphc.tensor(("N", 2, "H", "W")))


# ------------------------------------------------------------------ gradients

_central = central_differences


@pytest.mark.parametrize("name,fn,shapes", [
    ("conv2d", lambda x, w, b: graphc.conv2d(x, w, b, stride=2, padding=1, dilation=(1, 2)),
     [(2, 2, 6, 7), (3, 2, 3, 2), (3,)]),
    ("grouped", lambda x, w, b: graphc.conv2d(x, w, b, groups=2, padding="same"),
     [(1, 4, 5, 5), (2, 2, 3, 3), (2,)]),
    ("conv_transpose2d", lambda x, w, b: graphc.conv_transpose2d(x, w, b, stride=2, padding=1,
                                                                output_padding=1),
     [(1, 2, 3, 4), (2, 3, 3, 3), (3,)]),
    ("conv1d", lambda x, w, b: graphc.conv1d(x, w, b, stride=3, padding=2),
     [(2, 3, 11), (2, 3, 4), (2,)]),
])
def test_conv_gradients_match_central_differences(name, fn, shapes):
    arrays = rng_arrays(9, *shapes)
    wts = rng_arrays(10, np_shape(fn, arrays))[0]

    def loss(*a):
        return graphc.sum(fn(*a) * wts)
    f = graphc.compile(graphc.grad(loss, argnums=(0, 1, 2)),
                       *[graphc.tensor(a.shape, "float64") for a in arrays])
    value = graphc.compile(loss, *[graphc.tensor(a.shape, "float64") for a in arrays])
    grads = f(*arrays)
    for k in range(3):
        np.testing.assert_allclose(grads[k], _central(value, arrays, k), rtol=1e-6, atol=1e-7)


def np_shape(fn, arrays):
    return compiled(fn, *arrays)(*arrays).shape


def test_pooling_gradients_match_central_differences():
    rng = np.random.default_rng(11)
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) / 10.0   # no ties
    for fn in (lambda x: graphc.max_pool2d(x, 3, 2, 1, ceil_mode=True),
               lambda x: graphc.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
               lambda x: graphc.adaptive_avg_pool2d(x, (3, 4))):
        wts = rng.standard_normal(compiled(fn, x)(x).shape)
        loss = lambda x: graphc.sum(fn(x) * wts)  # noqa: E731
        g = compiled(graphc.grad(loss), x)(x)
        np.testing.assert_allclose(g, _central(compiled(loss, x), [x.copy()], 0), rtol=1e-6,
                                   atol=1e-8)


def test_window_primitives_are_each_others_transpose():
    """<window(x), y> == <x, window_adjoint(y)>: the adjoint identity, computed in numpy."""
    from graphc.ops.conv import _adjoint_reference, _window_reference
    attrs = dict(kernel=(3, 2), stride=(2, 1), dilation=(1, 2), pad_lo=(1, 0), pad_hi=(2, 1),
                 lhs_dilation=(2, 1))
    x, = rng_arrays(12, (2, 3, 5, 4))
    wx = _window_reference(x, fill=0.0, **attrs)
    y = np.random.default_rng(13).standard_normal(wx.shape)
    lhs = np.sum(wx * y)
    rhs = np.sum(x * _adjoint_reference(y, size=(5, 4), **attrs))
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))
    # and the kernels compute the same as the numpy rules
    from graphc.trace import apply
    f = graphc.compile(lambda x: apply("window", [x], fill=0.0, **attrs),
                       graphc.tensor(x.shape, "float64"))
    np.testing.assert_array_equal(f(x), wx)
    fa = graphc.compile(lambda y: apply("window_adjoint", [y], size=(5, 4), **attrs),
                        graphc.tensor(y.shape, "float64"))
    np.testing.assert_allclose(fa(y), _adjoint_reference(y, size=(5, 4), **attrs), rtol=1e-13)


def test_grad_of_grad_through_convolution():
    """d/dx sum(dL/dw) for L = sum(conv(x, w)^2): against the same second derivative in
    PyTorch when installed, else against central differences of the first gradient."""
    x, w = rng_arrays(14, (1, 2, 5, 5), (2, 2, 3, 3))

    def inner(x, w):
        return graphc.sum(graphc.conv2d(x, w, padding=1) ** 2)
    gw = graphc.grad(inner, argnums=1)
    outer = graphc.compile(graphc.grad(lambda x, w: graphc.sum(gw(x, w)), argnums=0),
                           graphc.tensor(x.shape, "float64"), graphc.tensor(w.shape, "float64"))
    first = graphc.compile(lambda x, w: graphc.sum(gw(x, w)), graphc.tensor(x.shape, "float64"),
                           graphc.tensor(w.shape, "float64"))
    np.testing.assert_allclose(outer(x, w), _central(first, [x.copy(), w], 0), rtol=1e-6,
                               atol=1e-7)


# ------------------------------------------------------------------ PyTorch

conv_configs = st.fixed_dictionaries({
    "n": st.integers(1, 3), "groups": st.sampled_from([1, 2, 3]),
    "cg": st.integers(1, 3), "og": st.integers(1, 3),
    "h": st.integers(3, 11), "w": st.integers(3, 11),
    "kh": st.integers(1, 3), "kw": st.integers(1, 4),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                         st.sampled_from(["same", "valid"])),
    "bias": st.booleans(),
})


@needs_torch
@settings(max_examples=12, deadline=None, derandomize=True)
@given(conv_configs)
def test_conv2d_and_its_gradients_match_torch(cfg):
    if cfg["padding"] == "same" and cfg["stride"] != (1, 1):
        cfg["padding"] = "valid"
    c, o = cfg["cg"] * cfg["groups"], cfg["og"] * cfg["groups"]
    ext = [d * (k - 1) + 1 for d, k in zip(cfg["dilation"], (cfg["kh"], cfg["kw"]))]
    pad = (0, 0) if cfg["padding"] == "valid" else \
        (ext[0] - 1, ext[1] - 1) if cfg["padding"] == "same" else \
        tuple(2 * p for p in cfg["padding"])
    if cfg["h"] + pad[0] < ext[0] or cfg["w"] + pad[1] < ext[1]:
        cfg["padding"] = "same" if cfg["stride"] == (1, 1) else (ext[0], ext[1])
    x, w, b = rng_arrays(15, (cfg["n"], c, cfg["h"], cfg["w"]), (o, cfg["cg"], cfg["kh"],
                                                                   cfg["kw"]), (o,))
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
              groups=cfg["groups"])
    bias = b if cfg["bias"] else None
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = F.conv2d(tx, tw, torch.tensor(b) if cfg["bias"] else None, **kw)
    seed = np.random.default_rng(16).standard_normal(tuple(ty.shape))
    (ty * torch.tensor(seed)).sum().backward()

    def loss(x, w):
        return graphc.sum(graphc.conv2d(x, w, bias, **kw) * seed)
    f = graphc.compile(graphc.value_and_grad(loss, argnums=(0, 1)),
                       graphc.tensor(x.shape, "float64"), graphc.tensor(w.shape, "float64"))
    val, (gx, gw) = f(x, w)
    np.testing.assert_allclose(val, float((ty * torch.tensor(seed)).sum().detach()),
                               rtol=1e-10)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-10, atol=1e-10)


@needs_torch
@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({
    "groups": st.sampled_from([1, 2]), "k": st.integers(1, 4),
    "stride": st.integers(1, 3), "padding": st.integers(0, 2), "dilation": st.integers(1, 2),
    "extra": st.integers(0, 2), "h": st.integers(2, 6)}))
def test_conv_transpose2d_matches_torch(cfg):
    s, d = cfg["stride"], cfg["dilation"]
    extra = min(cfg["extra"], max(s, d) - 1)
    pad = min(cfg["padding"], (d * (cfg["k"] - 1) + (cfg["h"] - 1) * s) // 2)
    g = cfg["groups"]
    x, w, b = rng_arrays(17, (2, 2 * g, cfg["h"], cfg["h"] + 1), (2 * g, 3, cfg["k"], cfg["k"]),
                         (3 * g,))
    kw = dict(stride=s, padding=pad, output_padding=extra, dilation=d, groups=g)
    ref = F.conv_transpose2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw).numpy()
    f = compiled(lambda x, w, b: graphc.conv_transpose2d(x, w, b, **kw), x, w, b)
    np.testing.assert_allclose(f(x, w, b), ref, rtol=1e-10, atol=1e-10)


@needs_torch
@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({
    "k": st.integers(1, 4), "stride": st.integers(1, 3), "pad": st.integers(0, 2),
    "dilation": st.integers(1, 2), "ceil": st.booleans(), "include": st.booleans(),
    "h": st.integers(7, 11), "w": st.integers(7, 11)}))
def test_pooling_matches_torch(cfg):
    pad = min(cfg["pad"], cfg["k"] // 2)
    (x,) = rng_arrays(18, (2, 3, cfg["h"], cfg["w"]))
    tx = torch.tensor(x)
    mx = F.max_pool2d(tx, cfg["k"], cfg["stride"], pad, cfg["dilation"], cfg["ceil"]).numpy()
    f = compiled(lambda x: graphc.max_pool2d(x, cfg["k"], cfg["stride"], pad, cfg["dilation"],
                                             cfg["ceil"]), x)
    np.testing.assert_array_equal(f(x), mx)
    av = F.avg_pool2d(tx, cfg["k"], cfg["stride"], pad, cfg["ceil"], cfg["include"]).numpy()
    f = compiled(lambda x: graphc.avg_pool2d(x, cfg["k"], cfg["stride"], pad, cfg["ceil"],
                                             cfg["include"]), x)
    np.testing.assert_allclose(f(x), av, rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("k, stride, pad, dilation, ceil", [
    (2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 1, False), ((2, 3), (1, 2), 0, (2, 1), False),
    (3, 2, 1, 1, True), (1, 1, 0, 1, False)])
def test_vectorized_pooling_float32_matches_torch(k, stride, pad, dilation, ceil):
    """The CPU pooling kernel (codegen/cpu.py _build_pool): rows of several vectors and a
    tail, padding, column strides 1 and 2, a symbolic batch, NaNs, and a fused epilogue."""
    (x,) = rng_arrays(21, (3, 5, 37, 41), dtype="float32")
    x[0, 0, 3, 5] = x[1, 2, 20, 40] = np.nan
    tx = torch.tensor(x)
    spec = graphc.tensor(("N", 5, 37, 41))
    f = graphc.compile(lambda x: graphc.max_pool2d(x, k, stride, pad, dilation, ceil), spec)
    (pool,) = [kk for kk in f.kernels if "max" in kk.ops]
    assert "llvm.masked.load" in f.llvm_ir_unoptimized.split(f'@"{pool.name}"')[1].split("\n}")[0]
    np.testing.assert_array_equal(f(x), F.max_pool2d(tx, k, stride, pad, dilation, ceil).numpy())
    np.testing.assert_array_equal(f(x[:1]), F.max_pool2d(tx[:1], k, stride, pad, dilation,
                                                         ceil).numpy())
    if dilation == 1:   # average pooling, then a fused epilogue
        g = graphc.compile(lambda x: graphc.relu(graphc.avg_pool2d(x, k, stride, pad, ceil, False)
                                                 - 0.1), spec)
        want = torch.relu(F.avg_pool2d(tx, k, stride, pad, ceil, False) - 0.1).numpy()
        np.testing.assert_allclose(g(x), want, rtol=1e-6, atol=1e-6)


@needs_torch
@pytest.mark.parametrize("h, w, pad", [(8, 10, 0), (7, 9, 0), (6, 6, 1)])
def test_tiling_pool_gradients_match_torch(h, w, pad):
    """Windows that tile the input (stride = kernel): the adjoint reads one window entry per
    element (ops/conv.py _adjoint_gather); rows and columns past the last window get zero."""
    (x,) = rng_arrays(23, (2, 3, h, w))
    wts = rng_arrays(24, (2, 3, (h + 2 * pad) // 2, (w + 2 * pad) // 2))[0]
    for pool, tpool in ((graphc.max_pool2d, F.max_pool2d), (graphc.avg_pool2d, F.avg_pool2d)):
        f = graphc.compile(graphc.grad(lambda x, wt: graphc.sum(pool(x, 2, 2, pad) * wt)),
                           graphc.tensor(x.shape, "float64"), graphc.tensor(wts.shape, "float64"))
        tx = torch.tensor(x, requires_grad=True)
        (tpool(tx, 2, 2, pad) * torch.tensor(wts)).sum().backward()
        np.testing.assert_allclose(f(x, wts), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def _max_pool_grad_ties(x, k, s, p, g):
    """d sum(max_pool(x) * g) / dx straight from the definition, each window's gradient
    split evenly between the entries equal to its max (padding counts as -inf)."""
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * p, w + 2 * p), -np.inf)
    xp[:, :, p:p + h, p:p + w] = x
    gx = np.zeros_like(xp)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            win = xp[:, :, i * s:i * s + k, j * s:j * s + k]
            hit = (win == win.max(axis=(2, 3), keepdims=True)).astype(np.float64)
            gx[:, :, i * s:i * s + k, j * s:j * s + k] += \
                hit / hit.sum(axis=(2, 3), keepdims=True) * g[:, :, i:i + 1, j:j + 1]
    return gx[:, :, p:p + h, p:p + w]


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_max_pool_gradient_splits_ties_evenly(k, s, p, dtype):
    """The training step's pooling kernel (the max, the count of entries equal to it and
    the hits, vectorized: codegen/cpu.py _build_pool) on inputs full of ties."""
    rng = np.random.default_rng(31)
    x = rng.integers(0, 3, (2, 3, 9, 21)).astype(dtype)
    oh, ow = (9 + 2 * p - k) // s + 1, (21 + 2 * p - k) // s + 1
    g = rng.standard_normal((2, 3, oh, ow)).astype(dtype)
    f = graphc.compile(graphc.grad(lambda x, g: graphc.sum(graphc.max_pool2d(x, k, s, p) * g)),
                       graphc.tensor(x.shape, dtype), graphc.tensor(g.shape, dtype))
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(f(x, g), _max_pool_grad_ties(x.astype(np.float64), k, s, p,
                                                            g.astype(np.float64)),
                               rtol=tol, atol=tol)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("fn,match", [
    (lambda x, w: graphc.conv2d(x, w[:, :2]), "channels"),
    (lambda x, w: graphc.conv2d(x, w, groups=2), "channels"),
    (lambda x, w: graphc.conv2d(x[0], w), "rank 4"),
    (lambda x, w: graphc.conv2d(x, w, padding="full"), "padding"),
    (lambda x, w: graphc.conv2d(x, w, stride=0), "stride"),
    (lambda x, w: graphc.conv2d(x, w, stride=2, padding="same"), "same"),
    (lambda x, w: graphc.conv2d(x[:, :, :2, :2], w), "larger than the padded input"),
    (lambda x, w: graphc.max_pool2d(x, 3, padding=2), "half the kernel"),
    (lambda x, w: graphc.conv_transpose2d(x, w, output_padding=1), "output_padding"),
])
def test_bad_convolutions_raise_clear_errors_at_the_users_line(fn, match):
    with pytest.raises(graphc.ShapeError, match=match) as info:
        graphc.trace(fn, graphc.tensor((2, 3, 6, 6)), graphc.tensor((4, 3, 3, 3)))
    assert "test_conv.py" in (info.value.loc or "")


def test_integer_convolution_inputs_are_refused():
    with pytest.raises(graphc.DTypeError, match="float"):
        graphc.trace(lambda x, w: graphc.conv2d(x, w), graphc.tensor((1, 1, 3, 3), "int32"),
                     graphc.tensor((1, 1, 1, 1), "int32"))


def test_every_op_declared_vector_safe_runs_on_vectors_in_a_pooling_kernel():
    """OpDef.vector_rule: each such op, fused after a max pooling (codegen/cpu.py _build_pool
    runs it on whole vectors), against numpy on the pooled values."""
    from graphc.ops.registry import OPS
    from graphc.trace import apply
    (x,) = rng_arrays(25, (2, 3, 6, 38), dtype="float32")
    pooled = x.reshape(2, 3, 3, 2, 19, 2).max(axis=(3, 5))
    names = sorted(n for n, op in OPS.items() if op.vector_rule)
    assert {"add", "multiply", "equal", "where", "astype"} <= set(names)
    for name in names:
        op = OPS[name]
        if name == "where":
            fn = lambda y: graphc.where(y > 0, y, 0.5)  # noqa: E731
            want = np.where(pooled > 0, pooled, np.float32(0.5))
        elif name == "astype":
            fn = lambda y: graphc.astype(y, "float64")  # noqa: E731
            want = pooled.astype(np.float64)
        elif op.arity == 1:
            fn = lambda y, name=name: apply(name, [y])  # noqa: E731
            want = op.reference(pooled)
        else:
            fn = lambda y, name=name: apply(name, [y, graphc.constant(np.float32(0.25))])  # noqa: E731,E501
            want = op.reference(pooled, np.float32(0.25))
        f = graphc.compile(lambda x, fn=fn: fn(graphc.max_pool2d(x, 2)), graphc.tensor(x.shape))
        (k,) = f.kernels
        assert "llvm.masked.load" in f.llvm_ir_unoptimized, name
        np.testing.assert_array_equal(f(x), want, err_msg=name)
