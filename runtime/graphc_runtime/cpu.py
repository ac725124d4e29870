"""Loads a compiled CPU library with cffi (ABI mode) and calls its one entry point.

The library exports (see graphc/codegen/cpu.py, which generates it):
    int32_t graphc_abi_version(void);
    int64_t graphc_workspace_size(const int64_t *dims);
    int32_t graphc_run(void **buffers, void *workspace, const int64_t *dims);
    const char *graphc_interface(void);   (the signature it was built for, as JSON)
`buffers` holds the inputs, then the constants, then the outputs; `dims` the symbol sizes.
"""
from __future__ import annotations

import threading

import cffi
import numpy as np

from .errors import LoadError
from .signature import Signature, bind_inputs, interface_text, output_shape

ABI_VERSION = 1
_ffi = cffi.FFI()
_ffi.cdef("""
int32_t graphc_abi_version(void);
int64_t graphc_workspace_size(const int64_t *dims);
int32_t graphc_run(void **buffers, void *workspace, const int64_t *dims);
const char *graphc_interface(void);
""")
_ALIGN = 64


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
        self._constants = [np.ascontiguousarray(c) for c in constants]
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

    def __call__(self, *arrays):
        sig = self.signature
        arrays, env = bind_inputs(sig, arrays)
        dims_tuple = tuple(env[s] for s in sig.symbols)
        outs = [np.empty(output_shape(shape, env), dtype) for dtype, shape in sig.outputs]
        for o, i in sig.aliases:  # the native code writes these into the input arrays
            outs[o] = arrays[i]
        dims = _ffi.new("int64_t[]", list(dims_tuple) or [0])
        bufs = _ffi.new("void *[]", max(self._nbufs, 1))
        keep = []
        for i, a in enumerate([*arrays, *self._constants, *outs]):
            ptr = _ffi.from_buffer(a, require_writable=False) if a.size else _ffi.NULL
            keep.append(ptr)
            bufs[i] = ptr
        with self._lock:
            workspace = self._workspace_ptr(dims_tuple, dims)
            status = self._lib.graphc_run(bufs, workspace, dims)
        if status != 0:
            raise RuntimeError(f"compiled graph returned status {status}")
        return outs[0] if sig.single_output else tuple(outs)

    def _workspace_ptr(self, dims_tuple, dims):
        if self._workspace_for != dims_tuple:
            need = int(self._lib.graphc_workspace_size(dims)) + _ALIGN
            if need > self._workspace.size:
                self._workspace = np.empty(need, np.uint8)
            self._workspace_for = dims_tuple
        base = self._workspace.ctypes.data
        return _ffi.cast("void *", base + (-base) % _ALIGN)
