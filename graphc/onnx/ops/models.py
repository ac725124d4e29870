"""ONNX ops that exported PyTorch models use and no other family imports (yet)."""
from __future__ import annotations

import numpy as np

from ... import api
from ..importer import onnx_op
from .common import all_known, is_sizes


@onnx_op("Mod")
def _mod(node, a, b):
    """fmod=0: the remainder takes the divisor's sign (Python's %, integers only in ONNX);
    fmod=1: the dividend's sign (C's fmod). torch.onnx emits it on known sizes (an exported
    MultiheadAttention computes 2 % 3 for a Slice bound)."""
    fmod = bool(node.attr("fmod", 0))
    if all_known(a, b) and not (is_sizes(a) or is_sizes(b)):
        with np.errstate(all="ignore"):
            fn = np.fmod if fmod else np.mod
            return np.asarray(fn(np.asarray(a), np.asarray(b)))
    a, b = node.tensor(a), node.tensor(b)
    if a.dtype not in ("int32", "int64"):
        raise node.error(f"fmod={int(fmod)} on {a.dtype} values computed at run time (graphc "
                         f"has no exact float remainder); known values fold at import",
                         fix="make the operands initializers or constants")
    if not fmod:
        return api.subtract(a, api.multiply(api.floor_divide(a, b), b))
    # C's fmod: |a| mod |b| with the sign of a
    size_a, size_b = api.abs(a), api.abs(b)
    r = api.subtract(size_a, api.multiply(api.floor_divide(size_a, size_b), size_b))
    return api.where(api.less(a, 0), api.negative(r), r)
