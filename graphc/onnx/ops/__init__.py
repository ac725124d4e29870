"""The ONNX op table: one handler per op type, by family (see importer.py for the contract)."""
from . import activation, math, nn, recurrent, reduce, shape  # noqa: F401  (each registers its handlers)
from . import losses, resize, sample, transformer  # noqa: F401
