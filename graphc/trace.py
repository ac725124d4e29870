"""Tracing: symbolic tensors record graph nodes; shape rules run as each op is created."""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

import numpy as np

from .errors import DTypeError, GraphcError, ShapeError, TraceError
from .ir.graph import Graph
from .ir.types import (ALL_DTYPES, FLOATS, INTS, Dim, TensorType, dtype_name, fmt_shape,
                       normalize_shape)
from .ops.registry import OPS
from .tree import arg_path, flatten, leaf_paths, path_str, unflatten

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_state = threading.local()


def user_location() -> str | None:
    """file:line and source of the first stack frame outside graphc (the user's code), or
    where an importer says the ops come from (`located`: an ONNX node)."""
    override = getattr(_state, "location", None)
    if override is not None:
        return override
    frame = sys._getframe(1)
    while frame is not None:
        filename, ours = _OURS.get(frame.f_code.co_filename) or _classify(frame.f_code.co_filename)
        if not ours:
            import linecache
            src = linecache.getline(filename, frame.f_lineno).strip()
            where = f"{os.path.basename(filename)}:{frame.f_lineno} in {frame.f_code.co_name}"
            return f"{where}: {src}" if src else where
        frame = frame.f_back
    return None


_OURS: dict[str, tuple[str, bool]] = {}   # code file -> (absolute path, inside graphc?)


def _classify(name: str) -> tuple[str, bool]:
    path = os.path.abspath(name)
    _OURS[name] = (path, path.startswith(_PKG_DIR + os.sep))
    return _OURS[name]


class located:
    """`with located("ONNX node 'x' (Relu)"):` the ops traced inside carry that location."""

    def __init__(self, where: str):
        self.where = where

    def __enter__(self):
        self.previous = getattr(_state, "location", None)
        _state.location = self.where

    def __exit__(self, *exc):
        _state.location = self.previous


@dataclass(frozen=True)
class TensorSpec:
    """An input's signature: shape (ints and symbolic dims), dtype and optional name."""

    shape: tuple
    dtype: str = "float32"
    name: str | None = None

    def __str__(self) -> str:
        return f"tensor({fmt_shape(self.shape)}, {self.dtype}{', ' + self.name if self.name else ''})"


def tensor(shape, dtype="float32", name: str | None = None) -> TensorSpec:
    """An input spec. `graphc.tensor(("B", 784))` is a float32 batch of 784-vectors."""
    return TensorSpec(normalize_shape(shape), dtype_name(dtype), name)


def _graph() -> Graph:
    graph = getattr(_state, "graph", None)
    if graph is None:
        raise TraceError("graphc ops can only be used inside a function being traced",
                         loc=user_location(),
                         fix="call the function through graphc.trace or graphc.compile")
    return graph


class Tensor:
    """A symbolic value in the graph being traced."""

    __array_priority__ = 1000  # numpy scalars/arrays on the left defer to our operators

    def __init__(self, graph: Graph, node_id: int):
        self.graph, self.id = graph, node_id

    @property
    def node(self):
        return self.graph.nodes[self.id]

    @property
    def shape(self):
        return self.node.shape

    @property
    def dtype(self) -> str:
        return self.node.dtype

    @property
    def ndim(self) -> int:
        return len(self.node.shape)

    def __repr__(self) -> str:
        return f"Tensor(%{self.id}: {self.node.type})"

    def __bool__(self):
        raise TraceError("a symbolic tensor has no truth value while tracing",
                         loc=user_location(),
                         fix="use graphc.where(cond, a, b) instead of Python if/and/or on tensors")

    def __len__(self):
        if not self.shape:
            raise TraceError("len() of a 0-d tensor", loc=user_location())
        return self.shape[0]

    def __iter__(self):
        raise TraceError("iterating over a symbolic tensor is not supported", loc=user_location(),
                         fix="use whole-tensor ops (sum, reshape, ...) instead of Python loops")

    # Arithmetic operators call the same functions users call (graphc.api).
    def __add__(self, o): return _api().add(self, o)
    def __radd__(self, o): return _api().add(o, self)
    def __sub__(self, o): return _api().subtract(self, o)
    def __rsub__(self, o): return _api().subtract(o, self)
    def __mul__(self, o): return _api().multiply(self, o)
    def __rmul__(self, o): return _api().multiply(o, self)
    def __truediv__(self, o): return _api().divide(self, o)
    def __rtruediv__(self, o): return _api().divide(o, self)
    def __pow__(self, o): return _api().power(self, o)
    def __rpow__(self, o): return _api().power(o, self)
    def __matmul__(self, o): return _api().matmul(self, o)
    def __rmatmul__(self, o): return _api().matmul(o, self)
    def __neg__(self): return _api().negative(self)
    def __pos__(self): return self
    def __abs__(self): return _api().abs(self)
    def __lt__(self, o): return _api().less(self, o)
    def __le__(self, o): return _api().less_equal(self, o)
    def __gt__(self, o): return _api().greater(self, o)
    def __ge__(self, o): return _api().greater_equal(self, o)
    def __eq__(self, o): return _api().equal(self, o)  # type: ignore[override]
    def __ne__(self, o): return _api().not_equal(self, o)  # type: ignore[override]
    def __and__(self, o): return _api().logical_and(self, o)
    def __or__(self, o): return _api().logical_or(self, o)
    def __invert__(self): return _api().logical_not(self)
    __hash__ = object.__hash__

    def __getitem__(self, key):
        return _api().getitem(self, key)

    @property
    def T(self):
        return _api().transpose(self)

    def sum(self, axis=None, keepdims=False): return _api().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _api().mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _api().max(self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return _api().min(self, axis, keepdims)
    def reshape(self, *shape):
        return _api().reshape(self, shape[0] if len(shape) == 1 else shape)
    def transpose(self, *axes): return _api().transpose(self, axes or None)
    def astype(self, dtype): return _api().astype(self, dtype)


def _api():
    from . import api
    return api


def apply(op_name: str, inputs: list[Tensor], **attrs) -> Tensor:
    """Creates one node: checks dtypes, runs the op's shape rule, records the user's line."""
    op = OPS[op_name]
    body = getattr(_state, "body", None)
    if body is not None:  # tracing a loop body: tensors of the enclosing trace are captured
        graph = body.graph
        inputs = [body.capture(t) if isinstance(t, Tensor) and t.graph is body.parent else t
                  for t in inputs]
    else:
        graph = _graph() if not inputs else inputs[0].graph
    loc = user_location()
    for t in inputs:
        if not isinstance(t, Tensor):
            raise TraceError(f"{op_name}: expected a tensor input, got {type(t).__name__}", op=op_name,
                             loc=loc)
        if t.graph is not graph:
            raise TraceError(f"{op_name}: mixes tensors from two different traces", op=op_name,
                             loc=loc, fix="do not keep tensors from one trace for another")
    if op.arity is not None and len(inputs) != op.arity:
        raise TraceError(f"{op_name} takes {op.arity} inputs, got {len(inputs)}", op=op_name, loc=loc)
    for t in inputs:
        if t.dtype not in op.dtypes:
            raise DTypeError(f"{op_name}: dtype {t.dtype} is not supported "
                             f"(accepts {', '.join(op.dtypes)})", op=op_name, loc=loc,
                             fix="convert the input with .astype(...) first")
    types = [t.node.type for t in inputs]
    try:
        out_type = op.infer(types, **attrs)
    except GraphcError:
        raise
    except (ValueError, TypeError) as err:
        shapes = " and ".join(fmt_shape(t.shape) for t in types)
        text = f"{op_name}: {err}"
        if types and shapes not in text:
            text += f" (input shapes {shapes})"
        raise ShapeError(text, op=op_name, loc=loc, fix=op.fix or None) from None
    node = graph.add(op_name, [t.id for t in inputs], attrs, out_type, loc)
    return Tensor(graph, node.id)


def trace(fn, *specs) -> Graph:
    """Calls `fn` with symbolic tensors for `specs` and returns the recorded Graph.

    Each spec is a pytree of graphc.tensor specs (a tuple, list or dict of them, or None);
    `fn` gets tensors in the same structure and may return any pytree of tensors.
    >>> g = graphc.trace(lambda x: graphc.exp(x) * 2, graphc.tensor(("B", 3)))
    >>> g = graphc.trace(lambda p, x: x @ p["w"], {"w": graphc.tensor((3, 2))},
    ...                  graphc.tensor(("B", 3)))
    """
    if not callable(fn):
        raise TraceError(f"trace needs a function, got {type(fn).__name__}")
    graph = Graph(name=getattr(fn, "__name__", "graph").replace("<lambda>", "lambda"))
    arg_names = [_arg_name(fn, i) for i in range(len(specs))]
    try:
        leaves, in_tree = flatten(tuple(specs))
    except TypeError as err:
        raise TraceError(f"the input specs of {graph.name} are not a pytree: {err}",
                         fix="use tuples, lists, dicts with str keys, None and graphc.tensor "
                             "specs") from None
    paths = leaf_paths(in_tree)
    for spec, path in zip(leaves, paths):
        if not isinstance(spec, TensorSpec):
            where = arg_path(path, arg_names)
            raise TraceError(f"argument {where} must be graphc.tensor(shape, dtype), got "
                             f"{spec!r}")
    previous = getattr(_state, "graph", None)
    _state.graph = graph
    try:
        tensors = []
        names = set()
        for i, (s, path) in enumerate(zip(leaves, paths)):
            name = s.name or arg_path(path, arg_names)
            if name in names:
                name = f"{name}_{i}"
            names.add(name)
            node = graph.add("input", (), {"name": name, "index": i}, TensorType(s.shape, s.dtype))
            graph.inputs.append(node.id)
            tensors.append(Tensor(graph, node.id))
        result = fn(*unflatten(in_tree, tensors))
    finally:
        _state.graph = previous
    try:
        results, out_tree = flatten(result)
    except TypeError as err:
        raise TraceError(f"{graph.name} returned a value that is not a pytree: {err}") from None
    if not results:
        raise TraceError(f"{graph.name} returned no tensors")
    for r, path in zip(results, leaf_paths(out_tree)):
        if not isinstance(r, Tensor) or r.graph is not graph:
            where = f" at {path_str(path, 'result')}" if path else ""
            raise TraceError(f"{graph.name} must return tensors computed from its inputs, "
                             f"got {type(r).__name__}{where}",
                             fix="return graphc tensors (wrap constants with graphc.constant)")
        graph.outputs.append(r.id)
    graph.in_tree, graph.out_tree, graph.arg_names = in_tree, out_tree, tuple(arg_names)
    graph.single_output = out_tree.is_leaf
    return graph


class BodyTrace:
    """A loop body being traced (ops/control.py: scan) inside the trace of `parent`.

    Tensors of the parent trace that the body uses (closed-over parameters) are captured:
    each becomes one more input of the body, once, and `captured` lists the parent tensors
    in the order of those inputs (the loop node takes them as explicit inputs). Constants
    are copied into the body as constants instead.
    """

    def __init__(self, graph: Graph, parent: Graph):
        self.graph, self.parent = graph, parent
        self.captured: list[Tensor] = []
        self._inputs: dict[int, Tensor] = {}   # parent node id -> the body's input

    def add_input(self, name: str, type_: TensorType) -> Tensor:
        node = self.graph.add("input", (), {"name": name, "index": len(self.graph.inputs)},
                              type_)
        self.graph.inputs.append(node.id)
        return Tensor(self.graph, node.id)

    def capture(self, t: Tensor) -> Tensor:
        if t.id not in self._inputs:
            if OPS[t.node.op].source == "constant":
                # a constant stays one in the body, so the body's simplify folds what is
                # computed from it alone (an LSTM's R^T) instead of recomputing it each step
                node = self.graph.add(t.node.op, (), t.node.attrs, t.node.type, t.node.loc)
                self._inputs[t.id] = Tensor(self.graph, node.id)
                return self._inputs[t.id]
            self._inputs[t.id] = self.add_input(f"capture{len(self.captured)}", t.node.type)
            self.captured.append(t)
        return self._inputs[t.id]

    def __enter__(self) -> BodyTrace:
        if getattr(_state, "body", None) is not None:
            raise TraceError("scan inside the body of another scan is not supported",
                             loc=user_location(),
                             fix="scan over the outer loop only, or unroll the inner loop "
                                 "with a Python for loop")
        self._previous = getattr(_state, "graph", None)
        _state.graph, _state.body = self.graph, self
        return self

    def __exit__(self, *exc) -> None:
        _state.graph, _state.body = self._previous, None


def _arg_name(fn, i: int) -> str:
    while hasattr(fn, "__wrapped__"):  # grad(f) keeps f's argument names
        fn = fn.__wrapped__
    code = getattr(fn, "__code__", None)
    if code is not None and i < code.co_argcount:
        return code.co_varnames[i]
    return f"arg{i}"


# ---------------------------------------------------------------- constants and promotion

def constant(value, dtype=None) -> Tensor:
    """A constant tensor (Python scalar or numpy array) in the current trace."""
    arr = np.asarray(value)
    if dtype is not None:
        arr = arr.astype(dtype_name(dtype))
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    name = arr.dtype.name
    if name not in ALL_DTYPES:
        raise DTypeError(f"constant of dtype {name} is not supported; use one of {ALL_DTYPES}",
                         loc=user_location())
    arr = np.array(arr, copy=True, order="C")  # ascontiguousarray would make 0-d into 1-d
    arr.flags.writeable = False
    return apply("constant", [], value=arr, dtype=name, shape=tuple(arr.shape))


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (bool, int, float, np.generic)) and not isinstance(x, np.ndarray):
        if like is not None and not isinstance(x, np.generic):
            # NEP 50: a Python scalar takes the tensor's kind when it fits
            dt = np.result_type(np.dtype(like.dtype), x).name
            return constant(x, dt)
        return constant(x)
    if isinstance(x, (np.ndarray, list, tuple)):
        return constant(x)
    raise TraceError(f"cannot use a {type(x).__name__} as a tensor", loc=user_location())


def promote(*xs) -> list[Tensor]:
    """Converts scalars, then casts every operand to numpy's common dtype."""
    like = next((x for x in xs if isinstance(x, Tensor)), None)
    if like is None:
        raise TraceError("at least one operand must be a traced tensor", loc=user_location())
    ts = [as_tensor(x, like) for x in xs]
    common = np.result_type(*[np.dtype(t.dtype) for t in ts]).name
    return [cast(t, common) for t in ts]


def cast(t: Tensor, dtype: str) -> Tensor:
    return t if t.dtype == dtype else apply("astype", [t], dtype=dtype)


def float_dtype(dtype: str) -> str:
    """numpy's result dtype for a float-valued function of `dtype` (ints -> float64)."""
    return dtype if dtype in FLOATS else "float64"


def is_int(dtype: str) -> bool:
    return dtype in INTS


__all__ = ["Tensor", "TensorSpec", "tensor", "trace", "apply", "constant", "promote", "cast",
           "Dim", "BodyTrace"]
