"""The runtime signature of a graph (names, dtypes, symbolic shapes) as runtime data."""
from __future__ import annotations

from graphc_runtime.signature import Signature, bind_inputs  # noqa: F401  (re-exported)

import numpy as np

from .ir.graph import Graph
from .ir.types import Dim
from .ops.registry import OPS, VIEW


def symbols_of(graph: Graph) -> tuple[str, ...]:
    """Symbol names in order of first appearance among the inputs: the native `dims` order."""
    out: list[str] = []
    for i in graph.inputs:
        for d in graph[i].shape:
            if isinstance(d, Dim) and d.syms[0] not in out:
                out.append(d.syms[0])
    return tuple(out)


def size_json(d):
    return [d.coef, list(d.syms)] if isinstance(d, Dim) else int(d)


# The generated code computes sizes and offsets in 64-bit integers, in bytes at most.
MAX_BYTES = 1 << 62


def size_limits(graph: Graph) -> tuple:
    """(label, coef, symbols) for the byte size of every value the code computes (so every
    buffer, kernel space and offset is below it) whose size is symbolic; the runtime checks
    them with the bound sizes before any native code runs. Static sizes are checked here."""
    out: dict[tuple, tuple] = {}
    for node in graph.nodes:
        if OPS[node.op].source == "input":   # inputs exist in memory already
            continue
        coef, syms = np.dtype(node.dtype).itemsize, []
        for d in node.shape:
            if isinstance(d, Dim):
                coef *= d.coef
                syms += d.syms
            else:
                coef *= int(d)
        if coef == 0:
            continue
        if not syms:
            if coef > MAX_BYTES:
                raise ValueError(f"%{node.id} ({node.op}{' at ' + node.loc.splitlines()[0] if node.loc else ''}) "
                                 f"would hold {coef} bytes, more than 64-bit sizes allow")
            continue
        key = tuple(sorted(syms))
        if key not in out or out[key][1] < coef:
            label = f"%{node.id} ({node.op}, {node.type})"
            out[key] = (label, coef, key)
    return tuple(out.values())


def index_bounds(graph: Graph) -> tuple:
    """(input position, size, label) for every graph input used as the indices of an op that
    declares `bounds` (take, ...): the runtime checks -size <= index < size before native
    code runs. Indices computed in the graph are clamped by the kernels instead."""
    position = {n: k for k, n in enumerate(graph.inputs)}
    out = []
    for node in graph.nodes:
        rule = OPS[node.op].bounds
        if rule is None:
            continue
        k, size = rule([graph[i].type for i in node.inputs], **node.attrs)
        root = node.inputs[k]
        while OPS[graph[root].op].kind == VIEW:
            root = graph[root].inputs[0]
        if root in position:
            where = f" at {node.loc.splitlines()[0]}" if node.loc else ""
            item = (position[root], size_json(size), f"{node.op}{where}")
            if item not in out:
                out.append(item)
    return tuple(out)


def signature_of(graph: Graph) -> Signature:
    inputs = []
    for i in graph.inputs:
        node = graph[i]
        shape = []
        for d in node.shape:
            if isinstance(d, Dim) and (d.coef != 1 or len(d.syms) != 1):
                raise ValueError(f"input {node.attrs['name']}: an input dim must be an int or "
                                 f"one symbol, got {d}")
            shape.append(d.syms[0] if isinstance(d, Dim) else int(d))
        inputs.append((node.attrs["name"], node.dtype, tuple(shape)))
    outputs = tuple((graph[i].dtype, tuple(size_json(d) for d in graph[i].shape))
                    for i in graph.outputs)
    written: dict[int, int] = {}
    for o, i in sorted(graph.aliases.items()):
        if not (0 <= o < len(outputs) and 0 <= i < len(inputs)):
            raise ValueError(f"alias output {o} -> input {i} is out of range")
        if i in written:
            raise ValueError(f"outputs {written[i]} and {o} are both written in place into "
                             f"input {inputs[i][0]}; one input can take one output")
        written[i] = o
        if graph[graph.outputs[o]].type != graph[graph.inputs[i]].type:
            raise ValueError(f"output {o} ({graph[graph.outputs[o]].type}) cannot be written into "
                             f"input {inputs[i][0]} ({graph[graph.inputs[i]].type}): types differ")
    return Signature(tuple(inputs), outputs, symbols_of(graph), graph.single_output,
                     tuple(sorted(graph.aliases.items())), graph.in_tree, graph.out_tree,
                     tuple(graph.arg_names), size_limits(graph), index_bounds(graph))
