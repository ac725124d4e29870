"""Runs the GPU kernels' code on the CPU: the same kernel bodies (graphc/codegen/ptx.py), built
for the host with the thread and block indices as arguments, launched thread by thread.

Each kernel is called once per block; inside, every region of per-thread code (code between
barriers) is a loop over the block's threads, and shared memory is a stack array. That is
what the GPU computes, since threads only exchange data through shared memory across
barriers. With a small grid every grid-stride loop takes several turns. The thread count
must be a power of two (block reductions halve it). This checks the kernels' logic on machines without a
GPU; ptxas checks their PTX, and the `cuda` tests run them for real where a GPU exists.
"""
from __future__ import annotations

import os
import tempfile

import cffi
import llvmlite.binding as llvm
import numpy as np

from graphc.backends.cpu import CpuTarget, link_shared
from graphc.cache import cache_root
from graphc.codegen.ptx import build_gpu_module
from graphc.passes.fusion import fuse
from graphc.passes.plan import plan_buffers
from graphc.passes.simplify import simplify
from graphc.signature import signature_of, symbols_of
from graphc.trace import trace
from graphc_runtime.signature import bind_inputs, output_shape


class SimulatedGpu:
    def __init__(self, fn, *specs, fuse_ops=True, blocks=3, threads=4, graph=None, tf32=False):
        graph = simplify(graph if graph is not None else trace(fn, *specs))
        self.graph = graph
        self.signature = signature_of(graph)
        self.kernels = fuse(graph, enabled=fuse_ops)
        self.plan = plan_buffers(graph, self.kernels)
        cpu = CpuTarget.host()
        machine = cpu.machine()
        module, self.launch = build_gpu_module(graph, self.plan, symbols_of(graph), cpu.triple,
                                               str(machine.target_data), simulated=True, tf32=tf32)
        for fn_ in module.functions:   # exported, so cffi can call each kernel
            fn_.linkage = "external"
        mod = llvm.parse_assembly(str(module))
        mod.verify()
        pto = llvm.create_pipeline_tuning_options(speed_level=1)
        pb = llvm.create_pass_builder(machine, pto)
        pb.getModulePassManager().run(mod, pb)
        folder = tempfile.mkdtemp(prefix="gpusim-", dir=cache_root())
        obj = os.path.join(folder, "sim.o")
        with open(obj, "wb") as f:
            f.write(machine.emit_object(mod))
        self.library = os.path.join(folder, "sim.so")
        link_shared(obj, self.library)
        self.ffi = cffi.FFI()
        for k in self.launch.all_kernels():
            params = ", ".join(["void *"] * (len(k.args) + 1) + ["int64_t"] * 3)
            self.ffi.cdef(f"void {k.name}({params});")
        self.lib = self.ffi.dlopen(self.library)
        self.blocks, self.threads = blocks, threads

    @classmethod
    def from_graph(cls, graph, **kwargs) -> "SimulatedGpu":
        return cls(None, graph=graph, **kwargs)

    def __call__(self, *arrays):
        sig = self.signature
        checked, env = bind_inputs(sig, list(arrays))
        aliases = dict(sig.aliases)
        outs = [checked[aliases[o]] if o in aliases else np.empty(output_shape(shape, env), dt)
                for o, (dt, shape) in enumerate(sig.outputs)]
        slots = [np.zeros(nbytes + 64, np.uint8) for nbytes in self.launch.slot_bytes(env)]
        consts = [np.ascontiguousarray(c) for c in self.plan.constants]
        buffers = {"input": checked, "const": consts, "output": outs, "slot": slots}
        dims = np.array([env[s] for s in self.launch.symbols] or [0], np.int64)
        ptrs = {(space, i): a.ctypes.data for space, arrays in buffers.items()
                for i, a in enumerate(arrays)}
        for step in self.launch.steps(env, ptrs):
            if step[0] == "copy":
                _, dst, src, nbytes = step
                self.ffi.memmove(self.ffi.cast("void *", dst), self.ffi.cast("void *", src),
                                 nbytes)
                continue
            _, k, _, values = step
            args = [self.ffi.cast("void *", v) for v in values + [dims.ctypes.data]]
            fn = getattr(self.lib, k.name)
            threads = k.threads or self.threads   # some kernels need a fixed block
            for block in range(self.blocks):   # the kernel loops over the block's threads
                fn(*args, threads, block, self.blocks)
        return outs[0] if sig.single_output else tuple(outs)
