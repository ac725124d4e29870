"""Matrix products."""
from __future__ import annotations

import numpy as np

from ..ir.types import NUMERIC, TensorType, broadcast_shapes, fmt_shape
from .. import api as G
from .registry import MATMUL, defop


def _swap(t):
    return G.transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))


def _matmul_vjp(g, y, a, b):
    # dA = G B^T, dB = A^T G; broadcast batch dims are summed back by autodiff
    da = G.matmul(g, _swap(b))
    if b.ndim == 2 and a.ndim > 2:
        # b is shared by every batch: dB = sum_i A_i^T G_i is one matmul over the batch rows
        # (A's rows stacked, contracted at once), not a batch of products and then a sum
        k, n = a.shape[-1], g.shape[-1]
        return [da, G.matmul(G.transpose(G.reshape(a, (-1, k)), (1, 0)), G.reshape(g, (-1, n)))]
    return [da, G.matmul(_swap(a), g)]


def _matmul_infer(types):
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise ValueError("the matmul primitive needs operands of rank >= 2")
    if a.dtype != b.dtype:
        raise ValueError(f"operands must share a dtype after promotion: {a.dtype} vs {b.dtype}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"inner dimensions differ: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}, "
                         f"{a.shape[-1]} != {b.shape[-2]}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (a.shape[-2], b.shape[-1]), a.dtype)


def _matmul_reference(a, b):
    with np.errstate(all="ignore"):
        return np.matmul(a, b)


matmul = defop("matmul", MATMUL, arity=2, dtypes=NUMERIC, infer=_matmul_infer,
               reference=_matmul_reference, vjp=_matmul_vjp,
               fix="the last dim of the left operand must equal the second-to-last of the "
                   "right; check the layer sizes, or transpose an operand")
