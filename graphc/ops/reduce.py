"""Reductions over a set of axes (numpy's axis/keepdims)."""
from __future__ import annotations

import numpy as np

from ..ir.types import NUMERIC, TensorType
from .. import api as G
from .registry import REDUCE, defop


def _keep(t, x, axis, keepdims):
    """A reduced value reshaped to keepdims form, so it broadcasts against x."""
    if keepdims:
        return t
    return G.reshape(t, tuple(1 if i in axis else d for i, d in enumerate(x.shape)))


def _sum_vjp(g, y, x, axis, keepdims):
    return [G.broadcast_to(_keep(g, x, axis, keepdims), x.shape)]


def _select_vjp(g, y, x, axis, keepdims):
    # the gradient goes to the elements equal to the max (min), split evenly between ties
    hit = G.astype(G.equal(x, _keep(y, x, axis, keepdims)), x.dtype)
    return [_keep(g, x, axis, keepdims) * hit / G.sum(hit, axis, keepdims=True)]


def reduce_infer(types, axis, keepdims):
    (x,) = types
    for a in axis:
        if not 0 <= a < x.rank:
            raise ValueError(f"axis {a} is out of range for rank {x.rank}")
    if keepdims:
        shape = tuple(1 if i in axis else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axis)
    return TensorType(shape, x.dtype)


def _ref(fn):
    def run(x, axis, keepdims):
        with np.errstate(all="ignore"):
            return np.asarray(fn(x, axis=axis, keepdims=keepdims))
    return run


def _lowest(dtype):
    return -np.inf if dtype.startswith("float") else int(np.iinfo(dtype).min)


def _highest(dtype):
    return np.inf if dtype.startswith("float") else int(np.iinfo(dtype).max)


sum_ = defop("sum", REDUCE, arity=1, dtypes=NUMERIC, infer=reduce_infer, reference=_ref(np.sum),
             identity=lambda dtype: 0, combine=lambda e, acc, x: e.add(acc, x, reduction=True),
             compensated=True, vjp=_sum_vjp)
max_ = defop("max", REDUCE, arity=1, dtypes=NUMERIC, infer=reduce_infer, reference=_ref(np.max),
             identity=_lowest, combine=lambda e, acc, x: e.maximum(acc, x, reduction=True),
             vjp=_select_vjp)
min_ = defop("min", REDUCE, arity=1, dtypes=NUMERIC, infer=reduce_infer, reference=_ref(np.min),
             identity=_highest, combine=lambda e, acc, x: e.minimum(acc, x, reduction=True),
             vjp=_select_vjp)
