"""What the cross targets (aarch64, wasm32) share: a fixed CPU of another architecture, the
CPU backend's code generator and plan at that CPU's vector width and register count, and
`zig cc -target ...` (the ziglang package) to compile the thread pool and link, from any
host."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import llvmlite.binding as llvm

from ..errors import CompileError
from ..toolchain import zig_cc
from . import llvm as shared
from .cpu import CpuBackend, CpuTarget


@dataclass(frozen=True)
class CrossTarget(CpuTarget):
    """The base architecture of a target (cpu "generic"): nothing for the runtime to check."""

    cpu: str = "generic"
    TRIPLE: ClassVar[str] = ""
    VECTOR_BITS: ClassVar[int] = 128
    VECTOR_REGS: ClassVar[int] = 16
    RELOC: ClassVar[str] = "pic"

    @property
    def triple(self) -> str:
        return self.TRIPLE

    def required_features(self) -> list[str]:
        return []

    @property
    def vector_bits(self) -> int:
        return self.VECTOR_BITS

    @property
    def vector_regs(self) -> int:
        return self.VECTOR_REGS

    @property
    def tuned_features(self) -> str:
        return self.features

    def machine(self):
        shared.init_all()
        target = llvm.Target.from_triple(self.triple)
        return target.create_target_machine(cpu=self.cpu, features=self.features, opt=3,
                                            reloc=self.RELOC, codemodel="default")


class CrossBackend(CpuBackend):
    target_class: type = CrossTarget
    zig_target = ""        # zig cc -target ...
    why_zig = "links"      # what zig does for this target (the error when it is missing)

    def options(self, cpu=None, arch=None, tf32=False):
        if arch is not None or tf32:
            raise CompileError("arch= and tf32= are for target='cuda'")
        if cpu not in (None, "generic"):
            raise CompileError(f"target={self.name!r} builds for the architecture's base "
                               f"(cpu=None); got cpu={cpu!r}",
                               fix="leave cpu= out")
        return self.target_class()

    def toolchain(self, options) -> list[str]:
        zig = zig_cc()
        if zig is None:
            raise CompileError(f"target={self.name!r} {self.why_zig} with zig cc, and the "
                               f"ziglang package is not installed",
                               fix="pip install ziglang (or graphc[toolchain])")
        return [*zig, "-target", self.zig_target]


__all__ = ["CrossBackend", "CrossTarget"]
