"""The fused attention kernel (graphc.ops.flash) against numpy computed directly and PyTorch:
masks (bool, additive, broadcast), causal, odd sizes, both paths of the CPU kernel (register
groups of query rows, and the scalar remainder), gradients, and bad shapes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphc
from helpers import central_differences
from graphc.ops.flash import fused_attention

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def np_attention(q, k, v, mask=None, scale=1.0, causal=False):
    """softmax(q k^T * scale + mask) v in float64, straight from the definition."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    s = np.einsum("...ie,...je->...ij", q, k) * scale
    L, S = s.shape[-2:]
    if causal:
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    with np.errstate(invalid="ignore"):
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    p = np.nan_to_num(p)          # a row that attends to nothing: zeros, as PyTorch
    return np.einsum("...ij,...jx->...ix", p, v)


def run(q, k, v, mask=None, scale=1.0, causal=False):
    args = [q, k, v] + ([mask] if mask is not None else [])
    f = graphc.compile(lambda q, k, v, *m: fused_attention(q, k, v, m[0] if m else None,
                                                          scale=scale, causal=causal),
                       *[graphc.tensor(a.shape, a.dtype.name) for a in args])
    return f(*args)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("L,S,E,Ev", [(1, 1, 1, 1), (5, 7, 3, 4), (64, 64, 8, 16),
                                      (70, 200, 16, 64), (9, 129, 5, 128), (3, 65, 4, 256)])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_the_definition(L, S, E, Ev, causal, dtype):
    rng = np.random.default_rng(L * S + E)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in
               [(2, 3, L, E), (2, 3, S, E), (2, 3, S, Ev)])
    tol = dict(rtol=1e-5, atol=2e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(run(q, k, v, scale=0.3, causal=causal),
                               np_attention(q, k, v, scale=0.3, causal=causal), **tol)


@pytest.mark.parametrize("mask_shape", [(9, 150), (2, 1, 9, 150), (1, 150), (9, 1)])
@pytest.mark.parametrize("kind", ["bool", "add"])
def test_masks_broadcast_over_batch_rows_and_keys(mask_shape, kind):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype("float32") for s in
               [(2, 2, 9, 8), (2, 2, 150, 8), (2, 2, 150, 16)])
    if kind == "bool":
        mask = rng.random(mask_shape) < 0.6
        mask[..., 0] = True     # every row keeps a key (no NaN rows here)
    else:
        mask = rng.standard_normal(mask_shape).astype("float32")
    np.testing.assert_allclose(run(q, k, v, mask, scale=0.5), np_attention(q, k, v, mask, 0.5),
                               rtol=1e-5, atol=2e-6)


def test_fully_masked_rows_are_zero_and_others_unaffected():
    """PyTorch (2.5 and later) gives a row that attends to nothing zeros, not NaN."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal(s).astype("float32") for s in [(4, 8), (100, 8), (100, 16)])
    mask = rng.random((4, 100)) < 0.5
    mask[1] = False                       # row 1 sees nothing
    mask[2, :70] = False                  # row 2: its first whole block is masked
    out = run(q, k, v, mask)
    assert (out[1] == 0).all()
    keep = [0, 2, 3]
    np.testing.assert_allclose(out[keep], np_attention(q, k, v, mask)[keep], rtol=1e-5,
                               atol=2e-6)


def test_batch_axes_broadcast_between_q_k_and_v():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((3, 1, 10, 4))
    k = rng.standard_normal((1, 2, 66, 4))
    v = rng.standard_normal((3, 2, 66, 16))
    np.testing.assert_allclose(run(q, k, v), np_attention(q, k, v), rtol=1e-12)


def test_one_compile_serves_every_length():
    f = graphc.compile(lambda q, k, v: fused_attention(q, k, v, scale=0.25, causal=True),
                       graphc.tensor(("B", "L", 8)), graphc.tensor(("B", "L", 8)),
                       graphc.tensor(("B", "L", 32)))
    rng = np.random.default_rng(4)
    for n in (1, 3, 64, 65, 200):
        q, k, v = (rng.standard_normal((2, n, d)).astype("float32") for d in (8, 8, 32))
        np.testing.assert_allclose(f(q, k, v), np_attention(q, k, v, scale=0.25, causal=True),
                                   rtol=1e-5, atol=2e-6)


def test_gradients_match_central_differences():
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal(s) for s in [(2, 5, 3), (2, 7, 3), (2, 7, 4)])
    mask = rng.standard_normal((5, 7))
    seed = rng.standard_normal((2, 5, 4))

    def loss(q, k, v, m):
        return graphc.sum(fused_attention(q, k, v, m, scale=0.7, causal=True) * seed)
    arrays = [q, k, v, mask]
    grads = graphc.compile(graphc.grad(loss, (0, 1, 2, 3)),
                           *[graphc.tensor(a.shape, "float64") for a in arrays])(*arrays)
    value = graphc.compile(loss, *[graphc.tensor(a.shape, "float64") for a in arrays])
    for n in range(len(arrays)):
        np.testing.assert_allclose(grads[n], central_differences(value, arrays, n), rtol=1e-6,
                                   atol=1e-8, err_msg=str(n))


@needs_torch
@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({
    "L": st.integers(1, 80), "S": st.integers(1, 150), "E": st.integers(1, 20),
    "Ev": st.sampled_from([1, 3, 16, 32, 64]), "causal": st.booleans(),
    "mask": st.sampled_from([None, "bool", "add"]), "heads": st.integers(1, 3)}))
def test_forward_and_gradients_match_torch(cfg):
    rng = np.random.default_rng(6)
    L, S = cfg["L"], cfg["S"]
    q, k, v = (rng.standard_normal(s) for s in [(2, cfg["heads"], L, cfg["E"]),
                                                 (2, cfg["heads"], S, cfg["E"]),
                                                 (2, cfg["heads"], S, cfg["Ev"])])
    mask = None
    if cfg["mask"] == "bool":
        mask = rng.random((L, S)) < 0.7
        mask[:, 0] = True
    elif cfg["mask"] == "add":
        mask = rng.standard_normal((L, S))
    tmask = None if mask is None else torch.tensor(mask)
    causal = cfg["causal"]
    if causal and mask is not None:    # torch takes one or the other: combine them
        tri = np.tril(np.ones((L, S), bool))
        combined = (np.where(mask, 0.0, -np.inf) if mask.dtype == bool else mask) + \
            np.where(tri, 0.0, -np.inf)
        tmask, tcausal = torch.tensor(combined), False
    else:
        tcausal = causal
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, attn_mask=tmask, is_causal=tcausal, scale=0.4)
    seed = rng.standard_normal(tuple(out.shape))
    finite = ~np.isnan(out.detach().numpy())
    (out * torch.tensor(np.where(finite, seed, 0.0))).nan_to_num().sum().backward()

    def loss(q, k, v):
        y = fused_attention(q, k, v, None if mask is None else graphc.constant(mask),
                            scale=0.4, causal=causal)
        return graphc.sum(graphc.where(graphc.constant(finite), y, 0.0) * seed), y
    f = graphc.compile(graphc.value_and_grad(loss, (0, 1, 2), has_aux=True),
                       *[graphc.tensor(a.shape, "float64") for a in (q, k, v)])
    (_, y), grads = f(q, k, v)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g, np.nan_to_num(t.grad.numpy()), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shapes,match", [
    ([(2, 4, 8), (2, 6, 7), (2, 6, 8)], "query and key sizes"),
    ([(2, 4, 8), (2, 6, 8), (2, 5, 8)], "differ in length"),
    ([(4, 8), (2, 6, 8), (2, 6, 8)], "same rank"),
    ([(2, 4, 8), (3, 6, 8), (2, 6, 8)], "broadcast"),
])
def test_bad_shapes_raise_shape_errors(shapes, match):
    with pytest.raises(graphc.ShapeError, match=match):
        graphc.trace(lambda q, k, v: fused_attention(q, k, v),
                     *[graphc.tensor(s) for s in shapes])


def test_a_mask_that_does_not_broadcast_is_refused():
    with pytest.raises(graphc.ShapeError, match="do not broadcast"):
        graphc.trace(lambda q, k, v, m: fused_attention(q, k, v, m),
                     graphc.tensor((4, 8)), graphc.tensor((6, 8)), graphc.tensor((6, 8)),
                     graphc.tensor((5, 6), "bool"))
