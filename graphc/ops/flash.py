"""The fused attention primitive: out = softmax(q k^T * scale + mask) v in one kernel.

Inputs q (..., L, E), the keys transposed kt (..., E, S) (so the kernel reads a block of keys'
scores as contiguous vectors), v (..., S, Ev), and optionally a mask broadcastable to
(..., L, S): bool (True: attend) or additive (float); the batch axes broadcast. attrs: scale,
causal (key j attends to query i only where j <= i, as torch's is_causal), mask ("none",
"bool" or "add").

The kernel (codegen/builder.build_attention) takes one query row at a time and walks the keys
in blocks, keeping the running maximum, the running sum and the output row (online softmax,
as flash attention does): no L x S score matrix is ever stored. A row whose every key is
masked gives zeros, as PyTorch (2.5 and later) does. The VJP recomputes the probabilities
with ordinary graph ops (so the backward materializes them per call, but the forward never
stores them).
"""
from __future__ import annotations

import numpy as np

from ..ir.types import FLOATS, TensorType, broadcast_shapes, fmt_shape
from ..trace import apply
from .. import api as G
from .registry import ATTENTION, defop

MASKS = ("none", "bool", "add")


def _infer(types, scale, causal, mask):
    q, k, v = types[:3]
    if q.dtype not in FLOATS:
        raise ValueError(f"q, k and v must be float32 or float64, got {q.dtype}")
    if any(t.dtype != q.dtype for t in (k, v)):
        raise ValueError(f"q, k and v must share a dtype: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise ValueError(f"q {fmt_shape(q.shape)}, k {fmt_shape(k.shape)} and v "
                         f"{fmt_shape(v.shape)} must have the same rank (>= 2)")
    if q.shape[-1] != k.shape[-2]:
        raise ValueError(f"the query and key sizes differ: E = {q.shape[-1]} vs {k.shape[-2]}")
    if k.shape[-1] != v.shape[-2]:
        raise ValueError(f"keys and values differ in length: S = {k.shape[-1]} vs "
                         f"{v.shape[-2]}")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    L, S = q.shape[-2], k.shape[-1]
    if mask != "none":
        m = types[3]
        want = "bool" if mask == "bool" else q.dtype
        if m.dtype != want:
            raise ValueError(f"a {mask} mask must be {want}, got {m.dtype}")
        if broadcast_shapes(m.shape, batch + (L, S)) != batch + (L, S):
            raise ValueError(f"the mask {fmt_shape(m.shape)} does not broadcast to the scores "
                             f"{fmt_shape(batch + (L, S))}")
    return TensorType(batch + (L, v.shape[-1]), q.dtype)


def scores(q, kt, scale, causal, mask_kind, mask=None, xp=np):
    """The masked, scaled scores (numpy arrays or graph tensors alike)."""
    s = xp.matmul(q, kt) * scale
    L, S = q.shape[-2], kt.shape[-1]
    neg = -np.inf
    if causal:
        keep = np.tril(np.ones((L, S), bool))
        s = xp.where(keep, s, neg) if xp is np else G.where(G.constant(keep), s, neg)
    if mask_kind == "bool":
        s = xp.where(mask, s, neg) if xp is np else G.where(mask, s, neg)
    elif mask_kind == "add":
        s = s + mask
    return s


def _ref(q, k, v, *m, scale, causal, mask):
    with np.errstate(all="ignore"):
        s = scores(q, k, scale, causal, mask, m[0] if m else None)
        top = s.max(-1, keepdims=True)
        p = np.exp(s - np.where(np.isneginf(top), 0, top))
        total = p.sum(-1, keepdims=True)
        p = p / np.where(total == 0, 1, total)
        return np.ascontiguousarray(np.matmul(p, v).astype(q.dtype))


def probabilities(q, k, scale, causal, mask_kind, mask=None):
    """softmax of the scores as graph ops (fully masked rows: zeros, as the kernel)."""
    from ..autodiff import stop_gradient
    s = scores(q, k, scale, causal, mask_kind, mask, xp=G)
    top = stop_gradient(G.max(s, -1, keepdims=True))
    e = G.exp(s - G.where(top == -np.inf, 0.0, top))
    total = G.sum(e, -1, keepdims=True)
    return e / G.where(total == 0.0, 1.0, total)


def _vjp(g, y, q, k, v, *m, scale, causal, mask):
    p = probabilities(q, k, scale, causal, mask, m[0] if m else None)
    def swap(t):
        return G.transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))
    dv = G.matmul(swap(p), g)
    dp = G.matmul(g, swap(v))
    ds = p * (dp - G.sum(dp * p, -1, keepdims=True))
    ds = G.where(p == 0.0, 0.0, ds)         # masked entries: no gradient (and no 0 * inf)
    dq = G.matmul(ds, swap(k)) * scale
    dk = G.matmul(swap(q), ds) * scale          # the gradient of kt (..., E, S)
    grads = [dq, dk, dv]
    if m:
        grads.append(ds if mask == "add" else None)
    return grads


attention = defop("attention", ATTENTION, arity=None, dtypes=FLOATS + ("bool",), infer=_infer,
                  reference=_ref, vjp=_vjp,
                  fix="q (..., L, E), kt (..., E, S), v (..., S, Ev); a mask broadcastable "
                      "to (..., L, S)")


def fused_attention(q, k, v, mask=None, scale=1.0, causal=False):
    """The primitive, for graphc.scaled_dot_product_attention: mask None, a bool tensor or
    an additive float tensor."""
    kind = "none" if mask is None else ("bool" if mask.dtype == "bool" else "add")
    kt = G.transpose(k, tuple(range(k.ndim - 2)) + (k.ndim - 1, k.ndim - 2))
    inputs = [q, kt, v] + ([mask] if mask is not None else [])
    return apply("attention", inputs, scale=float(scale), causal=bool(causal), mask=kind)


__all__ = ["fused_attention", "probabilities", "MASKS"]
