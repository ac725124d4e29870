"""Loads a compiled CPU library with cffi (ABI mode) and calls its one entry point.

The library exports (see graphc/codegen/cpu.py, which generates it):
    int32_t graphc_abi_version(void);
    int64_t graphc_workspace_size(const int64_t *dims);
    int32_t graphc_run(void **buffers, void *workspace, const int64_t *dims);
    const char *graphc_interface(void);   (the signature it was built for, as JSON)
`buffers` holds the inputs, then the constants, then the outputs; `dims` the symbol sizes.
"""
from __future__ import annotations

import os
import sys
import threading
import weakref

import cffi
import numpy as np

from .abi import ABI_VERSION, BUFFER_ALIGN
from .errors import LoadError
from .signature import Signature, bind_inputs, interface_text, merge_inputs, output_shape

_ffi = cffi.FFI()
_ffi.cdef("""
int32_t graphc_abi_version(void);
int64_t graphc_workspace_size(const int64_t *dims);
int32_t graphc_run(void **buffers, void *workspace, const int64_t *dims);
const char *graphc_interface(void);
void graphc_set_num_threads(int32_t n);
int32_t graphc_get_num_threads(void);
void graphc_after_fork(void);
int64_t *graphc_profile_ns(void);
int32_t graphc_profile_count(void);
""")
_ERRORS = {1: "out of memory for the kernels' scratch buffers"}

# Threads: each library has its own pool (started on the first big kernel), sized by
# GRAPHC_NUM_THREADS or the CPUs this process may use, unless set_num_threads says otherwise.
_num_threads: int | None = None
_live: "weakref.WeakSet[Executable]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A child made by fork() while another thread was inside a call would find that call's
    lock held forever: every loaded library gets a fresh one (its native pool resets itself
    the same way)."""
    for exe in list(_live):
        exe._lock = threading.Lock()
        try:
            exe._lib.graphc_after_fork()
        except AttributeError:
            pass  # a library built before this entry point existed


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n: int) -> None:
    """Threads for big kernels, in every library loaded now or later (1: single-threaded)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected an integer >= 1, got {n!r}")
    _num_threads = n
    for exe in list(_live):
        exe._apply_threads()


def get_num_threads() -> int:
    """The thread count big kernels use (set_num_threads, GRAPHC_NUM_THREADS, or the CPUs)."""
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("GRAPHC_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) >= 1:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Executable:
    """A loaded graph: call it with numpy arrays, get numpy arrays back."""

    def __init__(self, library_path: str, signature: Signature, constants=()):
        try:
            self._lib = _ffi.dlopen(library_path)
            version = self._lib.graphc_abi_version()
        except (OSError, AttributeError) as err:
            raise LoadError(f"cannot load compiled library {library_path}: {err}") from err
        if version != ABI_VERSION:
            raise LoadError(f"{library_path}: ABI version {version}, this runtime speaks "
                            f"{ABI_VERSION}")
        self.signature = signature
        self.library_path = library_path
        # cache-line aligned: kernels stream prepacked weights with whole-vector loads
        self._constants = [aligned(c) for c in constants]
        try:
            built_for = _ffi.string(self._lib.graphc_interface()).decode()
        except (AttributeError, UnicodeDecodeError) as err:
            raise LoadError(f"{library_path}: no readable graphc_interface symbol: {err}") from None
        if built_for != interface_text(signature, self._constants):
            raise LoadError(f"{library_path}: the library was built for a different signature or "
                            f"different weights than the ones given (library: {built_for[:200]})")
        self._nbufs = len(signature.inputs) + len(self._constants) + len(signature.outputs)
        self._workspace = np.empty(0, np.uint8)
        self._workspace_for: tuple | None = None
        self._lock = threading.Lock()
        self._outputs = OutputPool()
        _live.add(self)
        self._apply_threads()

    def profile_counters(self) -> np.ndarray | None:
        """An instrumented build's per-kernel nanosecond counters, as a writable int64 view
        of the library's own array (they add up over calls: zero them first), or None for a
        build without them."""
        try:
            count = int(self._lib.graphc_profile_count())
            data = self._lib.graphc_profile_ns()
        except AttributeError:
            return None
        return np.frombuffer(_ffi.buffer(data, 8 * count), dtype=np.int64)

    def call_timed(self, *arrays) -> tuple[tuple, np.ndarray]:
        """call_flat, and the seconds of each profile counter in that call (an instrumented
        build's; LoadError for a build without counters)."""
        counters = self.profile_counters()
        if counters is None:
            raise LoadError(f"{self.library_path}: not an instrumented build (no per-kernel "
                            f"counters to time a call with)")
        counters[:] = 0
        out = self.call_flat(*arrays)
        return out, counters / 1e9

    def _apply_threads(self) -> None:
        if _num_threads is not None:
            try:
                self._lib.graphc_set_num_threads(_num_threads)
            except AttributeError:
                pass  # a library built before threads existed: single-threaded

    def __call__(self, *args):
        """Runs the graph on pytrees of arrays shaped like the traced arguments."""
        sig = self.signature
        if sig._plain_in and sig._plain_out:
            return self._generic(*args)
        return sig.structure(self._generic(*sig.flatten_args(args)))

    def call_flat(self, *arrays) -> tuple:
        """The input leaves in order in, every output leaf back as a tuple (no structure)."""
        out = self._generic(*arrays)
        return out if isinstance(out, tuple) else (out,)

    @property
    def _generic(self) -> "BoundCall":
        call = self.__dict__.get("_generic_call")
        if call is None:
            call = self.__dict__["_generic_call"] = BoundCall(self, {})
        return call

    def bind(self, fixed: dict[int, np.ndarray], reuse_outputs: bool = False) -> "BoundCall":
        """A faster callable taking only the inputs not in `fixed` (input index -> array).

        Fixed arrays are checked once and their addresses kept: they must stay alive and
        must not be resized (state updated in place, hyperparameters written into 0-d arrays).
        With reuse_outputs, output arrays are reused between calls (each call overwrites the
        previous results): for callers that consume results at once, like a training step.
        """
        return BoundCall(self, fixed, reuse_outputs)

    def _workspace_ptr(self, dims_tuple, dims):
        if self._workspace_for != dims_tuple:
            need = int(self._lib.graphc_workspace_size(dims)) + BUFFER_ALIGN
            if need > self._workspace.size:
                self._workspace = allocate(need, np.uint8, "the kernels' scratch memory")
            base = self._workspace.ctypes.data
            self._workspace_aligned = _ffi.cast("void *", base + (-base) % BUFFER_ALIGN)
            self._workspace_for = dims_tuple
        return self._workspace_aligned


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


PHYSICAL_MEMORY = _physical_memory()


def allocate(shape, dtype, what: str) -> np.ndarray:
    """np.empty, with a MemoryError that names the buffer when the memory is not there.
    More than the machine's physical memory is refused up front: the OS would grant it
    (overcommit) and the process would be killed when the kernels write it."""
    size = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=object))
    if PHYSICAL_MEMORY is not None and size > PHYSICAL_MEMORY:
        raise MemoryError(f"cannot allocate {what}: {size} bytes for these input sizes, more "
                          f"than this machine's {PHYSICAL_MEMORY} bytes of memory")
    try:
        return np.empty(shape, dtype)
    except (MemoryError, ValueError) as err:
        raise MemoryError(f"cannot allocate {what}: {size} bytes for these input sizes "
                          f"({type(err).__name__}: {err})") from None


def aligned(array) -> np.ndarray:
    """A C-contiguous array whose data starts on a BUFFER_ALIGN boundary (a copy if needed)."""
    a = np.ascontiguousarray(array)
    if a.ctypes.data % BUFFER_ALIGN == 0:
        return a
    raw = np.empty(a.nbytes + BUFFER_ALIGN, np.uint8)
    start = (-raw.ctypes.data) % BUFFER_ALIGN
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


class OutputPool:
    """Memory for big outputs, recycled once the caller has dropped every array using it.

    Fresh memory from the OS costs a page fault per page on first touch (milliseconds for
    tens of MB); a loop that drops each result before the next call gets the same, already
    mapped, memory back instead. An output array is a view of a pool buffer, as is any view
    of it, so while the caller holds any of them the buffer's reference count shows it."""

    MIN_BYTES = 1 << 20
    LIMIT = 4           # buffers kept per executable; beyond that, plain np.empty

    def __init__(self):
        self.buffers: list[np.ndarray] = []

    def empty(self, shape, dtype, index: int = 0) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        if nbytes < self.MIN_BYTES:
            return np.empty(shape, dtype)
        free = None
        for buf in self.buffers:
            # references: the list, `buf`, getrefcount's argument: nobody else holds it
            if buf.nbytes == nbytes and sys.getrefcount(buf) <= 3:
                free = buf
                break
        if free is None:
            if len(self.buffers) >= self.LIMIT:
                return allocate(shape, dtype, f"output {index}")
            free = allocate(nbytes, np.uint8, f"output {index}")
            self.buffers.append(free)
        return free.view(dtype).reshape(shape)


class BoundCall:
    """The per-call path: check the inputs, set pointers, one native call."""

    def __init__(self, exe: Executable, fixed: dict[int, np.ndarray], reuse_outputs: bool = False):
        sig = exe.signature
        self.exe, self.sig, self.reuse = exe, sig, reuse_outputs
        n_in, n_const = len(sig.inputs), len(exe._constants)
        for i, a in fixed.items():
            name, dtype, shape = sig.inputs[i]
            if any(isinstance(d, str) for d in shape):
                raise ValueError(f"input '{name}' has a symbolic shape and cannot be fixed")
        # full checks of the fixed arrays, once (placeholders for the others)
        if fixed:
            probe = [fixed.get(i) for i in range(n_in)]
            for i, (name, dtype, shape) in enumerate(sig.inputs):
                if probe[i] is None:
                    probe[i] = np.zeros([1 if isinstance(d, str) else d for d in shape], dtype)
            checked, _ = bind_inputs(sig, probe)
            for i in fixed:
                if checked[i] is not fixed[i]:
                    raise ValueError(f"fixed input '{sig.inputs[i][0]}' must be a C-contiguous "
                                     f"{sig.inputs[i][1]} array")
        self.fixed = dict(fixed)
        self.dynamic = [i for i in range(n_in) if i not in fixed]
        self.checks = [(np.dtype(sig.inputs[i][1]), sig.inputs[i][2]) for i in self.dynamic]
        self.in_place_dynamic = any(i not in fixed for _, i in sig.aliases)
        self.bufs = _ffi.new("void *[]", max(exe._nbufs, 1))
        self.keep = {}
        for i, a in fixed.items():
            self._set(i, a)
        for k, c in enumerate(exe._constants):
            self._set(n_in + k, c)
        self.out_base = n_in + n_const
        self.dims = _ffi.new("int64_t[]", max(len(sig.symbols), 1))
        self.dims_tuple = None
        self.last = None   # (array, shape, dtype, strides) of the last call's dynamic inputs
        self._graphc_run = exe._lib.graphc_run
        self.outs_for = None
        self.outs: list[np.ndarray] = []

    def _set(self, index: int, a: np.ndarray) -> None:
        ptr = _ffi.from_buffer(a, require_writable=False) if a.size else _ffi.NULL
        self.keep[index] = ptr
        self.bufs[index] = ptr

    def __call__(self, *arrays):
        return self.call(arrays)

    def call(self, arrays: tuple):
        """The call with its inputs as one tuple (what a training step's loop calls: a bound
        method's call costs half an instance's __call__)."""
        # One call at a time per executable: the pointer table, dims and workspace are shared.
        # (acquire/release: half the cost of `with` on this path.)
        lock = self.exe._lock
        lock.acquire()
        try:
            last = self.last
            if last is not None and len(arrays) == len(last):
                # The very arrays of the previous call, unchanged (a reference to each is
                # kept with its buffer exported, so its memory cannot move): nothing to check.
                for a, (b, shape, dtype, strides) in zip(arrays, last):
                    if a is not b or a.shape != shape or a.dtype is not dtype or \
                            a.strides != strides:
                        break
                else:
                    if sig_bounds := self.sig.index_bounds:   # the values may have changed
                        self._check_indices(arrays, sig_bounds)
                    if self.reuse and self.exe._workspace_for is self.dims_tuple:
                        # _run without the checks that hold here (the steady state of a
                        # training loop: ~0.3 us of a few-us step)
                        status = self._graphc_run(self.bufs, self.exe._workspace_aligned,
                                                  self.dims)
                        if status != 0:
                            _raise_status(status)
                        return self.result
                    return self._run(self.dims_tuple)
            return self._call(arrays)
        finally:
            lock.release()

    def _check_indices(self, arrays, bounds):
        given = merge_inputs(self.sig, self.dynamic, arrays, self.fixed) if self.fixed \
            else list(arrays)
        self.sig.check_indices(given, dict(zip(self.sig.symbols, self.dims_tuple)))

    def _call(self, arrays):
        sig = self.sig
        env = self._fast_env(arrays) if len(arrays) == len(self.dynamic) else None
        self.last = None if env is None else [(a, a.shape, a.dtype, a.strides) for a in arrays]
        if env is None:
            # the slow path: full checks with clear messages (and conversions of lists etc.)
            given = merge_inputs(sig, self.dynamic, arrays, self.fixed) if self.fixed \
                else list(arrays)
            checked, env = bind_inputs(sig, given)   # (checks index inputs too)
            arrays = [checked[i] for i in self.dynamic]
        elif sig.index_bounds:
            given = merge_inputs(sig, self.dynamic, arrays, self.fixed) if self.fixed \
                else list(arrays)
            sig.check_indices(given, env)
        dims_tuple = tuple([env[s] for s in sig.symbols])
        if dims_tuple != self.dims_tuple:
            sig.check_sizes(env)   # new sizes: every size the code computes must fit
            for k, v in enumerate(dims_tuple):
                self.dims[k] = v
            self.dims_tuple = dims_tuple
        bufs, keep, from_buffer = self.bufs, self.keep, _ffi.from_buffer
        for i, a in zip(self.dynamic, arrays):
            keep[i] = bufs[i] = from_buffer(a, require_writable=False) if a.size else _ffi.NULL
        if not self.reuse or self.outs_for != dims_tuple:
            self._new_outputs(arrays, env, dims_tuple)
        return self._run(dims_tuple, arrays, env)

    def _run(self, dims_tuple, arrays=None, env=None):
        if not self.reuse and arrays is None:
            self._new_outputs([a for a, *_ in self.last], None, dims_tuple)
        exe = self.exe
        workspace = exe._workspace_aligned if exe._workspace_for == dims_tuple else \
            exe._workspace_ptr(dims_tuple, self.dims)
        status = self._graphc_run(self.bufs, workspace, self.dims)
        if status != 0:
            _raise_status(status)
        return self.result

    def _new_outputs(self, arrays, env, dims_tuple) -> None:
        sig = self.sig
        if env is None:
            env = dict(zip(sig.symbols, dims_tuple))
        inputs = {**self.fixed, **dict(zip(self.dynamic, arrays))}
        aliases = dict(sig.aliases)  # output -> input it is written into
        new = self.exe._outputs.empty
        outs = [inputs[aliases[o]] if o in aliases else new(output_shape(shape, env), dtype, o)
                for o, (dtype, shape) in enumerate(sig.outputs)]
        for o, a in enumerate(outs):
            self._set(self.out_base + o, a)
        self.outs, self.outs_for = outs, dims_tuple
        self.result = outs[0] if sig.single_output else tuple(outs)

    def _fast_env(self, arrays):
        """The symbol sizes when every input is already exactly right (ndarray, dtype,
        contiguous, aligned, shapes consistent), else None: then bind_inputs converts or
        explains. In-place inputs always take the full path (it checks their overlaps)."""
        if self.in_place_dynamic:
            return None
        env: dict[str, int] = {}
        for (dtype, shape), a in zip(self.checks, arrays):
            if type(a) is not np.ndarray or (a.dtype is not dtype and a.dtype != dtype):
                return None
            got = a.shape
            if len(got) != len(shape):
                return None
            for want, n in zip(shape, got):
                if want.__class__ is str:
                    if env.setdefault(want, n) != n:
                        return None
                elif want != n:
                    return None
            flags = a.flags
            if not (flags.c_contiguous and flags.aligned):
                return None
        return env


def _raise_status(status: int):
    raise RuntimeError(f"the compiled graph failed: {_ERRORS.get(status, f'error status {status}')}")
