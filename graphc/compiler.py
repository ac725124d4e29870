"""The pipeline: trace -> simplify -> fuse -> plan -> LLVM IR -> O3 -> object -> shared library.

The library is opened by the runtime (graphc_runtime), exactly as an exported artifact would be.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from graphc_runtime import Executable
from graphc_runtime.signature import interface_text

from .errors import CompileError
from .ir.graph import Graph
from .passes.fusion import Kernel, fuse
from .passes.plan import Plan, plan_buffers
from .passes.simplify import simplify
from .signature import signature_of, symbols_of
from .trace import TensorSpec, trace

# x86-64 micro-architecture levels (the psABI's definition) as LLVM feature names.
_V2 = {"cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3"}
_V3 = _V2 | {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
X86_LEVELS = {"x86-64": {"sse2"}, "x86-64-v2": _V2, "x86-64-v3": _V3, "x86-64-v4": _V4}
# Extensions whose absence would make generated code fault with SIGILL; the runtime checks them.
CHECKED_FEATURES = _V4 | {"sse2", "avx512vnni", "avx512bf16", "avx512ifma", "avx512vbmi",
                          "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq", "avx512fp16",
                          "avxvnni", "gfni", "vaes", "vpclmulqdq", "adx", "sha", "aes"}

_llvm_lock = threading.Lock()
_initialized = False


def _compiler_fingerprint() -> str:
    """Hash of the compiler's own sources: editing the code generator invalidates the cache."""
    h = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith((".py", ".c")):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


COMPILER_FINGERPRINT = _compiler_fingerprint()


def _init_llvm():
    global _initialized
    if not _initialized:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _initialized = True


@dataclass(frozen=True)
class CpuTarget:
    """The host CPU (default) or a named CPU with its features."""

    cpu: str = ""
    features: str = ""

    @classmethod
    def host(cls) -> "CpuTarget":
        _init_llvm()
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
        _init_llvm()
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

    def machine(self):
        _init_llvm()
        target = llvm.Target.from_triple(self.triple)
        return target.create_target_machine(cpu=self.cpu, features=self.features, opt=3,
                                            reloc="pic", codemodel="default")

    def key(self) -> str:
        return f"{self.triple}|{self.cpu}|{self.features}"


@dataclass
class Compiled:
    """A compiled graph. Call it with numpy arrays; inspect what the compiler did."""

    graph: Graph
    kernels: list[Kernel]
    plan: Plan
    executable: Executable
    key: str
    cache_dir: str
    cache_hit: bool = False
    target: CpuTarget | None = None
    fuse_ops: bool = True
    _text: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.signature = self.executable.signature

    def __call__(self, *arrays):
        return self.executable(*arrays)

    def _read(self, name: str) -> str:
        if name not in self._text:
            with open(os.path.join(self.cache_dir, name)) as f:
                self._text[name] = f.read()
        return self._text[name]

    @property
    def llvm_ir(self) -> str:
        """The optimized LLVM IR that was compiled to machine code."""
        return self._read("module.opt.ll")

    @property
    def llvm_ir_unoptimized(self) -> str:
        return self._read("module.ll")

    @property
    def asm(self) -> str:
        """The assembly of the library's code (made on first request: builds skip it)."""
        path = os.path.join(self.cache_dir, "module.s")
        if not os.path.exists(path):
            with _llvm_lock:
                mod = llvm.parse_assembly(self.llvm_ir)
                text = (self.target or CpuTarget.host()).machine().emit_assembly(mod)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".s.tmp")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return self._read("module.s")

    @property
    def library_path(self) -> str:
        return self.executable.library_path

    def export(self, path: str, cpu: str | None = None) -> str:
        """Writes a one-file artifact that graphc_runtime.load (numpy + cffi only) runs.

        `cpu=None` keeps this build's target (the exact host CPU by default); a portable level
        such as "x86-64-v3" or "x86-64-v2" rebuilds for older machines.
        """
        from .export import export
        compiled = self
        if cpu is not None and CpuTarget.named(cpu) != self.target:
            compiled = compile(self.graph, fuse_ops=self.fuse_ops, cpu=cpu)
        return export(compiled, path)

    def explain(self):
        """Each kernel with its ops and source lines, and why unfused edges were not fused."""
        from .passes.explain import explain
        return explain(self.graph, self.kernels)

    def __repr__(self) -> str:
        lines = [f"Compiled {self.graph.name}{self.signature.describe()}: "
                 f"{len(self.kernels)} kernel(s)"]
        lines += [f"  {k!r}" for k in self.kernels]
        return "\n".join(lines)


def cache_root() -> str:
    return os.environ.get("GRAPHC_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphc")


def graph_key(graph: Graph, target: str, fused: bool) -> str:
    """The cache key: compiler, LLVM, target (CpuTarget.key() or "cuda|sm_80"), the graph."""
    h = hashlib.sha256()
    for part in (COMPILER_FINGERPRINT, llvmlite.__version__, target, str(fused),
                 graph.canonical()):
        h.update(part.encode())
        h.update(b"\0")
    for node in graph.nodes:
        if node.op == "constant":
            h.update(np.ascontiguousarray(node.attrs["value"]).tobytes())
    return h.hexdigest()[:32]


def compile(fn_or_graph, *specs: TensorSpec, target: str = "cpu", fuse_ops: bool = True,
            cache: bool = True, inplace: dict[int, int] | None = None,
            cpu: str | None = None, arch: str | None = None, tf32: bool = False):
    """Traces (if given a function), optimizes, fuses and compiles to native code.

    >>> f = graphc.compile(lambda x: graphc.tanh(x) * 2, graphc.tensor(("B", 8)))
    >>> f(np.ones((4, 8), np.float32)).shape
    (4, 8)
    `fuse_ops=False` gives one kernel per op (the "eager" baseline with the same code generator).
    `inplace={output: input}` writes that output into the input's array instead of a new one
    (state such as parameters stays in the caller's arrays; the call updates them).
    `cpu` picks the code's target: None for this machine's exact CPU, or a portable level such
    as "x86-64-v3" (see CpuTarget.named).
    `target="cuda"` builds PTX for an NVIDIA GPU (`arch`: "sm_80" by default, which newer GPUs
    also run; "sm_90" for Hopper) and returns a CudaCompiled; running it needs a GPU and
    its driver, building the PTX does not. `tf32=True` runs float32 matmuls on tensor cores
    with inputs rounded to tf32 (10-bit mantissa: relative error ~1e-3, as torch's
    allow_tf32); the default keeps full float32.
    """
    if target not in ("cpu", "cuda"):
        raise CompileError(f"unknown target {target!r}; available: 'cpu', 'cuda'")
    if arch is not None and target != "cuda":
        raise CompileError("arch= is for target='cuda'", fix="use cpu= to choose a CPU")
    if not isinstance(tf32, bool):
        raise CompileError(f"tf32 must be True or False, got {tf32!r}")
    if tf32 and target != "cuda":
        raise CompileError("tf32= is for target='cuda' (tensor cores)")
    if isinstance(fn_or_graph, Graph):
        if specs:
            raise CompileError("compile(graph) takes no specs: the graph has its signature")
        graph = fn_or_graph
    else:
        graph = trace(fn_or_graph, *specs)
    if inplace:
        graph = Graph(graph.nodes, graph.inputs, graph.outputs, graph.name, graph.single_output,
                      {**graph.aliases, **{int(o): int(i) for o, i in inplace.items()}})
    graph = simplify(graph)
    try:
        signature = signature_of(graph)
    except ValueError as err:
        raise CompileError(f"{graph.name}: {err}") from None
    kernels = fuse(graph, enabled=fuse_ops)
    plan = plan_buffers(graph, kernels)
    if target == "cuda":
        from .cuda import compile_cuda
        return compile_cuda(graph, signature, kernels, plan, arch or "sm_80", fuse_ops, cache,
                            tf32)
    cpu = CpuTarget.named(cpu)
    key = graph_key(graph, cpu.key(), fuse_ops)
    directory = os.path.join(cache_root(), key)
    hit = cache and os.path.exists(os.path.join(directory, "done"))
    if not hit:
        directory = _build(graph, plan, cpu, directory if cache else None)
    executable = Executable(os.path.join(directory, "graph.so"), signature, plan.constants)
    return Compiled(graph, kernels, plan, executable, key, directory, cache_hit=hit, target=cpu,
                    fuse_ops=fuse_ops)


def _build(graph: Graph, plan: Plan, cpu: CpuTarget, directory: str | None) -> str:
    """Builds into `directory` (the cache entry), or a fresh private folder when it is None."""
    from .codegen.cpu import build_module

    with _llvm_lock:
        machine = cpu.machine()
        interface = interface_text(signature_of(graph), plan.constants)
        module = build_module(graph, plan, symbols_of(graph), cpu.triple,
                              str(machine.target_data), interface, cpu.vector_bits)
        raw = str(module)
        try:
            mod = llvm.parse_assembly(raw)
            mod.verify()
        except RuntimeError as err:
            raise CompileError(f"generated LLVM IR for {graph.name} is invalid: {err}") from err
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = False  # compile time; loops that need it are unrolled by hand
        pb = llvm.create_pass_builder(machine, pto)
        pb.getModulePassManager().run(mod, pb)
        obj = machine.emit_object(mod)
        opt = str(mod)
    os.makedirs(cache_root(), exist_ok=True)
    if directory is None:
        directory = tempfile.mkdtemp(prefix="uncached-", dir=cache_root())
        os.rmdir(directory)
    tmp = tempfile.mkdtemp(prefix=".build-", dir=cache_root())
    try:
        for name, data in [("module.ll", raw), ("module.opt.ll", opt)]:
            with open(os.path.join(tmp, name), "w") as f:
                f.write(data)
        with open(os.path.join(tmp, "graph.o"), "wb") as f:
            f.write(obj)
        link_shared(os.path.join(tmp, "graph.o"), os.path.join(tmp, "graph.so"))
        with open(os.path.join(tmp, "signature.json"), "w") as f:
            json.dump(signature_of(graph).to_json(), f)
        with open(os.path.join(tmp, "done"), "w") as f:
            f.write("ok\n")
        try:
            os.replace(tmp, directory)
        except OSError:
            # Another process finished the same build first (theirs is identical), or an
            # interrupted build left an incomplete folder: replace only the latter.
            if not os.path.exists(os.path.join(directory, "done")):
                shutil.rmtree(directory, ignore_errors=True)
                os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def find_linker() -> list[str]:
    for tool in (os.environ.get("GRAPHC_LINKER"), "cc", "gcc", "clang"):
        if tool and shutil.which(tool):
            return [tool]
    raise CompileError("no C compiler found to link with (looked for cc, gcc, clang)",
                       fix="install a C toolchain (e.g. `apt install gcc` or `build-essential`), "
                           "or set GRAPHC_LINKER to a C compiler driver")


def link_shared(obj: str, out: str) -> None:
    """Links the generated object with the thread pool (threads.c) into a shared library."""
    from .codegen.threads import support_object

    tool = find_linker()[0]
    cmd = [tool, "-shared", "-nostartfiles", "-pthread", "-o", out, obj,
           support_object(tool, cache_root())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except OSError as err:
        raise CompileError(f"running the linker {cmd[0]} failed: {err}") from err
    if proc.returncode != 0:
        raise CompileError(f"linking {os.path.basename(out)} with {cmd[0]} failed:\n{proc.stderr}")
