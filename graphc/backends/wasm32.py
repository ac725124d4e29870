"""target="wasm32": a WebAssembly module (WASI, SIMD128), single-threaded, cross-compiled from
any host. The CPU backend's code generator and plan for 128-bit vectors; the thread pool's
single-threaded build (threads.c) and the link by `zig cc -target wasm32-wasi` (the ziglang
package) into a WASI reactor that exports the graphc entry points, its memory, malloc and
free. graphc_runtime runs it through wasmtime (graphc[wasm]) on any host, sandboxed: a trap
is an exception, never a crash of the process."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import llvmlite.binding as llvm

from ..errors import CompileError
from ..toolchain import tool_env, zig_cc
from . import llvm as shared
from .cpu import CpuBackend, CpuTarget

TRIPLE = "wasm32-unknown-wasi"
ZIG_TARGET = "wasm32-wasi"
EXPORTS = ("graphc_run", "graphc_workspace_size", "graphc_abi_version", "graphc_interface",
           "graphc_take_error", "malloc", "free")


@dataclass(frozen=True)
class Wasm32Target(CpuTarget):
    cpu: str = "generic"
    features: str = "+simd128,+relaxed-simd"

    @property
    def triple(self) -> str:
        return TRIPLE

    def required_features(self) -> list[str]:
        return []

    @property
    def vector_bits(self) -> int:
        return 128

    @property
    def vector_regs(self) -> int:
        return 16   # a stack machine: the engine allocates registers; x86's 16 xmm bound it

    @property
    def tuned_features(self) -> str:
        return self.features

    def machine(self):
        shared.init_all()
        target = llvm.Target.from_triple(self.triple)
        return target.create_target_machine(cpu=self.cpu, features=self.features, opt=3,
                                            reloc="static", codemodel="default")


class Wasm32Backend(CpuBackend):
    name = "wasm32"
    texts = {"llvm_ir": "module.opt.ll", "llvm_ir_unoptimized": "module.ll"}
    instrumented_library = False

    def options(self, cpu=None, arch=None, tf32=False) -> Wasm32Target:
        if arch is not None or tf32:
            raise CompileError("arch= and tf32= are for target='cuda'")
        if cpu not in (None, "generic"):
            raise CompileError(f"target='wasm32' takes no cpu= (got {cpu!r})")
        return Wasm32Target()

    def describe(self, options) -> str:
        return "wasm32 (WASI, SIMD128)"

    def toolchain(self, options) -> list[str]:
        zig = zig_cc()
        if zig is None:
            raise CompileError("target='wasm32' links with zig's wasm-ld, and the ziglang "
                               "package is not installed",
                               fix="pip install ziglang (or graphc[toolchain])")
        return [*zig, "-target", ZIG_TARGET]

    def link(self, folder: str, support: str, tool: list[str]) -> None:
        out = os.path.join(folder, "graph.wasm")
        cmd = [*tool, "-mexec-model=reactor", "-o", out, os.path.join(folder, "graph.o"),
               support, *(f"-Wl,--export={name}" for name in EXPORTS)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env=tool_env(tool))
        if proc.returncode != 0:
            raise CompileError(f"linking graph.wasm with zig failed:\n{proc.stderr[-3000:]}")

    def load(self, compiled):
        from graphc_runtime.wasm import WasmExecutable
        with open(compiled.entry.path("graph.wasm"), "rb") as f:
            return WasmExecutable(f.read(), compiled.signature, compiled.plan.constants,
                                  compiled.entry.path("graph.wasm"))

    def profiler(self, compiled):
        from ..errors import GraphcError
        raise GraphcError("profile: per-kernel times of target='wasm32' builds are not "
                          "measured (the module has no clock counters); profile the CPU build")

    def artifact(self, compiled) -> tuple[dict, dict[str, bytes]]:
        from ..export import c_header
        with open(compiled.entry.path("graph.wasm"), "rb") as f:
            members = {"lib/graph.wasm": f.read()}
        members["ir/module.ll"] = compiled.llvm_ir_unoptimized.encode()
        members["include/graphc_model.h"] = c_header(compiled).encode()
        manifest = {"target": {"kind": "wasm32", "triple": TRIPLE, "cpu": "generic",
                               "features": []},
                    "library": "lib/graph.wasm"}
        return manifest, members


__all__ = ["Wasm32Backend", "Wasm32Target"]
