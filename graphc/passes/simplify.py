"""simplify: small graph rewrites before fusion.

Assumes a traced graph. Guarantees: no dead nodes; every graph output is a distinct value
computed by a kernel (inputs, constants and repeated outputs are copied); a view never has
another view as input; values computed inline (iota, sizes, scalar constants) are copied to
memory before a view of an iota, a matmul, a concatenate or a slice reads them.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.verify import verify
from ..ir.types import Dim, TensorType
from ..ops.registry import (ATTENTION, CONCAT, ELEMENTWISE, GATHER, LAYOUT, MATMUL, OPS, REDUCE,
                            SCATTER, SLICE, SOURCE, VIEW)


def is_inline_source(node) -> bool:
    """Sources computed inside loops instead of read from memory: iota, sizes, 1-element consts."""
    source = OPS[node.op].source
    if source in ("iota", "size"):
        return True
    return source == "constant" and node.attrs["value"].size == 1


def simplify(graph: Graph) -> Graph:
    # The second rebuild drops what the first one's rewrites left dead.
    return verify(_rebuild(_rebuild(graph)))


def _rebuild(graph: Graph) -> Graph:
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
        elif OPS[node.op].kind == ELEMENTWISE and (sunk := _sink_reshape(out, node, inputs)):
            remap[node.id] = sunk
            continue
        elif OPS[node.op].kind in (MATMUL, CONCAT, SLICE, GATHER, SCATTER, ATTENTION):
            # these kernels read operands from memory; an inline value has none
            inputs = [out.add("copy", [i], {}, out[i].type, node.loc).id
                      if is_inline_source(out[_storage_root(out, i)]) else i for i in inputs]
        new = out.add(node.op, inputs, node.attrs, node.type, node.loc)
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


def _sink_reshape(out: Graph, node, inputs) -> int | None:
    """Rule sink_reshape: e(reshape(x), b) -> reshape(e(x, b')), where b' is b regrouped to
    x's axes, when x is computed by a matmul or a map (so e joins x's kernel, e.g. a
    convolution's bias, batch norm and ReLU run in its matmul's epilogue). Applies only
    where every other input is broadcast whole or not at all across each group of merged
    axes. Returns the id of the new reshape, or None."""
    op = OPS[node.op]
    if op.per_element:
        return None
    view = next((out[i] for i in inputs if OPS[out[i].op].kind == VIEW and
                 tuple(out[i].shape) == tuple(node.shape) and
                 OPS[out[_storage_root(out, out[i].inputs[0])].op].kind in
                 (MATMUL, ELEMENTWISE, LAYOUT)), None)
    if view is None:
        return None
    x = out[view.inputs[0]]
    groups = _regroup(tuple(x.shape), tuple(node.shape))
    if groups is None:
        return None
    new_inputs = []
    for i in inputs:
        b = out[i]
        if i == view.id:
            new_inputs.append(x.id)
            continue
        if b.type.rank == 0:
            new_inputs.append(i)
            continue
        shape = _regrouped(tuple(b.shape), tuple(node.shape), tuple(x.shape), groups)
        if shape is None:
            return None
        root = b.inputs[0] if OPS[b.op].kind == VIEW else i
        if shape == tuple(out[root].shape):
            new_inputs.append(root)
        else:
            new_inputs.append(out.add("reshape", [root], {"shape": shape},
                                      TensorType(shape, b.dtype), b.loc).id)
    inner = out.add(node.op, new_inputs, node.attrs, TensorType(tuple(x.shape), node.dtype),
                    node.loc)
    return out.add("reshape", [inner.id], {"shape": tuple(node.shape)}, node.type, node.loc).id


def _regroup(src, dst):
    """Pairs (src axes, dst axes) of equal size products that a reshape src -> dst maps onto
    each other (merges and splits of adjacent axes), or None. A symbolic size must map onto
    the same symbolic size."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        if i < len(src) and j < len(dst) and (isinstance(src[i], Dim) or
                                              isinstance(dst[j], Dim)):
            if src[i] != dst[j]:
                return None
            groups.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        ga, gb, pa, pb = [], [], 1, 1
        while True:
            if ga and gb and pa == pb and not (
                    (i < len(src) and src[i] == 1) or (j < len(dst) and dst[j] == 1)):
                break
            if pa <= pb and i < len(src) and not isinstance(src[i], Dim) and \
                    (pa < pb or not ga or src[i] == 1):
                pa *= src[i]
                ga.append(i)
                i += 1
            elif j < len(dst) and not isinstance(dst[j], Dim) and (pb < pa or not gb or
                                                                     dst[j] == 1):
                pb *= dst[j]
                gb.append(j)
                j += 1
            elif pa == pb:
                break
            else:
                return None
        if pa != pb:
            return None
        groups.append((ga, gb))
    return groups


def _regrouped(b_shape, dst, src, groups):
    """b (broadcast to dst) with src's axes, or None when b varies within part of a group."""
    full = (1,) * (len(dst) - len(b_shape)) + tuple(b_shape)
    shape = []
    for ga, gb in groups:
        dims = [full[k] for k in gb]
        if all(d == 1 for d in dims):
            shape += [1] * len(ga)
        elif dims == [dst[k] for k in gb]:
            shape += [src[k] for k in ga]
        else:
            return None
    return tuple(shape)


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
