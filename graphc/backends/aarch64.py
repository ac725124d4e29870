"""target="aarch64": Linux on 64-bit Arm with NEON (SVE not used), cross-compiled from any
host. The CPU backend's code generator and plan, for 128-bit vectors and 32 vector registers
(the GEMM micro-kernel is 6 rows x 4 vectors, as on AVX-512); the thread pool compiled and
the library linked by `zig cc -target aarch64-linux-gnu` (the ziglang package). A build for
another architecture cannot run here: `compiled.export(path)` writes an artifact that
graphc_runtime.load runs on an AArch64 host (or the C header and library, from C)."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import llvmlite.binding as llvm

from ..errors import CompileError
from ..toolchain import zig_cc
from . import llvm as shared
from .cpu import CpuBackend, CpuTarget

TRIPLE = "aarch64-unknown-linux-gnu"
ZIG_TARGET = "aarch64-linux-gnu"


@dataclass(frozen=True)
class Aarch64Target(CpuTarget):
    """Any ARMv8-A core: NEON (Advanced SIMD) and FP are part of the base architecture."""

    cpu: str = "generic"
    features: str = "+neon"

    @property
    def triple(self) -> str:
        return TRIPLE

    def required_features(self) -> list[str]:
        return []   # the base architecture's: nothing for the runtime to check

    @property
    def vector_bits(self) -> int:
        return 128

    @property
    def vector_regs(self) -> int:
        return 32

    @property
    def tuned_features(self) -> str:
        return self.features

    def machine(self):
        shared.init_all()
        target = llvm.Target.from_triple(self.triple)
        return target.create_target_machine(cpu=self.cpu, features=self.features, opt=3,
                                            reloc="pic", codemodel="default")


class Aarch64Backend(CpuBackend):
    name = "aarch64"

    def options(self, cpu=None, arch=None, tf32=False) -> Aarch64Target:
        if arch is not None or tf32:
            raise CompileError("arch= and tf32= are for target='cuda'")
        if cpu not in (None, "generic"):
            raise CompileError(f"target='aarch64' builds for any ARMv8-A core (cpu=None); "
                               f"got cpu={cpu!r}")
        return Aarch64Target()

    def describe(self, options) -> str:
        return "aarch64 (NEON)"

    def toolchain(self, options) -> list[str]:
        zig = zig_cc()
        if zig is None:
            raise CompileError("target='aarch64' cross-compiles with zig cc, and the ziglang "
                               "package is not installed",
                               fix="pip install ziglang (or graphc[toolchain])")
        return [*zig, "-target", ZIG_TARGET]

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
