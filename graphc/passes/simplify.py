"""simplify: small graph rewrites before fusion.

Assumes a traced graph. Guarantees: no dead nodes; every graph output is a distinct value
computed by a kernel (inputs, constants and repeated outputs are copied); a view never has
another view as input; values computed inline (iota, sizes, scalar constants) are copied to
memory before a view of an iota, a matmul, a concatenate, a slice or a loop reads them; a
loop's body is simplified too.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.verify import verify
from ..ops.registry import (CONCAT, GATHER, LOOP, MATMUL, OPS, REDUCE, SCATTER, SLICE,
                            SOURCE, VIEW)


def is_inline_source(node) -> bool:
    """Sources computed inside loops instead of read from memory: iota, sizes, 1-element consts."""
    source = OPS[node.op].source
    if source in ("iota", "size"):
        return True
    return source == "constant" and node.attrs["value"].size == 1


def simplify(graph: Graph) -> Graph:
    # The second rebuild drops what the first one's rewrites left dead.
    return verify(_rebuild(_rebuild(graph, bodies=True)))


def _rebuild(graph: Graph, bodies: bool = False) -> Graph:
    live = _live(graph)
    out = Graph(**graph.structure())
    remap: dict[int, int] = {}
    for node in graph.nodes:
        if node.id not in live:
            continue
        inputs = [remap[i] for i in node.inputs]
        if OPS[node.op].kind == VIEW:
            src = out[inputs[0]]
            if OPS[src.op].kind == VIEW:  # view of a view: view the root directly
                inputs = [src.inputs[0]]
                src = out[inputs[0]]
            if OPS[src.op].source == "iota":
                inputs = [out.add("copy", inputs, {}, src.type, src.loc).id]
            elif _restores_reduced_axes(src, node):
                # sum(x, 1)[:, None] is sum(x, 1, keepdims=True): a row value, fusable
                attrs = {**src.attrs, "keepdims": True}
                new = out.add(src.op, src.inputs, attrs, node.type, node.loc)
                remap[node.id] = new.id
                continue
        elif OPS[node.op].kind in (MATMUL, CONCAT, SLICE, GATHER, SCATTER, LOOP):
            # these kernels read operands from memory; an inline value has none
            inputs = [out.add("copy", [i], {}, out[i].type, node.loc).id
                      if is_inline_source(out[_storage_root(out, i)]) else i for i in inputs]
        attrs = node.attrs
        if bodies and OPS[node.op].kind == LOOP:  # a loop's body is simplified as a graph
            attrs = {**attrs, "body": simplify(attrs["body"])}
        new = out.add(node.op, inputs, attrs, node.type, node.loc)
        remap[node.id] = new.id
        if OPS[node.op].source == "input":
            out.inputs.append(new.id)
    claimed: set[int] = set()
    for k, o in enumerate(graph.outputs):
        value = remap[o]
        root = _storage_root(out, value)
        in_place = k in graph.aliases and out[value].op != "copy"
        if OPS[out[root].op].kind == SOURCE or root in claimed or in_place:
            # an in-place output gets its own copy node: fusion decides where it can write
            node = out[value]
            value = out.add("copy", [value], {}, node.type, node.loc).id
            root = value
        claimed.add(root)
        out.outputs.append(value)
    return out


def _restores_reduced_axes(src, view) -> bool:
    if OPS[src.op].kind != REDUCE or src.attrs["keepdims"]:
        return False
    rank = len(src.shape) + len(src.attrs["axis"])
    dims = iter(src.shape)
    kept = tuple(1 if a in src.attrs["axis"] else next(dims) for a in range(rank))
    return kept == tuple(view.shape)


def _storage_root(graph: Graph, node_id: int) -> int:
    while OPS[graph[node_id].op].kind == VIEW:
        node_id = graph[node_id].inputs[0]
    return node_id


def _live(graph: Graph) -> set[int]:
    live = set(graph.inputs)
    stack = list(graph.outputs)
    while stack:
        i = stack.pop()
        if i in live and OPS[graph[i].op].source != "input":
            continue
        live.add(i)
        stack.extend(graph[i].inputs)
    return live
