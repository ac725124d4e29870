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

from ..errors import CompileError
from ..toolchain import tool_env
from .cross import CrossBackend, CrossTarget

TRIPLE = "wasm32-unknown-wasi"
ZIG_TARGET = "wasm32-wasi"
EXPORTS = ("graphc_run", "graphc_workspace_size", "graphc_abi_version", "graphc_interface",
           "graphc_take_error", "malloc", "free")


@dataclass(frozen=True)
class Wasm32Target(CrossTarget):
    features: str = "+simd128,+relaxed-simd"   # relaxed-simd: fused multiply-adds
    TRIPLE = TRIPLE
    VECTOR_REGS = 16   # a stack machine: the engine allocates registers; x86's 16 xmm bound it
    RELOC = "static"


class Wasm32Backend(CrossBackend):
    name = "wasm32"
    texts = {"llvm_ir": "module.opt.ll", "llvm_ir_unoptimized": "module.ll"}
    instrumented_library = False
    target_class = Wasm32Target
    zig_target = ZIG_TARGET

    def describe(self, options) -> str:
        return "wasm32 (WASI, SIMD128)"

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
