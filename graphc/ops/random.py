"""Counter-based random numbers computed inside kernels (so dropout fuses)."""
from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from .registry import ELEMENTWISE, defop


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def uniform_reference(key, shape):
    """The numpy twin of Emitter.random_uniform: bit-identical results."""
    key = int(np.asarray(key)) & (2 ** 64 - 1)
    idx = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64).astype(np.uint32)
    with np.errstate(over="ignore"):
        h = _fmix32(idx ^ np.uint32(key & 0xFFFFFFFF)) + np.uint32(key >> 32)
        h = _fmix32(h)
    return ((h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)


def _infer(types, shape):
    (key,) = types
    if key.rank != 0:
        raise ValueError("the random key must be a 0-d int64 tensor")
    return TensorType(tuple(shape), "float32")


random_uniform = defop(
    "random_uniform", ELEMENTWISE, arity=1, dtypes=("int64",), infer=_infer,
    reference=uniform_reference, scalar=lambda e, key, shape: e.random_uniform(key),
    vjp=lambda g, y, key, shape: [None],  # a function of an integer key only
    per_element=True)
