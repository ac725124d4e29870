"""graphc.onnx.export: a graphc graph as an ONNX model.

The exporter walks the graph's nodes in their (topological) order and calls, per node, the
rule its op has in EXPORTERS (one entry per graphc primitive). A rule gets the Exporter and
the node and returns the name of the ONNX value that holds the node's result; it adds ONNX
nodes and constants through the Exporter's helpers. Composite functions (softmax, gelu,
layer_norm, conv2d, ...) arrive as the primitives they trace into.

What the model keeps of the graph:
  - inputs and their names (an input node's attrs["name"]), dtypes and shapes: a symbolic
    size becomes a dim_param with the symbol's name;
  - outputs named by the keys of a dict result, else output_0, output_1, ...;
  - each ONNX node's doc_string is the graphc node's source location.
Sizes computed at run time (a reshape to (B * T, D), an iota of length B, the divisor of a
mean over a symbolic axis) read the symbol off an input's shape (Shape).

Indices: graphc wraps a negative index once (i + n) and clamps the rest into [0, n - 1] where
the indices are computed inside the graph (graphc.ops.indexing); ONNX's Gather and
GatherElements wrap negatives but reject the rest. Indices computed in the graph are
therefore clamped explicitly (Where, Max, Min) before the Gather; indices that are graph
inputs or constants go straight in (graphc refuses out-of-range ones at call time or at trace
time, onnxruntime at run time).

Convolutions (conv_direct) become Conv, max pools (a max over a window's kernel axes) MaxPool;
other windows (grouped or 1-d convolutions, average pools) become the Slice and Concat that
gather their entries, followed by the graph's own matmul or reduction. The fused attention
primitive becomes MatMul, Softmax (or, with a mask, its composition that gives zeros on a
fully masked row, as graphc does) and MatMul. A scan becomes a Scan whose body is the
loop body's export (nn.RNN, LSTM and GRU export that way). Gradients export too: a
scatter-add (the transpose of take, take_along_axis and of reflect/edge padding) as
ScatterElements with reduction "add" (opset 16 or newer), a window's transpose as the sum of
its kernel positions' entries padded back into place. random_uniform is graphc's own hash
in uint32 bitwise ops (opset 18), bit for bit.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict

import numpy as np

from ..ir.graph import Graph
from ..ir.types import Dim
from ..ops.registry import OPS
from .importer import DTYPES, OnnxError, _onnx

DEFAULT_OPSET = 18
MIN_OPSET = 13                     # axes as inputs of Squeeze, Unsqueeze and ReduceSum
ONNX_DTYPES = {name: code for code, name in DTYPES.items()}
LARGE = 16                         # constants with more elements become initializers
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


class Exporter:
    """One export: the graph, the ONNX nodes, initializers and value names made so far."""

    def __init__(self, graph: Graph, opset: int, prefix: str = "", taken=None):
        onnx = _onnx()
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.graph, self.opset = graph, opset
        self.prefix = prefix                      # a loop body's names: the loop's name first
        self.nodes, self.initializers = [], []
        self.values: dict[int, object] = {}       # graphc node id -> ONNX value name(s)
        self.implicit: dict[str, set] = {}        # a loop node -> outer values its body reads
        self.node = None                          # the graphc node being exported
        self.count = 0
        self.taken = taken if taken is not None else \
            {graph[i].attrs["name"] for i in graph.inputs} | set(output_names(graph))
        self.cache: dict = {}                     # shared constants and size values
        self.symbols = self._symbol_sources()

    # ---------------------------------------------------------------- names and nodes

    def fresh(self, hint: str) -> str:
        """A new value name: the graphc node's op and id, then what the value is."""
        base = self.prefix + (f"{self.node.op}{self.node.id}" if self.node is not None
                              else "graph")
        name = f"{base}/{hint}"
        while name in self.taken:
            self.count += 1
            name = f"{base}/{hint}_{self.count}"
        self.taken.add(name)
        return name

    def emit(self, op_type: str, inputs, outputs: int = 1, **attrs):
        """Adds one ONNX node; returns its output name (or names, outputs > 1)."""
        names = [self.fresh(op_type) for _ in range(outputs)]
        doc = self.node.loc if self.node is not None and self.node.loc else None
        proto = self.helper.make_node(op_type, [i or "" for i in inputs], names,
                                      name=names[0], doc_string=doc, **attrs)
        self.nodes.append(proto)
        return names[0] if outputs == 1 else names

    def input(self, node, k: int = 0) -> str:
        """The ONNX value of the node's k-th input."""
        return self.values[node.inputs[k]]

    def input_node(self, node, k: int = 0):
        return self.graph[node.inputs[k]]

    def error(self, message: str, fix: str | None = None) -> OnnxError:
        node = self.node
        return OnnxError(f"export: {node.op} (%{node.id}): {message}", op=node.op,
                         loc=node.loc, fix=fix)

    # ---------------------------------------------------------------- constants

    def const(self, value, dtype: str | None = None) -> str:
        """A constant: an initializer when large, else a Constant node (shared by value)."""
        arr = np.asarray(value, dtype=dtype)
        # a digest, not the bytes: the key of a large weight must not copy it
        digest = hashlib.sha256(np.ascontiguousarray(arr).data).digest()
        key = ("const", arr.dtype.str, arr.shape, digest)
        if key in self.cache:
            return self.cache[key]
        name = self.fresh("Constant")
        tensor = self.numpy_helper.from_array(arr, name)
        if arr.size > LARGE:
            self.initializers.append(tensor)
        else:
            self.nodes.append(self.helper.make_node("Constant", [], [name], name=name,
                                                    value=tensor))
        self.cache[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), np.int64).reshape(-1))

    def scalar(self, value, dtype: str) -> str:
        return self.const(np.asarray(value, dtype))

    # ---------------------------------------------------------------- sizes

    def _symbol_sources(self) -> dict[str, tuple[int, int]]:
        """symbol -> (input node id, axis) of the first input whose shape has it alone."""
        out: dict[str, tuple[int, int]] = {}
        for i in self.graph.inputs:
            for axis, d in enumerate(self.graph[i].shape):
                if isinstance(d, Dim) and d.coef == 1 and len(d.syms) == 1:
                    out.setdefault(d.syms[0], (i, axis))
        return out

    def dim(self, d) -> str:
        """A size (an int or a symbolic Dim) as a 1-d int64 value of one element."""
        if not isinstance(d, Dim):
            return self.ints([d])
        key = ("dim", d)
        if key in self.cache:
            return self.cache[key]
        value = None
        for sym in d.syms:
            if sym not in self.symbols:
                raise self.error(f"the symbolic size {d} needs the size {sym} at run time, "
                                 f"and no input has an axis of size {sym}",
                                 fix=f"give an input an axis of size {sym}, or fix {sym}")
            i, axis = self.symbols[sym]
            one = self._axis_size(self.values[i], axis)
            value = one if value is None else self.emit("Mul", [value, one])
        if d.coef != 1:
            value = self.emit("Mul", [value, self.ints([d.coef])])
        self.cache[key] = value
        return value

    def _axis_size(self, x: str, axis: int) -> str:
        if self.opset >= 15:
            return self.emit("Shape", [x], start=axis, end=axis + 1)
        return self.emit("Gather", [self.emit("Shape", [x]), self.ints([axis])], axis=0)

    def size(self, d, dtype: str = "int64") -> str:
        """A size as a 0-d value of `dtype`."""
        if not isinstance(d, Dim):
            return self.scalar(d, dtype)
        value = self.emit("Reshape", [self.dim(d), self.ints([])])
        return value if dtype == "int64" else self.cast(value, dtype)

    def shape(self, shape) -> str:
        """A shape (ints and Dims) as a 1-d int64 value."""
        if not any(isinstance(d, Dim) for d in shape):
            return self.ints(shape)
        parts, run = [], []
        for d in shape:
            if isinstance(d, Dim):
                if run:
                    parts.append(self.ints(run))
                    run = []
                parts.append(self.dim(d))
            else:
                run.append(d)
        if run:
            parts.append(self.ints(run))
        return self.emit("Concat", parts, axis=0)

    # ---------------------------------------------------------------- shared pieces

    def cast(self, x: str, dtype: str) -> str:
        return self.emit("Cast", [x], to=ONNX_DTYPES[dtype])

    def reshape(self, x: str, shape) -> str:
        """Reshape to `shape`; one symbolic size (and no zero) becomes -1, so the target stays a
        constant."""
        dims = [d for d in shape if isinstance(d, Dim)]
        if 0 in [d for d in shape if not isinstance(d, Dim)]:
            return self.emit("Reshape", [x, self.shape(shape)], allowzero=1)
        if len(dims) == 1:
            return self.emit("Reshape", [x, self.ints(-1 if isinstance(d, Dim) else d
                                                      for d in shape)])
        return self.emit("Reshape", [x, self.shape(shape)])

    def reduce(self, op_type: str, x: str, axes, keepdims: bool) -> str:
        axes = [int(a) for a in axes]
        if not axes:
            return self.emit("Identity", [x])
        keep = int(bool(keepdims))
        if self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13):
            return self.emit(op_type, [x, self.ints(axes)], keepdims=keep)
        return self.emit(op_type, [x], axes=axes, keepdims=keep)

    def unsqueeze(self, x: str, axes) -> str:
        return self.emit("Unsqueeze", [x, self.ints(axes)])

    # ---------------------------------------------------------------- the walk

    def run(self):
        """The whole graph: its inputs by name, its outputs named by output_names."""
        graph = self.graph
        inputs = [(graph[i].attrs["name"], graph[i].type) for i in graph.inputs]
        for (name, _), i in zip(inputs, graph.inputs):
            self.values[i] = name
        return self.build(inputs, output_names(graph), graph.name)

    def build(self, inputs, names, graph_name: str):
        """A GraphProto: the nodes not yet exported (inputs' values are set), the outputs under
        `names`, the ONNX graph inputs `inputs` ((name, type) pairs)."""
        graph = self.graph
        for node in graph.nodes:
            if node.id in self.values:
                continue
            self.node = node
            self.values[node.id] = EXPORTERS[node.op](self, node)
        self.node = None
        outputs = []
        for name, i in zip(names, graph.outputs):
            self.nodes.append(self.helper.make_node("Identity", [self.values[i]], [name],
                                                    name=f"{self.prefix}output_{name}"))
            outputs.append(self.value_info(name, graph[i].type))
        nodes, inits = _live(self.nodes, self.initializers, [o.name for o in outputs],
                             self.implicit)
        return self.helper.make_graph(nodes, graph_name, [self.value_info(n, t)
                                                          for n, t in inputs], outputs, inits)

    def value_info(self, name: str, type_):
        dims = [str(d) if isinstance(d, Dim) else int(d) for d in type_.shape]
        return self.helper.make_tensor_value_info(name, ONNX_DTYPES[type_.dtype], dims)


def _live(nodes, initializers, outputs, implicit):
    """The nodes (and initializers) the outputs depend on, in order: rules that map a pattern
    (window + max -> MaxPool) leave the pattern's pieces unread. A loop node also reads the
    outer values its body uses (`implicit`)."""
    needed = set(outputs)
    keep = []
    for proto in reversed(nodes):
        if any(o in needed for o in proto.output):
            keep.append(proto)
            needed.update(i for i in proto.input if i)
            needed.update(implicit.get(proto.name, ()))
    keep.reverse()
    return keep, [t for t in initializers if t.name in needed]


def output_names(graph: Graph) -> list[str]:
    """The keys of a dict result (joined with '.' when nested), else output_0, output_1..."""
    tree = graph.out_tree
    if tree is not None and tree.kind == "dict":
        from ..tree import leaf_paths
        return [".".join(str(k) for k in path) for path in leaf_paths(tree)]
    return [f"output_{k}" for k in range(len(graph.outputs))]


# ==================================================================== the rules

def _same(op_type: str):
    """An ONNX op with graphc's semantics and broadcasting."""
    def rule(ex, node):
        return ex.emit(op_type, [ex.input(node, k) for k in range(len(node.inputs))])
    return rule


def _ordered(op_type: str):
    """A comparison; ONNX orders numbers only, so bools compare as int32."""
    def rule(ex, node):
        xs = [ex.input(node, k) for k in range(2)]
        if ex.input_node(node).dtype == "bool":
            xs = [ex.cast(x, "int32") for x in xs]
        return ex.emit(op_type, xs)
    return rule


def _input(ex, node):
    return node.attrs["name"]


def _constant(ex, node):
    value = np.asarray(node.attrs["value"], node.dtype)
    shape = tuple(node.shape)
    if any(isinstance(d, Dim) for d in shape):
        return ex.emit("Expand", [ex.const(value), ex.shape(shape)])
    return ex.const(np.broadcast_to(value, shape).copy() if value.shape != shape else value)


def _iota(ex, node):
    (n,) = node.shape
    limit = ex.size(n, node.dtype)
    return ex.emit("Range", [ex.scalar(0, node.dtype), limit, ex.scalar(1, node.dtype)])


def _size(ex, node):
    value = ex.size(node.attrs["value"], node.dtype)
    return value if not node.shape else ex.reshape(value, node.shape)


def _where(ex, node):
    """Where; between bools it is (c and a) or (not c and b) (onnxruntime has no bool
    Where)."""
    c, a, b = (ex.input(node, k) for k in range(3))
    if node.dtype != "bool":
        return ex.emit("Where", [c, a, b])
    return ex.emit("Or", [ex.emit("And", [c, a]), ex.emit("And", [ex.emit("Not", [c]), b])])


def _rsqrt(ex, node):
    return ex.emit("Reciprocal", [ex.emit("Sqrt", [ex.input(node)])])


def _not_equal(ex, node):
    return ex.emit("Not", [ex.emit("Equal", [ex.input(node, 0), ex.input(node, 1)])])


def _floor_divide(ex, node):
    """Integer a // b from ONNX's Mod (fmod=0, the divisor's sign): (a - a mod b) / b is exact;
    x // 0 is 0 and x // -1 is -x, as graphc gives, where Div would trap."""
    a, b = ex.input(node, 0), ex.input(node, 1)
    zero = ex.emit("Equal", [b, ex.scalar(0, node.dtype)])
    minus_one = ex.emit("Equal", [b, ex.scalar(-1, node.dtype)])
    safe = ex.emit("Where", [ex.emit("Or", [zero, minus_one]), ex.scalar(1, node.dtype), b])
    q = ex.emit("Div", [ex.emit("Sub", [a, ex.emit("Mod", [a, safe], fmod=0)]), safe])
    q = ex.emit("Where", [minus_one, ex.emit("Neg", [a]), q])
    return ex.emit("Where", [zero, ex.scalar(0, node.dtype), q])


def _astype(ex, node):
    return ex.cast(ex.input(node), node.attrs["dtype"])


def _reshape(ex, node):
    return ex.reshape(ex.input(node), node.shape)


def _transpose(ex, node):
    return ex.emit("Transpose", [ex.input(node)], perm=list(node.attrs["axes"]))


def _broadcast_to(ex, node):
    """Expand broadcasts the input against its shape: 1 keeps an axis the input has already,
    so only axes that really grow need their size (at run time, where symbolic)."""
    have = tuple(ex.input_node(node).shape)
    want = tuple(node.shape)
    have = (1,) * (len(want) - len(have)) + have
    target = [1 if h == w else w for h, w in zip(have, want)]
    return ex.emit("Expand", [ex.input(node), ex.shape(target)])


def _concatenate(ex, node):
    return ex.emit("Concat", [ex.input(node, k) for k in range(len(node.inputs))],
                   axis=node.attrs["axis"])


def _slice(ex, node):
    x = ex.input_node(node)
    axes, starts, stops = [], [], []
    for axis, (a, b, d) in enumerate(zip(node.attrs["starts"], node.attrs["stops"], x.shape)):
        if isinstance(d, Dim) or (a == 0 and b == d):
            continue                     # the whole axis (a symbolic one is always whole)
        axes.append(axis)
        starts.append(a)
        stops.append(b)
    if not axes:
        return ex.emit("Identity", [ex.input(node)])
    return ex.emit("Slice", [ex.input(node), ex.ints(starts), ex.ints(stops), ex.ints(axes)])


def _pad(ex, node):
    pads = node.attrs["pads"]
    mode = node.attrs["mode"]
    widths = ex.ints([lo for lo, _ in pads] + [hi for _, hi in pads])
    inputs = [ex.input(node), widths]
    if mode == "constant":
        inputs.append(ex.scalar(node.attrs["value"], node.dtype))
    return ex.emit("Pad", inputs, mode=mode)


def _flip(ex, node):
    axes = list(node.attrs["axes"])
    return ex.emit("Slice", [ex.input(node), ex.ints([-1] * len(axes)),
                             ex.ints([INT64_MIN] * len(axes)), ex.ints(axes),
                             ex.ints([-1] * len(axes))])


def _matmul(ex, node):
    return ex.emit("MatMul", [ex.input(node, 0), ex.input(node, 1)])


REDUCE_OPS = {"sum": "ReduceSum", "max": "ReduceMax", "min": "ReduceMin"}


def _reduce(ex, node):
    return ex.reduce(REDUCE_OPS[node.op], ex.input(node), node.attrs["axis"],
                     node.attrs["keepdims"])


def _max(ex, node):
    pooled = _max_pool(ex, node)
    return pooled if pooled is not None else _reduce(ex, node)


# ------------------------------------------------------------------ indexing

def _indices(ex, node, axis_size, checked: bool = True) -> str:
    """The indices input under graphc's index rule (module docstring); `checked`: indices
    that are inputs or constants are in range (graphc checks them)."""
    idx = ex.input_node(node, 1)
    value = ex.input(node, 1)
    if checked and OPS[idx.op].source in ("input", "constant"):
        return value
    n = ex.size(axis_size, idx.dtype)
    zero = ex.scalar(0, idx.dtype)
    value = ex.emit("Where", [ex.emit("Less", [value, zero]), ex.emit("Add", [value, n]),
                              value])
    top = ex.emit("Sub", [n, ex.scalar(1, idx.dtype)])
    return ex.emit("Min", [ex.emit("Max", [value, zero]), top])


def _take(ex, node):
    axis = node.attrs["axis"]
    x = ex.input_node(node)
    return ex.emit("Gather", [ex.input(node), _indices(ex, node, x.shape[axis])], axis=axis)


def _take_along_axis(ex, node):
    """GatherElements does not broadcast: x and the indices are expanded to the output's
    shape first, except along the axis, where each keeps its own size."""
    axis = node.attrs["axis"]
    x, idx = ex.input_node(node, 0), ex.input_node(node, 1)
    out = tuple(node.shape)
    data, indices = ex.input(node), _indices(ex, node, x.shape[axis])

    def fit(value, shape):
        target = [1 if a == axis or h == w else w for a, (h, w) in enumerate(zip(shape, out))]
        if all(t == 1 for t in target):
            return value
        return ex.emit("Expand", [value, ex.shape(target)])

    return ex.emit("GatherElements", [fit(data, x.shape), fit(indices, idx.shape)], axis=axis)


# ------------------------------------------------------------------ gradients: scatters

def _zeros(ex, shape, dtype: str) -> str:
    zero = ex.numpy_helper.from_array(np.zeros(1, dtype))
    return ex.emit("ConstantOfShape", [ex.shape(shape)], value=zero)


def _add_at(ex, updates: str, shape, indices: str, axis: int, out_shape, dtype) -> str:
    """zeros(out_shape) with updates (of `shape`) added at `indices` along `axis`
    (ScatterElements; duplicates accumulate); the indices broadcast to `shape`."""
    if ex.opset < 16:
        raise ex.error(f"a scatter-add needs ScatterElements' reduction (opset 16), the "
                       f"export is at opset {ex.opset}", fix="export with opset=16 or newer")
    indices = ex.emit("Expand", [indices, ex.shape(shape)])
    return ex.emit("ScatterElements", [_zeros(ex, out_shape, dtype), indices, updates],
                   axis=axis, reduction="add")


def _scatter_add(ex, node):
    """out[..., idx[j], ...] += g[..., j, ...]; every index clamped (graphc checks none)."""
    a = node.attrs
    g, idx = ex.input_node(node, 0), ex.input_node(node, 1)
    axis = a["axis"]
    indices = _indices(ex, node, a["size"], checked=False)
    if a["along"]:
        return _add_at(ex, ex.input(node), g.shape, indices, axis, node.shape, node.dtype)
    # take's transpose: the index axes flattened to one, the indices along it
    count = 1
    for d in idx.shape:
        count = d * count
    rest = tuple(g.shape[axis + len(idx.shape):])
    shape = tuple(g.shape[:axis]) + (count,) + rest
    updates = ex.reshape(ex.input(node), shape)
    indices = ex.reshape(indices, (1,) * axis + (count,) + (1,) * len(rest))
    return _add_at(ex, updates, shape, indices, axis, node.shape, node.dtype)


def _pad_adjoint(ex, node):
    """Each input entry sums the output entries that read it: one scatter-add per padded
    axis, at the source index of every output position (the pad's index map)."""
    a = node.attrs
    value, shape = ex.input(node), tuple(ex.input_node(node).shape)
    for axis, ((lo, hi), n) in enumerate(zip(a["pads"], a["size"])):
        if lo == hi == 0:
            continue
        j = np.arange(n + lo + hi) - lo
        if a["mode"] == "reflect":
            j = np.abs(j)
            j = np.where(j > n - 1, 2 * (n - 1) - j, j)
        else:
            j = np.clip(j, 0, n - 1)
        where = [1] * len(shape)
        where[axis] = len(j)
        out = shape[:axis] + (n,) + shape[axis + 1:]
        value = _add_at(ex, value, shape, ex.const(j.reshape(where)), axis, out, node.dtype)
        shape = out
    return value


# ------------------------------------------------------------------ windows

def _conv_direct(ex, node):
    a = node.attrs
    return ex.emit("Conv", [ex.input(node, 0), ex.input(node, 1)],
                   kernel_shape=list(a["kernel"]), strides=list(a.get("stride", (1, 1))),
                   dilations=list(a["dilation"]), pads=list(a["pad_lo"]) + list(a["pad_hi"]))


def _max_pool(ex, node):
    """MaxPool for a max over the kernel axes of a -inf-filled window; None otherwise."""
    win = ex.input_node(node)
    if win.op != "window":
        return None
    a = win.attrs
    kernel = tuple(a["kernel"])
    r = len(kernel)
    pads = tuple(a["pad_lo"]) + tuple(a["pad_hi"])
    if (a.get("channels_last", False) or a["fill"] != -np.inf or
            win.dtype not in ("float32", "float64") or
            tuple(node.attrs["axis"]) != tuple(range(2, 2 + r)) or
            node.attrs["keepdims"] or any(d != 1 for d in a["lhs_dilation"]) or
            any(p < 0 or p >= k for p, k in zip(pads, kernel * 2)) or not 1 <= r <= 3):
        return None
    return ex.emit("MaxPool", [ex.input(win)], kernel_shape=list(kernel),
                   strides=list(a["stride"]), dilations=list(a["dilation"]), pads=list(pads))


def _dilate(ex, x: str, shape, axis: int, ld: int, fill, dtype) -> tuple[str, tuple]:
    """x with ld - 1 `fill` values inserted between its entries along `axis`."""
    n = shape[axis]
    y = ex.unsqueeze(x, [axis + 1])
    widths = [0] * (2 * (len(shape) + 1))
    widths[len(shape) + 1 + axis + 1] = ld - 1
    y = ex.emit("Pad", [y, ex.ints(widths), ex.scalar(fill, dtype)], mode="constant")
    merged = tuple(shape[:axis]) + (n * ld,) + tuple(shape[axis + 1:])
    y = ex.reshape(y, merged)
    y = ex.emit("Slice", [y, ex.ints([0]), ex.ints([-(ld - 1)]), ex.ints([axis])])
    new = (n - 1) * ld + 1 if not isinstance(n, Dim) else None
    return y, tuple(shape[:axis]) + (new,) + tuple(shape[axis + 1:])


def _window(ex, node):
    """The window entries (N, C, *K, *O): the input dilated and padded with `fill` (negative
    padding crops), one strided Slice per kernel position, concatenated axis by axis."""
    a = node.attrs
    x = ex.input_node(node)
    kernel, r = tuple(a["kernel"]), len(a["kernel"])
    fill, dtype = a["fill"], x.dtype
    value, shape = ex.input(node), tuple(x.shape)
    for i, ld in enumerate(a["lhs_dilation"]):
        if ld != 1:
            value, shape = _dilate(ex, value, shape, 2 + i, ld, fill, dtype)
    lo, hi = list(a["pad_lo"]), list(a["pad_hi"])
    if any(p > 0 for p in lo + hi):
        widths = [0, 0] + [max(p, 0) for p in lo] + [0, 0] + [max(p, 0) for p in hi]
        value = ex.emit("Pad", [value, ex.ints(widths), ex.scalar(fill, dtype)],
                        mode="constant")
    if any(p < 0 for p in lo + hi):
        axes = [2 + i for i in range(r)]
        starts = [max(-p, 0) for p in lo]
        ends = [p if p < 0 else INT64_MAX for p in hi]
        value = ex.emit("Slice", [value, ex.ints(starts), ex.ints(ends), ex.ints(axes)])
    out_sizes = node.shape[2 + r:] if not a.get("channels_last", False) else \
        node.shape[1:1 + r]
    entries = {}
    for kk in itertools.product(*[range(k) for k in kernel]):
        starts, ends = [], []
        for i, (k, o) in enumerate(zip(kk, out_sizes)):
            off = k * a["dilation"][i]
            extent = a["dilation"][i] * (kernel[i] - 1) + 1
            starts.append(off)
            if isinstance(o, Dim):      # the window keeps or tiles the axis (window_size)
                tail = extent - 1 - off
                ends.append(-tail if tail > 0 else INT64_MAX)
            else:
                ends.append(off + (o - 1) * a["stride"][i] + 1)
        entries[kk] = ex.emit("Slice", [value, ex.ints(starts), ex.ints(ends),
                                        ex.ints(range(2, 2 + r)), ex.ints(a["stride"])])
    for j in reversed(range(r)):       # innermost kernel axis first: each adds axis 2
        grouped = {}
        for prefix in itertools.product(*[range(k) for k in kernel[:j]]):
            parts = [ex.unsqueeze(entries[prefix + (t,)], [2]) for t in range(kernel[j])]
            grouped[prefix] = parts[0] if len(parts) == 1 else \
                ex.emit("Concat", parts, axis=2)
        entries = grouped
    value = entries[()]
    if a.get("channels_last", False):
        from ..ops.conv import entry_axes
        value = ex.emit("Transpose", [value], perm=list(entry_axes(r, True)))
    return value


def _window_adjoint(ex, node):
    """The transpose of _window: each kernel position's entries spread back to the strided
    positions they were read from (dilated by the stride, padded by the offset), summed; then
    the padding is cut off (negative padding: zeros put back) and the input dilation
    undone."""
    a = node.attrs
    g = ex.input_node(node)
    kernel, r = tuple(a["kernel"]), len(a["kernel"])
    size = tuple(a["size"])
    if any(isinstance(d, Dim) for d in size):
        raise ex.error(f"the gradient of a window over the symbolic spatial sizes {size}",
                       fix="export the gradient with static spatial sizes")
    from ..ops.conv import entry_axes
    value = ex.input(node)
    if a.get("channels_last", False):
        axes = entry_axes(r, True)
        value = ex.emit("Transpose", [value], perm=[int(i) for i in np.argsort(axes)])
        shape = tuple(g.shape[i] for i in np.argsort(axes))
    else:
        shape = tuple(g.shape)
    n, c, out_sizes = shape[0], shape[1], shape[2 + r:]
    total = int(np.prod(kernel))
    value = ex.reshape(value, (n, c, total) + tuple(out_sizes))
    lo, hi, ld = a["pad_lo"], a["pad_hi"], a["lhs_dilation"]
    virtual = [(s - 1) * d + 1 + p + q for s, d, p, q in zip(size, ld, lo, hi)]
    parts = []
    for flat, kk in enumerate(itertools.product(*[range(k) for k in kernel])):
        part = ex.emit("Gather", [value, ex.scalar(flat, "int64")], axis=2)   # (N, C, *O)
        part_shape = (n, c) + tuple(out_sizes)
        widths_lo, widths_hi = [0, 0], [0, 0]
        for i, (k, o) in enumerate(zip(kk, out_sizes)):
            if a["stride"][i] != 1:
                part, part_shape = _dilate(ex, part, part_shape, 2 + i, a["stride"][i], 0.0,
                                           node.dtype)
            off = k * a["dilation"][i]
            widths_lo.append(off)
            widths_hi.append(virtual[i] - off - part_shape[2 + i])
        parts.append(ex.emit("Pad", [part, ex.ints(widths_lo + widths_hi)], mode="constant"))
    value = parts[0] if len(parts) == 1 else ex.emit("Sum", parts)
    if any(p < 0 for p in list(lo) + list(hi)):     # cropped in the forward: zeros back
        widths = [0, 0] + [max(-p, 0) for p in lo] + [0, 0] + [max(-p, 0) for p in hi]
        value = ex.emit("Pad", [value, ex.ints(widths)], mode="constant")
    starts = [max(p, 0) for p in lo]
    ends = [max(p, 0) + (s - 1) * d + 1 for p, s, d in zip(lo, size, ld)]
    return ex.emit("Slice", [value, ex.ints(starts), ex.ints(ends), ex.ints(range(2, 2 + r)),
                             ex.ints(ld)])


# ------------------------------------------------------------------ attention

def _attention(ex, node):
    """softmax(q kt * scale + mask) v; with a mask (or causal), rows whose every key is
    masked give zeros, as graphc's kernel does."""
    a = node.attrs
    q = ex.input_node(node, 0)
    dtype = q.dtype
    scores = ex.emit("MatMul", [ex.input(node, 0), ex.input(node, 1)])
    if a["scale"] != 1.0:
        scores = ex.emit("Mul", [scores, ex.scalar(a["scale"], dtype)])
    neg = ex.scalar(-np.inf, dtype)
    if a["causal"]:
        length, source = q.shape[-2], ex.input_node(node, 1).shape[-1]
        rows = ex.emit("Range", [ex.scalar(0, "int64"), ex.size(length), ex.scalar(1, "int64")])
        cols = ex.emit("Range", [ex.scalar(0, "int64"), ex.size(source), ex.scalar(1, "int64")])
        keep = ex.emit("LessOrEqual", [cols, ex.unsqueeze(rows, [1])])
        scores = ex.emit("Where", [keep, scores, neg])
    if a["mask"] == "bool":
        scores = ex.emit("Where", [ex.input(node, 3), scores, neg])
    elif a["mask"] == "add":
        scores = ex.emit("Add", [scores, ex.input(node, 3)])
    if a["mask"] == "none" and not a["causal"]:
        weights = ex.emit("Softmax", [scores], axis=-1)
    else:
        top = ex.reduce("ReduceMax", scores, [-1], True)
        zero, one = ex.scalar(0, dtype), ex.scalar(1, dtype)
        shift = ex.emit("Where", [ex.emit("Equal", [top, neg]), zero, top])
        e = ex.emit("Exp", [ex.emit("Sub", [scores, shift])])
        total = ex.reduce("ReduceSum", e, [-1], True)
        total = ex.emit("Where", [ex.emit("Equal", [total, zero]), one, total])
        weights = ex.emit("Div", [e, total])
    return ex.emit("MatMul", [weights, ex.input(node, 2)])


# ------------------------------------------------------------------ random numbers

UINT32, UINT64 = 12, 13           # TensorProto element types, for the hash's arithmetic


def _fmix32(ex, h: str) -> str:
    """murmur3's finalizer on uint32 values (wrapping products, as graphc's hash)."""
    def shift_xor(v, bits):
        return ex.emit("BitwiseXor", [v, ex.emit("BitShift", [v, ex.scalar(bits, "uint32")],
                                                 direction="RIGHT")])
    h = ex.emit("Mul", [shift_xor(h, 16), ex.scalar(0x85EBCA6B, "uint32")])
    h = ex.emit("Mul", [shift_xor(h, 13), ex.scalar(0xC2B2AE35, "uint32")])
    return shift_xor(h, 16)


def _random_uniform(ex, node):
    """graphc's counter-based uniform numbers bit for bit (ops/random.py): a hash of each
    element's flat index and the key's two halves, in uint32 (bitwise ops: opset 18)."""
    if ex.opset < 18:
        raise ex.error(f"random numbers need the bitwise ops of opset 18, the export is at "
                       f"opset {ex.opset}", fix="export with opset=18 or newer")
    from ..ir.types import numel
    key = ex.input(node)
    low = ex.emit("Cast", [ex.emit("BitwiseAnd", [key, ex.scalar(0xFFFFFFFF, "int64")])],
                  to=UINT32)
    high = ex.emit("BitShift", [ex.emit("Cast", [key], to=UINT64), ex.scalar(32, "uint64")],
                   direction="RIGHT")
    high = ex.emit("Cast", [high], to=UINT32)
    count = ex.emit("Range", [ex.scalar(0, "int64"), ex.size(numel(node.shape)),
                              ex.scalar(1, "int64")])
    h = ex.emit("BitwiseXor", [ex.emit("Cast", [count], to=UINT32), low])
    h = _fmix32(ex, ex.emit("Add", [_fmix32(ex, h), high]))
    h = ex.emit("BitShift", [h, ex.scalar(8, "uint32")], direction="RIGHT")
    u = ex.emit("Mul", [ex.cast(h, "float32"), ex.scalar(2.0 ** -24, "float32")])
    return ex.reshape(u, node.shape)


# ------------------------------------------------------------------ loops

def _scan(ex, node):
    """Scan: the carries are its state variables, xs its scan inputs (reversed: both
    directions 1, so ys[t] still comes from xs[t]); the values the body captured from the
    enclosing graph are read from the outer scope by name."""
    a = node.attrs
    body, nc, nx = a["body"], a["num_carry"], a["num_xs"]
    if nx == 0:
        raise ex.error("a scan over a length without xs has no ONNX Scan form",
                       fix="scan over a tensor with the sequence on its leading axis")
    outer = [ex.input(node, k) for k in range(len(node.inputs))]
    loop = f"{ex.prefix}{node.op}{node.id}"
    sub = Exporter(body, ex.opset, prefix=f"{loop}.", taken=ex.taken)
    inputs = []
    for k, i in enumerate(body.inputs):
        if k < nc + nx:
            name = sub.fresh(f"carry{k}" if k < nc else f"x{k - nc}")
            inputs.append((name, body[i].type))
            sub.values[i] = name
        else:
            sub.values[i] = outer[k]
    names = [sub.fresh(f"out{k}") for k in range(len(body.outputs))]
    proto = sub.build(inputs, names, body.name)
    outputs = ex.emit("Scan", outer[:nc + nx], outputs=len(body.outputs), body=proto,
                      num_scan_inputs=nx, scan_input_directions=[int(a["reverse"])] * nx,
                      scan_output_directions=[int(a["reverse"])] * (len(body.outputs) - nc))
    outputs = [outputs] if isinstance(outputs, str) else outputs
    ex.implicit[outputs[0]] = _free_names(proto)
    return outputs


def _free_names(graph) -> set:
    """The names a GraphProto reads from the enclosing scope."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for proto in graph.node:
        defined.update(proto.output)
    return {i for proto in graph.node for i in proto.input if i and i not in defined}


def _scan_result(ex, node):
    return ex.values[node.inputs[0]][node.attrs["index"]]


# One entry per graphc primitive (graphc.ops.registry.OPS); the ops left out are listed in
# NOT_EXPORTED with the reason.
EXPORTERS = {
    # sources
    "input": _input,
    "constant": _constant,
    "iota": _iota,
    "size": _size,
    # elementwise
    "negative": _same("Neg"),
    "abs": _same("Abs"),
    "exp": _same("Exp"),
    "log": _same("Log"),
    "sqrt": _same("Sqrt"),
    "rsqrt": _rsqrt,
    "tanh": _same("Tanh"),
    "erf": _same("Erf"),
    "sin": _same("Sin"),
    "cos": _same("Cos"),
    "add": _same("Add"),
    "subtract": _same("Sub"),
    "multiply": _same("Mul"),
    "divide": _same("Div"),
    "floor_divide": _floor_divide,
    "power": _same("Pow"),
    "maximum": _same("Max"),
    "minimum": _same("Min"),
    "less": _ordered("Less"),
    "less_equal": _ordered("LessOrEqual"),
    "greater": _ordered("Greater"),
    "greater_equal": _ordered("GreaterOrEqual"),
    "equal": _same("Equal"),
    "not_equal": _not_equal,
    "logical_and": _same("And"),
    "logical_or": _same("Or"),
    "logical_not": _same("Not"),
    "where": _where,
    "astype": _astype,
    "copy": _same("Identity"),
    "stop_gradient": _same("Identity"),
    # movement
    "reshape": _reshape,
    "transpose": _transpose,
    "broadcast_to": _broadcast_to,
    "concatenate": _concatenate,
    "slice": _slice,
    "pad": _pad,
    "flip": _flip,
    # reductions, products
    "sum": _reduce,
    "max": _max,
    "min": _reduce,
    "matmul": _matmul,
    # indexing
    "take": _take,
    "take_along_axis": _take_along_axis,
    # windows, convolution, attention
    "window": _window,
    "conv_direct": _conv_direct,
    "attention": _attention,
    # gradients
    "scatter_add": _scatter_add,
    "pad_adjoint": _pad_adjoint,
    "window_adjoint": _window_adjoint,
    "random_uniform": _random_uniform,
    # loops
    "scan": _scan,
    "scan_result": _scan_result,
}

NOT_EXPORTED: dict[str, str] = {}   # op -> why it has no ONNX form (none at present)


def _check_exportable(graph: Graph) -> None:
    """One error naming every op of the graph the table has no rule for."""
    missing: dict[str, list] = defaultdict(list)
    for node in graph.nodes:
        if node.op not in EXPORTERS:
            missing[node.op].append(node)
    if not missing:
        return
    parts = []
    for op, nodes in missing.items():
        why = NOT_EXPORTED.get(op, "no ONNX mapping")
        where = f", first at {nodes[0].loc.splitlines()[0]}" if nodes[0].loc else ""
        parts.append(f"{op} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}: {why}{where})")
    raise OnnxError(f"export: {graph.name} uses {len(missing)} graphc op(s) with no ONNX "
                    f"mapping: {'; '.join(parts)}",
                    fix="export a function without these ops, or add their rules to "
                        "graphc.onnx.exporter.EXPORTERS")


def _graph_of(fn_or_graph_or_compiled, specs) -> Graph:
    from ..compiler import Compiled
    from ..trace import trace
    if isinstance(fn_or_graph_or_compiled, Compiled):
        source = fn_or_graph_or_compiled.graph
    elif isinstance(fn_or_graph_or_compiled, Graph):
        source = fn_or_graph_or_compiled
    else:
        return trace(fn_or_graph_or_compiled, *specs)
    if specs:
        raise TypeError("export of a Graph or Compiled takes no specs: it has its signature")
    return source


def export(fn_or_graph_or_compiled, path=None, *specs, opset: int = DEFAULT_OPSET,
           name: str | None = None):
    """Writes a graphc function (traced with `specs`), Graph or Compiled as an ONNX model.

    Inputs keep the graph's input names, symbolic sizes become dim_params of their names;
    outputs take a dict result's keys, else output_0, output_1, ... `path=None` writes
    nothing. Returns the onnx.ModelProto (opset `opset`, 13 or newer; 18 by default).

        >>> model = graphc.onnx.export(mlp, "mlp.onnx", graphc.tensor(("B", 4)), ...)
        >>> onnxruntime.InferenceSession("mlp.onnx").run(None, {"x": x})
    """
    onnx = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise OnnxError(f"export: opset {opset!r} is not supported",
                        fix=f"pick an opset from {MIN_OPSET} to {newest} (default "
                            f"{DEFAULT_OPSET})")
    graph = _graph_of(fn_or_graph_or_compiled, specs)
    _check_exportable(graph)
    body = Exporter(graph, opset).run()
    if name is not None:
        body.name = name
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(body, opset_imports=opsets, producer_name="graphc",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


__all__ = ["export", "EXPORTERS", "NOT_EXPORTED", "DEFAULT_OPSET"]
