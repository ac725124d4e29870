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
from ..ops.registry import (CONCAT, GATHER, LOOP, MATMUL, OPS, REDUCE, RESULT, SCATTER,
                            SLICE, SOURCE, VIEW)


def is_inline_source(node) -> bool:
    """Sources computed inside loops instead of read from memory: iota, sizes, 1-element consts."""
    source = OPS[node.op].source
    if source in ("iota", "size"):
        return True
    return source == "constant" and node.attrs["value"].size == 1


def simplify(graph: Graph) -> Graph:
    # The second rebuild drops what the first one's rewrites left dead.
    return verify(_rebuild(_rebuild(_merge_loops(graph), bodies=True)))


def _merge_loops(graph: Graph) -> Graph:
    """A loop whose body repeats an earlier loop's body with more outputs (Graph.extends: the
    forward loop a scan's vjp runs again to save its carries), on the same inputs and with
    the same attributes otherwise, replaces that loop: one loop computes both. Results of one
    loop at one index become one node."""
    loops = [n for n in graph.nodes if OPS[n.op].kind == LOOP]
    replaced: dict[int, int] = {}   # earlier loop -> the loop that extends it
    for later in loops:
        body = later.attrs["body"]
        for earlier in loops:
            if earlier.id < later.id and body.extends is earlier.attrs["body"] and \
                    earlier.id not in replaced and earlier.inputs == later.inputs and \
                    _same_attrs(earlier.attrs, later.attrs):
                replaced[earlier.id] = later.id
                break
    if not loops:
        return graph
    moved = set(replaced.values())
    out = Graph(**graph.structure())
    remap: dict[int, int] = {}
    results: dict[tuple, int] = {}
    for node in graph.nodes:
        if node.id in moved:
            continue
        chain = [node.id]   # a loop, the one extending it, the one extending that, ...
        while chain[-1] in replaced:
            chain.append(replaced[chain[-1]])
        source = graph[chain[-1]]
        inputs = tuple(remap[i] for i in node.inputs)
        if OPS[node.op].kind == RESULT and (inputs, node.attrs["index"]) in results:
            remap[node.id] = results[(inputs, node.attrs["index"])]
            continue
        new = out.add(source.op, inputs, source.attrs, source.type, source.loc)
        for i in chain:
            remap[i] = new.id
        if OPS[node.op].kind == RESULT:
            results[(inputs, node.attrs["index"])] = new.id
        if OPS[node.op].source == "input":
            out.inputs.append(new.id)
    out.outputs.extend(remap[o] for o in graph.outputs)
    return out


def _same_attrs(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in a if k != "body") and set(a) == set(b)


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
