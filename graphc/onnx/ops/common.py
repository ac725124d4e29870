"""Helpers the handlers share: known values (numpy, sizes as ints and Dims) and tensors."""
from __future__ import annotations

import numpy as np

from ...ir.types import Dim
from ..importer import dtype_of, is_tensor


def all_known(*values) -> bool:
    return all(v is None or not is_tensor(v) for v in values)


def is_sizes(value) -> bool:
    """A known array holding symbolic sizes (object dtype)."""
    return not is_tensor(value) and np.asarray(value).dtype == object


def _size_add(a, b):
    if isinstance(a, Dim) or isinstance(b, Dim):
        if a == 0:
            return b
        if b == 0:
            return a
        if isinstance(a, Dim) and isinstance(b, Dim) and a.syms == b.syms:
            return _make(a.coef + b.coef, a.syms)
        raise ValueError(f"{a} + {b} is not a size graphc can express (a product of symbols)")
    return a + b


def _size_neg(a):
    return _make(-a.coef, a.syms) if isinstance(a, Dim) else -a


def _size_mul(a, b):
    if isinstance(a, Dim) or isinstance(b, Dim):
        return a * b if isinstance(a, Dim) else b * a
    return a * b


def _size_div(a, b):
    """Integer division of sizes (exact where symbolic; ints truncate toward zero)."""
    if isinstance(a, Dim):
        q = a.divide(b)
        if q is None:
            raise ValueError(f"{a} / {b} is not a size graphc can express")
        return q
    if isinstance(b, Dim):
        if a == 0:
            return 0
        raise ValueError(f"{a} / {b} is not a size graphc can express")
    if not b:
        return 0
    q = abs(int(a)) // abs(int(b))          # ONNX's integer Div truncates toward zero
    return q if (a < 0) == (b < 0) else -q


def _make(coef, syms):
    from ...ir.types import make_size
    return make_size(coef, syms)


SIZE_OPS = {
    "Add": np.frompyfunc(_size_add, 2, 1),
    "Sub": np.frompyfunc(lambda a, b: _size_add(a, _size_neg(b)), 2, 1),
    "Mul": np.frompyfunc(_size_mul, 2, 1),
    "Div": np.frompyfunc(_size_div, 2, 1),
    "Neg": np.frompyfunc(_size_neg, 1, 1),
}


def sizes_array(values) -> np.ndarray:
    """A 1-d array of sizes: int64 when every one is an int, else object (ints and Dims)."""
    values = list(values)
    if all(not isinstance(v, Dim) for v in values):
        return np.array([int(v) for v in values], np.int64)
    out = np.empty(len(values), object)
    for i, v in enumerate(values):
        out[i] = v if isinstance(v, Dim) else int(v)
    return out


def simplify_sizes(arr: np.ndarray) -> np.ndarray:
    """An object array whose entries are all ints again becomes int64."""
    if arr.dtype == object and not any(isinstance(v, Dim) for v in arr.reshape(-1)):
        return arr.astype(np.int64)
    return arr


def axis_of(axis: int, ndim: int, node, what: str = "axis") -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise node.error(f"{what} {axis} is out of range for a rank-{ndim} input")
    return axis % ndim if ndim else 0


def same_dtype(*values) -> str:
    return dtype_of(values[0])
