"""The ops models beyond MLPs need (argmax/argmin, cumsum, clip, softplus, gelu, triu/tril,
layer_norm, batch_norm, pad): against numpy at odd sizes and dtypes, against PyTorch when it is
installed, their gradients against central differences and torch autograd, and their errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphc
from helpers import sample
from test_autodiff import directional_check, draw, weighted

erf = np.vectorize(math.erf, otypes=[np.float64])


def run(fn, *arrays):
    """fn compiled for the arrays' shapes and dtypes, called on them."""
    specs = [graphc.tensor(a.shape, a.dtype.name) for a in arrays]
    return graphc.compile(fn, *specs)(*arrays)


def same(got, want, **tol):
    want = np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype,
                                                                  want.shape, want.dtype)
    if tol:
        np.testing.assert_allclose(got, want, **tol)
    else:
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ numpy semantics

@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_argmin_follow_numpy_with_ties(name, axis, dtype, rng):
    x = rng.integers(-3, 4, (7, 13)).astype(dtype)      # few values: many ties
    same(run(lambda v: getattr(graphc, name)(v, axis), x), getattr(np, name)(x, axis))


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_argmin_pick_the_first_nan_like_numpy(name, rng):
    x = sample((5, 1023), "float32", rng)
    x[1, 7] = x[1, 300] = np.nan
    x[3, 1022] = np.nan
    x[4, :] = np.inf if name == "argmax" else -np.inf
    for axis in (None, 0, 1):
        same(run(lambda v: getattr(graphc, name)(v, axis), x), getattr(np, name)(x, axis))


def test_argmax_keepdims(rng):
    x = sample((3, 4, 5), "float64", rng)
    same(run(lambda v: graphc.argmax(v, 1, keepdims=True), x), np.argmax(x, 1, keepdims=True))
    same(run(lambda v: graphc.argmin(v, keepdims=True), x), np.argmin(x, keepdims=True))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_cumsum_follows_numpy_values_and_dtypes(axis, dtype, rng):
    x = (rng.integers(-5, 6, (3, 17, 6)) if dtype not in ("float32", "float64")
         else sample((3, 17, 6), dtype, rng)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else (
        dict(rtol=1e-13, atol=1e-13) if dtype == "float64" else {})
    same(run(lambda v: graphc.cumsum(v, axis), x), np.cumsum(x, axis), **tol)


def test_cumsum_over_a_long_axis_and_its_dtype_argument(rng):
    x = sample((2, 1023), "float64", rng)
    same(run(lambda v: graphc.cumsum(v, 1), x), np.cumsum(x, 1), rtol=1e-12, atol=1e-12)
    i = rng.integers(0, 9, (2, 9)).astype(np.int32)
    same(run(lambda v: graphc.cumsum(v, 1, dtype="float32"), i), np.cumsum(i, 1, dtype="float32"))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_clip_with_scalar_tensor_and_missing_bounds(dtype, rng):
    x = sample((7, 9), dtype, rng, (-5, 5))
    lo, hi = sample((9,), dtype, rng, (-3, 0)), sample((7, 1), dtype, rng, (0, 3))
    same(run(lambda v: graphc.clip(v, -1, 2), x), np.clip(x, -1, 2))
    same(run(lambda v, a, b: graphc.clip(v, a, b), x, lo, hi), np.clip(x, lo, hi))
    same(run(lambda v: graphc.clip(v, None, 1), x), np.clip(x, None, 1))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "bool"])
@pytest.mark.parametrize("k", [0, 1, -2, 9])
@pytest.mark.parametrize("name", ["triu", "tril"])
def test_triu_tril_follow_numpy_on_the_last_two_axes(name, k, dtype, rng):
    x = sample((2, 5, 7), dtype, rng) if dtype != "int64" else rng.integers(-9, 9, (2, 5, 7))
    same(run(lambda v: getattr(graphc, name)(v, k), x), getattr(np, name)(x, k))


def test_a_causal_mask_from_tril(rng):
    scores = sample((2, 7, 7), "float32", rng)

    def masked_softmax(s):
        keep = graphc.tril(graphc.broadcast_to(graphc.constant(True), s.shape))
        return graphc.softmax(graphc.where(keep, s, -np.inf), -1)

    want = np.where(np.tril(np.ones((7, 7), bool)), scores, -np.inf)
    want = np.exp(want - want.max(-1, keepdims=True))
    same(run(masked_softmax, scores), want / want.sum(-1, keepdims=True), rtol=1e-6, atol=1e-7)


PAD_WIDTHS = [2, (1,), (0, 3), ((1, 2), (0, 4)), ((0, 0), (3, 1)), [[2, 0], [1, 1]]]


@pytest.mark.parametrize("pad_width", PAD_WIDTHS, ids=str)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_pad_follows_numpy(pad_width, mode, dtype, rng):
    x = sample((5, 7), dtype, rng)
    same(run(lambda v: graphc.pad(v, pad_width, mode=mode), x), np.pad(x, pad_width, mode=mode))


def test_pad_constant_value_and_three_axes(rng):
    x = sample((3, 4, 5), "float64", rng)
    widths = ((1, 0), (0, 0), (2, 3))
    same(run(lambda v: graphc.pad(v, widths, value=-1.5), x),
         np.pad(x, widths, constant_values=-1.5))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_and_gelu_match_their_formulas(dtype, rng):
    x = np.concatenate([sample((1023,), dtype, rng, (-30, 30)),
                        np.array([-800, -40, 0, 19.9, 20.1, 800], dtype)]).astype(dtype)
    x64 = x.astype(np.float64)
    tol = dict(rtol=2e-6, atol=1e-30) if dtype == "float32" else dict(rtol=1e-14, atol=1e-300)
    with np.errstate(over="ignore"):
        soft = np.where(x64 > 20, x64, np.log1p(np.exp(x64)))
    same(run(graphc.softplus, x), soft.astype(dtype), **tol)
    same(run(lambda v: graphc.softplus(v, beta=2.0, threshold=5.0), x),
         np.where(2 * x64 > 5, x64, np.log1p(np.exp(np.minimum(2 * x64, 50))) / 2).astype(dtype),
         **tol)
    exact = 0.5 * x64 * (1 + erf(x64 / np.sqrt(2)))
    tanh = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-13, atol=1e-15)
    same(run(graphc.gelu, x), exact.astype(dtype), **tol)
    for form in (True, "tanh"):
        same(run(lambda v: graphc.gelu(v, approximate=form), x), tanh.astype(dtype), **tol)
    same(run(lambda v: graphc.gelu(v, approximate="none"), x), exact.astype(dtype), **tol)


@pytest.mark.parametrize("fn", [lambda v: graphc.gelu(v), lambda v: graphc.softplus(v) * 2,
                                lambda v: graphc.clip(v, -1.0, 1.0)],
                         ids=["gelu", "softplus", "clip"])
def test_elementwise_composites_are_one_kernel(fn):
    assert len(graphc.compile(fn, graphc.tensor(("B", 64))).kernels) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layer_norm_over_one_and_two_axes(dtype, rng):
    x = sample((4, 3, 17), dtype, rng)
    w, b = sample((3, 17), dtype, rng), sample((3, 17), dtype, rng)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)

    def ref(x, axes):
        m = x.mean(axes, keepdims=True)
        return (x - m) / np.sqrt(x.var(axes, keepdims=True) + 1e-5)

    same(run(lambda v: graphc.layer_norm(v, 17), x), ref(x, -1).astype(dtype), **tol)
    same(run(lambda v, g, c: graphc.layer_norm(v, (3, 17), g, c, eps=1e-3), x, w, b),
         ((x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 1e-3)
          * w + b).astype(dtype), **tol)


def test_layer_norm_is_one_row_kernel():
    compiled = graphc.compile(lambda v, g, c: graphc.layer_norm(v, (32,), g, c),
                              graphc.tensor(("B", 32)), graphc.tensor((32,)), graphc.tensor((32,)))
    assert len(compiled.kernels) == 1


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_per_channel(training, rng):
    x = sample((6, 3, 5), "float64", rng)
    mu, var = sample((3,), "float64", rng), sample((3,), "float64", rng, (0.5, 2))
    w, b = sample((3,), "float64", rng), sample((3,), "float64", rng)
    got = run(lambda v, m, s, g, c: graphc.batch_norm(v, m, s, g, c, training=training),
              x, mu, var, w, b)
    if training:
        mu, var = x.mean((0, 2)), x.var((0, 2))
    want = ((x - mu[:, None]) / np.sqrt(var[:, None] + 1e-5)) * w[:, None] + b[:, None]
    same(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ PyTorch

def test_against_pytorch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = sample((4, 6, 9), "float32", rng, (-4, 4))
    tx = torch.tensor(x)
    w, b = sample((9,), "float32", rng), sample((9,), "float32", rng)
    mu, var = sample((6,), "float32", rng), sample((6,), "float32", rng, (0.5, 2))
    tol = dict(rtol=1e-5, atol=1e-5)
    same(run(graphc.gelu, x), F.gelu(tx).numpy(), **tol)
    same(run(lambda v: graphc.gelu(v, approximate="tanh"), x),
         F.gelu(tx, approximate="tanh").numpy(), **tol)
    same(run(graphc.softplus, x * 8), F.softplus(torch.tensor(x * 8)).numpy(), **tol)
    same(run(lambda v: graphc.softplus(v, 0.5, 1.0), x), F.softplus(tx, 0.5, 1.0).numpy(), **tol)
    same(run(lambda v: graphc.clip(v, -1, 1), x), torch.clamp(tx, -1, 1).numpy())
    same(run(lambda v: graphc.cumsum(v, 1), x), torch.cumsum(tx, 1).numpy(), **tol)
    same(run(lambda v: graphc.argmax(v, -1), x), torch.argmax(tx, -1).numpy())
    same(run(lambda v: graphc.argmin(v, 0), x), torch.argmin(tx, 0).numpy())
    same(run(lambda v: graphc.triu(v, 1), x), torch.triu(tx, 1).numpy())
    same(run(lambda v: graphc.tril(v, -1), x), torch.tril(tx, -1).numpy())
    same(run(lambda v: graphc.erf(v), x), torch.erf(tx).numpy(), **tol)
    same(run(lambda v: (graphc.sin(v), graphc.cos(v)), x * 100)[1],
         torch.cos(torch.tensor(x * 100)).numpy(), **tol)
    same(run(lambda v, g, c: graphc.layer_norm(v, (9,), g, c), x, w, b),
         F.layer_norm(tx, (9,), torch.tensor(w), torch.tensor(b)).numpy(), **tol)
    for training in (False, True):
        same(run(lambda v, m, s: graphc.batch_norm(v, m, s, training=training), x, mu, var),
             F.batch_norm(tx, torch.tensor(mu), torch.tensor(var), training=training).numpy(),
             **tol)
    same(run(lambda v: graphc.pad(v, ((0, 0), (1, 2), (3, 4)), mode="reflect"), x),
         F.pad(tx, (3, 4, 1, 2), mode="reflect").numpy())
    same(run(lambda v: graphc.pad(v, ((0, 0), (0, 0), (2, 1)), value=0.5), x),
         F.pad(tx, (2, 1), value=0.5).numpy())


def test_nn_gelu_follows_pytorch_default(rng):
    torch = pytest.importorskip("torch")
    from graphc import nn
    from graphc.nn.train import data_spec
    x = sample((5, 7), "float32", rng)
    for approximate in ("none", "tanh"):
        got = nn.Predict(nn.GELU(approximate), data_spec(x, "x"))(x)
        want = torch.nn.GELU(approximate)(torch.tensor(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ gradients

GRADIENT_CASES = {
    "gelu": (graphc.gelu, [(3, 4)], None),
    "gelu_tanh": (lambda v: graphc.gelu(v, approximate=True), [(3, 4)], None),
    "softplus": (lambda v: graphc.softplus(v * 10), [(3, 4)], None),
    "clip": (lambda v: graphc.clip(v, -1.0, 1.0), [(3, 4)], None),
    "clip_tensor_bounds": (lambda v, a, b: graphc.clip(v, a - 1.5, b + 1.5),
                           [(3, 4), (4,), (3, 1)], None),
    "cumsum": (lambda v: graphc.cumsum(v, 1), [(3, 11)], None),
    "cumsum_flat": (lambda v: graphc.reshape(graphc.cumsum(v), v.shape) * v, [(3, 4)], None),
    "triu": (lambda v: graphc.triu(v, 1) * v, [(2, 4, 5)], None),
    "tril": (lambda v: graphc.tril(v) * v, [(4, 5)], None),
    "layer_norm": (lambda v, g, c: graphc.layer_norm(v, (5,), g, c), [(3, 5), (5,), (5,)], None),
    "batch_norm_training": (lambda v, g, c: graphc.batch_norm(v, None, None, g, c, True),
                            [(6, 3), (3,), (3,)], None),
    "batch_norm_eval": (lambda v, m, s: graphc.batch_norm(v, m, s + 3.0), [(6, 3), (3,), (3,)],
                        None),
    "pad_constant": (lambda v: graphc.pad(v, ((1, 2), (0, 3)), value=2.0) ** 2, [(3, 4)], None),
    "pad_reflect": (lambda v: graphc.pad(v, ((2, 1), (3, 3)), mode="reflect") ** 2, [(3, 4)],
                    None),
    "pad_edge": (lambda v: graphc.pad(v, ((2, 1), (0, 3)), mode="edge") ** 2, [(3, 4)], None),
    "argmax_picks": (lambda v: v * graphc.astype(graphc.argmax(v, 1, keepdims=True), v.dtype),
                     [(3, 4)], None),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradients_match_central_differences(name, rng):
    fn, shapes, domain = GRADIENT_CASES[name]
    arrays = [draw(s, rng, domain or (-2.0, 2.0)) for s in shapes]
    out_shape = graphc.trace(fn, *[graphc.tensor(s, "float64") for s in shapes]).nodes[-1].shape
    directional_check(weighted(fn, out_shape), arrays, rng)


def _torch_twin(name, torch):
    F = torch.nn.functional
    return {
        "gelu": lambda v: F.gelu(v),
        "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
        "softplus": lambda v: F.softplus(v * 10),
        "clip": lambda v: torch.clamp(v, -1.0, 1.0),
        "cumsum": lambda v: torch.cumsum(v, 1),
        "triu": lambda v: torch.triu(v, 1) * v,
        "tril": lambda v: torch.tril(v) * v,
        "layer_norm": lambda v, g, c: F.layer_norm(v, (5,), g, c),
        "batch_norm_training": lambda v, g, c: F.batch_norm(v, None, None, g, c, True),
        "pad_reflect": lambda v: F.pad(v[None], (3, 3, 2, 1), mode="reflect")[0] ** 2,
        "pad_edge": lambda v: F.pad(v[None], (0, 3, 2, 1), mode="replicate")[0] ** 2,
    }[name]


# (torch's batch_norm refuses gradients for its running statistics: central differences only)
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "softplus", "clip", "cumsum", "triu",
                                  "tril", "layer_norm", "batch_norm_training", "pad_reflect"])
def test_gradients_match_pytorch_autograd(name, rng):
    torch = pytest.importorskip("torch")
    fn, shapes, domain = GRADIENT_CASES[name]
    arrays = [draw(s, rng, domain or (-2.0, 2.0)) for s in shapes]
    out_shape = graphc.trace(fn, *[graphc.tensor(s, "float64") for s in shapes]).nodes[-1].shape
    w = rng.standard_normal(out_shape)
    grads = graphc.grad(lambda *xs: graphc.sum(fn(*xs) * w), tuple(range(len(shapes))))(*arrays)
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    (_torch_twin(name, torch)(*ts) * torch.tensor(w)).sum().backward()
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ errors

def _trace_error(fn, *specs):
    with pytest.raises(graphc.GraphcError) as info:
        graphc.trace(fn, *specs)
    return str(info.value)


@pytest.mark.parametrize("fn,words", [
    (lambda v: graphc.argmax(v, 2), ["axis 2", "out of range"]),
    (lambda v: graphc.argmax(v, (0, 1)), ["argmax", "axis must be an int"]),
    (lambda v: graphc.cumsum(v, 5), ["axis 5"]),
    (lambda v: graphc.cumsum(v, (0, 1)), ["cumsum", "axis must be an int"]),
    (lambda v: graphc.triu(v[0]), ["triu", "at least 2 dimensions"]),
    (lambda v: graphc.clip(v), ["clip", "lo, hi"]),
    (lambda v: graphc.gelu(v, approximate="erf"), ["gelu", "'erf'"]),
    (lambda v: graphc.softplus(v, beta=v), ["softplus", "beta must be a number"]),
    (lambda v: graphc.layer_norm(v, (4,)), ["layer_norm", "(4,)", "(3, 5)"]),
    (lambda v: graphc.layer_norm(v, 5, graphc.zeros((4,))), ["weight", "(4,)"]),
    (lambda v: graphc.batch_norm(v, graphc.zeros((3,)), graphc.zeros((5,))), ["running_mean",
                                                                              "(3,)", "(5,)"]),
    (lambda v: graphc.batch_norm(v, None, None), ["running_mean and running_var"]),
    (lambda v: graphc.pad(v, ((1, 1), (2, 2), (3, 3))), ["pad_width", "(3, 5)"]),
    (lambda v: graphc.pad(v, -1), ["non-negative"]),
    (lambda v: graphc.pad(v, 3, mode="reflect"), ["reflect", "below the size 3"]),
    (lambda v: graphc.pad(v, 1, mode="wrap"), ["mode 'wrap'"]),
], ids=["argmax-axis", "argmax-tuple", "cumsum-axis", "cumsum-tuple", "triu-1d", "clip-none", "gelu-mode", "softplus-beta",
        "layer_norm-shape", "layer_norm-weight", "batch_norm-stats", "batch_norm-none",
        "pad-width", "pad-negative", "pad-reflect", "pad-mode"])
def test_bad_arguments_name_the_op_and_the_users_line(fn, words):
    message = _trace_error(fn, graphc.tensor((3, 5)))
    for word in words:
        assert word in message, message
    assert "test_model_ops.py" in message, message


@pytest.mark.parametrize("fn,words", [
    (lambda v: graphc.cumsum(v, 0), ["cumsum", "symbolic"]),
    (lambda v: graphc.pad(v, ((1, 0), (0, 0))), ["pad", "symbolic"]),
], ids=["cumsum", "pad"])
def test_symbolic_axes_are_refused_clearly(fn, words):
    message = _trace_error(fn, graphc.tensor(("B", 4)))
    for word in words:
        assert word in message, message
    assert "test_model_ops.py" in message, message


def test_empty_axis_is_refused():
    message = _trace_error(lambda v: graphc.argmin(v, 0), graphc.tensor((0, 4)))
    assert "argmin" in message and "empty" in message
