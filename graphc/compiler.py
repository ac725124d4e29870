"""The pipeline: trace -> simplify -> fuse -> plan -> backend (a binary in the cache).

Each stage is a named pass (PASSES) run by passes/pipeline.py, which can time, verify and
dump every one. The backend (backends/, picked by target=) builds the binary; the result is
one Compiled type for every target, loaded by the runtime (graphc_runtime) exactly as an
exported artifact would be.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from functools import cached_property

from graphc_runtime import Signature

from .backends import Backend, backend_for
from .backends.cpu import CpuTarget, find_linker, link_shared  # noqa: F401  (importers)
from .cache import COMPILER_FINGERPRINT, Entry, cache_root, fetch, graph_key  # noqa: F401
from .cache import release_with
from .errors import CompileError
from .ir.graph import Graph
from .ir.verify import verify
from .passes.fusion import Kernel, fuse
from .passes.pipeline import Pass, run_passes
from .passes.plan import Plan, plan_buffers
from .passes.simplify import simplify
from .signature import signature_of
from .trace import TensorSpec, trace


@dataclass(frozen=True)
class Build:
    """What compile knows so far; each pass returns a copy with its part filled in."""

    source: object                 # the user's function, or a Graph
    specs: tuple
    inplace: dict | None
    fuse_ops: bool
    backend: Backend
    options: object                # the backend's target options
    cache: bool
    graph: Graph | None = None
    signature: Signature | None = None
    kernels: list[Kernel] | None = None
    plan: Plan | None = None
    entry: Entry | None = None


def _trace(b: Build) -> Build:
    if isinstance(b.source, Graph):
        if b.specs:
            raise CompileError("compile(graph) takes no specs: the graph has its signature")
        graph = verify(b.source, "as given to compile")
    else:
        graph = trace(b.source, *b.specs)
    if b.inplace:
        fields = graph.structure()
        fields["aliases"].update({int(o): int(i) for o, i in b.inplace.items()})
        graph = Graph(graph.nodes, graph.inputs, graph.outputs, **fields)
    return _with_signature(b, graph)


def _with_signature(b: Build, graph: Graph) -> Build:
    """The graph and its signature; after simplify the signature describes the graph that
    is built (its size limits name that graph's values, which the cache key covers)."""
    try:
        signature = signature_of(graph)
    except ValueError as err:
        raise CompileError(f"{graph.name}: {err}") from None
    return replace(b, graph=graph, signature=signature)


def _build(b: Build) -> Build:
    key = graph_key(b.graph, f"{b.backend.name}|{b.options.key()}", b.fuse_ops)
    start = time.perf_counter()
    entry = fetch(key, lambda folder: b.backend.build(b.graph, b.signature, b.plan, b.options,
                                                      folder), b.cache)
    if "compile" in os.environ.get("GRAPHC_LOG", "").replace(" ", "").split(","):
        _log_compile(b, entry, time.perf_counter() - start)
    return replace(b, entry=entry)


# GRAPHC_LOG=compile: graph name -> the (signature, target) of each compile in this process
_COMPILED: dict[str, list[tuple[str, str]]] = {}


def _log_compile(b: Build, entry: Entry, seconds: float) -> None:
    """One stderr line per compile: how it was served, and what differs from this graph's
    earlier compiles in the process (what JAX and torch.compile users look for: recompiles)."""
    name, sig = b.graph.name, b.signature.describe()
    target = b.backend.describe(b.options) + (" (instrumented)" if getattr(
        b.options, "instrument", False) else "")
    seen = _COMPILED.setdefault(name, [])
    how = "from the cache" if entry.hit else f"built in {seconds:.2f} s"
    if not seen:
        why = "first compile of this graph in this process"
    elif (sig, target) in seen:
        why = "same signature and target as an earlier compile: other constants or ops"
    elif any(t == target for _, t in seen):
        why = f"new shape class (before: {seen[-1][0]})"
    else:
        why = f"new target (before: {seen[-1][1]})"
    seen.append((sig, target))
    print(f"graphc: compile {name}{sig} for {target}: {how}; {why}", file=sys.stderr)


PASSES = [
    Pass("trace", _trace),
    Pass("simplify", lambda b: _with_signature(b, simplify(b.graph))),
    Pass("fuse", lambda b: replace(b, kernels=fuse(b.graph, enabled=b.fuse_ops)),
         show=lambda b: "\n".join(repr(k) for k in b.kernels)),
    Pass("plan", lambda b: replace(b, plan=plan_buffers(b.graph, b.kernels,
                                                        b.backend.prepack(b.options))),
         show=lambda b: str(b.plan)),
    Pass("backend", _build,
         show=lambda b: f"{b.backend.describe(b.options)}: {b.entry.directory}"),
]


def compile(fn_or_graph, *specs: TensorSpec, target: str = "cpu", fuse_ops: bool = True,
            cache: bool = True, inplace: dict[int, int] | None = None,
            cpu: str | None = None, arch: str | None = None, tf32: bool = False) -> "Compiled":
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
    also run; "sm_90" for Hopper); running it needs a GPU and its driver, building the PTX
    does not. `tf32=True` runs float32 matmuls on tensor cores with inputs rounded to tf32
    (10-bit mantissa: relative error ~1e-3, as torch's allow_tf32); the default keeps full
    float32. `cache=False` builds afresh and leaves nothing in the cache.
    """
    backend = backend_for(target)
    if not isinstance(tf32, bool):
        raise CompileError(f"tf32 must be True or False, got {tf32!r}")
    options = backend.options(cpu=cpu, arch=arch, tf32=tf32)
    b = run_passes(PASSES, Build(fn_or_graph, specs, inplace, fuse_ops, backend, options, cache))
    compiled = Compiled(b.graph, b.kernels, b.plan, b.signature, backend, options, b.entry,
                        fuse_ops, {"cpu": cpu, "arch": arch, "tf32": tf32})
    release_with(compiled, b.entry)
    return compiled


def _from_backend(what: str, doc: str) -> property:
    return property(lambda self: self._asked(what), doc=doc)


@dataclass(eq=False)
class Compiled:
    """A compiled graph, for any target. Call it with numpy arrays; inspect what the compiler
    did: .graph, .kernels, .plan, .llvm_ir, and the target's own texts (.asm on the CPU,
    .ptx and .launch for CUDA)."""

    graph: Graph
    kernels: list[Kernel]
    plan: Plan
    signature: Signature
    backend: Backend = field(repr=False)   # BACKENDS[target]
    options: object                        # the backend's target options (CpuTarget, ...)
    entry: Entry = field(repr=False)
    fuse_ops: bool = True
    settings: dict = field(default_factory=dict, repr=False)   # cpu=, arch=, tf32= as given
    _text: dict = field(default_factory=dict, repr=False)

    @property
    def target(self) -> str:
        """The target= name: "cpu", "cuda", ..."""
        return self.backend.name

    @cached_property
    def executable(self):
        """The loaded binary (graphc_runtime's Executable; for CUDA, the GPU module: that
        raises CudaUnavailable without a GPU and its driver)."""
        return self.backend.load(self)

    def __call__(self, *arrays):
        return self.executable(*arrays)

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def cache_dir(self) -> str:
        return self.entry.directory

    @property
    def cache_hit(self) -> bool:
        return self.entry.hit

    @property
    def library_path(self) -> str:
        return self.executable.library_path

    def _asked(self, what: str):
        if what not in self._text:
            self._text[what] = self.backend.inspect(self, what)
        return self._text[what]

    def _option(self, name: str):
        try:
            return getattr(self.options, name)
        except AttributeError:
            raise AttributeError(f"a target={self.target!r} build has no {name}") from None

    # What the backend made, asked of it (AttributeError where the target makes no such thing)
    llvm_ir = _from_backend("llvm_ir", "The optimized LLVM IR compiled to machine code or PTX.")
    llvm_ir_unoptimized = _from_backend("llvm_ir_unoptimized", "The IR as generated (CPU).")
    asm = _from_backend("asm", "The CPU library's assembly (made on first request).")
    ptx = _from_backend("ptx", "The whole module's PTX (target='cuda').")
    launch = _from_backend("launch", "The CUDA launch plan as JSON data (LaunchPlan.to_json).")
    arch = property(lambda self: self._option("arch"), doc="The GPU architecture (CUDA).")
    tf32 = property(lambda self: self._option("tf32"), doc="Whether matmuls use tf32 (CUDA).")

    def export(self, path: str, cpu: str | None = None, arch: str | None = None,
               target: str | None = None) -> str:
        """Writes a one-file artifact that graphc_runtime.load (numpy + cffi only) runs.

        `cpu=None` keeps this build's target (the exact host CPU by default); a portable level
        such as "x86-64-v3" or "x86-64-v2" rebuilds for older machines (`arch=` likewise
        for CUDA). `target=` builds the same graph for another target from any host
        ("aarch64": the artifact runs on an AArch64 Linux host).
        """
        from .export import export
        compiled = self
        given = {k: v for k, v in (("cpu", cpu), ("arch", arch)) if v is not None}
        if target is not None and target != self.target:
            return export(compile(self.graph, target=target, fuse_ops=self.fuse_ops, **given),
                          path)
        if given:
            settings = {**self.settings, **given}
            if self.backend.options(**settings) != self.options:
                compiled = compile(self.graph, target=self.target, fuse_ops=self.fuse_ops,
                                   **settings)
        return export(compiled, path)

    def profile(self, *inputs, repeat: int = 20):
        """Runs the graph on `inputs` (arguments as for a call) and returns a Profile: per
        kernel its median time, share of the call, bytes, FLOPs and the source lines of its
        ops, from an instrumented build of the same plan on the CPU, CUDA events between
        the launches on a GPU (graphc/profile.py). Inputs the graph updates in place are
        updated in copies. target='cuda' raises CudaUnavailable without a GPU, as calls do."""
        from .profile import profile
        return profile(self, *inputs, repeat=repeat)

    def to_html(self, path: str, profile=None) -> str:
        """Writes one self-contained HTML page (no network) showing the graph coloured by
        kernel, the kernels with their ops, source lines and fusion reasons, the buffer plan
        and, given a Profile of this build, per-kernel time bars. Returns the path."""
        from .view import to_html
        return to_html(self, path, profile)

    def explain(self):
        """Each kernel with its ops and source lines, and why unfused edges were not fused."""
        from .passes.explain import explain
        return explain(self.graph, self.kernels)

    def __repr__(self) -> str:
        lines = [f"Compiled {self.graph.name}{self.signature.describe()} for "
                 f"{self.backend.describe(self.options)}: {len(self.kernels)} kernel(s)"]
        lines += [f"  {k!r}" for k in self.kernels]
        return "\n".join(lines)


CudaCompiled = Compiled   # the name CUDA results had before there was one Compiled type
