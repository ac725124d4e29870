"""verify: checks a graph's invariants; the passes rely on them.

Runs after every pass under GRAPHC_VERIFY=1 (passes/pipeline.py), on every graph given to
compile, and at the end of simplify. A broken invariant raises CompileError (not an assert,
which `python -O` removes) naming the pass that broke it, the node and the invariant.
"""
from __future__ import annotations

from ..errors import CompileError
from ..ops.registry import OPS, SOURCE
from .graph import Graph


def verify(graph: Graph, where: str = "") -> Graph:
    """Ids are positions, inputs precede their users, the input nodes are graph.inputs,
    outputs and aliases are in range, every op is in OPS and every type is what its op's
    rule infers. Returns graph; `where` ("after pass fuse") goes into the message.
    """

    def broken(problem: str, node=None):
        raise CompileError(f"graph {graph.name} is broken{' ' + where if where else ''}: "
                           f"{problem}",
                           op=None if node is None else node.op,
                           loc=None if node is None else node.loc,
                           fix="this is a bug in graphc (or in a hand-built Graph); "
                               "GRAPHC_DUMP=<folder> writes the graph after every pass")

    nodes = graph.nodes
    for pos, node in enumerate(nodes):
        if node.id != pos:
            broken(f"node %{node.id} sits at position {pos} (ids must be positions)", node)
        op = OPS.get(node.op)
        if op is None:
            broken(f"%{pos}: unknown op {node.op!r}", node)
        for i in node.inputs:
            if not (isinstance(i, int) and 0 <= i < pos):
                broken(f"%{pos} {node.op}: input %{i} does not precede its user", node)
        if op.arity is not None and len(node.inputs) != op.arity:
            broken(f"%{pos} {node.op}: {len(node.inputs)} inputs, the op takes {op.arity}", node)
        if op.kind != SOURCE:
            try:
                expected = op.infer([nodes[i].type for i in node.inputs], **node.attrs)
            except (ValueError, TypeError) as err:
                broken(f"%{pos} {node.op}: its inputs no longer fit the op: {err}", node)
            if expected != node.type:
                broken(f"%{pos} {node.op}: type {node.type}, but the op infers {expected}", node)
    _check_interface(graph, broken)
    return graph


def _check_interface(graph: Graph, broken) -> None:
    n = len(graph.nodes)
    listed = list(graph.inputs)
    if len(set(listed)) != len(listed):
        broken(f"graph.inputs lists a node twice: {listed}")
    for i in listed:
        if not (isinstance(i, int) and 0 <= i < n and OPS[graph[i].op].source == "input"):
            broken(f"graph.inputs entry %{i} is not an input node")
    unlisted = [node.id for node in graph.nodes if OPS[node.op].source == "input" and node.id not in listed]
    if unlisted:
        broken(f"input node(s) {', '.join(f'%{i}' for i in unlisted)} missing from graph.inputs",
               graph[unlisted[0]])
    if not graph.outputs:
        broken("the graph has no outputs")
    for o in graph.outputs:
        if not (isinstance(o, int) and 0 <= o < n):
            broken(f"output %{o} is not a node of the graph")
    for o, i in graph.aliases.items():
        if not (0 <= o < len(graph.outputs) and 0 <= i < len(listed)):
            broken(f"alias output {o} -> input {i} is out of range "
                   f"({len(graph.outputs)} outputs, {len(listed)} inputs)")
