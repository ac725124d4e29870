"""simplify: small graph rewrites before fusion.

Assumes a traced graph. Guarantees: no dead nodes; every graph output is a distinct value
computed by a kernel (inputs, constants and repeated outputs are copied); a view never has
another view as input; values computed inline (iota, sizes, scalar constants) are copied to
memory before a view of an iota, a matmul, a concatenate, a slice or a loop reads them; a
loop's body is simplified too, without the outputs (ys) whose results nobody reads, and a
loop that repeats an earlier one with more outputs (a scan's vjp) replaces it; a transpose
of a constant is a constant.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.verify import verify
from ..ir.types import Dim, TensorType
from ..ops.registry import (ATTENTION, CONCAT, CONV, ELEMENTWISE, GATHER, LAYOUT, LOOP,
                            MATMUL, OPS, REDUCE, RESULT, SCATTER, SOURCE, VIEW)


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


def _cse_key(node, inputs):
    """What identifies a node's value among its graph's: op, inputs, attributes and type; None
    for nodes never merged (sources, loops and their results) or attributes that do not hash
    (the node is then kept as it is)."""
    if OPS[node.op].kind in (SOURCE, LOOP, RESULT):
        return None
    try:
        key = (node.op, tuple(inputs), _frozen(node.attrs), node.type)
        hash(key)
    except TypeError:
        return None
    return key


def _frozen(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    if hasattr(value, "dtype") and hasattr(value, "tobytes"):   # numpy arrays and scalars
        return ("array", str(value.dtype), getattr(value, "shape", ()), value.tobytes())
    return value


def _same_attrs(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in a if k != "body") and set(a) == set(b)


def _rebuild(graph: Graph, bodies: bool = False) -> Graph:
    live = _live(graph)
    out = Graph(**graph.structure())
    remap: dict[int, int] = {}
    renumber: dict[int, dict[int, int]] = {}   # loop -> its results' old index -> new index
    users = graph.users() if bodies else {}
    readers = {n: len(u) for n, u in (users or graph.users()).items()}
    outputs = set(graph.outputs)
    seen: dict = {}   # _cse_key -> node in `out`
    for node in graph.nodes:
        if node.id not in live:
            continue
        inputs = [remap[i] for i in node.inputs]
        if OPS[node.op].kind == RESULT and node.inputs[0] in renumber:
            index = renumber[node.inputs[0]][node.attrs["index"]]
            new = out.add(node.op, inputs, {**node.attrs, "index": index}, node.type, node.loc)
            remap[node.id] = new.id
            continue
        if OPS[node.op].permutation is not None and \
                (folded := _fold_permutation(out, node, inputs[0])) is not None:
            remap[node.id] = folded
            continue
        if OPS[node.op].permutation is not None and (undone := _undo_permutation(
                out, node, inputs[0], readers[node.inputs[0]] == 1 and
                node.inputs[0] not in outputs)) is not None:
            remap[node.id] = undone
            continue
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
        elif OPS[node.op].kind in (MATMUL, CONCAT, GATHER, SCATTER, ATTENTION,
                                   CONV, LOOP):
            # these kernels read operands from memory; an inline value has none
            inputs = [out.add("copy", [i], {}, out[i].type, node.loc).id
                      if is_inline_source(out[_storage_root(out, i)]) else i for i in inputs]
        attrs = node.attrs
        if bodies and OPS[node.op].kind == LOOP:  # a loop's body is simplified as a graph
            attrs, renumber[node.id] = _simplify_body(graph, node, live, users[node.id])
        key = _cse_key(node, inputs)
        if key is not None and key in seen:   # the same op on the same values: computed once
            remap[node.id] = seen[key]
            continue
        new = out.add(node.op, inputs, attrs, node.type, node.loc)
        remap[node.id] = new.id
        if key is not None:
            seen[key] = new.id
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


def _fold_permutation(out: Graph, node, x: int) -> int | None:
    """Rule fold_transpose: a permutation of a stored constant becomes a constant, permuted
    once at compile time. A Linear's (out, in) weight read as (in, out) (ONNX Gemm transB,
    x @ W.T) then packs with contiguous reads instead of a strided gather at every call."""
    root = out[_storage_root(out, x)]
    if OPS[root.op].source != "constant" or is_inline_source(root):
        return None
    value = OPS[node.op].reference(root.attrs["value"].reshape(out[x].shape), **node.attrs)
    value.flags.writeable = False
    attrs = {"value": value, "dtype": root.attrs["dtype"], "shape": tuple(value.shape)}
    return out.add(root.op, [], attrs, node.type, node.loc).id


def _undo_permutation(out: Graph, node, x: int, sole_reader: bool) -> int | None:
    """Rules cancel_transposes and transpose_matmul: a permutation of a permutation that
    restores the order is its input (a scan's gradient transposes a weight that the forward
    step had transposed); swapping the last two axes of a matmul's result is the matmul of
    its swapped operands, b^T a^T, which the matmul reads in place (a weight gradient
    accumulated in the weight's layout then needs no transpose); only where this
    permutation is the matmul's sole reader (`sole_reader`), so nothing is computed twice.
    Else None."""
    perm = tuple(OPS[node.op].permutation(**node.attrs))
    src = out[x]
    if OPS[src.op].permutation is not None:
        inner = tuple(OPS[src.op].permutation(**src.attrs))
        if tuple(inner[a] for a in perm) == tuple(range(len(perm))):
            return src.inputs[0]
        return None
    rank = len(perm)
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    if OPS[src.op].kind != MATMUL or not sole_reader or rank < 2 or perm != swap or \
            any(out[i].type.rank != rank for i in src.inputs):
        return None
    a, b = src.inputs

    def swapped(v):   # v with its last two axes swapped (undoing a swap v already is)
        if OPS[out[v].op].permutation is not None and \
                tuple(OPS[out[v].op].permutation(**out[v].attrs)) == swap:
            return out[v].inputs[0]
        return out.add("transpose", [v], {"axes": swap},
                       TensorType(tuple(out[v].shape[k] for k in swap), out[v].dtype),
                       node.loc).id
    return out.add(src.op, [swapped(b), swapped(a)], src.attrs, node.type, node.loc).id


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


def _simplify_body(graph: Graph, loop, live: set[int], users: list[int]):
    """The loop's attrs with its body simplified, without the ys nobody reads (their work
    is dropped from every step), and the new index of each result still read."""
    body, nc = loop.attrs["body"], loop.attrs["num_carry"]
    read = {graph[u].attrs["index"] for u in users if u in live}
    keep = list(range(nc)) + [k for k in range(nc, len(body.outputs)) if k in read]
    if len(keep) < len(body.outputs):
        body = Graph(list(body.nodes), list(body.inputs), [body.outputs[k] for k in keep],
                     name=body.name, single_output=False)
    return {**loop.attrs, "body": simplify(body)}, {old: new for new, old in enumerate(keep)}


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
