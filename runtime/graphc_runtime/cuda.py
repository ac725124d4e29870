"""Runs compiled PTX on an NVIDIA GPU through the CUDA driver API.

cffi in ABI mode: libcuda is opened at run time, nothing is compiled at install, and a
machine without a driver or GPU gets `CudaUnavailable` (with the reason) only when it asks
for the GPU. Every driver call's status is checked and raised as `CudaError` carrying the
CUDA error name.

The launch plan (launch.py, built by graphc/codegen/ptx.py) lists the kernels in order, the
buffers each takes (input / const / output / slot k) and its grid; the kernels take
(buffers..., dims) where dims is a device array of the symbol sizes.
"""
from __future__ import annotations

import threading
import weakref

import cffi
import numpy as np

from .errors import RuntimeErrorBase
from .launch import LaunchPlan
from .signature import (Signature, bind_inputs, merge_inputs, output_shape, size_from_json,
                        size_value)

# The driver calls used, with cuda.h's prototypes and type names (a test compiles them
# against cuda.h where the CUDA toolkit is installed). Enum types are int-sized.
CDEF = """
typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef unsigned long long CUdeviceptr;
typedef int CUjit_option;
typedef int CUdevice_attribute;
CUresult cuInit(unsigned int flags);
CUresult cuDriverGetVersion(int *version);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuDeviceGetName(char *name, int len, CUdevice dev);
CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attrib, CUdevice dev);
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuCtxSynchronize(void);
CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int n_options,
                            CUjit_option *options, void **values);
CUresult cuModuleGetFunction(CUfunction *fn, CUmodule module, const char *name);
CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t nbytes);
CUresult cuMemFree_v2(CUdeviceptr ptr);
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t nbytes);
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t nbytes);
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t nbytes);
CUresult cuLaunchKernel(CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
                        CUstream stream, void **params, void **extra);
CUresult cuEventCreate(CUevent *event, unsigned int flags);
CUresult cuEventRecord(CUevent event, CUstream stream);
CUresult cuEventSynchronize(CUevent event);
CUresult cuEventElapsedTime_v2(float *milliseconds, CUevent start, CUevent end);
CUresult cuEventElapsedTime(float *milliseconds, CUevent start, CUevent end);
CUresult cuEventDestroy_v2(CUevent event);
CUresult cuGetErrorName(CUresult error, const char **name);
CUresult cuGetErrorString(CUresult error, const char **text);
"""
_ffi = cffi.FFI()
_ffi.cdef(CDEF)

LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
_CU_JIT_INFO_LOG_BUFFER, _CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 3, 4
_CU_JIT_ERROR_LOG_BUFFER, _CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 5, 6
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76


class CudaUnavailable(RuntimeErrorBase):
    """No usable NVIDIA driver or GPU on this machine."""


class CudaError(RuntimeErrorBase):
    """A CUDA driver call failed; `name` is the CUDA error name (e.g. CUDA_ERROR_OUT_OF_MEMORY)."""

    def __init__(self, call: str, code: int, name: str, text: str):
        self.call, self.code, self.name = call, code, name
        super().__init__(f"{call} failed: {name} ({code}): {text}")


class Driver:
    """The driver library, initialized once per process, with device 0's primary context."""

    _instance: "Driver | None" = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> "Driver":
        """The driver, its context current in the calling thread."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            else:
                cls._instance.make_current()
            return cls._instance

    def __init__(self):
        errors = []
        self.lib = None
        for name in LIBRARIES:
            try:
                self.lib = _ffi.dlopen(name)
                break
            except OSError as err:
                errors.append(str(err).split(":")[-1].split(".")[0].strip() or name)
        if self.lib is None:
            raise CudaUnavailable(f"no NVIDIA driver on this machine ({LIBRARIES[0]}: "
                                  f"{errors[0]}); target='cuda' needs an NVIDIA GPU and its "
                                  f"driver")
        try:
            self.check("cuInit", self.lib.cuInit(0))
            count = _ffi.new("int *")
            self.check("cuDeviceGetCount", self.lib.cuDeviceGetCount(count))
        except CudaError as err:
            raise CudaUnavailable(f"the CUDA driver is present but unusable: {err}") from None
        if count[0] < 1:
            raise CudaUnavailable("the CUDA driver found no GPU")
        dev = _ffi.new("CUdevice *")
        self.check("cuDeviceGet", self.lib.cuDeviceGet(dev, 0))
        self.device = dev[0]
        ctx = _ffi.new("CUcontext *")
        self.check("cuDevicePrimaryCtxRetain", self.lib.cuDevicePrimaryCtxRetain(ctx, self.device))
        self.context = ctx[0]
        self.make_current()
        name = _ffi.new("char[256]")
        self.check("cuDeviceGetName", self.lib.cuDeviceGetName(name, 256, self.device))
        self.name = _ffi.string(name).decode(errors="replace")
        self.compute_capability = (self.attribute(_ATTR_CC_MAJOR), self.attribute(_ATTR_CC_MINOR))
        # Looked up now: finalizers call these, and the collector can run a finalizer inside
        # a cffi call that holds the FFI's lock (dlopen, say); a first attribute access on
        # the library there would wait for that lock forever.
        self._set_current = self.lib.cuCtxSetCurrent
        self._mem_free = self.lib.cuMemFree_v2
        self._event_destroy = self.lib.cuEventDestroy_v2
        try:   # cuda.h maps cuEventElapsedTime to _v2 since CUDA 12.8; older drivers lack it
            self.elapsed_time = self.lib.cuEventElapsedTime_v2
        except AttributeError:
            self.elapsed_time = self.lib.cuEventElapsedTime

    def free(self, ptr: int) -> None:
        """Frees device memory (from any thread, and safely from a finalizer)."""
        self._set_current(self.context)
        self._mem_free(ptr)

    def destroy_events(self, events, count: int) -> None:
        """Destroys events[0:count] (from any thread, and safely from a finalizer)."""
        self._set_current(self.context)
        for i in range(count):
            self._event_destroy(events[i])

    def make_current(self) -> None:
        # the primary context is per device and shared, but current per thread: every entry
        # point that calls the driver selects it first (a new thread has none)
        self.check("cuCtxSetCurrent", self.lib.cuCtxSetCurrent(self.context))

    def attribute(self, attrib: int) -> int:
        v = _ffi.new("int *")
        self.check("cuDeviceGetAttribute", self.lib.cuDeviceGetAttribute(v, attrib, self.device))
        return v[0]

    def check(self, call: str, status: int, detail: str | None = None) -> None:
        """Raises CudaError for a failed status; `detail` replaces the driver's description."""
        if status == 0:
            return
        name, text = _ffi.new("const char **"), _ffi.new("const char **")
        self.lib.cuGetErrorName(status, name)
        self.lib.cuGetErrorString(status, text)
        raise CudaError(call, status,
                        _ffi.string(name[0]).decode() if name[0] != _ffi.NULL else "CUDA_ERROR",
                        detail or (_ffi.string(text[0]).decode() if text[0] != _ffi.NULL else ""))

    def load_ptx(self, ptx: str):
        log = _ffi.new("char[16384]")
        opts = _ffi.new("CUjit_option[]",
                        [_CU_JIT_ERROR_LOG_BUFFER, _CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES])
        vals = _ffi.new("void *[]", [log, _ffi.cast("void *", 16384)])
        module = _ffi.new("CUmodule *")
        status = self.lib.cuModuleLoadDataEx(module, ptx.encode() + b"\0", 2, opts, vals)
        text = _ffi.string(log).decode(errors="replace").strip()
        self.check("cuModuleLoadDataEx", status,   # the JIT's own message, where it left one
                   f"the driver could not compile the PTX: {text}" if text else None)
        return module[0]

    def function(self, module, name: str):
        fn = _ffi.new("CUfunction *")
        self.check("cuModuleGetFunction", self.lib.cuModuleGetFunction(fn, module, name.encode()))
        return fn[0]


class DeviceBuffer:
    """nbytes of device memory, freed with the object."""

    def __init__(self, driver: Driver, nbytes: int):
        self.driver, self.nbytes = driver, max(int(nbytes), 1)
        ptr = _ffi.new("CUdeviceptr *")
        driver.check("cuMemAlloc", driver.lib.cuMemAlloc_v2(ptr, self.nbytes))
        self.ptr = int(ptr[0])

    def upload(self, a: np.ndarray) -> None:
        if a.nbytes:
            self.driver.check("cuMemcpyHtoD", self.driver.lib.cuMemcpyHtoD_v2(
                self.ptr, _ffi.from_buffer(a, require_writable=False), a.nbytes))

    def download(self, a: np.ndarray) -> np.ndarray:
        if a.nbytes:
            self.driver.check("cuMemcpyDtoH", self.driver.lib.cuMemcpyDtoH_v2(
                _ffi.from_buffer(a), self.ptr, a.nbytes))
        return a

    def __del__(self):
        try:   # the collector may run this in any thread, at any point (see Driver.free)
            self.driver.free(self.ptr)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver may be gone
            pass


class Events:
    """`count` timing events (CU_EVENT_DEFAULT: timing on), destroyed with the object."""

    def __init__(self, driver: Driver, count: int):
        self.driver, self.handles, self.count = driver, _ffi.new("CUevent[]", count), 0
        for i in range(count):
            driver.check("cuEventCreate", driver.lib.cuEventCreate(self.handles + i, 0))
            self.count += 1

    def __del__(self):
        try:   # (see DeviceBuffer.__del__)
            self.driver.destroy_events(self.handles, self.count)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the driver may be gone
            pass


def evaluate_size(size, env: dict[str, int]) -> int:
    """A size in any JSON shape a launch plan was written in (see launch.py)."""
    return size_value(size_from_json(size), env)


class CudaExecutable:
    """A loaded GPU graph: call it with numpy arrays (copied in and out), or bind state that
    stays on the GPU between calls."""

    def __init__(self, ptx: str, launch: LaunchPlan, signature: Signature, constants=()):
        if not isinstance(launch, LaunchPlan):   # its JSON (launch.json)
            launch = LaunchPlan.from_json(launch)
        self.driver = Driver.get()
        self.signature, self.launch = signature, launch
        self.module = self.driver.load_ptx(ptx)
        self.functions = {k.name: self.driver.function(self.module, k.name)
                          for k in launch.all_kernels()}
        self.constants = []
        for c in constants:
            c = np.ascontiguousarray(c)
            buf = DeviceBuffer(self.driver, c.nbytes)
            buf.upload(c)
            self.constants.append(buf)
        self._lock = threading.Lock()
        self._generic = None

    def __call__(self, *args):
        sig = self.signature
        return sig.structure(self._generic_call(*sig.flatten_args(args)))

    def call_flat(self, *arrays) -> tuple:
        """The input leaves in order in, every output leaf back as a tuple (no structure)."""
        out = self._generic_call(*arrays)
        return out if isinstance(out, tuple) else (out,)

    def call_timed(self, *arrays) -> tuple[tuple, np.ndarray]:
        """call_flat, and the device seconds of each row of launch.profile_rows(), from
        CUDA events recorded between the launches (see CudaBoundCall.call_timed)."""
        out, seconds = self._generic_bound().call_timed(*arrays)
        return (out if isinstance(out, tuple) else (out,)), seconds

    def _generic_call(self, *arrays):
        return self._generic_bound()(*arrays)

    def _generic_bound(self) -> "CudaBoundCall":
        if self._generic is None:   # (a weak reference back: no cycle, so dropping the
            # executable frees its device memory at once, not at some later collection)
            self._generic = CudaBoundCall(weakref.proxy(self), {})
        return self._generic

    def bind(self, fixed: dict[int, np.ndarray], reuse_outputs: bool = False,
             resident=None) -> "CudaBoundCall":
        """Fixed inputs are uploaded once. Those in `resident` (default: every fixed input
        that an output updates in place) then live on the GPU: the graph updates them there
        and `sync()` copies them back into the arrays; the other fixed inputs (small per-step
        values written in place by the caller) are uploaded again at every call."""
        return CudaBoundCall(self, fixed, resident)


class CudaBoundCall:
    def __init__(self, exe: CudaExecutable, fixed: dict[int, np.ndarray], resident=None):
        self.exe, self.sig = exe, exe.signature
        self.fixed = dict(fixed)
        aliased = {i for _, i in self.sig.aliases}
        self.resident = set(aliased & set(fixed)) if resident is None else set(resident)
        for i in self.resident:
            a = fixed.get(i)
            name, dtype, _ = self.sig.inputs[i]
            if not (isinstance(a, np.ndarray) and a.dtype == np.dtype(dtype) and
                    a.flags.c_contiguous):
                raise ValueError(f"resident input '{name}' must be a C-contiguous {dtype} "
                                 f"array (the GPU copy is synced back into it)")
        self.dynamic = [i for i in range(len(self.sig.inputs)) if i not in fixed]
        self.buffers: dict[tuple, DeviceBuffer] = {}
        self.uploaded: set[int] = set()
        self._plan = self._plan_key = None   # the launches for the last sizes and buffers
        self._events: Events | None = None   # call_timed's, one more than the plan's steps

    def _buffer(self, key, nbytes: int) -> DeviceBuffer:
        buf = self.buffers.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = self.buffers[key] = DeviceBuffer(self.exe.driver, nbytes)
        return buf

    def __call__(self, *arrays):
        return self.call(arrays)

    def call(self, arrays: tuple):
        """The call with its inputs as one tuple (as BoundCall.call)."""
        with self.exe._lock:
            return self._call(arrays)[0]

    def call_timed(self, *arrays) -> tuple[object, np.ndarray]:
        """A call's results, and the device seconds of each row of launch.profile_rows():
        a kernel its launch, a scan loop all of it (copies included), a loop body's kernel
        the sum of its launches over the steps. One event is recorded before the first step
        and one after each (events made once for these sizes), one synchronize per call."""
        with self.exe._lock:
            return self._call(arrays, timed=True)

    def _call(self, arrays, timed: bool = False):
        sig, exe = self.sig, self.exe
        given = merge_inputs(sig, self.dynamic, arrays, self.fixed)
        checked, env = bind_inputs(sig, given)   # every check before any device work
        exe.driver.make_current()
        ptrs = {}
        for i, a in enumerate(checked):
            buf = self._buffer(("input", i), a.nbytes)
            if i not in self.resident or i not in self.uploaded:
                buf.upload(a)
                self.uploaded.add(i)
            ptrs[("input", i)] = buf.ptr
        for k, c in enumerate(exe.constants):
            ptrs[("const", k)] = c.ptr
        aliases = dict(sig.aliases)
        outs = []
        for o, (dtype, shape) in enumerate(sig.outputs):
            if o in aliases:
                outs.append(None)
                continue
            out = np.empty(output_shape(shape, env), dtype)
            ptrs[("output", o)] = self._buffer(("output", o), out.nbytes).ptr
            outs.append(out)
        for s, nbytes in enumerate(exe.launch.slot_bytes(env)):
            ptrs[("slot", s)] = self._buffer(("slot", s), nbytes).ptr
        symbols = exe.launch.symbols
        dims = np.array([env[s] for s in symbols] or [0], np.int64)
        dims_buf = self._buffer(("dims",), dims.nbytes)
        key = (tuple(sorted(ptrs.items())), dims.tobytes(), dims_buf.ptr)
        if self._plan_key != key:   # new sizes or buffers: a new launch plan
            dims_buf.upload(dims)
            self._plan = self._launch_plan(ptrs, env, dims_buf.ptr)
            self._plan_key = key
        seconds = self._launch_timed() if timed else self._launch()
        results = []
        for o, out in enumerate(outs):
            if out is None:   # written in place into an input: bring it back unless resident
                i = aliases[o]
                target = checked[i]
                if i not in self.resident:
                    self.buffers[("input", i)].download(target)
                    if target is not given[i] and isinstance(given[i], np.ndarray):
                        given[i][...] = target
                results.append(given[i])
            else:
                results.append(self.buffers[("output", o)].download(out))
        return (results[0] if sig.single_output else tuple(results)), seconds

    def _launch_plan(self, ptrs: dict, env: dict, dims_ptr: int) -> list:
        """(function, grid, parameter array, profile row) per kernel to launch, and (None,
        0, (dst, src, bytes), row) per device copy (a scan loop's carry), for these sizes
        and buffers; kept while they stay the same, so a repeated call only launches."""
        exe = self.exe
        plan = []
        for row, step in exe.launch.steps(env, ptrs, rows=True):
            if step[0] == "copy":
                plan.append((None, 0, step[1:], row))
                continue
            _, k, grid, values = step
            cells = _ffi.new("CUdeviceptr[]", values + [dims_ptr])
            params = _ffi.new("void *[]", [cells + j for j in range(len(values) + 1)])
            plan.append((exe.functions[k.name], grid, (cells, params), row))
        return plan

    def _launch(self, repeat: int = 1, events=None) -> None:
        """Runs the plan `repeat` times; with `events` (repeat 1), records events[s] before
        step s and events[len(plan)] after the last, then waits for that one alone."""
        driver = self.exe.driver
        lib, block = driver.lib, self.exe.launch.block
        for _ in range(repeat):
            for s, (fn, grid, args, _) in enumerate(self._plan):
                if events is not None:
                    driver.check("cuEventRecord", lib.cuEventRecord(events[s], _ffi.NULL))
                if fn is None:   # (in stream order with the launches around it)
                    driver.check("cuMemcpyDtoD", lib.cuMemcpyDtoD_v2(*args))
                    continue
                driver.check("cuLaunchKernel", lib.cuLaunchKernel(   # (cells outlive params)
                    fn, grid, 1, 1, block, 1, 1, 0, _ffi.NULL, args[1], _ffi.NULL))
        if events is None:
            driver.check("cuCtxSynchronize", lib.cuCtxSynchronize())
            return
        last = events[len(self._plan)]
        driver.check("cuEventRecord", lib.cuEventRecord(last, _ffi.NULL))
        driver.check("cuEventSynchronize", lib.cuEventSynchronize(last))

    def _launch_timed(self) -> np.ndarray:
        """One run of the plan with events between its steps: seconds per profile row."""
        driver, rows = self.exe.driver, self.exe.launch.profile_rows()
        if self._events is None or self._events.count < len(self._plan) + 1:
            self._events = Events(driver, len(self._plan) + 1)
        events = self._events.handles
        self._launch(events=events)
        # a loop body's kernel's time counts in its row and in its loop's
        top = {i: r for r, (i, j) in enumerate(rows) if j is None}
        loop_of = [top[i] for i, _ in rows]
        ms = _ffi.new("float *")
        seconds = np.zeros(len(rows))
        for s, (_, _, _, row) in enumerate(self._plan):
            driver.check("cuEventElapsedTime",
                         driver.elapsed_time(ms, events[s], events[s + 1]))
            seconds[row] += ms[0] / 1e3
            if loop_of[row] != row:
                seconds[loop_of[row]] += ms[0] / 1e3
        return seconds

    def relaunch(self, repeat: int = 1) -> None:
        """Runs the kernels again on the data already on the GPU (the last call's inputs and
        sizes), copying nothing: for timing kernels, or repeating an in-place update.
        `repeat` runs them that many times in a row before one synchronize (timings then
        carry one synchronize's overhead per `repeat` runs)."""
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ValueError(f"repeat must be a positive int, got {repeat!r}")
        with self.exe._lock:
            if self._plan is None:
                raise RuntimeError("relaunch() needs one ordinary call first")
            self.exe.driver.make_current()
            self._launch(repeat)

    def sync(self) -> None:
        """Copies the resident inputs (state updated on the GPU) back into their arrays."""
        with self.exe._lock:
            self.exe.driver.make_current()
            for i in self.resident:
                if i in self.uploaded:
                    self.buffers[("input", i)].download(self.fixed[i])


def available() -> str | None:
    """None when a GPU can be used, else the reason it cannot."""
    try:
        Driver.get()
    except (CudaUnavailable, CudaError) as err:
        return str(err)
    return None


__all__ = ["CudaExecutable", "CudaBoundCall", "CudaError", "CudaUnavailable", "Driver",
           "available"]
