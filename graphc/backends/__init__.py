"""One module per target behind one interface (base.Backend); BACKENDS maps target= to it.

Adding a target is one module with a Backend subclass plus one entry here; nothing else in
the compiler changes (compile, Compiled and export only talk to the interface).
"""
from __future__ import annotations

from ..errors import CompileError
from .base import Backend
from .aarch64 import Aarch64Backend
from .cpu import CpuBackend
from .cuda import CudaBackend
from .wasm32 import Wasm32Backend

BACKENDS: dict[str, Backend] = {"cpu": CpuBackend(), "cuda": CudaBackend(),
                                "aarch64": Aarch64Backend(), "wasm32": Wasm32Backend()}


def backend_for(target: str) -> Backend:
    backend = BACKENDS.get(target) if isinstance(target, str) else None
    if backend is None:
        raise CompileError(f"unknown target {target!r}; available: "
                           f"{', '.join(repr(t) for t in BACKENDS)}")
    return backend


__all__ = ["BACKENDS", "Backend", "backend_for"]
