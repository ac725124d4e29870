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
from .tree import LEAF_DEF, TreeDef, flatten_as, leaf_paths, path_str, unflatten


@dataclass(frozen=True)
class Signature:
    inputs: tuple      # of (name, dtype, shape)
    outputs: tuple     # of (dtype, shape)
    symbols: tuple     # symbol names, in the order of the native `dims` array
    single_output: bool = True
    aliases: tuple = ()  # (output, input) pairs: that output is written into the input array
    # The pytree structures of the arguments (a tuple, one child per argument) and of the
    # result; None: a flat argument list, and one array or a tuple of arrays back.
    in_tree: TreeDef | None = None
    out_tree: TreeDef | None = None
    arg_names: tuple = ()  # one per top-level argument (default: the input names)
    # (label, coef, symbols): coef * product of the symbols' sizes is a byte count the native
    # code computes in 64 bits; checked before every call with new sizes (check_sizes)
    limits: tuple = ()
    # (input position, size, label): that input holds indices into an axis of this size
    # (a size as in outputs); checked before every call (check_indices)
    index_bounds: tuple = ()

    def __post_init__(self):
        if self.in_tree is None:
            object.__setattr__(self, "in_tree", TreeDef.flat(len(self.inputs)))
        if self.out_tree is None:
            out = LEAF_DEF if self.single_output else TreeDef.flat(len(self.outputs))
            object.__setattr__(self, "out_tree", out)
        if self.in_tree.kind != "tuple" or self.in_tree.num_leaves != len(self.inputs):
            raise ValueError(f"the argument structure {self.in_tree} does not hold "
                             f"{len(self.inputs)} inputs")
        if self.out_tree.num_leaves != len(self.outputs):
            raise ValueError(f"the result structure {self.out_tree} does not hold "
                             f"{len(self.outputs)} outputs")
        if self.out_tree.is_leaf != bool(self.single_output):
            object.__setattr__(self, "single_output", self.out_tree.is_leaf)
        if not self.arg_names:
            names = [n for n, _, _ in self.inputs] if self.in_tree.is_flat_tuple else \
                [f"arg{k}" for k in range(len(self.in_tree.children))]
            object.__setattr__(self, "arg_names", tuple(names))
        if len(self.arg_names) != len(self.in_tree.children):
            raise ValueError(f"{len(self.arg_names)} argument names for the argument "
                             f"structure {self.in_tree}")
        # the call path skips the tree work when arguments and results are plain
        object.__setattr__(self, "_plain_in", self.in_tree.is_flat_tuple)
        object.__setattr__(self, "_plain_out", self.out_tree.is_leaf or
                           self.out_tree.is_flat_tuple)

    def to_json(self) -> dict:
        return {"inputs": [list(i) for i in self.inputs], "outputs": [list(o) for o in self.outputs],
                "symbols": list(self.symbols), "single_output": self.single_output,
                "aliases": [list(a) for a in self.aliases],
                "in_tree": self.in_tree.to_json(), "out_tree": self.out_tree.to_json(),
                "arg_names": list(self.arg_names),
                "limits": [[label, coef, list(syms)] for label, coef, syms in self.limits],
                "index_bounds": [[k, size, label] for k, size, label in self.index_bounds]}

    @classmethod
    def from_json(cls, data: dict) -> "Signature":
        """Parses to_json's output. The data may come from an untrusted artifact: every field
        is type- and range-checked, and anything malformed is a ValueError saying what."""
        _expect(isinstance(data, dict), "the signature is not an object")
        inputs = []
        for k, item in enumerate(_list(data, "inputs")):
            _expect(isinstance(item, list) and len(item) == 3, f"inputs[{k}] is not "
                    f"[name, dtype, shape]")
            name, dtype, shape = item
            _expect(isinstance(name, str), f"inputs[{k}]: the name is not a string")
            _expect(dtype in DTYPES, f"inputs[{k}]: unknown dtype {dtype!r}")
            _expect(isinstance(shape, list) and len(shape) <= MAX_RANK and all(
                _is_count(d) or (isinstance(d, str) and d.isidentifier()) for d in shape),
                f"inputs[{k}]: the shape {str(shape)[:80]} is not a list of sizes and symbols")
            inputs.append((name, dtype, tuple(shape)))
        symbols = _list(data, "symbols")
        _expect(all(isinstance(x, str) for x in symbols), "symbols are not strings")
        used = {d for _, _, shape in inputs for d in shape if isinstance(d, str)}
        _expect(set(symbols) == used and len(set(symbols)) == len(symbols),
                f"symbols {symbols} do not match the inputs' symbolic dims {sorted(used)}")
        outputs = []
        for k, item in enumerate(_list(data, "outputs")):
            _expect(isinstance(item, list) and len(item) == 2, f"outputs[{k}] is not "
                    f"[dtype, shape]")
            dtype, shape = item
            _expect(dtype in DTYPES, f"outputs[{k}]: unknown dtype {dtype!r}")
            _expect(isinstance(shape, list) and len(shape) <= MAX_RANK,
                    f"outputs[{k}]: the shape is not a list")
            for d in shape:
                _expect(_is_size(d, symbols), f"outputs[{k}]: size {str(d)[:60]} is not an "
                                              f"int or [coef, [symbols]] of known symbols")
            outputs.append((dtype, tuple(shape)))
        single = data.get("single_output", True)
        _expect(isinstance(single, bool), "single_output is not a bool")
        aliases = []
        for pair in data.get("aliases", []):
            _expect(isinstance(pair, list) and len(pair) == 2 and all(map(_is_count, pair)) and
                    pair[0] < len(outputs) and pair[1] < len(inputs),
                    f"alias {str(pair)[:40]} is not an [output, input] pair in range")
            aliases.append((pair[0], pair[1]))
        trees = [TreeDef.from_json(data[k]) if k in data else None
                 for k in ("in_tree", "out_tree")]
        names = data.get("arg_names", [])
        _expect(isinstance(names, list) and all(isinstance(n, str) for n in names),
                "arg_names are not strings")
        limits = []
        for item in data.get("limits", []):
            _expect(isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and
                    _is_count(item[1]) and isinstance(item[2], list) and
                    all(x in symbols for x in item[2]),
                    f"limit {str(item)[:60]} is not [label, coef, [symbols]]")
            limits.append((item[0], item[1], tuple(item[2])))
        bounds = []
        for item in data.get("index_bounds", []):
            _expect(isinstance(item, list) and len(item) == 3 and _is_count(item[0]) and
                    item[0] < len(inputs) and inputs[item[0]][1] in ("int32", "int64") and
                    _is_size(item[1], symbols) and isinstance(item[2], str),
                    f"index bound {str(item)[:60]} is not [integer input, size, label]")
            bounds.append((item[0], item[1], item[2]))
        return cls(tuple(inputs), tuple(outputs), tuple(symbols), single, tuple(aliases),
                   *trees, tuple(names), tuple(limits), tuple(bounds))

    def check_indices(self, arrays, env: dict[str, int]) -> None:
        """Refuses index inputs outside [-size, size) of the axis they index."""
        for k, size, label in self.index_bounds:
            a = arrays[k]
            if not a.size:
                continue
            n = size_value(size_from_json(size), env)
            lo, hi = a.min(), a.max()
            if lo < -n or hi >= n:
                bad = lo if lo < -n else hi
                raise InputError(f"input '{self.inputs[k][0]}': index {bad} is out of range "
                                 f"for an axis of size {n} ({label}); indices must lie in "
                                 f"[{-n}, {n})")

    def check_sizes(self, env: dict[str, int]) -> None:
        """Refuses symbol sizes for which a size the native code computes would not fit in
        64 bits (say a (2**58, 0) input whose product with a (0, 16) one is 2**62 floats).
        Each symbol counts at least 1, so no partial product can overflow either."""
        for label, coef, syms in self.limits:
            total = coef
            for sym in syms:
                total *= max(1, env[sym])
            if total > MAX_BYTES:
                sizes = ", ".join(f"{sym}={env[sym]}" for sym in dict.fromkeys(syms))
                raise InputError(f"for these sizes ({sizes}) the value {label} would take "
                                 f"{total} bytes, more than 64-bit sizes allow; check the "
                                 f"input shapes")

    def flatten_args(self, args) -> list:
        """The flat input list of a call with pytree arguments (InputError naming the path
        where the structure differs)."""
        if self._plain_in:
            return list(args)
        if len(args) != len(self.in_tree.children):
            raise InputError(f"expected {len(self.in_tree.children)} arguments "
                             f"{self.in_tree}, got {len(args)}")
        return flatten_as(self.in_tree, tuple(args), self.arg_names)

    def structure(self, outputs):
        """The call's result with the traced function's structure (`outputs`: the array, or
        the tuple of arrays, of the flat call)."""
        if self._plain_out:
            return outputs
        return unflatten(self.out_tree, outputs)

    def leaf_paths(self, dotted: bool = False) -> list[str]:
        """The path of every input leaf: `params['w1']` (or `params.w1`)."""
        names = self.arg_names
        return [path_str(p[1:], names[p[0]], dotted) for p in leaf_paths(self.in_tree)]

    def describe(self) -> str:
        args = ", ".join(f"{n}: {d}[{', '.join(map(str, s))}]" for n, d, s in self.inputs)
        return f"({args})"


DTYPES = ("float32", "float64", "int32", "int64", "bool")
MAX_BYTES = 1 << 62
MAX_RANK = 64


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_size(d, symbols) -> bool:
    return _is_count(d) or (isinstance(d, list) and len(d) == 2 and _is_count(d[0]) and
                            isinstance(d[1], list) and all(x in symbols for x in d[1]))


def _list(data: dict, key: str) -> list:
    value = data.get(key)
    _expect(isinstance(value, list), f"{key} is missing or not a list")
    return value


def interface_text(sig: Signature, constants) -> str:
    """Canonical text of what a library expects (signature and constants' dtypes/shapes).
    The compiler embeds it in the library; the runtime compares it with the manifest."""
    import json
    native = {k: v for k, v in sig.to_json().items()   # Python-side structure and checks only
              if k not in ("in_tree", "out_tree", "arg_names", "index_bounds")}
    if not native["limits"]:
        del native["limits"]   # (libraries built before size limits existed have none)
    data = {"signature": native,
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
            a = as_array(a, name, dtype)
        if a.dtype != dtype:
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
    sig.check_sizes(env)
    sig.check_indices(out, env)
    return out, env


def as_array(value, name: str, dtype: str) -> np.ndarray:
    """A non-ndarray input as an array. Objects that carry a dtype (numpy scalars, anything
    with __array__ or __dlpack__: torch, JAX, CuPy on the host) keep it, so the dtype check
    applies to them exactly as to numpy arrays; plain Python numbers and (nested) lists
    convert to the expected dtype when that loses no kind (ints to floats: yes; floats to
    ints: no)."""
    typename = type(value).__name__
    try:
        if isinstance(value, np.generic) or hasattr(value, "__array__") or \
                hasattr(value, "__array_interface__"):
            return np.asarray(value)
        if hasattr(value, "__dlpack__"):
            return np.from_dlpack(value)
        if isinstance(value, (bool, int, float, list, tuple)):
            arr = np.asarray(value)
            if arr.dtype == object or not np.can_cast(arr.dtype, dtype, "same_kind"):
                raise InputError(f"input '{name}': a Python {typename} of {arr.dtype} values "
                                 f"cannot be a {dtype} array without changing its values")
            return arr.astype(dtype)
    except InputError:
        raise
    except Exception as err:  # foreign libraries raise their own types (torch: RuntimeError)
        hint = "; call .detach() first" if "requires_grad" in str(err) else ""
        raise InputError(f"input '{name}': cannot read the {typename} as a {dtype} array: "
                         f"{type(err).__name__}: {str(err).splitlines()[0][:200]}{hint}") \
            from None
    raise InputError(f"input '{name}': cannot convert {typename} to a {dtype} array "
                     f"(expected a numpy array, an object with __array__, or numbers)")


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
