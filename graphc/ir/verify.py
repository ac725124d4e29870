"""verify: checks a graph's invariants; run after every pass that builds a graph."""
from __future__ import annotations

from ..ops.registry import OPS, SOURCE
from .graph import Graph


def verify(graph: Graph) -> Graph:
    """Ids are positions, inputs come first, every type matches its op's rule. Returns graph."""
    for pos, node in enumerate(graph.nodes):
        assert node.id == pos, f"node %{node.id} sits at position {pos}"
        assert node.op in OPS, f"%{pos}: unknown op {node.op}"
        assert all(0 <= i < pos for i in node.inputs), f"%{pos} {node.op}: input after its user"
        if OPS[node.op].kind != SOURCE:
            types = [graph[i].type for i in node.inputs]
            expected = OPS[node.op].infer(types, **node.attrs)
            assert expected == node.type, f"%{pos} {node.op}: type {node.type} != {expected}"
    assert all(graph[i].op == "input" for i in graph.inputs), "graph.inputs must be input nodes"
    assert graph.outputs and all(0 <= o < len(graph.nodes) for o in graph.outputs)
    return graph
