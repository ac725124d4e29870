"""Runs a target="wasm32" build (a WASI reactor module) through wasmtime, on any host.

The module runs sandboxed in its own linear memory: each call checks its inputs exactly as
the native runtime does (bind_inputs, check_sizes), copies them into memory the module's
malloc returns, calls graphc_run, and copies the outputs back. A bug or a bad size inside
the module traps, and the trap becomes a RuntimeError; the process never crashes. Needs the
`wasmtime` package (graphc[wasm]).
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from .abi import ABI_VERSION, BUFFER_ALIGN
from .errors import LoadError
from .signature import Signature, bind_inputs, interface_text, output_shape

# the module's 32-bit address space: what one call may place in it
MAX_MEMORY = 1 << 32


def _wasmtime():
    try:
        import wasmtime
    except ImportError:
        raise LoadError("running a wasm32 build needs the wasmtime package: pip install "
                        "wasmtime (or graphc[wasm])") from None
    return wasmtime


class WasmExecutable:
    """A wasm32 build, callable like the native Executable (inference: no bind)."""

    def __init__(self, wasm: bytes, signature: Signature, constants, name: str = "graph.wasm"):
        wt = _wasmtime()
        self._wt = wt
        self.signature = signature
        self.library_path = name
        self._constants = [np.ascontiguousarray(c) for c in constants]
        engine = wt.Engine()
        self._store = wt.Store(engine)
        try:
            module = wt.Module(engine, wasm)
            linker = wt.Linker(engine)
            linker.define_wasi()
            self._store.set_wasi(wt.WasiConfig())   # no files, no environment, no arguments
            instance = linker.instantiate(self._store, module)
            ex = instance.exports(self._store)
            self._mem = ex["memory"]
            self._malloc, self._free = ex["malloc"], ex["free"]
            self._run, self._ws = ex["graphc_run"], ex["graphc_workspace_size"]
            if "_initialize" in ex:
                ex["_initialize"](self._store)
            abi = ex["graphc_abi_version"](self._store)
            built_for = self._cstring(ex["graphc_interface"](self._store))
        except (wt.WasmtimeError, wt.Trap, KeyError, UnicodeDecodeError) as err:
            raise LoadError(f"{name}: not a loadable graphc wasm32 module: "
                            f"{type(err).__name__}: {err}") from None
        if abi != ABI_VERSION:
            raise LoadError(f"{name}: native ABI version {abi}, this runtime speaks "
                            f"{ABI_VERSION}")
        if built_for != interface_text(signature, self._constants):
            raise LoadError(f"{name}: the module was built for a different signature or "
                            f"different weights than the ones given (module: {built_for[:200]})")
        self._lock = threading.Lock()
        self._aliases = dict(signature.aliases)   # output -> the input it is written into
        self._allocated: list[int] = []   # malloc'd blocks: the weights', then each call's
        # the weights live in the module's memory for its lifetime
        self._const_ptrs = [self._place(c) for c in self._constants]

    # ------------------------------------------------------------ memory
    def _cstring(self, ptr: int, limit: int = 1 << 20) -> str:
        data = self._mem.read(self._store, ptr, min(ptr + limit, self._mem.data_len(self._store)))
        end = data.find(b"\0")
        if end < 0:
            raise UnicodeDecodeError("utf-8", b"", 0, 0, "unterminated interface text")
        return data[:end].decode()

    def _alloc(self, nbytes: int) -> int:
        """BUFFER_ALIGN-aligned memory in the module (the kernels' alignment assumption)."""
        if nbytes + BUFFER_ALIGN >= MAX_MEMORY:
            raise MemoryError(f"a wasm32 module addresses 4 GiB; this call needs a {nbytes}-byte "
                              f"buffer")
        raw = self._malloc(self._store, nbytes + BUFFER_ALIGN)
        if raw == 0:
            raise MemoryError(f"the wasm32 module's malloc could not give {nbytes} bytes")
        self._allocated.append(raw)
        return raw + (-raw) % BUFFER_ALIGN

    def _base(self) -> int:
        """The address of the module's memory now (read after any malloc: it can grow)."""
        return ctypes.cast(self._mem.data_ptr(self._store), ctypes.c_void_p).value

    def _place(self, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a)
        ptr = self._alloc(max(a.nbytes, 1))
        if a.nbytes:   # one copy, straight into the module's memory
            ctypes.memmove(self._base() + ptr, a.ctypes.data, a.nbytes)
        return ptr

    # ------------------------------------------------------------ calls
    def __call__(self, *args):
        sig = self.signature
        if sig._plain_in and sig._plain_out:
            out = self.call_flat(*args)
            return out[0] if sig.single_output else out
        return sig.structure(self.call_flat(*sig.flatten_args(args)))

    def call_flat(self, *arrays) -> tuple:
        sig = self.signature
        checked, env = bind_inputs(sig, list(arrays))
        sig.check_sizes(env)
        dims = np.array([env[s] for s in sig.symbols] or [0], np.int64)
        shapes = [output_shape(shape, env) for _, shape in sig.outputs]
        with self._lock:
            keep, self._allocated = self._allocated, []
            try:
                return self._call(checked, dims, shapes)
            finally:
                for raw in self._allocated:
                    self._free(self._store, raw)
                self._allocated = keep

    def _call(self, checked, dims, shapes) -> tuple:
        wt, store = self._wt, self._store
        aliases = self._aliases
        # an output written over an input is that input, updated in place (as natively)
        outs = [checked[aliases[o]] if o in aliases else np.empty(shape, dtype)
                for o, ((dtype, _), shape) in enumerate(zip(self.signature.outputs, shapes))]
        ins = [self._place(a) for a in checked]
        ptrs = ins + self._const_ptrs + [ins[aliases[o]] if o in aliases else
                                         self._alloc(max(o_.nbytes, 1))
                                         for o, o_ in enumerate(outs)]
        table = self._place(np.array(ptrs, np.uint32))
        dims_ptr = self._place(dims)
        try:
            ws = int(self._ws(store, dims_ptr))
            status = self._run(store, table, self._alloc(max(ws, 1)), dims_ptr)
        except wt.Trap as err:
            raise RuntimeError(f"the wasm32 module trapped (its sandbox stopped it; nothing "
                               f"outside the module was touched): {err}") from None
        if status != 0:
            raise RuntimeError(f"the compiled graph failed: error status {status}")
        first, mem = len(checked) + len(self._const_ptrs), self._base()
        for k, o in enumerate(outs):
            if o.nbytes:
                ctypes.memmove(o.ctypes.data, mem + ptrs[first + k], o.nbytes)
        return tuple(outs)

    def bind(self, fixed, reuse_outputs: bool = False) -> "WasmBound":
        """The inputs in `fixed` (index -> array) given once; as Executable.bind (every call
        copies them into the module, so arrays updated in place are seen)."""
        return WasmBound(self, dict(fixed))


class WasmBound:
    def __init__(self, exe: WasmExecutable, fixed: dict):
        self.exe, self.fixed = exe, fixed
        self.n = len(exe.signature.inputs)

    def call(self, arrays: tuple):
        it = iter(arrays)
        out = self.exe.call_flat(*[self.fixed[i] if i in self.fixed else next(it)
                                   for i in range(self.n)])
        return out[0] if self.exe.signature.single_output else out

    def __call__(self, *arrays):
        return self.call(arrays)


__all__ = ["WasmExecutable"]
