"""graphc.onnx.load: an ONNX model as a graphc Graph, traced through graphc's own functions.

The importer walks the model's nodes in their (topological) order and calls, per node, the
handler its op type has in HANDLERS (one table entry per ONNX op, in the ops_*.py modules:
`@onnx_op("Relu")`). A handler gets a Node (the ONNX node's attributes, opset, name, and
helpers) and the node's input values, and returns its output values. A value is either

  - a graphc Tensor (computed by the graph at run time), or
  - a numpy array known at import: initializers, Constant nodes, and everything computed
    from known values only. Shape arithmetic lives here: `Shape` of a tensor is an object
    array of ints and symbolic Dims, and Gather/Concat/Mul/Div/Unsqueeze/... on it stay known,
    so a Reshape whose target shape the exporter computed from `Shape` gets a static target
    over symbolic sizes (B*T, ...), and the kernels stay static.

A handler that needs an input known at import (a Reshape's shape, a Pad's pads, ...) calls
`node.known(value, what)`; when that value is a graph input the importer raises NeedsValue
naming it: the caller can fix that input's value (`load(..., values={name: array})`), which
is what graphc.onnx.Backend does for ONNX's conformance tests, whose shapes are inputs.

Unsupported op types are all reported at once, before any tracing (one error, every op type
with its node names and the opset).
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..errors import DTypeError, GraphcError, ShapeError
from ..ir.types import Dim

HANDLERS: dict[str, object] = {}      # ONNX op type -> handler(node, *inputs) -> outputs
MIN_OPSET = 7                          # the oldest default-domain opset the table follows

# ONNX TensorProto element types graphc computes in (others are refused with their name)
DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 11: "float64"}
ELEM_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16",
              6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE",
              12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16"}


class OnnxError(GraphcError, ValueError):
    """The ONNX model cannot be imported (an unsupported op, dtype or shape computation)."""


class NeedsValue(OnnxError):
    """A graph input must be known at import (it is a shape, pads, axes, ...)."""

    def __init__(self, names: list[str], message: str):
        self.names = list(names)
        super().__init__(message, fix="pass values={name: array} to graphc.onnx.load (or make "
                                      "it an initializer)")


def onnx_op(*op_types: str):
    """Registers a handler for these ONNX op types (default domain)."""
    def register(fn):
        for t in op_types:
            if t in HANDLERS:
                raise ValueError(f"ONNX op {t} has two handlers")
            HANDLERS[t] = fn
        return fn
    return register


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("graphc.onnx needs the onnx package: pip install 'graphc[onnx]'") \
            from None
    return onnx


def is_tensor(value) -> bool:
    from ..trace import Tensor
    return isinstance(value, Tensor)


def dtype_of(value) -> str:
    return value.dtype if is_tensor(value) else np.asarray(value).dtype.name


def shape_of(value) -> tuple:
    return tuple(value.shape)


class Node:
    """One ONNX node as its handler sees it: attributes, opset, and conversions."""

    def __init__(self, proto, opset: int, importer: "Importer"):
        from onnx import helper

        self.proto, self.opset, self.importer = proto, opset, importer
        self.op_type, self.name = proto.op_type, proto.name or proto.output[0]
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        for k, v in list(self.attrs.items()):
            if isinstance(v, bytes):
                self.attrs[k] = v.decode()
        self.input_names = list(proto.input)
        self.num_outputs = len(proto.output)

    @property
    def where(self) -> str:
        return f"ONNX node '{self.name}' ({self.op_type}, opset {self.opset})"

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def error(self, message: str, fix: str | None = None) -> OnnxError:
        return OnnxError(f"{self.op_type}: {message}", op=self.op_type, loc=self.where, fix=fix)

    def tensor(self, value, dtype: str | None = None):
        """The value as a graph tensor (a known array becomes a constant)."""
        if is_tensor(value):
            return value if dtype is None or value.dtype == dtype else value.astype(dtype)
        return as_tensor(value, dtype)

    def known(self, value, what: str, index: int | None = None):
        """The value as a numpy array known at import (object dtype: ints and Dims), or an
        error saying why it must be: graph inputs raise NeedsValue."""
        if value is None or not is_tensor(value):
            return value if value is None else np.asarray(value)
        name = self.importer.input_name(value)
        if name is not None:
            raise NeedsValue([name], f"{self.op_type}: {what} comes from the graph input "
                                     f"'{name}', which graphc needs at import "
                                     f"(shapes are static)")
        names = self.importer.inputs_behind(value)
        if names:
            raise NeedsValue(names, f"{self.op_type}: {what} is computed from the graph "
                                    f"input(s) {', '.join(map(repr, names))}, which graphc "
                                    f"needs at import (shapes are static)")
        raise self.error(f"{what} is computed from run-time data; graphc needs it at import",
                         fix="export the model with this value constant (e.g. static shapes)")

    def ints(self, value, what: str) -> list:
        """A known 0-d or 1-d integer value as a list of ints and Dims."""
        arr = self.known(value, what)
        return [v if isinstance(v, Dim) else int(v) for v in np.asarray(arr).reshape(-1)]

    def static_ints(self, value, what: str) -> list[int]:
        out = self.ints(value, what)
        for v in out:
            if isinstance(v, Dim):
                raise self.error(f"{what} must be plain integers, got the symbolic size {v}")
        return out


class Importer:
    """One import: the model, the values by name, the graph inputs' tensors."""

    def __init__(self, model, dims=None, weights_as_inputs=False, values=None):
        self.model = model
        self.dims = dict(dims or {})
        self.weights_as_inputs = weights_as_inputs
        self.values = {k: np.asarray(v) for k, v in (values or {}).items()}
        self.opset = _default_opset(model)
        self.inputs: dict[int, str] = {}     # graph input tensor's node id -> its ONNX name

    def input_name(self, tensor) -> str | None:
        return self.inputs.get(tensor.id)

    def inputs_behind(self, tensor) -> list[str]:
        """The names of the graph inputs a traced tensor is computed from."""
        seen, stack, names = set(), [tensor.id], []
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            if i in self.inputs:
                names.append(self.inputs[i])
            stack.extend(tensor.graph.nodes[i].inputs)
        return sorted(names)

    # ---------------------------------------------------------------- the walk

    def specs(self):
        """(names, specs) of the graph's run-time inputs (and weights, if inputs)."""
        from ..trace import tensor
        g = self.model.graph
        inits = {i.name for i in g.initializer}
        names, specs = [], []
        for vi in g.input:
            if vi.name in inits or vi.name in self.values:
                continue
            names.append(vi.name)
            specs.append(tensor(self._shape(vi), self._dtype(vi.type.tensor_type.elem_type,
                                                             f"input '{vi.name}'"), name=vi.name))
        if self.weights_as_inputs:
            from onnx import numpy_helper
            for init in g.initializer:
                if init.name in self.values:
                    continue
                arr = numpy_helper.to_array(init)
                names.append(init.name)
                specs.append(tensor(arr.shape, self._dtype(init.data_type,
                                                           f"initializer '{init.name}'"),
                                    name=init.name))
        return names, specs

    def _dtype(self, elem: int, what: str) -> str:
        if elem not in DTYPES:
            raise DTypeError(f"ONNX {what} has element type {ELEM_NAMES.get(elem, elem)}; "
                             f"graphc computes in {', '.join(DTYPES.values())}")
        return DTYPES[elem]

    def _shape(self, vi) -> tuple:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            raise ShapeError(f"ONNX input '{vi.name}' has no shape",
                             fix="export the model with input shapes")
        out = []
        for axis, d in enumerate(t.shape.dim):
            if d.HasField("dim_value"):
                out.append(int(d.dim_value))
                continue
            name = d.dim_param if d.HasField("dim_param") else f"{_ident(vi.name)}_{axis}"
            name = self.dims.get(name, name)
            if isinstance(name, (int, np.integer)):
                out.append(int(name))
            else:
                out.append(Dim((_ident(str(name)),)))
        return tuple(out)

    def run(self, names, tensors) -> dict:
        from onnx import numpy_helper

        from ..trace import located
        g = self.model.graph
        env: dict[str, object] = {}
        for init in g.initializer:
            env[init.name] = numpy_helper.to_array(init)
        env.update(self.values)
        for name, t in zip(names, tensors):
            env[name] = t
            self.inputs[t.id] = name
        for proto in g.node:
            node = Node(proto, self.opset, self)
            args = [env[n] if n else None for n in proto.input]
            for n, a in zip(proto.input, args):
                if n and n not in env:
                    raise node.error(f"input '{n}' is not defined before this node")
            with located(node.where):
                outs = HANDLERS[proto.op_type](node, *args)
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            if all(a is None or (not is_tensor(a) and np.asarray(a).dtype != object)
                   for a in args):
                outs = [fold_constant(v) for v in outs]
            for name, value in zip(proto.output, outs):
                if name:
                    env[name] = value
        return {vi.name: env[vi.name] if is_tensor(env[vi.name]) else as_tensor(env[vi.name])
                for vi in g.output}


def as_tensor(value, dtype: str | None = None):
    """A value known at import as a graph tensor: a constant, or for an object array of ints
    and Dims (a shape computed at import) an int64 tensor whose symbolic sizes the kernels
    read at run time."""
    from ..api import concatenate, reshape
    from ..trace import apply, constant
    arr = np.asarray(value)
    if arr.dtype != object:
        return constant(arr, dtype)
    parts = [reshape(apply("size", [], value=v, dtype="int64", shape=()) if isinstance(v, Dim)
                     else constant(np.int64(v)), (1,)) for v in arr.reshape(-1)]
    out = concatenate(parts, 0) if parts else constant(np.zeros(0, np.int64))
    out = reshape(out, arr.shape)
    return out if dtype is None else out.astype(dtype)


def fold_constant(value):
    """A tensor computed from constants only, as its numpy value (so a handler that traces
    graphc ops on known inputs still gives a value known at import); anything else as is."""
    from ..ops.registry import LOOP, OPS
    from ..reference import run_graph
    from ..ir.graph import Graph
    if not is_tensor(value):
        return value
    nodes = value.graph.nodes
    seen, stack = set(), [value.id]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        op = OPS[nodes[i].op]
        if op.kind == LOOP or (op.source and op.source != "constant"):
            return value
        stack.extend(nodes[i].inputs)
    order = sorted(seen)
    index = {old: new for new, old in enumerate(order)}
    sub = Graph()
    for i in order:
        n = nodes[i]
        sub.add(n.op, [index[j] for j in n.inputs], n.attrs, n.type, n.loc)
    sub.outputs = [index[value.id]]
    return np.asarray(run_graph(sub, [], {})[0])


def _ident(name: str) -> str:
    """A symbol name made from an ONNX name ("batch_size", "input.1_0" -> "input_1_0")."""
    out = re.sub(r"\W", "_", name)
    return out if out and not out[0].isdigit() else f"d_{out}"


def _default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def read_model(model_or_path):
    onnx = _onnx()
    if isinstance(model_or_path, (str, os.PathLike)):
        return onnx.load(os.fspath(model_or_path))
    if isinstance(model_or_path, bytes):
        return onnx.load_from_string(model_or_path)
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    raise TypeError(f"graphc.onnx.load takes an onnx.ModelProto, bytes or a path, got "
                    f"{type(model_or_path).__name__}")


def check_supported(model) -> None:
    """One error listing every op type the table lacks, with its nodes and the opset."""
    from . import ops  # noqa: F401 (fills HANDLERS)
    opset = _default_opset(model)
    missing: dict[str, list[str]] = {}
    for imp in model.opset_import:
        if imp.domain not in ("", "ai.onnx"):
            used = [n for n in model.graph.node if n.domain == imp.domain]
            if used:
                missing.setdefault(f"{imp.domain} domain", []).extend(
                    f"{n.op_type} '{n.name}'" for n in used)
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type not in HANDLERS:
            missing.setdefault(n.op_type, []).append(n.name or n.output[0])
    if missing:
        parts = [f"{op} (node{'s' if len(names) > 1 else ''} {', '.join(map(repr, names[:5]))}"
                 f"{', ...' if len(names) > 5 else ''})" for op, names in missing.items()]
        raise OnnxError(f"the model uses {len(missing)} ONNX op type(s) graphc does not "
                        f"support (opset {opset}): {'; '.join(parts)}",
                        fix="see graphc.onnx.SUPPORTED for the op types graphc imports")


def load(model_or_path, dims=None, weights_as_inputs: bool = False, values=None):
    """An ONNX model (onnx.ModelProto, bytes or a path) as a graphc Graph.

    Inputs keep their ONNX names and order; `dim_param` sizes become symbolic dims of those
    names (`dims={"batch": "B"}` renames one, an int fixes it). Initializers are constants,
    or, with weights_as_inputs=True, inputs after the model's own (one compiled model then
    serves several weight sets). `values={name: array}` fixes inputs at import. The graph
    returns a dict {ONNX output name: tensor}, in the model's output order.
    """
    from ..trace import trace
    model = read_model(model_or_path)
    check_supported(model)
    imp = Importer(model, dims, weights_as_inputs, values)
    names, specs = imp.specs()

    def onnx_graph(*tensors):
        return imp.run(names, tensors)

    onnx_graph.__name__ = _ident(model.graph.name or "onnx_graph")
    graph = trace(onnx_graph, *specs)
    graph.arg_names = tuple(names)
    return graph
