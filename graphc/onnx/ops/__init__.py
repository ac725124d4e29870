"""The ONNX op table: one handler per op type, by family (see importer.py for the contract)."""
from . import losses, math, nn, recurrent, shape, transformer  # noqa: F401  (each registers its handlers)
