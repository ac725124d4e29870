"""The runtime signature of a graph (names, dtypes, symbolic shapes) as runtime data."""
from __future__ import annotations

from graphc_runtime.signature import Signature, bind_inputs  # noqa: F401  (re-exported)

from .ir.graph import Graph
from .ir.types import Dim


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
                     tuple(graph.arg_names))
