"""Scaled dot-product attention as a composite: matmul, a masked softmax, matmul. It adds no
primitive, so fusion sees (and may fuse) the pieces."""
from __future__ import annotations

import math

import numpy as np

from .. import api as G
from ..errors import DTypeError, ShapeError, TraceError
from ..ir.types import FLOATS, Dim, broadcast_shapes, fmt_shape
from ..trace import Tensor, apply, as_tensor, cast, user_location
from .flash import fused_attention

_OP = "scaled_dot_product_attention"


def _error(kind, message: str, fix: str | None = None):
    raise kind(f"{_OP}: {message}", op=_OP, loc=user_location(), fix=fix)


def safe_softmax(scores: Tensor, axis: int = -1) -> Tensor:
    """softmax along `axis`, but 0 (not NaN) on a slice that is entirely -inf (fully masked),
    as torch's scaled_dot_product_attention returns. The gradient there is 0 too."""
    top = G.max(scores, axis, keepdims=True)
    empty = G.equal(top, -np.inf)
    # a fully masked row would compute -inf - (-inf) = NaN; shift it by 0 instead
    e = G.exp(G.subtract(scores, G.where(empty, G.constant(0, scores.dtype), top)))
    total = G.sum(e, axis, keepdims=True)
    return G.divide(e, G.where(empty, G.constant(1, scores.dtype), total))


def _check_inputs(query: Tensor, key: Tensor, value: Tensor, grouped: bool = False) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dtype not in FLOATS:
            _error(DTypeError, f"{name} has dtype {t.dtype}; attention needs float32 or float64",
                   fix=f"convert {name} with .astype('float32')")
        if t.ndim < 2:
            _error(ShapeError, f"{name} must be (..., length, features), got shape "
                               f"{fmt_shape(t.shape)}", fix=f"reshape {name} to at least 2-D")
    if not query.dtype == key.dtype == value.dtype:
        _error(DTypeError, f"query, key and value must share a dtype, got {query.dtype}, "
                           f"{key.dtype} and {value.dtype}",
               fix="convert them to one float dtype with .astype(...)")
    shapes = f"query {fmt_shape(query.shape)}, key {fmt_shape(key.shape)}, value " \
             f"{fmt_shape(value.shape)}"
    if query.shape[-1] != key.shape[-1]:
        _error(ShapeError, f"query and key have different feature sizes E: {query.shape[-1]} != "
                           f"{key.shape[-1]} ({shapes})",
               fix="query (..., L, E) and key (..., S, E) must end in the same E")
    if key.shape[-2] != value.shape[-2]:
        _error(ShapeError, f"key and value have different lengths S: {key.shape[-2]} != "
                           f"{value.shape[-2]} ({shapes})",
               fix="key (..., S, E) and value (..., S, Ev) need one value row per key row")
    batch = -3 if grouped else -2     # grouped heads are checked by _grouped
    try:
        broadcast_shapes(query.shape[:batch], key.shape[:batch], value.shape[:batch])
    except ValueError as err:
        _error(ShapeError, f"the batch dimensions do not broadcast ({shapes}): {err}",
               fix="query, key and value need the same (or broadcastable) leading dims")


def _checked_mask(attn_mask, shape, dtype) -> Tensor:
    """attn_mask as a tensor that broadcasts to the weights' `shape`: bool, or float cast to
    `dtype`."""
    mask = as_tensor(attn_mask)
    try:
        fits = broadcast_shapes(mask.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        _error(ShapeError, f"attn_mask of shape {fmt_shape(mask.shape)} does not broadcast to "
                           f"the attention weights' shape {fmt_shape(shape)} (..., L, S)",
               fix="give a mask of shape (L, S), or (..., L, S) matching the batch dims")
    if mask.dtype == "bool":
        return mask
    if mask.dtype in FLOATS:
        return cast(mask, dtype)
    _error(DTypeError, f"attn_mask has dtype {mask.dtype}; it must be bool (True = attend) or "
                       f"float (added to the scores)",
           fix="use mask.astype('bool') for a keep-mask, or an additive float mask")


def _apply_mask(scores: Tensor, attn_mask) -> Tensor:
    """True (bool) keeps a score, False sets it to -inf; a float mask is added."""
    mask = _checked_mask(attn_mask, tuple(scores.shape), scores.dtype)
    if mask.dtype == "bool":
        return G.where(mask, scores, G.constant(-np.inf, scores.dtype))
    return G.add(scores, mask)


def _causal(scores: Tensor) -> Tensor:
    """The top-left aligned lower triangle (query i sees keys 0..i), as torch's is_causal.
    The mask is computed from coordinates (iota) inside the kernel that makes the scores,
    never stored."""
    length, source = scores.shape[-2:]
    rows = G.reshape(apply("iota", [], dtype="int64", shape=(length,)), (length, 1))
    cols = apply("iota", [], dtype="int64", shape=(source,))
    return G.where(G.less_equal(cols, rows), scores, G.constant(-np.inf, scores.dtype))


def _scale_factor(scale, query: Tensor):
    if scale is None:
        features = query.shape[-1]
        if isinstance(features, Dim):
            return G.rsqrt(G.size_of(query, (query.ndim - 1,), query.dtype))
        return 1.0 / math.sqrt(features)
    if not isinstance(scale, (int, float, np.integer, np.floating)) or isinstance(scale, bool):
        _error(TraceError, f"scale must be a number or None, got {scale!r}",
               fix="pass a Python float, or None for 1/sqrt(E)")
    return float(scale)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False) -> Tensor:
    """torch.nn.functional.scaled_dot_product_attention: softmax(q k^T * scale + mask) v.

    query (..., L, E), key (..., S, E), value (..., S, Ev) -> (..., L, Ev); leading dims
    broadcast. attn_mask broadcasts to (..., L, S): bool (True = attend) or float (added to
    the scores). is_causal masks key j > query i (top-left aligned, as torch). scale defaults
    to 1/sqrt(E). A row whose every key is masked gives 0, as torch 2.5+ does (not NaN).
    dropout_p must be 0: apply dropout in a layer (nn.MultiheadAttention does).
    enable_gqa=True: grouped-query attention, query (..., Hq, L, E) with key and value
    (..., H, S, E), each key/value head shared by Hq / H consecutive query heads.
    It runs as the fused attention kernel (ops/flash.py), which never stores the L x S
    scores; a symbolic E (the default scale computed at run time) or inputs of different
    ranks take matmul, a masked softmax row kernel and matmul instead.

        >>> out = graphc.scaled_dot_product_attention(q, k, v, is_causal=True)
        >>> out = graphc.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # bool (L, S)
    """
    query, key, value = as_tensor(query), as_tensor(key), as_tensor(value)
    _check_inputs(query, key, value, bool(enable_gqa))
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool) or dropout_p != 0:
        _error(TraceError, f"dropout_p={dropout_p!r} is not supported (it must be 0.0)",
               fix="pass is_causal and scale by keyword; for dropout on the weights use "
                   "nn.MultiheadAttention(dropout=p)")
    if is_causal not in (True, False):
        _error(TraceError, f"is_causal must be True or False, got {is_causal!r}")
    if is_causal and attn_mask is not None:
        _error(TraceError, "give attn_mask or is_causal=True, not both (as torch refuses)",
               fix="fold the causal mask into attn_mask (graphc.tril), or drop attn_mask")
    if enable_gqa:
        return _grouped(query, key, value, attn_mask, is_causal, scale)
    factor = _scale_factor(scale, query)
    if isinstance(factor, float) and query.ndim == key.ndim == value.ndim:
        # the fused kernel: the L x S scores are never stored
        mask = None
        if attn_mask is not None:
            batch = broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
            mask = _checked_mask(attn_mask, batch + (query.shape[-2], key.shape[-2]),
                                 query.dtype)
        return fused_attention(query, key, value, mask, scale=factor, causal=bool(is_causal))
    return G.matmul(attention_weights(query, key, attn_mask, is_causal, scale), value)


def _grouped(query, key, value, attn_mask, is_causal, scale) -> Tensor:
    """Grouped-query attention: query heads (H * G) as (H, G), key and value heads as (H, 1)."""
    if query.ndim < 3 or key.ndim < 3 or value.ndim < 3:
        _error(ShapeError, "enable_gqa needs (..., heads, length, features) inputs",
               fix="add a heads axis before the length axis")
    heads, kv_heads = query.shape[-3], key.shape[-3]
    if value.shape[-3] != kv_heads or isinstance(heads, Dim) or isinstance(kv_heads, Dim) or \
            heads % kv_heads:
        _error(ShapeError, f"enable_gqa: the query's {heads} heads must be a multiple of the "
                           f"key's and value's heads ({kv_heads} and {value.shape[-3]})",
               fix="give key and value the same number of heads, dividing the query's")
    group = heads // kv_heads
    length = query.shape[-2]
    q = G.reshape(query, tuple(query.shape[:-3]) + (kv_heads, group) + tuple(query.shape[-2:]))
    k = G.expand_dims(key, -3)
    v = G.expand_dims(value, -3)
    if attn_mask is not None:
        mask = as_tensor(attn_mask)
        if mask.ndim < 2:
            _error(ShapeError, f"attn_mask must be (..., L, S), got {fmt_shape(mask.shape)}")
        try:
            shape = broadcast_shapes(mask.shape, (heads,) + tuple(mask.shape[-2:]))
        except ValueError as err:
            _error(ShapeError, f"attn_mask of shape {fmt_shape(mask.shape)} does not fit the "
                               f"{heads} query heads: {err}",
                   fix="give a mask of shape (L, S), or (..., Hq, L, S)")
        mask = G.broadcast_to(mask, tuple(shape))
        mask = G.reshape(mask, tuple(mask.shape[:-3]) + (kv_heads, group) +
                         tuple(mask.shape[-2:]))
        attn_mask = mask
    out = G.matmul(attention_weights(q, k, attn_mask, is_causal, scale), v)
    return G.reshape(out, tuple(out.shape[:-4]) + (heads, length, out.shape[-1]))


def attention_weights(query: Tensor, key: Tensor, attn_mask=None, is_causal=False,
                      scale=None) -> Tensor:
    """softmax(query key^T * scale + mask) (..., L, S), masked as in
    scaled_dot_product_attention (whose checks the caller has made)."""
    factor = _scale_factor(scale, query)
    swap = tuple(range(key.ndim - 2)) + (key.ndim - 1, key.ndim - 2)
    scores = G.multiply(G.matmul(query, G.transpose(key, swap)), factor)
    if attn_mask is not None:
        scores = _apply_mask(scores, attn_mask)
    if is_causal:
        scores = _causal(scores)
    return safe_softmax(scores, -1)
