"""ONNX in and out: `load` an ONNX model as a graphc Graph, `compile` it, run ONNX's backend
tests through `Backend`, and `export` graphc graphs as ONNX models.

Needs the optional `onnx` package (pip install 'graphc[onnx]'); importing graphc.onnx works
without it, and each entry point says what is missing.
"""
from __future__ import annotations

from .importer import HANDLERS, NeedsValue, OnnxError, load, read_model


def compile(model_or_path, dims=None, weights_as_inputs: bool = False, values=None,
            **compile_options):  # noqa: A001 - the issue's name: graphc.onnx.compile
    """graphc.compile(graphc.onnx.load(model, ...), **compile_options): call it with the
    model's inputs (positionally in ONNX order, or by name); it returns a dict of outputs."""
    from ..compiler import compile as compile_graph
    return compile_graph(load(model_or_path, dims, weights_as_inputs, values), **compile_options)


def supported() -> list[str]:
    """The ONNX op types graphc imports."""
    from . import ops  # noqa: F401
    return sorted(HANDLERS)


def __getattr__(name):
    if name == "SUPPORTED":
        return supported()
    if name in ("Backend", "BackendRep"):
        from .importer import _onnx
        _onnx()   # (a clear ImportError without the onnx package)
        from . import backend
        return getattr(backend, name)
    if name == "export":
        from .exporter import export
        return export
    raise AttributeError(f"module 'graphc.onnx' has no attribute {name!r}")


__all__ = ["load", "compile", "export", "Backend", "BackendRep", "OnnxError", "NeedsValue",
           "supported", "read_model"]
