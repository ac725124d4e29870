"""Transformer-block ONNX ops: Attention, RotaryEmbedding, SwiGLU.

Attention (opsets 23-25), composed: Q K^T, the additive bias (mask, causal frontier,
sliding window, key padding), softcap, a softmax whose fully masked rows are 0, then @ V.

Q, K, V are (B, heads, S, head_size), or (B, S, heads * head_size) with q_num_heads and
kv_num_heads; fewer key/value heads than query heads are repeated (grouped-query attention);
past_key/past_value are prepended to K and V (the present_key/present_value outputs).
"""
from __future__ import annotations

import numpy as np

from ... import api
from ...ir.types import Dim
from ...trace import apply, constant
from ..importer import DTYPES, onnx_op


def _heads(node, t, heads, what):
    """(B, S, heads * size) -> (B, heads, S, size)."""
    if heads is None:
        raise node.error(f"3-D {what} needs q_num_heads and kv_num_heads")
    b, s, hidden = t.shape
    if isinstance(hidden, Dim) or hidden % heads:
        raise node.error(f"{what}'s hidden size {hidden} does not split into {heads} heads")
    return api.transpose(api.reshape(t, (b, s, heads, hidden // heads)), (0, 2, 1, 3))


def _positions(n):
    return apply("iota", [], dtype="int64", shape=(n,))


def _allowed_bias(allowed, dtype):
    """0 where attending is allowed, -inf elsewhere."""
    zero = constant(np.zeros((), dtype))
    return api.where(allowed, zero, constant(np.full((), -np.inf, dtype)))


def _frontier_diff(q_len, kv_len, offset):
    """i + offset - j for query i and key j: (q, kv), or (B, 1, q, kv) for a per-batch
    offset (a tensor of shape (B,))."""
    i = api.reshape(_positions(q_len), (q_len, 1))
    j = api.reshape(_positions(kv_len), (1, kv_len))
    if isinstance(offset, int):
        return i + offset - j
    return api.reshape(offset, (-1, 1, 1, 1)) + i - j


@onnx_op("Attention")
def _attention(node, q, k, v, mask=None, past_key=None, past_value=None, kv_lens=None):
    q = node.tensor(q)
    dtype = q.dtype
    k, v = node.tensor(k, dtype), node.tensor(v, dtype)
    if not q.ndim == k.ndim == v.ndim or q.ndim not in (3, 4):
        raise node.error(f"Q {tuple(q.shape)}, K {tuple(k.shape)}, V {tuple(v.shape)} must "
                         f"all be 3-D or all 4-D")
    three_d = q.ndim == 3
    if three_d:
        kv_heads = node.attr("kv_num_heads")
        q = _heads(node, q, node.attr("q_num_heads"), "Q")
        k, v = _heads(node, k, kv_heads, "K"), _heads(node, v, kv_heads, "V")
    if (past_key is None) != (past_value is None):
        raise node.error("past_key and past_value come together")
    if past_key is not None:
        k = api.concatenate([node.tensor(past_key, dtype), k], 2)
        v = api.concatenate([node.tensor(past_value, dtype), v], 2)
    present_k, present_v = k, v
    q_heads, kv_heads = q.shape[1], k.shape[1]
    if q_heads != kv_heads:
        if isinstance(q_heads, Dim) or isinstance(kv_heads, Dim) or q_heads % kv_heads:
            raise node.error(f"{q_heads} query heads do not share {kv_heads} key/value heads")
        k, v = (_repeat_heads(t, q_heads // kv_heads) for t in (k, v))
    q_len, kv_len = q.shape[2], k.shape[2]
    bias = _bias(node, mask, kv_lens, q_len, kv_len,
                 0 if past_key is None else node.tensor(past_key).shape[2], dtype)

    scale = node.attr("scale")
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else float(scale)
    root = float(np.sqrt(scale))     # on each side, as ONNX's reference
    scores = api.matmul(q * root, api.transpose(k * root, (0, 1, 3, 2)))
    softcap = float(node.attr("softcap", 0.0) or 0.0)
    if softcap > 0:
        scores = api.tanh(scores / softcap) * softcap
    with_bias = scores if bias is None else scores + bias
    mode = int(node.attr("qk_matmul_output_mode", 0))
    precision = node.attr("softmax_precision")
    weights = with_bias
    if precision is not None and DTYPES.get(int(precision), dtype) != dtype:
        weights = weights.astype(DTYPES[int(precision)])
    weights = _masked_softmax(weights, bias)
    if weights.dtype != dtype:
        weights = weights.astype(dtype)
    y = api.matmul(weights, v)
    if three_d:
        b, heads, s, size = y.shape
        y = api.reshape(api.transpose(y, (0, 2, 1, 3)), (b, s, heads * size))
    qk_out = {2: with_bias, 3: weights}.get(mode, scores)
    return y, present_k, present_v, qk_out


def _repeat_heads(t, reps):
    """(B, H, S, D) -> (B, H * reps, S, D), each head repeated reps times in place."""
    b, h, s, d = t.shape
    wide = api.broadcast_to(api.reshape(t, (b, h, 1, s, d)), (b, h, reps, s, d))
    return api.reshape(wide, (b, h * reps, s, d))


def _bias(node, mask, kv_lens, q_len, kv_len, past_len, dtype):
    """The additive bias (broadcasting to (B, H, q, kv)), or None when nothing is masked."""
    bias = None
    if mask is not None:
        mask = node.tensor(mask)
        width = mask.shape[-1]
        if width != kv_len and (isinstance(width, Dim) or isinstance(kv_len, Dim)):
            raise node.error(f"attn_mask {tuple(mask.shape)} is narrower than the {kv_len} "
                             f"keys by a symbolic size", fix="give the mask every key")
        short = 0 if width == kv_len else kv_len - width
        if short > 0:       # a mask shorter than the keys masks the rest
            fill = 0 if mask.dtype == "bool" else -np.inf
            mask = api.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, short)], value=fill)
        bias = _allowed_bias(mask, dtype) if mask.dtype == "bool" else mask.astype(dtype) \
            if mask.dtype != dtype else mask
    lens = None if kv_lens is None else node.tensor(kv_lens, "int64")
    # the frontier of causal and window masks: the cache length, or each batch's keys
    offset = past_len if lens is None or past_len else lens - q_len
    if node.attr("is_causal", 0):
        causal = _allowed_bias(api.greater_equal(_frontier_diff(q_len, kv_len, offset), 0),
                               dtype)
        bias = causal if bias is None else bias + causal
    left = int(node.attr("left_window_size", -1))
    right = int(node.attr("right_window_size", -1))
    if left >= 0 or right >= 0:
        diff = _frontier_diff(q_len, kv_len, offset)
        allowed = None
        if left >= 0:
            allowed = api.less_equal(diff, left)
        if right >= 0:
            inside = api.greater_equal(diff, -right)
            allowed = inside if allowed is None else api.logical_and(allowed, inside)
        window = _allowed_bias(allowed, dtype)
        bias = window if bias is None else bias + window
    if lens is not None:
        keys = api.reshape(_positions(kv_len), (1, 1, 1, kv_len))
        padding = _allowed_bias(api.less(keys, api.reshape(lens, (-1, 1, 1, 1))), dtype)
        bias = padding if bias is None else bias + padding
    return bias


def _masked_softmax(x, bias):
    """softmax over the last axis; a row whose bias is -inf everywhere is 0."""
    top = api.max(x, -1, keepdims=True)
    minus_inf = constant(np.full((), -np.inf, x.dtype))
    zero = constant(np.zeros((), x.dtype))
    e = api.exp(x - api.where(api.equal(top, minus_inf), zero, top))
    total = api.sum(e, -1, keepdims=True)
    out = e / api.where(api.equal(total, zero), constant(np.ones((), x.dtype)), total)
    if bias is None:
        return out
    blocked = api.equal(api.max(bias.astype(x.dtype), -1, keepdims=True), minus_inf)
    return api.where(blocked, zero, out)


@onnx_op("RotaryEmbedding")
def _rotary_embedding(node, x, cos, sin, position_ids=None):
    """Rotates the first rotary_embedding_dim features of each head by the angles whose
    cosines and sines the caches hold (per position, or looked up by position_ids): pairs
    (x1, x2) -> (cos x1 - sin x2, sin x1 + cos x2), the pairs being the two halves, or
    (interleaved) neighbours."""
    from ...ops.indexing import take
    x = node.tensor(x)
    if x.ndim == 4:                                   # (B, H, S, D) -> (B, S, H, D)
        heads = api.transpose(x, (0, 2, 1, 3))
    elif x.ndim == 3:
        b, s, hidden = x.shape
        num_heads = int(node.attr("num_heads", 0))
        if not num_heads or isinstance(hidden, Dim) or hidden % num_heads:
            raise node.error(f"a 3-D input {tuple(x.shape)} needs num_heads dividing its "
                             f"hidden size")
        heads = api.reshape(x, (b, s, num_heads, hidden // num_heads))
    else:
        raise node.error(f"input {tuple(x.shape)} must be (B, H, S, D) or (B, S, hidden)")
    size = heads.shape[3]
    dim = int(node.attr("rotary_embedding_dim", 0)) or size
    half = dim // 2
    cos, sin = node.tensor(cos, x.dtype), node.tensor(sin, x.dtype)
    if position_ids is not None:
        ids = node.tensor(position_ids, "int64")
        cos, sin = take(cos, ids, axis=0), take(sin, ids, axis=0)
    if cos.shape[-1] != half or sin.shape[-1] != half:
        raise node.error(f"the caches' last size {cos.shape[-1]} is not "
                         f"rotary_embedding_dim / 2 = {half}")
    cos, sin = api.expand_dims(cos, 2), api.expand_dims(sin, 2)     # (B, S, 1, half)
    rotated = heads[:, :, :, :dim]
    lead = tuple(rotated.shape[:3])
    if node.attr("interleaved", 0):
        pairs = api.reshape(rotated, lead + (half, 2))
        x1, x2 = pairs[:, :, :, :, 0], pairs[:, :, :, :, 1]
    else:
        x1, x2 = rotated[:, :, :, :half], rotated[:, :, :, half:]
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if node.attr("interleaved", 0):
        rotated = api.reshape(api.concatenate([api.expand_dims(real, 4),
                                               api.expand_dims(imag, 4)], 4), lead + (dim,))
    else:
        rotated = api.concatenate([real, imag], 3)
    if dim < size:
        rotated = api.concatenate([rotated, heads[:, :, :, dim:]], 3)
    if x.ndim == 3:
        return api.reshape(rotated, tuple(x.shape))
    return api.transpose(rotated, (0, 2, 1, 3))


@onnx_op("SwiGLU")
def _swiglu(node, a, b):
    """a * sigmoid(alpha * a) * b (a and b of one shape)."""
    a = node.tensor(a)
    b = node.tensor(b, a.dtype)
    if tuple(a.shape) != tuple(b.shape):
        raise node.error(f"A {tuple(a.shape)} and B {tuple(b.shape)} must have one shape")
    alpha = float(node.attr("alpha", 1.0))
    return a * api.sigmoid(a * alpha if alpha != 1.0 else a) * b
