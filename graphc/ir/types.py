"""Data types, symbolic dimensions and numpy broadcasting over symbolic shapes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
NUMERIC = FLOATS + INTS
ALL_DTYPES = NUMERIC + ("bool",)
SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}


def dtype_name(dtype) -> str:
    """Canonical dtype name ('float32', ...) from a string, numpy dtype or Python type."""
    try:
        name = np.dtype(dtype).name
    except TypeError as err:
        raise TypeError(f"unknown dtype {dtype!r}; use one of {', '.join(ALL_DTYPES)}") from err
    if name not in ALL_DTYPES:
        raise TypeError(f"unsupported dtype {name!r}; use one of {', '.join(ALL_DTYPES)}")
    return name


@dataclass(frozen=True, order=True)
class Dim:
    """A symbolic size: coef * product(syms). `Dim` with no symbols never escapes: it becomes an int."""

    syms: tuple[str, ...]
    coef: int = 1

    def __post_init__(self):
        object.__setattr__(self, "syms", tuple(sorted(self.syms)))

    def __mul__(self, other: "Size") -> "Size":
        if isinstance(other, Dim):
            return make_size(self.coef * other.coef, self.syms + other.syms)
        return make_size(self.coef * int(other), self.syms)

    __rmul__ = __mul__

    def divide(self, other: "Size") -> "Size | None":
        """Exact division, or None when `other` does not divide this size."""
        osyms = other.syms if isinstance(other, Dim) else ()
        ocoef = other.coef if isinstance(other, Dim) else int(other)
        rest = list(self.syms)
        for s in osyms:
            if s not in rest:
                return None
            rest.remove(s)
        if ocoef == 0 or self.coef % ocoef:
            return None
        return make_size(self.coef // ocoef, tuple(rest))

    def evaluate(self, env: dict[str, int]) -> int:
        n = self.coef
        for s in self.syms:
            n *= env[s]
        return n

    def __str__(self) -> str:
        parts = ([str(self.coef)] if self.coef != 1 else []) + list(self.syms)
        return "*".join(parts)

    __repr__ = __str__


Size = Union[int, Dim]


def make_size(coef: int, syms: tuple[str, ...]) -> Size:
    return Dim(tuple(syms), coef) if syms and coef != 0 else coef


def dim(name: str) -> Dim:
    """A symbolic dimension: `graphc.tensor((graphc.dim("B"), 3))` accepts any batch size."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a symbolic dimension needs an identifier name, got {name!r}")
    return Dim((name,))


def size_mul(a: Size, b: Size) -> Size:
    if isinstance(a, Dim):
        return a * b
    if isinstance(b, Dim):
        return b * a
    return a * b


def numel(shape) -> Size:
    n: Size = 1
    for d in shape:
        n = size_mul(n, d)
    return n


def size_eval(size: Size, env: dict[str, int]) -> int:
    return size.evaluate(env) if isinstance(size, Dim) else int(size)


def normalize_shape(shape) -> tuple[Size, ...]:
    """Turns ints, Dims and bare names into a shape tuple; rejects anything else."""
    if isinstance(shape, (int, str, Dim, np.integer)):
        shape = (shape,)
    out = []
    for d in shape:
        if isinstance(d, str):
            d = dim(d)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            d = int(d)
            if d < 0:
                raise ValueError(f"negative dimension {d} in shape {tuple(shape)}")
        elif not isinstance(d, Dim):
            raise TypeError(f"a shape entry must be an int or graphc.dim, got {d!r}")
        out.append(d)
    return tuple(out)


def fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast_shapes(*shapes) -> tuple[Size, ...]:
    """numpy broadcasting; raises ValueError naming the clashing dims."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        size: Size = 1
        for s in shapes:
            k = axis - (rank - len(s))
            if k < 0:
                continue
            d = s[k]
            if d == 1 or d == size:
                continue
            if size == 1:
                size = d
            else:
                hint = (" (symbolic sizes broadcast only against 1 or the same name)"
                        if isinstance(d, Dim) or isinstance(size, Dim) else "")
                raise ValueError(
                    f"shapes {', '.join(fmt_shape(x) for x in shapes)} do not broadcast: "
                    f"{size} vs {d} at axis {axis - rank}{hint}")
        out.append(size)
    return tuple(out)


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Size, ...]
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{SHORT[self.dtype]}[{', '.join(str(d) for d in self.shape)}]"
