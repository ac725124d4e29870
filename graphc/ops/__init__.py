"""Importing this package fills the op registry."""
from . import control, conv, elementwise, flash, indexing  # noqa: F401
from . import linalg, movement, random, reduce  # noqa: F401
from .registry import OPS, OpDef, defop  # noqa: F401
