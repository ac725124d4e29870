"""target="cpu": the plan as one native shared library, run by graphc_runtime.cpu (cffi).

The build folder holds module.ll (the generated IR), module.opt.ll (after O3), graph.o, and
graph.so: the object linked with the thread pool (codegen/threads.c). Assembly is made on
first request (builds skip it).
"""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import llvmlite.binding as llvm

from graphc_runtime import Executable
from graphc_runtime.signature import interface_text

from ..cache import cache_root
from ..codegen.conv_blocked import packed_conv_weights
from ..codegen.cpu import build_module, x86_vector_regs
from ..codegen.gemm import packed_operand
from ..errors import CompileError
from ..signature import symbols_of
from ..toolchain import find_linker, is_zig, tool_env
from . import llvm as shared
from .base import Backend

# x86-64 micro-architecture levels (the psABI's definition) as LLVM feature names.
_V2 = {"cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3"}
_V3 = _V2 | {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
X86_LEVELS = {"x86-64": {"sse2"}, "x86-64-v2": _V2, "x86-64-v3": _V3, "x86-64-v4": _V4}
# Extensions whose absence would make generated code fault with SIGILL; the runtime checks them.
CHECKED_FEATURES = _V4 | {"sse2", "avx512vnni", "avx512bf16", "avx512ifma", "avx512vbmi",
                          "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq", "avx512fp16",
                          "avxvnni", "gfni", "vaes", "vpclmulqdq", "adx", "sha", "aes"}


@dataclass(frozen=True)
class CpuTarget:
    """The host CPU (default) or a named CPU with its features."""

    cpu: str = ""
    features: str = ""
    instrument: bool = False   # timestamps around every kernel (Compiled.profile)

    @classmethod
    def host(cls) -> "CpuTarget":
        shared.init_native()
        return cls(llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())

    @classmethod
    def named(cls, cpu: str | None) -> "CpuTarget":
        """The host (None or "host") or a portable x86-64 level ("x86-64-v2", "-v3", "-v4"):
        targets whose instruction sets the runtime can check before running the code."""
        if cpu in (None, "host", "native"):
            return cls.host()
        if cpu not in X86_LEVELS or not llvm.get_process_triple().startswith("x86_64"):
            # LLVM aborts the process on some unknown CPU names: never pass one through
            raise CompileError(f"unknown CPU target {cpu!r}",
                               fix=f"use None (this machine) or one of {', '.join(X86_LEVELS)}")
        shared.init_native()
        return cls(cpu, "")

    @property
    def triple(self) -> str:
        return llvm.get_process_triple()

    def required_features(self) -> list[str]:
        """The instruction-set extensions the generated code may use (checked at load time)."""
        if self.cpu in X86_LEVELS:
            return sorted(X86_LEVELS[self.cpu])
        if self.features:
            return sorted(f[1:] for f in self.features.split(",")
                          if f.startswith("+") and f[1:] in CHECKED_FEATURES)
        return []

    @property
    def vector_bits(self) -> int:
        """Width of the widest vector registers the code may use."""
        if self.cpu in X86_LEVELS:
            feats = X86_LEVELS[self.cpu]
        else:
            feats = {f[1:] for f in self.features.split(",") if f.startswith("+")}
        if "avx512f" in feats:
            return 512
        return 256 if "avx" in feats else 128

    @property
    def vector_regs(self) -> int:
        return x86_vector_regs(self.vector_bits)

    @property
    def tuned_features(self) -> str:
        """The features LLVM gets. With AVX-512, loops vectorize to whole 512-bit registers:
        LLVM's tuning for Intel cores since Skylake-X stops at 256 bits (older chips clocked
        down on 512-bit code); Sapphire Rapids and AMD Zen 4 run it at full speed, and the
        map kernels of an LSTM step ran 13% faster so."""
        if self.vector_bits == 512:
            return ",".join(f for f in (self.features, "-prefer-256-bit") if f)
        return self.features

    def machine(self):
        shared.init_native()
        target = llvm.Target.from_triple(self.triple)
        return target.create_target_machine(cpu=self.cpu, features=self.tuned_features, opt=3,
                                            reloc="pic", codemodel="default")

    def key(self) -> str:
        return f"{self.triple}|{self.cpu}|{self.tuned_features}" + \
            ("|instrumented" if self.instrument else "")


class CpuBackend(Backend):
    name = "cpu"
    texts = {"llvm_ir": "module.opt.ll", "llvm_ir_unoptimized": "module.ll", "asm": "module.s"}
    instrumented_library = True   # artifacts carry a timed build for `graphc profile`

    def options(self, cpu=None, arch=None, tf32=False) -> CpuTarget:
        if arch is not None:
            raise CompileError("arch= is for target='cuda'", fix="use cpu= to choose a CPU")
        if tf32:
            raise CompileError("tf32= is for target='cuda' (tensor cores)")
        return CpuTarget.named(cpu)

    def describe(self, options: CpuTarget) -> str:
        return f"cpu {options.cpu}"

    def needs(self, options: CpuTarget) -> list[str]:
        return options.required_features()

    def prepack(self, options: CpuTarget):
        def prepack(graph, kernel):
            pack = packed_conv_weights if kernel.kind == "conv" else packed_operand
            return pack(graph, kernel, vector_bits=options.vector_bits, regs=options.vector_regs)
        return prepack

    def toolchain(self, options: CpuTarget) -> list[str]:
        """The C compiler command that compiles the thread pool and links for this target."""
        return find_linker()

    def build(self, graph, signature, plan, options: CpuTarget, folder: str) -> None:
        from ..codegen.threads import support_object
        tool = self.toolchain(options)
        # the thread pool's object (cached once per C compiler) compiles while LLVM runs
        pool = ThreadPoolExecutor(1)
        support = pool.submit(support_object, tool, cache_root())
        pool.shutdown(wait=False)
        with shared.LOCK:
            machine = options.machine()
            interface = interface_text(signature, plan.constants)
            module = build_module(graph, plan, symbols_of(graph), options.triple,
                                  str(machine.target_data), interface, options.vector_bits,
                                  options.instrument, options.vector_regs)
            raw = str(module)
            mod = shared.optimize(raw, machine, graph.name, slp=True)
            obj = machine.emit_object(mod)
            opt = str(mod)
        for name, text in [("module.ll", raw), ("module.opt.ll", opt)]:
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        with open(os.path.join(folder, "graph.o"), "wb") as f:
            f.write(obj)
        self.link(folder, support.result(), tool)

    def link(self, folder: str, support: str, tool: list[str]) -> None:
        """graph.o and the thread pool's object -> the loadable binary in `folder`."""
        link_shared(os.path.join(folder, "graph.o"), os.path.join(folder, "graph.so"), support,
                    tool)

    def load(self, compiled) -> Executable:
        return Executable(compiled.entry.path("graph.so"), compiled.signature,
                          compiled.plan.constants)

    def profiler(self, compiled):
        """An instrumented build of the same plan (clock reads around every kernel)."""
        from ..profile import Profiler, instrumented, profile_meta
        return Profiler(instrumented(compiled).executable, profile_meta(compiled))

    def inspect(self, compiled, what: str):
        if what == "asm" and not os.path.exists(compiled.entry.path("module.s")):
            with shared.LOCK:
                mod = llvm.parse_assembly(compiled.llvm_ir)
                compiled.entry.write("module.s", compiled.options.machine().emit_assembly(mod))
        return super().inspect(compiled, what)

    def artifact(self, compiled) -> tuple[dict, dict[str, bytes]]:
        from ..export import c_header

        with open(compiled.entry.path("graph.so"), "rb") as f:   # (built for any host)
            members = {"lib/graph.so": f.read()}
        members["ir/module.ll"] = compiled.llvm_ir_unoptimized.encode()
        members["include/graphc_model.h"] = c_header(compiled).encode()
        target = compiled.options
        manifest = {"target": {"kind": "cpu", "triple": target.triple, "cpu": target.cpu,
                               "features": self.needs(target)},
                    "library": "lib/graph.so"}
        return manifest, members


def link_shared(objects, out: str, support: str | None = None,
                tool: list[str] | None = None) -> None:
    """Links the generated object(s) with the thread pool (threads.c; `support`: its object,
    if already made) into a shared library, with `tool` (default: find_linker())."""
    from ..codegen.threads import support_object

    tool = tool or find_linker()
    objects = [objects] if isinstance(objects, str) else list(objects)
    # zig: libc as a plain library (-nostdlib -lc). Its default link also builds compiler-rt
    # (~30 s the first time), which generated code never calls (nm: libc symbols only).
    flags = ["-shared", "-nostdlib", "-lc"] if is_zig(tool) else \
        ["-shared", "-nostartfiles", "-pthread"]
    cmd = [*tool, *flags, "-o", out, *objects, support or support_object(tool, cache_root())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env=tool_env(tool))
    except OSError as err:
        raise CompileError(f"running the linker {cmd[0]} failed: {err}") from err
    if proc.returncode != 0:
        raise CompileError(f"linking {os.path.basename(out)} with {cmd[0]} failed:\n{proc.stderr}")


__all__ = ["CpuBackend", "CpuTarget", "X86_LEVELS", "find_linker", "link_shared"]
