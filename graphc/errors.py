"""The graphc exception family; every error names the op and the user's line where it can."""
from __future__ import annotations

# Input checks run in the runtime, which has its own error family; graphc re-exports its
# InputError so `except graphc.InputError` catches errors from both.
from graphc_runtime.errors import InputError  # noqa: F401


class GraphcError(Exception):
    """Base of every error graphc raises on purpose."""

    def __init__(self, message: str, *, op: str | None = None, loc: str | None = None,
                 fix: str | None = None):
        self.message, self.op, self.loc, self.fix = message, op, loc, fix
        text = message
        if loc:
            text += f"\n  at {loc}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class TraceError(GraphcError):
    """The function could not be traced (wrong argument types, Python control flow on tensors)."""


class ShapeError(GraphcError, ValueError):
    """Shapes do not fit an op."""


class DTypeError(GraphcError, TypeError):
    """A dtype an op does not accept."""


class GradError(GraphcError):
    """Differentiation is impossible or was asked for something not differentiable."""


class CompileError(GraphcError):
    """Code generation, optimisation or linking failed."""
