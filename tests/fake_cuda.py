"""A stand-in for the CUDA driver library, for machines without a GPU.

stub_cuda.c is built into a real shared library with cuda.h's prototypes, and the runtime
dlopens it in place of libcuda: so the runtime's whole cffi path runs as against the driver
(argument conversion, out-parameters, the NUL-terminated PTX image, kernel names looked up
as .entry in that PTX, launch parameter arrays). Device memory is host memory; each launch
comes back here and runs the kernel's simulated build (gpu_sim.py: the GPU kernel's own
code built for the CPU, each block run as loops over its threads) on the launch's pointers.
Only the PTX itself is not executed (ptxas checks it separately).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import traceback

import cffi

from graphc.backends import BACKENDS
from graphc.toolchain import find_linker, tool_env
from graphc.cache import cache_root
from graphc_runtime import cuda as runtime_cuda
from gpu_sim import SimulatedGpu

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stub_cuda.c")
LAUNCH_FAILED = 719   # CUDA_ERROR_LAUNCH_FAILED: what a launch whose checks fail returns
_SIMULATED: dict[str, SimulatedGpu] = {}   # PTX -> its kernels' simulated build (stateless)

_ffi = cffi.FFI()
_ffi.cdef("""
typedef int (*launch_hook)(const char *ptx, const char *name, int nparams, unsigned gx,
                           unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, void **params);
void stub_set_launch_hook(launch_hook h);
void stub_fail_alloc_over(size_t nbytes);
void stub_event_counts(long *created, long *live, long *syncs);
""")


def build_stub() -> str:
    """The stub driver library, built once per source version into the graphc cache."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    path = os.path.join(cache_root(), f"stub-libcuda-{digest}.so")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        subprocess.run([*find_linker(), "-shared", "-fPIC", "-O1", "-Wall", "-Werror",
                        "-o", tmp, SOURCE], check=True, capture_output=True, text=True,
                       env=tool_env(find_linker()))
        os.replace(tmp, path)
    return path


class FakeDriverLibrary:
    def __init__(self, path: str):
        self.lib = _ffi.dlopen(path)   # the same handle (and globals) the runtime opens
        self.compiled: dict[str, object] = {}    # PTX -> Compiled (target cuda)
        self.modules: dict[str, dict] = {}       # PTX -> {name: (SimulatedGpu, launch entry)}
        self._by_address: dict[int, dict] = {}   # the stub's copy of a PTX -> its kernels
        self.launches: list[tuple] = []          # (name, grid x, block x)
        self.errors: list[str] = []              # what failed inside launches
        self._fail_alloc_over = None
        self.lib.stub_fail_alloc_over(2**64 - 1)
        self._hook = _ffi.callback("launch_hook", self._launch, error=LAUNCH_FAILED)
        self.lib.stub_set_launch_hook(self._hook)

    @property
    def fail_alloc_over(self):
        return self._fail_alloc_over

    @fail_alloc_over.setter
    def fail_alloc_over(self, nbytes):   # allocations larger than this fail (out of memory)
        self._fail_alloc_over = nbytes
        self.lib.stub_fail_alloc_over(2**64 - 1 if nbytes is None else nbytes)

    def event_counts(self) -> dict[str, int]:
        """Events created and alive, and event synchronizations, since the library loaded."""
        counts = _ffi.new("long[3]")
        self.lib.stub_event_counts(counts, counts + 1, counts + 2)
        return dict(zip(("created", "live", "syncs"), counts))

    def provide(self, compiled) -> None:
        """Makes the kernels of a cuda Compiled runnable, for its PTX however loaded (a
        compiled module or an artifact). install() does this for every graph loaded or
        exported while it is in place; the simulated build is made at the first launch."""
        self.compiled.setdefault(compiled.ptx, compiled)

    def _kernels(self, ptx: str) -> dict:
        if ptx not in self.modules:
            sim = _SIMULATED.get(ptx)
            if sim is None:   # built once per process: tests load the same graphs again
                c = self.compiled[ptx]
                sim = _SIMULATED[ptx] = SimulatedGpu.from_graph(c.graph, tf32=c.tf32)
            self.modules[ptx] = {k.name: (sim, k) for k in sim.launch.all_kernels()}
        return self.modules[ptx]

    def _launch(self, ptx, name, nparams, gx, gy, gz, bx, by, bz, shared, params):
        try:
            address = int(_ffi.cast("intptr_t", ptx))
            if address not in self._by_address:
                self._by_address[address] = self._kernels(_ffi.string(ptx).decode())
            name = _ffi.string(name).decode()
            sim, entry = self._by_address[address][name]
            n = len(entry.args) + 1   # buffers..., dims
            assert nparams == n, f"{name}: the PTX entry takes {nparams} parameters, plan {n}"
            assert (gy, gz, by, bz, shared) == (1, 1, 1, 1, 0), (gy, gz, by, bz, shared)
            values = [_ffi.cast("unsigned long long *", params[j])[0] for j in range(n)]
            assert all(values), f"{name}: a null device pointer among {values}"
            self.launches.append((name, gx, bx))
            kernel = getattr(sim.lib, name)
            threads = entry.threads or 4   # simulated blocks: few threads unless fixed
            grid = min(gx, 3)                    # grid-stride loops cover what blocks skip
            for block in range(grid):
                kernel(*[sim.ffi.cast("void *", v) for v in values], threads, block, grid)
            return 0
        except Exception:   # noqa: BLE001 - reported through the driver's status, and here
            self.errors.append(traceback.format_exc())
            traceback.print_exc()
            return LAUNCH_FAILED


def install(monkeypatch) -> FakeDriverLibrary:
    """Routes graphc_runtime.cuda to the stub driver library (fresh state) for one test;
    cuda graphs loaded or exported meanwhile provide their kernels to it."""
    path = build_stub()
    fake = FakeDriverLibrary(path)
    monkeypatch.setattr(runtime_cuda, "LIBRARIES", (path,))
    monkeypatch.setattr(runtime_cuda.Driver, "_instance", None)
    backend = BACKENDS["cuda"]
    for method in ("load", "artifact"):
        original = getattr(backend, method)

        def provide_first(compiled, original=original):
            fake.provide(compiled)
            return original(compiled)
        monkeypatch.setattr(backend, method, provide_first)
    return fake
