"""scaled_dot_product_attention, einsum, MultiheadAttention and TransformerEncoderLayer against
numpy written out directly, torch, and central differences in float64."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc
from graphc import nn
from targets import gpu_reason, target_params  # noqa: F401 (the cuda target's skipif uses it)

F32 = dict(rtol=2e-5, atol=2e-6)
F64 = dict(rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------ references

def np_attention(q, k, v, mask=None, is_causal=False, scale=None):
    """softmax(q k^T * scale + mask) v in float64; a fully masked row gives 0 (torch 2.5+)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("...le,...se->...ls", q, k) * scale
    length, source = scores.shape[-2:]
    if is_causal:
        keep = np.arange(source)[None, :] <= np.arange(length)[:, None]
        scores = np.where(keep, scores, -np.inf)
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    scores, _ = np.broadcast_arrays(scores, np.zeros(scores.shape))
    top = scores.max(-1, keepdims=True)
    empty = np.isneginf(top)
    e = np.exp(scores - np.where(empty, 0.0, top))
    weights = e / np.where(empty, 1.0, e.sum(-1, keepdims=True))
    return np.einsum("...ls,...se->...le", weights, v)


def compiled(fn, *arrays):
    specs = [graphc.tensor(np.shape(a), np.asarray(a).dtype) for a in arrays]
    return graphc.compile(fn, *specs)(*arrays)


def central_difference(fn, arrays, directions, eps=1e-6):
    """d/dt fn(arrays + t directions) at t = 0, with fn a float64 numpy function."""
    plus = fn(*[a + eps * d for a, d in zip(arrays, directions)])
    minus = fn(*[a - eps * d for a, d in zip(arrays, directions)])
    return (plus - minus) / (2 * eps)


def torch_or_skip():
    return pytest.importorskip("torch")


# ------------------------------------------------------------------ attention

ATTENTION_CASES = {
    # name: (q shape, k shape, v shape, mask kind, is_causal)
    "2d": ((5, 4), (7, 4), (7, 3), None, False),
    "batched": ((2, 5, 4), (2, 7, 4), (2, 7, 6), None, False),
    "heads_odd_sizes": ((2, 3, 7, 5), (2, 3, 9, 5), (2, 3, 9, 3), None, False),
    "broadcast_batch": ((2, 3, 5, 4), (1, 3, 6, 4), (2, 1, 6, 2), None, False),
    "bool_mask_2d": ((2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 4), "bool_ls", False),
    "bool_mask_per_batch": ((2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 4), "bool_b11s", False),
    "float_mask": ((2, 5, 4), (2, 6, 4), (2, 6, 3), "float_bls", False),
    "float_mask_with_inf": ((2, 5, 4), (2, 6, 4), (2, 6, 3), "float_inf", False),
    "causal_square": ((2, 6, 4), (2, 6, 4), (2, 6, 5), None, True),
    "causal_fewer_queries": ((2, 3, 4), (2, 7, 4), (2, 7, 5), None, True),
    "causal_more_queries": ((2, 7, 4), (2, 3, 4), (2, 3, 5), None, True),
    "single_key": ((3, 1, 4), (3, 1, 4), (3, 1, 2), None, False),
}


def make_mask(kind, q_shape, k_shape, rng):
    length, source = q_shape[-2], k_shape[-2]
    batch = np.broadcast_shapes(q_shape[:-2], k_shape[:-2])
    if kind is None:
        return None
    if kind == "bool_ls":
        return rng.random((length, source)) < 0.7
    if kind == "bool_b11s":
        return rng.random((batch[0],) + (1,) * (len(batch) - 1) + (1, source)) < 0.7
    if kind == "float_bls":
        return rng.standard_normal(batch + (length, source))
    if kind == "float_inf":
        return np.where(rng.random((length, source)) < 0.3, -np.inf, rng.standard_normal(
            (length, source)))
    raise AssertionError(kind)


def attention_inputs(case, dtype, rng):
    q_shape, k_shape, v_shape, kind, is_causal = ATTENTION_CASES[case]
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in (q_shape, k_shape, v_shape))
    mask = make_mask(kind, q_shape, k_shape, rng)
    if mask is not None and mask.dtype != bool:
        mask = mask.astype(dtype)
    return q, k, v, mask, is_causal


def run_attention(q, k, v, mask, is_causal, scale=None):
    if mask is None:
        return compiled(lambda a, b, c: graphc.scaled_dot_product_attention(
            a, b, c, is_causal=is_causal, scale=scale), q, k, v)
    return compiled(lambda a, b, c, m: graphc.scaled_dot_product_attention(
        a, b, c, attn_mask=m, is_causal=is_causal, scale=scale), q, k, v, mask)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_matches_numpy(case, dtype, rng):
    q, k, v, mask, is_causal = attention_inputs(case, dtype, rng)
    out = run_attention(q, k, v, mask, is_causal)
    want = np_attention(q, k, v, mask, is_causal)
    assert out.dtype == dtype and out.shape == want.shape
    np.testing.assert_allclose(out, want, **(F32 if dtype == "float32" else dict(rtol=1e-11,
                                                                               atol=1e-12)))


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_matches_torch(case, rng):
    torch = torch_or_skip()
    q, k, v, mask, is_causal = attention_inputs(case, "float32", rng)
    out = run_attention(q, k, v, mask, is_causal)
    t = [torch.tensor(a) for a in (q, k, v)]
    if t[0].ndim == 2:   # torch's math path wants a batch dim for broadcasting masks
        t = [a[None] for a in t]
    want = torch.nn.functional.scaled_dot_product_attention(
        *t, attn_mask=None if mask is None else torch.tensor(mask), is_causal=is_causal)
    np.testing.assert_allclose(out, want.numpy().reshape(out.shape), rtol=1e-5, atol=1e-6)


def test_attention_scale_overrides_one_over_sqrt_e(rng):
    q, k, v = (rng.standard_normal((2, 4, 3)) for _ in range(3))
    np.testing.assert_allclose(run_attention(q, k, v, None, False, scale=0.25),
                               np_attention(q, k, v, scale=0.25), **F64)
    assert not np.allclose(np_attention(q, k, v, scale=0.25), np_attention(q, k, v))


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_fully_masked_rows_give_zero_as_torch(mask_kind, rng):
    q, k, v = (rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(3))
    keep = np.ones((3, 3), bool)
    keep[1] = False
    mask = keep if mask_kind == "bool" else np.where(keep, 0.0, -np.inf).astype(np.float32)
    out = run_attention(q, k, v, mask, False)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, 1], 0.0)
    np.testing.assert_allclose(out, np_attention(q, k, v, mask), **F32)
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a) for a in (q, k, v)), attn_mask=torch.tensor(mask))
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-6)


def test_fully_masked_rows_have_zero_finite_gradients(rng):
    q, k, v = (rng.standard_normal((3, 4)) for _ in range(3))
    keep = np.ones((3, 3), bool)
    keep[0] = False
    loss = lambda a, b, c, m: graphc.sum(graphc.scaled_dot_product_attention(  # noqa: E731
        a, b, c, attn_mask=m) ** 2)
    grads = compiled(graphc.grad(loss, (0, 1, 2)), q, k, v, keep)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[0][0], 0.0)


def test_large_scores_do_not_overflow(rng):
    q = rng.standard_normal((2, 5, 4)).astype(np.float32) * 300
    k = rng.standard_normal((2, 5, 4)).astype(np.float32) * 300
    v = rng.standard_normal((2, 5, 3)).astype(np.float32)
    out = run_attention(q, k, v, None, False)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np_attention(q, k, v), rtol=1e-4, atol=1e-4)


@st.composite
def attention_configs(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    length, source = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    features, values = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    kind = draw(st.sampled_from([None, "bool", "float", "causal"]))
    mask_batch = draw(st.sampled_from([(), tuple(1 for _ in batch), batch]))
    scale = draw(st.sampled_from([None, 0.5, 2.0]))
    seed = draw(st.integers(0, 2**16))
    return batch, length, source, features, values, kind, mask_batch, scale, seed


@given(config=attention_configs())
@settings(max_examples=12, deadline=None, derandomize=True)
def test_attention_random_configurations_match_numpy(config):
    batch, length, source, features, values, kind, mask_batch, scale, seed = config
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(batch + (length, features))
    k = rng.standard_normal(batch + (source, features))
    v = rng.standard_normal(batch + (source, values))
    mask = None
    if kind == "bool":
        mask = rng.random(mask_batch + (length, source)) < 0.6
    elif kind == "float":
        mask = rng.standard_normal(mask_batch + (length, source))
    out = run_attention(q, k, v, mask, kind == "causal", scale)
    np.testing.assert_allclose(out, np_attention(q, k, v, mask, kind == "causal", scale),
                               rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("case", ["batched", "bool_mask_2d", "float_mask", "causal_square",
                                  "causal_fewer_queries", "broadcast_batch"])
def test_attention_gradients_match_central_differences(case, rng):
    q, k, v, mask, is_causal = attention_inputs(case, "float64", rng)
    out_shape = np_attention(q, k, v, mask, is_causal).shape
    w = rng.standard_normal(out_shape)
    extra = () if mask is None else (mask,)

    def loss(a, b, c, *m):
        out = graphc.scaled_dot_product_attention(a, b, c, attn_mask=m[0] if m else None,
                                                  is_causal=is_causal)
        return graphc.sum(out * w)

    grads = compiled(graphc.grad(loss, (0, 1, 2)), q, k, v, *extra)
    directions = [rng.standard_normal(a.shape) for a in (q, k, v)]
    numeric = central_difference(
        lambda a, b, c: np.sum(np_attention(a, b, c, mask, is_causal) * w), [q, k, v],
        directions)
    analytic = sum(np.sum(g * d) for g, d in zip(grads, directions))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", ["bool_mask_per_batch", "float_mask", "causal_more_queries"])
def test_attention_gradients_match_torch_autograd(case, rng):
    torch = torch_or_skip()
    q, k, v, mask, is_causal = attention_inputs(case, "float64", rng)
    extra = () if mask is None else (mask,)

    def loss(a, b, c, *m):
        out = graphc.scaled_dot_product_attention(a, b, c, attn_mask=m[0] if m else None,
                                                  is_causal=is_causal)
        return graphc.sum(graphc.sin(out))

    grads = compiled(graphc.grad(loss, (0, 1, 2)), q, k, v, *extra)
    t = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(
        *t, attn_mask=None if mask is None else torch.tensor(mask), is_causal=is_causal)
    torch.sin(out).sum().backward()
    for g, a in zip(grads, t):
        np.testing.assert_allclose(g, a.grad.numpy(), rtol=1e-9, atol=1e-11)


def attention_error(*shapes, mask=None, mask_dtype="bool", **options):
    specs = [graphc.tensor(s) for s in shapes]
    if mask is not None:
        specs.append(graphc.tensor(mask, mask_dtype))
        return graphc.trace(lambda q, k, v, m: graphc.scaled_dot_product_attention(
            q, k, v, attn_mask=m, **options), *specs)
    return graphc.trace(lambda q, k, v: graphc.scaled_dot_product_attention(
        q, k, v, **options), *specs)


@pytest.mark.parametrize("shapes,mask,mask_dtype,options,error,message", [
    (((2, 5, 4), (2, 6, 3), (2, 6, 3)), None, None, {}, graphc.ShapeError,
     r"query and key have different feature sizes E: 4 != 3"),
    (((2, 5, 4), (2, 6, 4), (2, 7, 3)), None, None, {}, graphc.ShapeError,
     r"key and value have different lengths S: 6 != 7"),
    (((2, 5, 4), (3, 6, 4), (3, 6, 4)), None, None, {}, graphc.ShapeError,
     r"batch dimensions do not broadcast"),
    (((2, 5, 4), (2, 6, 4), (2, 6, 4)), (5, 5), "bool", {}, graphc.ShapeError,
     r"attn_mask of shape \(5, 5\) does not broadcast to .*\(2, 5, 6\)"),
    (((2, 5, 4), (2, 6, 4), (2, 6, 4)), (3, 5, 6), "bool", {}, graphc.ShapeError,
     r"attn_mask of shape \(3, 5, 6\)"),
    (((2, 5, 4), (2, 6, 4), (2, 6, 4)), (5, 6), "int64", {}, graphc.DTypeError,
     r"attn_mask has dtype int64"),
    (((2, 5, 4), (2, 6, 4), (2, 6, 4)), (5, 6), "bool", {"is_causal": True}, graphc.TraceError,
     r"not both"),
    (((2, 5, 4), (2, 6, 4), (2, 6, 4)), None, None, {"dropout_p": 0.1}, graphc.TraceError,
     r"dropout_p=0.1 is not supported"),
    (((4,), (6, 4), (6, 4)), None, None, {}, graphc.ShapeError, r"query must be"),
    (((5, 4), (6, 4), (6, 4)), None, None, {"scale": "big"}, graphc.TraceError,
     r"scale must be a number"),
])
def test_attention_errors_name_the_problem_and_the_line(shapes, mask, mask_dtype, options,
                                                        error, message):
    with pytest.raises(error, match=message) as info:
        attention_error(*shapes, mask=mask, mask_dtype=mask_dtype, **options)
    assert "scaled_dot_product_attention" in str(info.value)
    assert "test_attention.py" in str(info.value)   # the user's line


def test_attention_rejects_mixed_and_integer_dtypes():
    with pytest.raises(graphc.DTypeError, match="share a dtype.*float32, float64"):
        graphc.trace(graphc.scaled_dot_product_attention, graphc.tensor((3, 4)),
                     graphc.tensor((3, 4), "float64"), graphc.tensor((3, 4)))
    with pytest.raises(graphc.DTypeError, match="key has dtype int64"):
        graphc.trace(graphc.scaled_dot_product_attention, graphc.tensor((3, 4)),
                     graphc.tensor((3, 4), "int64"), graphc.tensor((3, 4)))


@pytest.mark.parametrize("mask_shape", [None, (5, 7), (2, 1, 5, 7), (2, 6, 5, 7)])
def test_grouped_query_attention_matches_repeated_heads_and_torch(mask_shape, rng):
    q = rng.standard_normal((2, 6, 5, 4))
    k, v = rng.standard_normal((2, 2, 7, 4)), rng.standard_normal((2, 2, 7, 3))
    mask = None if mask_shape is None else rng.random(mask_shape) < 0.7
    extra = () if mask is None else (mask,)
    out = compiled(lambda a, b, c, *m: graphc.scaled_dot_product_attention(
        a, b, c, attn_mask=m[0] if m else None, enable_gqa=True), q, k, v, *extra)
    # key/value head j serves query heads 3j, 3j + 1, 3j + 2
    want = np_attention(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1), mask)
    np.testing.assert_allclose(out, want, **F64)
    torch = torch_or_skip()
    theirs = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a) for a in (q, k, v)), enable_gqa=True,
        attn_mask=None if mask is None else torch.tensor(mask))
    np.testing.assert_allclose(out, theirs.numpy(), rtol=1e-10, atol=1e-12)


def test_grouped_query_attention_needs_divisible_heads():
    with pytest.raises(graphc.ShapeError, match="6 heads must be a multiple of the key's and "
                                                "value's heads \\(4 and 4\\)"):
        graphc.trace(lambda q, k, v: graphc.scaled_dot_product_attention(q, k, v,
                                                                         enable_gqa=True),
                     graphc.tensor((6, 5, 4)), graphc.tensor((4, 7, 4)),
                     graphc.tensor((4, 7, 4)))


def test_masked_attention_is_one_fused_kernel_that_stores_no_scores():
    f = graphc.compile(lambda q, k, v, m: graphc.scaled_dot_product_attention(q, k, v,
                                                                            attn_mask=m),
                       graphc.tensor(("B", 4, 16, 8)), graphc.tensor(("B", 4, 16, 8)),
                       graphc.tensor(("B", 4, 16, 8)), graphc.tensor((16, 16), "bool"))
    kinds = [k.kind for k in f.kernels]
    assert kinds.count("attention") == 1 and "matmul" not in kinds and "rows" not in kinds, \
        [k.ops for k in f.kernels]


def test_the_composite_path_makes_the_masked_softmax_one_row_kernel():
    """A symbolic feature size (the default scale known only at run time) takes matmul, a
    masked softmax row kernel and matmul."""
    f = graphc.compile(lambda q, k, v, m: graphc.scaled_dot_product_attention(q, k, v,
                                                                            attn_mask=m),
                       graphc.tensor(("B", 16, "E")), graphc.tensor(("B", 16, "E")),
                       graphc.tensor(("B", 16, 8)), graphc.tensor((16, 16), "bool"))
    rows = [k for k in f.kernels if {"max", "exp", "sum", "divide"} <= set(k.ops)]
    assert len(rows) == 1, [k.ops for k in f.kernels]
    assert sum(k.ops.count("matmul") for k in f.kernels) == 2


@pytest.mark.parametrize("target", target_params())
def test_attention_and_einsum_on_every_target(target, monkeypatch, rng):
    def fn(q, k, v, m, w):
        causal = graphc.scaled_dot_product_attention(q, k, v, is_causal=True)
        masked = graphc.scaled_dot_product_attention(q, k, v, attn_mask=m)
        return graphc.einsum("bhld,de->blhe", causal + masked, w)

    shapes = [(2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 4), (5, 6), (4, 3)]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    arrays[3] = rng.random((5, 6)) < 0.6
    specs = [graphc.tensor(a.shape, a.dtype) for a in arrays]
    out = target.build(fn, specs, monkeypatch)(*arrays)
    q, k, v, m, w = arrays
    want = np.einsum("bhld,de->blhe", np_attention(q, k, v, is_causal=True) +
                     np_attention(q, k, v, m), w)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_attention_with_symbolic_batch_and_lengths(rng):
    f = graphc.compile(lambda q, k, v: graphc.scaled_dot_product_attention(q, k, v),
                       graphc.tensor(("B", "L", 4)), graphc.tensor(("B", "S", 4)),
                       graphc.tensor(("B", "S", 3)))
    for b, length, source in ((1, 2, 3), (3, 5, 4)):
        q, k, v = (rng.standard_normal(s).astype(np.float32)
                   for s in ((b, length, 4), (b, source, 4), (b, source, 3)))
        np.testing.assert_allclose(f(q, k, v), np_attention(q, k, v), **F32)


# ------------------------------------------------------------------ einsum

EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 1), (1, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 5, 4), (2, 3, 7, 4)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 5, 7), (2, 3, 7, 4)]),
    ("ij->ji", [(3, 4)]),
    ("ijk->kij", [(2, 3, 4)]),
    ("ij->i", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij", [(3, 4)]),
    ("ba", [(3, 4)]),
    ("i,j->ij", [(3,), (5,)]),
    ("i,i->", [(7,), (7,)]),
    ("i,i", [(7,), (7,)]),
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("ij,ij->ij", [(1, 4), (3, 4)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("ij,kj->ik", [(3, 5), (4, 5)]),
    ("ji,jk->ik", [(5, 3), (5, 4)]),
    ("ij,jk->ki", [(3, 4), (4, 5)]),
    ("ijk,ikl->ijl", [(2, 3, 4), (2, 4, 5)]),
    ("abc,cd->abd", [(2, 3, 4), (4, 5)]),
    ("abc,bcd->ad", [(2, 3, 4), (3, 4, 5)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("i,ij->j", [(3,), (3, 4)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("i,j,k->ijk", [(2,), (3,), (4,)]),
    ("ij,kl->ijkl", [(2, 3), (4, 5)]),
    ("ij,kl->", [(2, 3), (4, 5)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(4, 4)]),
    ("iij->j", [(3, 3, 2)]),
    ("bii,bi->b", [(2, 3, 3), (2, 3)]),
    ("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 6)]),
    ("...ij,jk", [(2, 1, 3, 4), (4, 2)]),
    ("...ij,...jk", [(2, 1, 3, 4), (5, 4, 2)]),
    ("i...->...", [(3, 2, 4)]),
    ("...,...->...", [(3, 1), (4,)]),
    ("b...d,b...d->b...", [(2, 3, 4, 5), (2, 3, 4, 5)]),
    ("Ab,bA->A", [(3, 4), (4, 3)]),
    (" ij , jk -> ik ", [(3, 4), (4, 5)]),
    (",i->i", [(), (3,)]),
]


def einsum_id(case):
    return case[0].replace(" ", "").replace("->", "_to_").replace(",", "_").replace("...", "E")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", EINSUM_CASES, ids=[einsum_id(c) for c in EINSUM_CASES])
def test_einsum_matches_numpy(case, dtype, rng):
    subscripts, shapes = case
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    out = compiled(lambda *xs: graphc.einsum(subscripts, *xs), *arrays)
    want = np.einsum(subscripts, *[a.astype(np.float64) for a in arrays])
    assert out.shape == want.shape and out.dtype == dtype
    np.testing.assert_allclose(out, want, **(F32 if dtype == "float32" else F64),
                               err_msg=subscripts)


def test_einsum_integer_operands_match_numpy(rng):
    a, b = rng.integers(-5, 5, (3, 4)), rng.integers(-5, 5, (4, 2))
    np.testing.assert_array_equal(compiled(lambda x, y: graphc.einsum("ij,jk->ik", x, y), a, b),
                                  np.einsum("ij,jk->ik", a, b))


@st.composite
def einsum_problems(draw):
    letters = "abcde"
    sizes = {c: draw(st.integers(1, 4)) for c in letters}
    n_operands = draw(st.integers(1, 3))
    terms = [draw(st.lists(st.sampled_from(letters), max_size=3)) for _ in range(n_operands)]
    used = sorted({c for t in terms for c in t})
    implicit = draw(st.booleans())
    if implicit:
        subscripts = ",".join("".join(t) for t in terms)
    else:
        output = draw(st.permutations(used))[:draw(st.integers(0, len(used)))]
        subscripts = ",".join("".join(t) for t in terms) + "->" + "".join(output)
    shapes = [tuple(sizes[c] for c in t) for t in terms]
    return subscripts, shapes, draw(st.integers(0, 2**16))


@given(problem=einsum_problems())
@settings(max_examples=20, deadline=None, derandomize=True)
def test_einsum_random_subscripts_match_numpy(problem):
    subscripts, shapes, seed = problem
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    out = compiled(lambda *xs: graphc.einsum(subscripts, *xs), *arrays)
    np.testing.assert_allclose(out, np.einsum(subscripts, *arrays), err_msg=subscripts, **F64)


GRAD_CASES = ["ij,jk->ik", "bhqd,bhkd->bhqk", "ij->ji", "ii->i", "ij->i", "i,j->ij",
              "...ij,jk", "ij,jk,kl->il", "ij,ij->", "abc,bcd->ad", "ij,ij->ij"]


@pytest.mark.parametrize("subscripts", GRAD_CASES)
def test_einsum_gradients_match_central_differences(subscripts, rng):
    shapes = dict(EINSUM_CASES)[subscripts]
    arrays = [rng.standard_normal(s) for s in shapes]
    out_shape = np.einsum(subscripts, *arrays).shape
    w = rng.standard_normal(out_shape)
    loss = lambda *xs: graphc.sum(graphc.einsum(subscripts, *xs) * w)  # noqa: E731
    grads = compiled(graphc.grad(loss, tuple(range(len(arrays)))), *arrays)
    grads = grads if isinstance(grads, tuple) else (grads,)
    directions = [rng.standard_normal(a.shape) for a in arrays]
    numeric = central_difference(lambda *xs: np.sum(np.einsum(subscripts, *xs) * w), arrays,
                                 directions)
    analytic = sum(np.sum(g * d) for g, d in zip(grads, directions))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("subscripts", ["bhqd,bhkd->bhqk", "...ij,jk", "ij,jk,kl->il", "ii->i"])
def test_einsum_gradients_match_torch(subscripts, rng):
    torch = torch_or_skip()
    arrays = [rng.standard_normal(s) for s in dict(EINSUM_CASES)[subscripts]]
    loss = lambda *xs: graphc.sum(graphc.tanh(graphc.einsum(subscripts, *xs)))  # noqa: E731
    grads = compiled(graphc.grad(loss, tuple(range(len(arrays)))), *arrays)
    grads = grads if isinstance(grads, tuple) else (grads,)
    t = [torch.tensor(a, requires_grad=True) for a in arrays]
    torch.tanh(torch.einsum(subscripts, *t)).sum().backward()
    for g, a in zip(grads, t):
        np.testing.assert_allclose(g, a.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_einsum_contraction_is_one_matmul():
    graph = graphc.trace(lambda a, b: graphc.einsum("bhqd,bhkd->bhqk", a, b),
                         graphc.tensor((2, 3, 5, 4)), graphc.tensor((2, 3, 7, 4)))
    assert [n.op for n in graph.nodes].count("matmul") == 1
    outer = graphc.trace(lambda a, b: graphc.einsum("i,j->ij", a, b), graphc.tensor((3,)),
                         graphc.tensor((4,)))
    assert "matmul" not in [n.op for n in outer.nodes]


@pytest.mark.parametrize("subscripts,shapes,error,message", [
    ("ij,jk->ik", [(3, 4)], graphc.TraceError, r"2 operand terms, but 1 operands"),
    ("ij,jk->ik", [(3, 4), (5, 6)], graphc.ShapeError, r"subscript 'j' has size 4 .* and 5"),
    ("ijk,jk->ik", [(3, 4), (4, 5)], graphc.ShapeError, r"names 3 axes, but the operand has 2"),
    ("ij->ik", [(3, 4)], graphc.TraceError, r"output subscript 'k' appears in no operand"),
    ("ij->ii", [(3, 4)], graphc.TraceError, r"'i' appears more than once"),
    ("i1->i", [(3, 4)], graphc.TraceError, r"'1' is not a subscript letter"),
    ("...i->i", [(3, 4)], graphc.ShapeError, r"output has no '...'"),
    ("i.j->i", [(3, 4)], graphc.TraceError, r"may only appear as one '...'"),
    ("ij->i->j", [(3, 4)], graphc.TraceError, r"more than one '->'"),
    ("ii->i", [(3, 4)], graphc.ShapeError, r"subscript 'i' has size 3 .* and 4"),
])
def test_einsum_errors_name_the_problem_and_the_line(subscripts, shapes, error, message):
    with pytest.raises(error, match=message) as info:
        graphc.trace(lambda *xs: graphc.einsum(subscripts, *xs),
                     *[graphc.tensor(s) for s in shapes])
    assert "einsum" in str(info.value) and "test_attention.py" in str(info.value)


def test_einsum_rejects_bool_and_non_string_subscripts():
    with pytest.raises(graphc.DTypeError, match="bool operands"):
        graphc.trace(lambda a: graphc.einsum("ij->i", a), graphc.tensor((3, 4), "bool"))
    with pytest.raises(graphc.TraceError, match="subscripts must be a string"):
        graphc.trace(lambda a: graphc.einsum(a, [0, 1]), graphc.tensor((3, 4)))


# ------------------------------------------------------------------ layers against torch

def torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def to_torch(arrays, torch):
    return [None if a is None else torch.tensor(a) for a in arrays]


MHA_CASES = {
    # name: (constructor options, N, L, S, forward options, mask kinds)
    "self_attention": (dict(), 3, 5, 5, dict(), ()),
    "cross_attention_bool_masks": (dict(), 2, 4, 6, dict(), ("attn_bool", "pad_bool")),
    "float_masks": (dict(), 2, 4, 6, dict(), ("attn_float", "pad_float")),
    "per_head_mask": (dict(), 2, 4, 6, dict(), ("attn_3d",)),
    "no_bias_per_head_weights": (dict(bias=False), 2, 3, 4,
                                 dict(average_attn_weights=False), ("pad_bool",)),
    "kdim_vdim": (dict(kdim=5, vdim=3), 2, 4, 6, dict(), ("attn_bool",)),
    "sequence_first": (dict(batch_first=False), 2, 4, 5, dict(), ("pad_bool",)),
    "no_weights": (dict(), 2, 4, 4, dict(need_weights=False), ("attn_bool",)),
    "unbatched": (dict(), None, 4, 5, dict(), ("attn_bool",)),
}


def mha_inputs(case, rng, embed=8, heads=2):
    options, n, length, source, forward, kinds = MHA_CASES[case]
    kdim, vdim = options.get("kdim", embed), options.get("vdim", embed)
    lead = () if n is None else (n,)

    def seq(t, d):
        if options.get("batch_first", True) or n is None:
            return rng.standard_normal(lead + (t, d)).astype(np.float32)
        return rng.standard_normal((t, n, d)).astype(np.float32)

    q, k, v = seq(length, embed), seq(source, kdim), seq(source, vdim)
    attn_mask = pad = None
    for kind in kinds:
        if kind == "attn_bool":
            attn_mask = rng.random((length, source)) < 0.3
            attn_mask[:, 0] = False     # every query keeps a key
        elif kind == "attn_float":
            attn_mask = rng.standard_normal((length, source)).astype(np.float32)
        elif kind == "attn_3d":
            attn_mask = rng.random((n * heads, length, source)) < 0.3
            attn_mask[:, :, 0] = False
        elif kind == "pad_bool":
            pad = np.zeros(lead + (source,), bool)
            pad[..., -1] = True
        elif kind == "pad_float":
            pad = rng.standard_normal(lead + (source,)).astype(np.float32)
    return options, forward, (q, k, v), attn_mask, pad


def make_mha(torch, options, embed=8, heads=2):
    torch.manual_seed(0)
    batch_first = options.get("batch_first", True)
    theirs = torch.nn.MultiheadAttention(embed, heads, batch_first=batch_first,
                                         **{k: v for k, v in options.items()
                                            if k != "batch_first"}).eval()
    ours = nn.MultiheadAttention(embed, heads, **options)
    ours.load_state_dict(torch_state(theirs))
    return ours, theirs


def run_mha(module, inputs, attn_mask, pad, forward):
    masks = [m for m in (attn_mask, pad) if m is not None]

    def fn(q, k, v, *ms):
        it = iter(ms)
        out, weights = module(q, k, v, attn_mask=next(it) if attn_mask is not None else None,
                              key_padding_mask=next(it) if pad is not None else None, **forward)
        return out if weights is None else (out, weights)

    return compiled(fn, *inputs, *masks)


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multihead_attention_matches_torch(case, rng):
    torch = torch_or_skip()
    options, forward, inputs, attn_mask, pad = mha_inputs(case, rng)
    ours, theirs = make_mha(torch, options)
    got = run_mha(ours, inputs, attn_mask, pad, forward)
    with torch.no_grad():
        out, weights = theirs(*to_torch(inputs, torch), attn_mask=to_torch([attn_mask], torch)[0],
                              key_padding_mask=to_torch([pad], torch)[0], **forward)
    if weights is None:
        np.testing.assert_allclose(got, out.numpy(), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(got[0], out.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], weights.numpy(), rtol=1e-5, atol=1e-6)


@st.composite
def mha_configs(draw):
    heads = draw(st.sampled_from([1, 2, 3]))
    embed = heads * draw(st.integers(1, 3))
    n, length, source = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    attn = draw(st.sampled_from([None, "bool", "float", "bool_3d"]))
    pad = draw(st.sampled_from([None, "bool", "float"]))
    return heads, embed, n, length, source, attn, pad, draw(st.booleans()), draw(
        st.integers(0, 2**16))


@given(config=mha_configs())
@settings(max_examples=8, deadline=None, derandomize=True)
def test_multihead_attention_random_configurations_match_torch(config):
    torch = torch_or_skip()
    heads, embed, n, length, source, attn, pad_kind, bias, seed = config
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    theirs = torch.nn.MultiheadAttention(embed, heads, bias=bias, batch_first=True).train()
    ours = nn.MultiheadAttention(embed, heads, bias=bias)
    ours.load_state_dict(torch_state(theirs))
    q = rng.standard_normal((n, length, embed)).astype(np.float32)
    kv = rng.standard_normal((n, source, embed)).astype(np.float32)
    mask = pad = None
    if attn == "bool":
        mask = rng.random((length, source)) < 0.3
        mask[:, 0] = False
    elif attn == "bool_3d":
        mask = rng.random((n * heads, length, source)) < 0.3
        mask[..., 0] = False
    elif attn == "float":
        mask = rng.standard_normal((length, source)).astype(np.float32)
    if pad_kind == "bool":
        pad = np.zeros((n, source), bool)
        pad[:, 1:] = rng.random((n, source - 1)) < 0.4
    elif pad_kind == "float":
        pad = rng.standard_normal((n, source)).astype(np.float32)
    if attn is not None and pad_kind is not None and (attn == "float") != (pad_kind == "float"):
        pad = np.where(pad, -np.inf, 0).astype(np.float32) if pad.dtype == bool else pad
        mask = np.where(mask, -np.inf, 0).astype(np.float32) if mask.dtype == bool else mask
    got = run_mha(ours, (q, kv, kv), mask, pad, {})
    with torch.no_grad():   # train mode with dropout 0: torch's plain (not fast) path
        out, weights = theirs(*to_torch((q, kv, kv), torch), attn_mask=to_torch([mask], torch)[0],
                              key_padding_mask=to_torch([pad], torch)[0])
    np.testing.assert_allclose(got[0], out.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], weights.numpy(), rtol=1e-5, atol=1e-6)


def test_multihead_attention_is_causal_without_a_mask_masks_the_future(rng):
    torch = torch_or_skip()
    ours, theirs = make_mha(torch, {})
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    got, weights = compiled(lambda a: ours(a, a, a, is_causal=True), x)
    assert np.all(np.triu(weights, 1) == 0)
    future = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    with torch.no_grad():   # torch needs the mask itself and takes is_causal as a hint
        want, _ = theirs(*(torch.tensor(x),) * 3, attn_mask=future, is_causal=True)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_multihead_attention_fully_padded_item_gives_zero_weights(rng):
    torch = torch_or_skip()
    ours, theirs = make_mha(torch, {})
    with torch.no_grad():
        theirs.out_proj.bias.copy_(torch.randn(8))
    ours.load_state_dict(torch_state(theirs))
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    pad = np.zeros((2, 3), bool)
    pad[0] = True
    out, weights = compiled(lambda a, p: ours(a, a, a, key_padding_mask=p), x, pad)
    np.testing.assert_array_equal(weights[0], 0.0)
    # the attention of a fully padded item is 0, so its output is out_proj's bias; torch's
    # plain SDPA path (need_weights=False) says the same, its need_weights path says NaN
    np.testing.assert_allclose(out[0], np.broadcast_to(ours.state_dict()["out_proj.bias"],
                                                       (3, 8)), rtol=1e-6)
    theirs.train()
    with torch.no_grad():
        want, _ = theirs(*(torch.tensor(x),) * 3, key_padding_mask=torch.tensor(pad),
                         need_weights=False)
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-6)


def clone_with(module_factory, grads):
    """A fresh module whose parameter arrays hold `grads`, so state_dict() gives them in
    torch's names and layouts."""
    clone = module_factory()
    for name, arr in clone.named_parameters().items():
        arr[...] = grads[name]
    return clone.state_dict()


def test_multihead_attention_parameter_gradients_match_torch(rng):
    torch = torch_or_skip()
    _, forward, inputs, attn_mask, pad = mha_inputs("cross_attention_bool_masks", rng)
    ours, theirs = make_mha(torch, {})
    w = rng.standard_normal((2, 4, 8)).astype(np.float32)

    def loss(params, q, k, v, m, p):
        out, weights = ours.apply(params, q, k, v, attn_mask=m, key_padding_mask=p)
        return graphc.sum(out * w) + graphc.sum(weights * weights)

    value, grads = graphc.value_and_grad(loss)(ours.parameters_tree(), *inputs, attn_mask, pad)
    out, weights = theirs(*to_torch(inputs, torch), attn_mask=torch.tensor(attn_mask),
                          key_padding_mask=torch.tensor(pad))
    want = (out * torch.tensor(w)).sum() + (weights * weights).sum()
    want.backward()
    np.testing.assert_allclose(value, want.item(), rtol=1e-5)
    ours_in_torch_layout = clone_with(lambda: nn.MultiheadAttention(8, 2), grads)
    for name, param in theirs.named_parameters():
        np.testing.assert_allclose(ours_in_torch_layout[name], param.grad.numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_multihead_attention_dropout_zeroes_or_scales_weights(rng):
    module = nn.MultiheadAttention(8, 2, dropout=0.5)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)

    def run(training):
        def fn(params, key, a):
            return module.apply(params, a, a, a, training=training, key=key,
                                average_attn_weights=False)[1]
        params = {k: graphc.tensor(v.shape) for k, v in module.parameters_tree().items()}
        specs = (params, graphc.tensor((), "int64"), graphc.tensor(x.shape))
        return graphc.compile(fn, *specs)(module.parameters_tree(), np.int64(3), x)

    dropped, plain = run(True), run(False)
    kept = dropped != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(dropped[kept], 2 * plain[kept], rtol=1e-5)


def test_multihead_attention_default_init_follows_torch():
    e = 16
    module = nn.MultiheadAttention(e, 4, seed=3)
    p = module.named_parameters()
    assert p["in_proj_weight"].shape == (3 * e, e)
    assert np.abs(p["in_proj_weight"]).max() <= np.sqrt(6 / (4 * e))       # xavier_uniform
    assert p["in_proj_weight"].std() > 0.5 * np.sqrt(6 / (4 * e)) / np.sqrt(3)
    assert np.abs(p["out_proj.weight"]).max() <= 1 / np.sqrt(e)              # torch's Linear
    np.testing.assert_array_equal(p["in_proj_bias"], 0)
    np.testing.assert_array_equal(p["out_proj.bias"], 0)
    again = nn.MultiheadAttention(e, 4, seed=3).named_parameters()
    for name in p:
        np.testing.assert_array_equal(p[name], again[name])


def test_multihead_attention_rejects_bad_configurations_and_inputs():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="add_bias_kv"):
        nn.MultiheadAttention(8, 2, add_bias_kv=True)
    module = nn.MultiheadAttention(8, 2)
    with pytest.raises(graphc.ShapeError, match=r"query has shape \(2, 4, 6\): last dim 6 != 8"):
        graphc.trace(lambda a: module(a, a, a), graphc.tensor((2, 4, 6)))
    with pytest.raises(graphc.ShapeError, match=r"attn_mask has shape \(4, 3\)"):
        graphc.trace(lambda a, m: module(a, a, a, attn_mask=m), graphc.tensor((2, 4, 8)),
                     graphc.tensor((4, 3), "bool"))
    with pytest.raises(graphc.ShapeError, match=r"key_padding_mask has shape \(4,\)"):
        graphc.trace(lambda a, m: module(a, a, a, key_padding_mask=m), graphc.tensor((2, 4, 8)),
                     graphc.tensor((4,), "bool"))
    with pytest.raises(graphc.DTypeError, match="key_padding_mask has dtype int64"):
        graphc.trace(lambda a, m: module(a, a, a, key_padding_mask=m), graphc.tensor((2, 4, 8)),
                     graphc.tensor((2, 4), "int64"))


ENCODER_CASES = {
    "post_norm_relu": dict(),
    "pre_norm_gelu": dict(norm_first=True, activation="gelu"),
    "sequence_first": dict(batch_first=False),
    "callable_activation": dict(activation=graphc.tanh),
    "no_bias": dict(bias=False),
}


def make_encoder(torch, options, d_model=8, nhead=2, feedforward=12):
    torch.manual_seed(1)
    torch_options = dict(options)
    if torch_options.get("activation") is graphc.tanh:
        torch_options["activation"] = torch.tanh
    theirs = torch.nn.TransformerEncoderLayer(
        d_model, nhead, feedforward, dropout=0.0,
        **{"batch_first": True, **torch_options}).eval()
    ours = nn.TransformerEncoderLayer(d_model, nhead, feedforward, dropout=0.0, **options)
    ours.load_state_dict(torch_state(theirs))
    return ours, theirs


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_transformer_encoder_layer_matches_torch(case, mask_kind, rng):
    torch = torch_or_skip()
    options = ENCODER_CASES[case]
    ours, theirs = make_encoder(torch, options)
    batch_first = options.get("batch_first", True)
    x = rng.standard_normal((3, 5, 8) if batch_first else (5, 3, 8)).astype(np.float32)
    if mask_kind == "bool":
        pad = np.zeros((3, 5), bool)
        pad[0, -2:] = True
        mask = rng.random((5, 5)) < 0.3
        mask[:, 0] = False
    else:
        # torch's inference fast path gives NaN with float masks; dropout is 0, so train
        # mode computes the same function on its plain path
        theirs.train()
        pad = rng.standard_normal((3, 5)).astype(np.float32)
        mask = rng.standard_normal((5, 5)).astype(np.float32)
    got = compiled(lambda a, m, p: ours(a, src_mask=m, src_key_padding_mask=p), x, mask, pad)
    with torch.no_grad():
        want = theirs(torch.tensor(x), src_mask=torch.tensor(mask),
                      src_key_padding_mask=torch.tensor(pad))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", target_params())
def test_transformer_encoder_layer_on_every_target(target, monkeypatch, rng):
    torch = torch_or_skip()
    ours, theirs = make_encoder(torch, dict(activation="gelu"))
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    pad = np.zeros((2, 5), bool)
    pad[1, -2:] = True
    run = target.build(lambda a, p: ours(a, src_key_padding_mask=p),
                       [graphc.tensor(x.shape), graphc.tensor(pad.shape, "bool")], monkeypatch)
    with torch.no_grad():
        want = theirs(torch.tensor(x), src_key_padding_mask=torch.tensor(pad))
    np.testing.assert_allclose(run(x, pad), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", [False, True])
def test_transformer_encoder_stack_matches_torch(norm, rng):
    torch = torch_or_skip()
    torch.manual_seed(2)
    theirs = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True), 3,
        norm=torch.nn.LayerNorm(8) if norm else None, enable_nested_tensor=False)
    with torch.no_grad():   # make the layers differ, as after training
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    theirs.train()          # dropout is 0: the plain path
    ours = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0), 3,
                                 norm=nn.LayerNorm(8) if norm else None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(torch_state(theirs))
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    pad = np.zeros((2, 5), bool)
    pad[0, -1] = True
    got = compiled(lambda a, p: ours(a, src_key_padding_mask=p), x, pad)
    with torch.no_grad():
        want = theirs(torch.tensor(x), src_key_padding_mask=torch.tensor(pad))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_transformer_encoder_copies_have_their_own_weights_and_dropout_streams():
    layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.1)
    encoder = nn.TransformerEncoder(layer, 2)
    first = encoder.named_parameters()["layers.0.linear1.weight"]
    second = encoder.named_parameters()["layers.1.linear1.weight"]
    np.testing.assert_array_equal(first, second)     # equal at the start, as torch
    assert first is not second and first is not layer.named_parameters()["linear1.weight"]
    salts = [m.salt for copy in encoder.layers._children.values()
             for m in (copy.dropout, copy.dropout1, copy.dropout2, copy.self_attn._weights_dropout)]
    assert len(set(salts)) == len(salts)


def test_transformer_encoder_layer_causal(rng):
    torch = torch_or_skip()
    ours, theirs = make_encoder(torch, {})
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    got = compiled(lambda a: ours(a, is_causal=True), x)
    future = torch.nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        want = theirs(torch.tensor(x), src_mask=future, is_causal=True)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_transformer_encoder_layer_parameter_gradients_match_torch(rng):
    torch = torch_or_skip()
    ours, theirs = make_encoder(torch, dict(norm_first=True, activation="gelu"))
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    pad = np.zeros((2, 5), bool)
    pad[1, -1] = True
    w = rng.standard_normal((2, 5, 8)).astype(np.float32)

    def loss(params, a, p):
        return graphc.sum(ours.apply(params, a, src_key_padding_mask=p) * w)

    value, grads = graphc.value_and_grad(loss)(ours.parameters_tree(), x, pad)
    theirs.train()     # dropout is 0: train mode only turns off torch's inference fast path
    want = (theirs(torch.tensor(x), src_key_padding_mask=torch.tensor(pad)) *
            torch.tensor(w)).sum()
    want.backward()
    np.testing.assert_allclose(value, want.item(), rtol=1e-5, atol=1e-5)
    ours_in_torch_layout = clone_with(
        lambda: nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, norm_first=True,
                                           activation="gelu"), grads)
    for name, param in theirs.named_parameters():
        np.testing.assert_allclose(ours_in_torch_layout[name], param.grad.numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_transformer_encoder_layer_children_and_init_follow_torch():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, seed=5)
    assert list(layer._children) == ["self_attn", "linear1", "dropout", "linear2", "norm1",
                                     "norm2", "dropout1", "dropout2"]
    p = layer.named_parameters()
    assert np.abs(p["linear1.weight"]).max() <= 1 / np.sqrt(16)
    assert np.abs(p["linear1.bias"]).max() <= 1 / np.sqrt(16) and p["linear1.bias"].any()
    assert np.abs(p["linear2.weight"]).max() <= 1 / np.sqrt(32)
    np.testing.assert_array_equal(p["self_attn.in_proj_bias"], 0)
    with pytest.raises(ValueError, match="relu or gelu"):
        nn.TransformerEncoderLayer(16, 4, activation="swish")


def test_transformer_encoder_layer_trains_with_dropout(rng):
    from graphc import optim
    from graphc.nn.train import data_spec
    layer = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1), nn.Linear(8, 1))
    x = rng.standard_normal((4, 5, 8)).astype(np.float32)
    y = x[..., :1] * 2.0
    step = nn.TrainStep(layer, nn.mse, optim.Adam(1e-2), data_spec(x, "x"), data_spec(y, "y"))
    losses = [float(step(x, y)) for _ in range(30)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

