"""Attention layers with PyTorch's parameter names, shapes and semantics, so a torch
state_dict loads as it is (Module.load_state_dict)."""
from __future__ import annotations

import copy
import math

import numpy as np

from .. import api
from ..errors import DTypeError, ShapeError
from ..ir.types import fmt_shape
from ..ops.attention import attention_weights
from ..trace import Tensor, as_tensor, user_location
from .modules import Dropout, LayerNorm, Linear, Module, Sequential, _rng, init_weight


def _torch_linear(in_features: int, out_features: int, bias: bool, rng) -> Linear:
    """A Linear initialized as torch.nn.Linear: weight and bias U(-1/sqrt(in), 1/sqrt(in))."""
    layer = Linear(in_features, out_features, bias=bias, init="uniform", seed=rng)
    if bias:
        bound = 1.0 / math.sqrt(in_features)
        layer._params["bias"][...] = rng.uniform(-bound, bound, out_features)
    return layer


def _error(kind, layer: str, message: str, fix: str | None = None):
    raise kind(f"{layer}: {message}", loc=user_location(), fix=fix)


def _additive(mask, dtype: str, what: str) -> Tensor:
    """A torch-style mask as a float mask to add to the scores: bool True means "masked"
    (-inf), a float mask is added as it is."""
    mask = as_tensor(mask)
    if mask.dtype == "bool":
        return api.where(mask, api.constant(-np.inf, dtype), api.constant(0, dtype))
    if mask.dtype in ("float32", "float64"):
        return api.astype(mask, dtype)
    _error(DTypeError, "MultiheadAttention", f"{what} has dtype {mask.dtype}; it must be bool "
                       f"(True = masked) or float (added to the scores)",
           fix=f"convert {what} with .astype('bool')")


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention: num_heads heads of scaled dot-product attention.

    query (N, L, E), key (N, S, kdim), value (N, S, vdim) with batch_first=True (the
    default here; torch's is False), else (L, N, E); unbatched (L, E) works too. Returns
    (output (N, L, E), weights (N, L, S) averaged over heads, or (N, H, L, S), or None).
    Parameters as torch: in_proj_weight (3E, E) (or q/k/v_proj_weight when kdim or vdim
    differ from E), in_proj_bias (3E,), out_proj (a Linear). A query whose every key is
    masked gets zero weights and a zero attention output (torch's need_weights path: NaN).

        >>> mha = nn.MultiheadAttention(64, 8)
        >>> out, weights = mha(x, x, x, key_padding_mask=pad)    # pad (N, S) bool, True = pad
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = True, add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: int | None = None, vdim: int | None = None, seed=0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} must be divisible by "
                             f"num_heads {num_heads}")
        if add_bias_kv or add_zero_attn:
            raise ValueError("MultiheadAttention: add_bias_kv and add_zero_attn are not "
                             "supported")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self.batch_first, self.dropout = bool(batch_first), float(dropout)
        self._weights_dropout = Dropout(dropout)    # no parameters: not a child (as torch)
        rng = _rng(seed)
        e = self.embed_dim
        self.same_dims = self.kdim == e and self.vdim == e
        if self.same_dims:
            self.add_param("in_proj_weight", init_weight((3 * e, e), e, 3 * e,
                                                         "xavier_uniform", rng))
        else:
            for name, d in (("q", e), ("k", self.kdim), ("v", self.vdim)):
                self.add_param(f"{name}_proj_weight", init_weight((e, d), d, e,
                                                                  "xavier_uniform", rng))
        if bias:
            self.add_param("in_proj_bias", np.zeros(3 * e))
        self.out_proj = self.add_child("out_proj", Linear(e, e, bias=bias, init="uniform",
                                                          seed=rng))

    def _project(self, x: Tensor, which: int, features: int, what: str) -> Tensor:
        """x @ W_which^T + b_which for which in 0 (query), 1 (key), 2 (value)."""
        if x.shape[-1] != features:
            _error(ShapeError, "MultiheadAttention", f"{what} has shape {fmt_shape(x.shape)}: "
                               f"last dim {x.shape[-1]} != {features}",
                   fix=f"{what} must end in {features} features (embed_dim, kdim or vdim)")
        e = self.embed_dim
        if self.same_dims:
            w = self.param("in_proj_weight")[which * e:(which + 1) * e]
        else:
            w = self.param(("q", "k", "v")[which] + "_proj_weight")
        y = x @ api.transpose(w)
        if "in_proj_bias" in self._params:
            y = y + self.param("in_proj_bias")[which * e:(which + 1) * e]
        return y

    def _heads(self, x: Tensor) -> Tensor:
        """(N, T, E) -> (N, H, T, D)."""
        n, t = x.shape[0], x.shape[1]
        return api.transpose(api.reshape(x, (n, t, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def _mask(self, attn_mask, key_padding_mask, is_causal, n, length, source, dtype):
        """One additive float mask (N, H, L, S) (or broadcastable), or None."""
        if attn_mask is None and is_causal:
            ones = api.broadcast_to(api.constant(True), (length, source))
            attn_mask = api.logical_not(api.tril(ones))
        total = None
        if attn_mask is not None:
            mask = as_tensor(attn_mask)
            if tuple(mask.shape) == (length, source):
                total = _additive(mask, dtype, "attn_mask")
            elif tuple(mask.shape) == (n * self.num_heads, length, source):
                total = api.reshape(_additive(mask, dtype, "attn_mask"),
                                    (n, self.num_heads, length, source))
            else:
                _error(ShapeError, "MultiheadAttention", f"attn_mask has shape "
                                   f"{fmt_shape(mask.shape)}, not (L, S) = ({length}, {source}) "
                                   f"or (N * num_heads, L, S) = ({n * self.num_heads}, {length}, "
                                   f"{source})", fix="give one mask for all heads, (L, S)")
        if key_padding_mask is not None:
            pad = as_tensor(key_padding_mask)
            if tuple(pad.shape) != (n, source):
                _error(ShapeError, "MultiheadAttention", f"key_padding_mask has shape "
                                   f"{fmt_shape(pad.shape)}, not (N, S) = ({n}, {source})",
                       fix="one row per batch item, True at the padded key positions")
            pad = api.reshape(_additive(pad, dtype, "key_padding_mask"), (n, 1, 1, source))
            total = pad if total is None else total + pad
        return total

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        """(output, weights or None), as torch's forward; is_causal without attn_mask masks
        the future keys (torch needs the mask too and takes is_causal as a hint)."""
        unbatched = query.ndim == 2
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            _error(ShapeError, "MultiheadAttention", f"query, key and value must all be 3-D "
                               f"(batched) or 2-D (unbatched), got {fmt_shape(query.shape)}, "
                               f"{fmt_shape(key.shape)} and {fmt_shape(value.shape)}")
        if unbatched:
            query, key, value = (api.expand_dims(t, 0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = api.expand_dims(as_tensor(key_padding_mask), 0)
        elif not self.batch_first:
            query, key, value = (api.transpose(t, (1, 0, 2)) for t in (query, key, value))
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            _error(ShapeError, "MultiheadAttention", f"key {fmt_shape(key.shape)} and value "
                               f"{fmt_shape(value.shape)} must share (N, S), and query "
                               f"{fmt_shape(query.shape)} the batch size N (batch_first="
                               f"{self.batch_first})")
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        q = self._heads(self._project(query, 0, self.embed_dim, "query"))
        k = self._heads(self._project(key, 1, self.kdim, "key"))
        v = self._heads(self._project(value, 2, self.vdim, "value"))
        mask = self._mask(attn_mask, key_padding_mask, is_causal, n, length, source, q.dtype)
        weights = attention_weights(q, k, mask)
        weights = self._weights_dropout(weights)
        heads = api.transpose(weights @ v, (0, 2, 1, 3))           # (N, L, H, D)
        out = self.out_proj(api.reshape(heads, (n, length, self.embed_dim)))
        if unbatched:
            out = api.squeeze(out, 0)
        elif not self.batch_first:
            out = api.transpose(out, (1, 0, 2))
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = api.mean(weights, 1)
        return out, (api.squeeze(weights, 0) if unbatched else weights)


_ACTIVATIONS = {"relu": api.relu, "gelu": api.gelu}


class TransformerEncoderLayer(Module):
    """torch.nn.TransformerEncoderLayer: self-attention and a feed-forward block, each with a
    residual connection and a LayerNorm (after it, or before it with norm_first=True).

    src (N, S, d_model) with batch_first=True (the default here; torch's is False), else
    (S, N, d_model). Children as torch: self_attn, linear1, dropout, linear2, norm1, norm2,
    dropout1, dropout2; linear1/linear2 are initialized as torch.nn.Linear.

        >>> layer = nn.TransformerEncoderLayer(64, 8, dim_feedforward=256, dropout=0.0)
        >>> y = layer(x, src_key_padding_mask=pad)        # (N, S, 64) -> (N, S, 64)
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation="relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = True, norm_first: bool = False, bias: bool = True, seed=0):
        super().__init__()
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"TransformerEncoderLayer: activation should be relu or gelu, "
                                 f"not {activation!r}")
            activation = _ACTIVATIONS[activation]
        elif not callable(activation):
            raise ValueError(f"TransformerEncoderLayer: activation must be 'relu', 'gelu' or a "
                             f"callable, got {activation!r}")
        self.activation, self.norm_first = activation, bool(norm_first)
        self.batch_first = bool(batch_first)
        rng = _rng(seed)
        self.self_attn = self.add_child("self_attn", MultiheadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=True, seed=rng))
        self.linear1 = self.add_child("linear1", _torch_linear(d_model, dim_feedforward, bias,
                                                               rng))
        self.dropout = self.add_child("dropout", Dropout(dropout))
        self.linear2 = self.add_child("linear2", _torch_linear(dim_feedforward, d_model, bias,
                                                               rng))
        self.norm1 = self.add_child("norm1", LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        self.norm2 = self.add_child("norm2", LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        self.dropout1 = self.add_child("dropout1", Dropout(dropout))
        self.dropout2 = self.add_child("dropout2", Dropout(dropout))

    def _attention_block(self, x, attn_mask, key_padding_mask, is_causal):
        out, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False,
                                attn_mask=attn_mask, is_causal=is_causal)
        return self.dropout1(out)

    def _feed_forward_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False):
        x = src
        if not self.batch_first and x.ndim == 3:
            x = api.transpose(x, (1, 0, 2))
        if self.norm_first:
            x = x + self._attention_block(self.norm1(x), src_mask, src_key_padding_mask,
                                          is_causal)
            x = x + self._feed_forward_block(self.norm2(x))
        else:
            x = self.norm1(x + self._attention_block(x, src_mask, src_key_padding_mask,
                                                     is_causal))
            x = self.norm2(x + self._feed_forward_block(x))
        if not self.batch_first and x.ndim == 3:
            x = api.transpose(x, (1, 0, 2))
        return x


def _with_own_dropout_streams(module: Module) -> Module:
    """Gives every Dropout inside a copied module a new stream, so the copies' masks differ."""
    stack, seen = [module], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if isinstance(m, Dropout):
            Dropout._count += 1
            m.salt = Dropout._count * 0x9E3779B9
        stack.extend(v for v in vars(m).values() if isinstance(v, Module))
        stack.extend(m._children.values())
    return module


class TransformerEncoder(Module):
    """torch.nn.TransformerEncoder: num_layers copies of encoder_layer (each with its own
    weights, equal at the start, as torch's deep copies), then `norm` if given. Children as
    torch: layers.0, layers.1, ..., norm.

        >>> encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 8), num_layers=4)
        >>> y = encoder(x, src_key_padding_mask=pad)     # (N, S, 64) -> (N, S, 64)
    """

    def __init__(self, encoder_layer: Module, num_layers: int, norm: Module | None = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True):
        super().__init__()
        if not isinstance(encoder_layer, Module):
            raise TypeError(f"TransformerEncoder: encoder_layer must be a graphc.nn.Module, got "
                            f"{type(encoder_layer).__name__}")
        copies = [_with_own_dropout_streams(copy.deepcopy(encoder_layer))
                  for _ in range(int(num_layers))]
        self.layers = self.add_child("layers", Sequential(*copies))
        self.norm = self.add_child("norm", norm) if norm is not None else None

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        """is_causal=True without a mask masks the future keys in every layer."""
        x = src
        for layer in self.layers._children.values():
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal))
        return self.norm(x) if self.norm is not None else x
