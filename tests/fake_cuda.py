"""A stand-in for the CUDA driver library, in Python, for machines without a GPU.

It implements the driver calls graphc_runtime/cuda.py makes, with host memory as "device"
memory and kernels from gpu_sim.py (the GPU kernels' own code built for the CPU, each block
run as loops over its threads). So the runtime's real code path runs end to end: driver
checks, allocation, copies, launch parameters and grid sizes, resident state, sync,
relaunch, artifacts. Only the PTX itself is not executed (ptxas checks it separately).
"""
from __future__ import annotations

import numpy as np

from graphc_runtime import cuda as runtime_cuda
from gpu_sim import SimulatedGpu

_ffi = runtime_cuda._ffi
ERRORS = {0: ("CUDA_SUCCESS", "no error"), 2: ("CUDA_ERROR_OUT_OF_MEMORY", "out of memory"),
          500: ("CUDA_ERROR_NOT_FOUND", "named symbol not found")}


class FakeDriverLibrary:
    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self.kernels: dict[str, tuple] = {}      # name -> (SimulatedGpu, launch entry)
        self.launches: list[tuple] = []
        self.fail_alloc_over: int | None = None  # bytes; larger allocations fail
        self._names = {code: (_ffi.new("char[]", n.encode()), _ffi.new("char[]", t.encode()))
                       for code, (n, t) in ERRORS.items()}

    def provide(self, compiled) -> None:
        """Makes the kernels of a CudaCompiled available (as if its PTX had been loaded)."""
        sim = SimulatedGpu.from_graph(compiled.graph)
        for k in sim.launch["kernels"]:
            self.kernels[k["name"]] = (sim, k)

    # ---- the driver API subset
    def cuInit(self, flags):
        return 0

    def cuDeviceGetCount(self, count):
        count[0] = 1
        return 0

    def cuDeviceGet(self, dev, ordinal):
        dev[0] = 0
        return 0

    def cuDevicePrimaryCtxRetain(self, ctx, dev):
        ctx[0] = _ffi.cast("CUcontext", 1)
        return 0

    def cuCtxSetCurrent(self, ctx):
        return 0

    def cuDeviceGetName(self, name, length, dev):
        data = b"Fake GPU (host memory, simulated kernels)"
        _ffi.memmove(name, data + b"\0", min(length, len(data) + 1))
        return 0

    def cuDeviceGetAttribute(self, value, attrib, dev):
        value[0] = {75: 8, 76: 0}.get(attrib, 0)
        return 0

    def cuModuleLoadDataEx(self, module, image, n, options, values):
        module[0] = _ffi.cast("CUmodule", 1)
        return 0

    def cuModuleGetFunction(self, fn, module, name):
        key = (name if isinstance(name, bytes) else _ffi.string(name)).decode()
        if key not in self.kernels:
            return 500
        fn[0] = _ffi.cast("CUfunction", list(self.kernels).index(key) + 1)
        return 0

    def cuMemAlloc_v2(self, ptr, nbytes):
        if self.fail_alloc_over is not None and nbytes > self.fail_alloc_over:
            return 2
        buf = np.zeros(nbytes + 64, np.uint8)
        addr = buf.ctypes.data
        self.memory[addr] = buf
        ptr[0] = addr
        return 0

    def cuMemFree_v2(self, ptr):
        self.memory.pop(int(ptr), None)
        return 0

    def cuMemcpyHtoD_v2(self, dst, src, nbytes):
        _ffi.memmove(_ffi.cast("void *", dst), src, nbytes)
        return 0

    def cuMemcpyDtoH_v2(self, dst, src, nbytes):
        _ffi.memmove(dst, _ffi.cast("void *", src), nbytes)
        return 0

    def cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        name = list(self.kernels)[int(_ffi.cast("intptr_t", fn)) - 1]
        sim, entry = self.kernels[name]
        n = len(entry["args"]) + 1
        values = [_ffi.cast("CUdeviceptr *", params[j])[0] for j in range(n)]
        args = [_ffi.cast("void *", v) for v in values]
        kernel = getattr(sim.lib, name)
        threads = entry.get("threads", 4)   # simulated blocks: few threads unless fixed
        self.launches.append((name, gx, bx))
        for block in range(min(gx, 3)):      # grid-stride loops cover what the blocks skip
            kernel(*[sim.ffi.cast("void *", int(_ffi.cast("intptr_t", a))) for a in args],
                   threads, block, min(gx, 3))
        return 0

    def cuCtxSynchronize(self):
        return 0

    def cuGetErrorName(self, code, out):
        out[0] = self._names.get(code, self._names[500])[0]
        return 0

    def cuGetErrorString(self, code, out):
        out[0] = self._names.get(code, self._names[500])[1]
        return 0


def install(monkeypatch) -> FakeDriverLibrary:
    """Routes graphc_runtime.cuda to a fresh fake driver for one test."""
    fake = FakeDriverLibrary()
    monkeypatch.setattr(runtime_cuda._ffi, "dlopen", lambda name: fake)
    monkeypatch.setattr(runtime_cuda.Driver, "_instance", None)
    return fake
