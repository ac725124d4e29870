"""A compiled graph's signature, and the input checks run before any native code.

Shapes are JSON data: an input dim is an int or a symbol name; an output dim is a size: an int
or [coef, [symbol names]] meaning coef * product of the symbols' bound sizes. Every size the
compiler hands the runtime (output dims, the CUDA launch plan's trip counts and slot bytes)
has that one shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Signature:
    inputs: tuple      # of (name, dtype, shape)
    outputs: tuple     # of (dtype, shape)
    symbols: tuple     # symbol names, in the order of the native `dims` array
    single_output: bool = True
    aliases: tuple = ()  # (output, input) pairs: that output is written into the input array

    def to_json(self) -> dict:
        return {"inputs": [list(i) for i in self.inputs], "outputs": [list(o) for o in self.outputs],
                "symbols": list(self.symbols), "single_output": self.single_output,
                "aliases": [list(a) for a in self.aliases]}

    @classmethod
    def from_json(cls, data: dict) -> "Signature":
        return cls(tuple((n, d, tuple(s)) for n, d, s in data["inputs"]),
                   tuple((d, tuple(s)) for d, s in data["outputs"]),
                   tuple(data["symbols"]), bool(data["single_output"]),
                   tuple((int(o), int(i)) for o, i in data.get("aliases", ())))

    def describe(self) -> str:
        args = ", ".join(f"{n}: {d}[{', '.join(map(str, s))}]" for n, d, s in self.inputs)
        return f"({args})"


def interface_text(sig: Signature, constants) -> str:
    """Canonical text of what a library expects (signature and constants' dtypes/shapes).
    The compiler embeds it in the library; the runtime compares it with the manifest."""
    import json
    data = {"signature": sig.to_json(),
            "constants": [[np.dtype(c.dtype).name, list(c.shape)] for c in constants]}
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def bind_inputs(sig: Signature, arrays) -> tuple[list[np.ndarray], dict[str, int]]:
    """Checks arrays against the signature; returns contiguous arrays and the symbol sizes."""
    if len(arrays) != len(sig.inputs):
        raise InputError(f"expected {len(sig.inputs)} inputs {sig.describe()}, got {len(arrays)}")
    env: dict[str, int] = {}
    where: dict[str, str] = {}
    out = []
    updated = {i for _, i in sig.aliases}
    for k, ((name, dtype, shape), a) in enumerate(zip(sig.inputs, arrays)):
        if k in updated and not (isinstance(a, np.ndarray) and a.dtype == dtype and
                                 a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
            got = f"a {a.dtype} array, contiguous={a.flags.c_contiguous}, " \
                  f"writeable={a.flags.writeable}" if isinstance(a, np.ndarray) else type(a).__name__
            raise InputError(f"input '{name}' is updated in place: pass a writable, C-contiguous "
                             f"numpy array of dtype {dtype} (got {got})")
        if not isinstance(a, np.ndarray):
            try:
                a = np.asarray(a, dtype=dtype)
            except (TypeError, ValueError) as err:
                raise InputError(f"input '{name}': cannot convert {type(a).__name__} to a "
                                 f"{dtype} array: {err}") from None
        elif a.dtype != dtype:
            raise InputError(f"input '{name}': expected dtype {dtype}, got {a.dtype}; "
                             f"convert it with .astype(np.{dtype})")
        if a.ndim != len(shape):
            raise InputError(f"input '{name}': expected rank {len(shape)} with shape {_fmt(shape)}, "
                             f"got shape {a.shape}")
        for axis, (want, got) in enumerate(zip(shape, a.shape)):
            if isinstance(want, str):
                if want in env and env[want] != got:
                    raise InputError(f"input '{name}': symbolic dim {want} is {got} at axis {axis}, "
                                     f"but {env[want]} in {where[want]}")
                env[want] = got
                where[want] = f"input '{name}' axis {axis}"
            elif want != got:
                raise InputError(f"input '{name}': axis {axis} must have size {want}, got {got} "
                                 f"(expected {_fmt(shape)}, got {a.shape})")
        if not (a.flags.c_contiguous and a.flags.aligned):
            a = np.ascontiguousarray(a)
        out.append(a)
    for i in updated:
        for k, a in enumerate(out):
            if k != i and np.may_share_memory(a, out[i]):
                raise InputError(f"input '{sig.inputs[i][0]}' is updated in place but shares "
                                 f"memory with input '{sig.inputs[k][0]}'; pass a copy")
    return out, env


def merge_inputs(sig: Signature, dynamic: list[int], arrays, fixed: dict) -> list:
    """The full input list of a bound call: its arguments at the `dynamic` positions, the
    bound arrays at theirs."""
    if len(arrays) != len(dynamic):
        raise InputError(f"expected {len(dynamic)} inputs, got {len(arrays)}")
    given = [None] * len(sig.inputs)
    for i, a in zip(dynamic, arrays):
        given[i] = a
    for i, a in fixed.items():
        given[i] = a
    return given


def size_from_json(data):
    """A size read from JSON: an int, or (coef, (symbols...)). Also reads the
    {"coef": c, "syms": [...]} shape that CUDA launch plans were written in before."""
    if isinstance(data, int) and not isinstance(data, bool):
        return data
    if isinstance(data, dict) and data.keys() == {"coef", "syms"}:
        data = [data["coef"], data["syms"]]
    if isinstance(data, (list, tuple)) and len(data) == 2:
        coef, syms = data
        if isinstance(coef, int) and not isinstance(coef, bool) and \
                isinstance(syms, (list, tuple)) and all(isinstance(s, str) for s in syms):
            return (coef, tuple(syms))
    raise ValueError(f"a size must be an int or [coef, [symbols]], got {data!r}")


def size_to_json(size):
    return size if isinstance(size, int) else [size[0], list(size[1])]


def size_value(size, env: dict[str, int]) -> int:
    """The value of one size for the bound symbol sizes `env`."""
    return output_shape((size,), env)[0]


def output_shape(shape, env: dict[str, int]) -> tuple[int, ...]:
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            coef, syms = d
            for s in syms:
                coef *= env[s]
            out.append(coef)
    return tuple(out)
