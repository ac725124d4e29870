"""target="aarch64": Linux on 64-bit Arm with NEON (SVE not used), cross-compiled from any
host (backends/cross.py). 128-bit vectors and 32 vector registers: the GEMM micro-kernel is 6
rows x 4 vectors, as on AVX-512; the thread pool is compiled and the library linked by `zig
cc -target aarch64-linux-gnu`. A build for another architecture cannot run here:
`compiled.export(path)` writes an artifact that graphc_runtime.load runs on an AArch64 host
(or the C header and library, from C)."""
from __future__ import annotations

import platform
from dataclasses import dataclass

from ..errors import CompileError
from .cross import CrossBackend, CrossTarget


@dataclass(frozen=True)
class Aarch64Target(CrossTarget):
    """Any ARMv8-A core: NEON (Advanced SIMD) and FP are part of the base architecture."""

    features: str = "+neon"
    TRIPLE = "aarch64-unknown-linux-gnu"
    VECTOR_REGS = 32


class Aarch64Backend(CrossBackend):
    name = "aarch64"
    target_class = Aarch64Target
    zig_target = "aarch64-linux-gnu"
    why_zig = "cross-compiles"

    def describe(self, options) -> str:
        return "aarch64 (NEON)"

    def load(self, compiled):
        host = platform.machine().lower()
        if host not in ("aarch64", "arm64"):
            raise CompileError(f"this build is for aarch64 and this machine is {host}: it "
                               f"cannot run here",
                               fix="export it (compiled.export('model.gcx')) and load that "
                                   "with graphc_runtime.load on an AArch64 host")
        return super().load(compiled)

    def profiler(self, compiled):
        self.load(compiled)   # the same message off an AArch64 host
        return super().profiler(compiled)


__all__ = ["Aarch64Backend", "Aarch64Target"]
