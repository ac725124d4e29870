"""Importing this package fills the op registry."""
from . import control, elementwise, linalg, movement, random, reduce  # noqa: F401
from .registry import OPS, OpDef, defop  # noqa: F401
