"""target="cuda": the fused plan as PTX, run by graphc_runtime.cuda (the CUDA driver API)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field


from .errors import CompileError
from .ir.graph import Graph
from .passes.fusion import Kernel
from .passes.plan import Plan
from .signature import symbols_of


@dataclass
class CudaCompiled:
    """A graph compiled for an NVIDIA GPU. `ptx` is the whole module's PTX text."""

    graph: Graph
    kernels: list[Kernel]
    plan: Plan
    signature: object
    ptx: str
    llvm_ir: str
    launch: dict
    arch: str
    fuse_ops: bool = True
    cache_hit: bool = False
    tf32: bool = False
    _executable: object = field(default=None, repr=False)

    @property
    def executable(self):
        """The loaded module (raises CudaUnavailable without a GPU and driver)."""
        if self._executable is None:
            from graphc_runtime.cuda import CudaExecutable
            self._executable = CudaExecutable(self.ptx, self.launch, self.signature,
                                              self.plan.constants)
        return self._executable

    def __call__(self, *arrays):
        return self.executable(*arrays)

    def export(self, path: str) -> str:
        from .export import export
        return export(self, path)

    def __repr__(self) -> str:
        lines = [f"CudaCompiled {self.graph.name}{self.signature.describe()} for {self.arch}: "
                 f"{len(self.kernels)} kernel(s)"]
        lines += [f"  {k!r}" for k in self.kernels]
        return "\n".join(lines)


def compile_cuda(graph: Graph, signature, kernels, plan: Plan, arch: str, fuse_ops: bool,
                 cache: bool, tf32: bool = False) -> CudaCompiled:
    from .codegen.ptx import ARCHS, emit_ptx
    from .compiler import _llvm_lock, cache_root, graph_key

    if arch not in ARCHS:
        raise CompileError(f"unknown GPU architecture {arch!r}",
                           fix=f"use one of {', '.join(ARCHS)} (sm_80 runs on newer GPUs too)")
    directory = os.path.join(cache_root(), "cuda-" + graph_key(graph, f"cuda|{arch}" + ("|tf32" if tf32 else ""),
                                                         fuse_ops))
    names = ("module.ptx", "module.opt.ll", "launch.json")
    if cache and all(os.path.exists(os.path.join(directory, n)) for n in names):
        texts = []
        for n in names:
            with open(os.path.join(directory, n)) as f:
                texts.append(f.read())
        return CudaCompiled(graph, kernels, plan, signature, texts[0], texts[1],
                            json.loads(texts[2]), arch, fuse_ops, cache_hit=True, tf32=tf32)
    try:
        with _llvm_lock:   # llvmlite's context and options are process-wide
            ptx, llvm_ir, launch = emit_ptx(graph, plan, symbols_of(graph), arch, tf32)
    except RuntimeError as err:
        raise CompileError(f"generating PTX for {graph.name} failed: {err}") from err
    if cache:
        os.makedirs(cache_root(), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".build-", dir=cache_root())
        for n, text in zip(names, (ptx, llvm_ir, json.dumps(launch))):
            with open(os.path.join(tmp, n), "w") as f:
                f.write(text)
        try:
            os.replace(tmp, directory)
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return CudaCompiled(graph, kernels, plan, signature, ptx, llvm_ir, launch, arch, fuse_ops,
                        tf32=tf32)
