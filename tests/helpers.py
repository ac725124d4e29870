"""Shared test helpers: input sampling from an op's domain, and tolerances per dtype."""
from __future__ import annotations

import numpy as np

import graphc

# float32 results of transcendental functions are within a few ulp; float64 much tighter.
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


def sample(shape, dtype, rng, domain=(-3.0, 3.0)):
    lo, hi = domain
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("int32", "int64"):
        return rng.integers(int(np.floor(lo)), int(np.ceil(hi)) + 1, size=shape).astype(dtype)
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def assert_matches(compiled, arrays, tol=None, ref_graph=None):
    """Runs a compiled graph and the numpy interpreter on the same arrays and compares."""
    out = compiled(*arrays)
    assert_outputs_match(out, graphc.evaluate(ref_graph or compiled.graph, *arrays), tol)
    return out


def assert_outputs_match(out, ref, tol=None):
    """Outputs (an array or a tuple) equal the reference's: integers exactly, floats within
    `tol` (default: the dtype's TOL)."""
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape, (o.shape, r.shape)
        assert o.dtype == r.dtype, (o.dtype, r.dtype)
        if o.dtype.kind in "biu":
            np.testing.assert_array_equal(o, r)
        else:
            np.testing.assert_allclose(o, r, equal_nan=True, **(tol or TOL[o.dtype.name]))


def central_differences(f, arrays, k, eps=1e-6) -> np.ndarray:
    """d f(*arrays) / d arrays[k] by central differences (arrays[k] is nudged in place and
    restored); float64 inputs."""
    a = arrays[k]
    out = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + eps
        hi = f(*arrays)
        a[i] = saved - eps
        lo = f(*arrays)
        a[i] = saved
        out[i] = (hi - lo) / (2 * eps)
    return out


def aligned(a: np.ndarray, offset: int = 0) -> np.ndarray:
    """A copy of `a` whose data starts `offset` bytes after a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


# Prepended to a subprocess script: importing the compiler, llvmlite or networkx then fails,
# so the script proves it runs with the runtime (numpy + cffi) alone.
BLOCK_COMPILER_IMPORTS = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("graphc", "llvmlite", "networkx"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
"""
