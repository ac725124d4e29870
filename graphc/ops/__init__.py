"""Importing this package fills the op registry."""
from . import conv, elementwise, flash, indexing, linalg, movement, random, reduce  # noqa: F401
from .registry import OPS, OpDef, defop  # noqa: F401
