"""fuse: splits a simplified graph into kernels.

Assumes `simplify` ran. Guarantees: every non-source, non-view node belongs to exactly one
kernel; kernels are in a topological order; inside a kernel every edge is one the loop code
can evaluate in registers:
  map:    all nodes share the iteration space and read each other at the same index;
  rows:   a reduction over `reduce_axes` of the space, with "elem" nodes (the whole space,
          computed inside row loops) and "row" nodes (one value per row, computed between loops);
  matmul: one matmul node, the transposes of its operands (read in place with swapped
          strides) and an elementwise epilogue over its output (computed as tiles of C are
          written);
  concat, slice: one node, operands read from memory.
Views (reshape) never get a kernel: they alias their input's memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from ..ir.graph import Graph, Node
from ..ir.types import Dim
from ..ops.registry import (CONCAT, ELEMENTWISE, LAYOUT, MATMUL, OPS, REDUCE, SLICE, SOURCE,
                            VIEW)
from .simplify import is_inline_source


@dataclass(eq=False)
class Kernel:
    kind: str                          # "map" | "rows" | "matmul" | "concat" | "slice"
    space: tuple                       # the iteration space (shape)
    reduce_axes: tuple = ()            # rows: the reduced axes of `space`
    nodes: list[int] = field(default_factory=list)    # in topological order
    reads: list[int] = field(default_factory=list)    # values read from memory (may be views)
    outputs: list[int] = field(default_factory=list)  # nodes written to memory
    ops: list[str] = field(default_factory=list)
    name: str = ""

    def __repr__(self) -> str:
        extra = f" reduce_axes={self.reduce_axes}" if self.kind == "rows" else ""
        space = "(" + ", ".join(map(str, self.space)) + ")"
        return (f"{self.name}: {self.kind} over {space}{extra}: {' '.join(self.ops)} "
                f"[reads {', '.join(f'%{i}' for i in self.reads) or '-'} -> "
                f"writes {', '.join(f'%{i}' for i in self.outputs)}]")


# ------------------------------------------------------------------ axis maps
# An axis map says, for each axis of a value, which axis of the kernel's space it follows
# (None: the value has size 1 there and is broadcast).

def broadcast_map(src_shape, dst_shape, dst_map):
    """src is broadcast (numpy, right-aligned) to dst, whose axes follow `dst_map`."""
    offset = len(dst_shape) - len(src_shape)
    out = []
    for i, d in enumerate(src_shape):
        j = i + offset
        out.append(None if (d == 1 and dst_shape[j] != 1) else dst_map[j])
    return tuple(out)


def input_map(graph: Graph, node: Node, k: int, node_map) -> tuple:
    """Axis map of input k of `node`, given the node's own axis map."""
    src = graph[node.inputs[k]]
    if node.op == "transpose":
        out = [None] * src.type.rank
        for i, a in enumerate(node.attrs["axes"]):
            out[a] = node_map[i]
        return tuple(None if src.shape[a] == 1 and node.shape[i] != 1 else out[a]
                     for i, a in enumerate(range(src.type.rank)))
    if OPS[node.op].kind == REDUCE:
        return tuple(range(src.type.rank))  # reductions read their input on the whole space
    return broadcast_map(src.shape, node.shape, node_map)


def row_map(shape, space, axes):
    """Axis map of a per-row value (keepdims or not) of a rows kernel, or None if it is not one."""
    kept = [i for i in range(len(space)) if i not in axes]
    if len(shape) == len(space) and all(
            (shape[i] == 1) if i in axes else (shape[i] == space[i]) for i in range(len(space))):
        return tuple(None if i in axes else i for i in range(len(space)))
    if tuple(shape) == tuple(space[i] for i in kept):
        return tuple(kept)
    return None


def _same(a, b) -> bool:
    return tuple(a) == tuple(b)


# ------------------------------------------------------------------ groups

@dataclass(eq=False)
class Group:
    kind: str
    space: tuple
    reduce_axes: tuple = ()
    nodes: set = field(default_factory=set)


def in_place_writers(graph: Graph) -> dict[int, int]:
    """Node that writes an aliased output -> the input node whose memory it overwrites."""
    return {graph.outputs[o]: graph.inputs[i] for o, i in graph.aliases.items()}


def _writes_safely(graph: Graph, group: Group, writers: dict[int, int]) -> bool:
    """A kernel may overwrite an input only if it reads that input at the very element it writes."""
    targets = {writers[n] for n in group.nodes if n in writers}
    if not targets:
        return True
    if group.kind not in ("map", "matmul"):
        return False
    for n in group.nodes:
        node = graph[n]
        for k, i in enumerate(node.inputs):
            if _root(graph, i) in targets:
                if OPS[node.op].kind == MATMUL or node.op == "transpose":
                    return False  # the product reads other elements
                identity = tuple(range(len(group.space)))
                if not _same(graph[i].shape, group.space) or \
                        input_map(graph, node, k, identity) != identity:
                    return False
    return True


def node_map(graph: Graph, group: Group, node_id: int):
    """The axis map of an in-group node, or None if the node cannot live in this group."""
    node = graph[node_id]
    if _same(node.shape, group.space) and OPS[node.op].kind != REDUCE:
        return tuple(range(len(group.space)))
    if group.kind == "rows":
        return row_map(node.shape, group.space, group.reduce_axes)
    return None


def valid(graph: Graph, group: Group) -> bool:
    """True when the loop code can evaluate every in-group edge of `group` in registers."""
    if group.kind == "matmul":
        return _valid_matmul(graph, group)
    if group.kind not in ("map", "rows"):
        return len(group.nodes) == 1
    if graph.aliases and not _writes_safely(graph, group, in_place_writers(graph)):
        return False
    for nid in group.nodes:
        node = graph[nid]
        kind = OPS[node.op].kind
        own = node_map(graph, group, nid)
        if own is None:
            return False
        if kind == REDUCE:
            if group.kind != "rows" or tuple(node.attrs["axis"]) != group.reduce_axes:
                return False
            if not _same(graph[node.inputs[0]].shape, group.space):
                return False
        is_elem = _same(node.shape, group.space) and kind != REDUCE
        if OPS[node.op].per_element and not is_elem:
            return False  # its value depends on the element's position in the whole space
        for k, i in enumerate(node.inputs):
            if i not in group.nodes:
                if _root(graph, i) in group.nodes:
                    return False  # reads memory this kernel writes, through a view
                continue
            if kind == LAYOUT:
                return False  # a layout op reads memory at a permuted index
            src_map = node_map(graph, group, i)
            src_is_elem = _same(graph[i].shape, group.space) and OPS[graph[i].op].kind != REDUCE
            if src_map is None:
                return False
            if src_is_elem and not (is_elem or kind == REDUCE):
                return False  # a row value cannot read a whole row
            want = input_map(graph, node, k, own)
            if any(w is not None and w != s for w, s in zip(want, src_map)):
                return False
            if len(want) != len(src_map):
                return False
            if not src_is_elem and None in [w for w, s in zip(want, src_map) if s is not None]:
                return False  # a row value broadcast along a kept axis
    return True


def _valid_matmul(graph: Graph, group: Group) -> bool:
    (mm,) = [n for n in group.nodes if OPS[graph[n].op].kind == MATMUL] or [None]
    if mm is None:
        return False
    if len(group.nodes) == 1:
        return True
    if graph[mm].dtype not in ("float32", "float64"):
        return False  # integer matmuls run a plain loop nest without epilogue
    writers = in_place_writers(graph)
    if set(writers) & group.nodes and not _writes_safely(graph, group, writers):
        return False  # (a kernel that writes in place runs K in one block: codegen/gemm.py)
    identity = tuple(range(len(group.space)))
    for n in group.nodes - {mm}:
        node = graph[n]
        if node.op == "transpose":
            if n not in graph[mm].inputs or not _batch_preserving(node):
                return False
            continue
        if OPS[node.op].kind != ELEMENTWISE or OPS[node.op].per_element or \
                not _same(node.shape, group.space):
            return False
        for k, i in enumerate(node.inputs):
            if i in group.nodes:
                if graph[i].op == "transpose" or input_map(graph, node, k, identity) != identity:
                    return False
            elif _root(graph, i) in group.nodes:
                return False  # reads memory this kernel writes, through a view
    return True


def _batch_preserving(node: Node) -> bool:
    """A transpose that only permutes the last two axes (a matmul reads it with strides)."""
    axes = tuple(node.attrs["axes"])
    r = len(axes)
    return r >= 2 and axes[:r - 2] == tuple(range(r - 2)) and set(axes[r - 2:]) == {r - 2, r - 1}


def _absorb_transposes(graph: Graph, node: Node, group: Group, groups, group_of, users) -> None:
    """Operands that are transposes used only by this matmul are read in place."""
    for i in set(node.inputs):
        t = graph[i]
        if t.op != "transpose" or i in graph.outputs or not _batch_preserving(t):
            continue
        g = group_of.get(i)
        if g is None or g.nodes != {i} or any(u != node.id for u in users[i]):
            continue
        trial = Group("matmul", group.space, (), group.nodes | {i})
        if valid(graph, trial):
            groups.remove(g)
            group.nodes.add(i)
            group_of[i] = group


def fuse(graph: Graph, enabled: bool = True) -> list[Kernel]:
    """Greedy producer-consumer fusion in topological order; `enabled=False`: one op per kernel."""
    group_of: dict[int, Group] = {}
    groups: list[Group] = []
    users = graph.users()
    for node in graph.nodes:
        kind = OPS[node.op].kind
        if kind in (SOURCE, VIEW):
            continue
        if kind == MATMUL:
            g = Group("matmul", node.shape, (), {node.id})
            if enabled:
                _absorb_transposes(graph, node, g, groups, group_of, users)
        elif kind in (CONCAT, SLICE):
            g = Group(kind, node.shape, (), {node.id})
        else:
            g = _join(graph, node, group_of, groups) if enabled else None
            if g is None:
                if kind == REDUCE:
                    g = Group("rows", graph[node.inputs[0]].shape, tuple(node.attrs["axis"]),
                              {node.id})
                else:
                    g = Group("map", node.shape, (), {node.id})
        if g not in groups:
            groups.append(g)
        for n in g.nodes:
            group_of[n] = g
    if enabled:
        _merge_siblings(graph, groups, group_of)
    _separate_unordered_writers(graph, groups, group_of)
    return _kernels(graph, groups, group_of)


def _separate_unordered_writers(graph: Graph, groups: list[Group], group_of) -> None:
    """If overwriting an input in place cannot be ordered after its readers, the overwrite
    becomes a copy kernel of its own, which always can (nothing depends on it)."""
    for writer in in_place_writers(graph):
        if nx.is_directed_acyclic_graph(_group_dag(graph, groups, group_of)):
            return
        g = group_of[writer]
        if len(g.nodes) > 1:
            g.nodes.discard(writer)
            alone = Group("map", graph[writer].shape, (), {writer})
            groups.append(alone)
            group_of[writer] = alone


def _group_reads(graph: Graph, g: Group) -> set[int]:
    """Storage roots of the memory a group reads (inline sources excluded)."""
    out = set()
    for n in g.nodes:
        for i in graph[n].inputs:
            root = _root(graph, i)
            if root not in g.nodes and not is_inline_source(graph[root]):
                out.add(root)
    return out


def _group_dag(graph: Graph, groups: list[Group], group_of) -> nx.DiGraph:
    """Kernel dependencies: data edges, plus every reader of an overwritten input before its
    writer (in-place state)."""
    dag = nx.DiGraph()
    dag.add_nodes_from(id(g) for g in groups)
    for g in groups:
        for n in g.nodes:
            for i in graph[n].inputs:
                src = _producer(graph, i)
                if src is not None and group_of[src] is not g:
                    dag.add_edge(id(group_of[src]), id(g))
    for writer, target in in_place_writers(graph).items():
        for g in groups:
            if g is not group_of[writer] and target in _group_reads(graph, g):
                dag.add_edge(id(g), id(group_of[writer]))
    return dag


def _merge_siblings(graph: Graph, groups: list[Group], group_of) -> None:
    """Horizontal fusion: loops over the same space that read the same memory become one.

    Each input is then read once for all of them (e.g. several functions of x, or the row
    sums and row maxima of one matrix). Merging needs no path between the two kernels
    through a third one, or the merged kernel would both feed and wait for it.
    """
    merged = True
    while merged:
        merged = False
        dag = _group_dag(graph, groups, group_of)
        for a_index, a in enumerate(groups):
            for b in groups[a_index + 1:]:
                if a.kind != b.kind or a.kind not in ("map", "rows") or \
                        not _same(a.space, b.space) or a.reduce_axes != b.reduce_axes:
                    continue
                if not _group_reads(graph, a) & _group_reads(graph, b):
                    continue
                trial = Group(a.kind, a.space, a.reduce_axes, a.nodes | b.nodes)
                if not valid(graph, trial) or _indirect_path(dag, id(a), id(b)):
                    continue
                groups.remove(a)
                groups.remove(b)
                groups.append(trial)
                for n in trial.nodes:
                    group_of[n] = trial
                merged = True
                break
            if merged:
                break


def _indirect_path(dag: nx.DiGraph, a, b) -> bool:
    """A path between a and b (either way) through at least one other kernel."""
    for src, dst in ((a, b), (b, a)):
        for succ in dag.successors(src):
            if succ != dst and nx.has_path(dag, succ, dst):
                return True
    return False


def _candidates(graph, node, group_of):
    out = []
    for i in node.inputs:
        g = group_of.get(i)
        if g is not None and g not in out:
            out.append(g)
    return out


def _join(graph: Graph, node: Node, group_of, groups) -> Group | None:
    """The group `node` joins (merging producer groups when that is legal), or None."""
    kind = OPS[node.op].kind
    cands = _candidates(graph, node, group_of)
    if kind == LAYOUT:
        return None
    options = []
    if kind == REDUCE:
        src = group_of.get(node.inputs[0])
        axes = tuple(node.attrs["axis"])
        if src is not None and _same(src.space, graph[node.inputs[0]].shape):
            if src.kind == "map":
                options.append(([src], Group("rows", src.space, axes)))
            elif src.kind == "rows" and src.reduce_axes == axes:
                options.append(([src], Group("rows", src.space, axes)))
    else:
        fusable = [g for g in cands if g.kind in ("map", "rows")]
        rows = [g for g in fusable if g.kind == "rows"]
        target = rows[0] if rows else (fusable[0] if fusable else None)
        epilogue = [g for g in cands if g.kind == "matmul" and _same(g.space, node.shape)]
        if kind == ELEMENTWISE and epilogue and not rows:
            target = None  # the matmul's epilogue, below
        if target is not None:
            base = Group(target.kind, target.space, target.reduce_axes)
            mergeable = [g for g in fusable if g is target or (
                g.kind == "map" and _same(g.space, target.space))]
            options.append((mergeable, base))
            if len(mergeable) > 1:
                options.append(([target], base))
        if kind == ELEMENTWISE:
            # other kernels' nodes stay out of the tile loop: only the matmul group merges
            options += [([g], Group("matmul", g.space)) for g in epilogue]
    for merge, proto in options:
        trial = Group(proto.kind, proto.space, proto.reduce_axes,
                      set().union(*[g.nodes for g in merge]) | {node.id})
        if valid(graph, trial) and _acyclic(graph, group_of, merge, node):
            for g in merge:
                if g in groups:
                    groups.remove(g)
            groups.append(trial)
            return trial
    return None


def _acyclic(graph: Graph, group_of, merge, node) -> bool:
    """Merging `merge` and `node` into one kernel must not create a cycle between kernels."""
    producers = [_producer(graph, i) for i in node.inputs]
    if len(merge) <= 1 and all(p is None or group_of.get(p) in merge for p in producers):
        return True  # no edge from a third kernel into the merged one
    merged = set().union(*[g.nodes for g in merge]) | {node.id}
    key = lambda i: -1 if i in merged else id(group_of[i])  # noqa: E731
    dag = nx.DiGraph()
    for n in graph.nodes[: node.id + 1]:
        if n.id not in merged and n.id not in group_of:
            continue
        for i in n.inputs:
            src = _producer(graph, i)
            if src is not None and (src in merged or src in group_of) and key(src) != key(n.id):
                dag.add_edge(key(src), key(n.id))
    return nx.is_directed_acyclic_graph(dag)


def _producer(graph: Graph, i: int) -> int | None:
    """The kernel-computed node behind value i (through views), or None for sources."""
    while OPS[graph[i].op].kind == VIEW:
        i = graph[i].inputs[0]
    return None if OPS[graph[i].op].kind == SOURCE else i


def _kernels(graph: Graph, groups: list[Group], group_of) -> list[Kernel]:
    users = graph.users()
    outputs = set(graph.outputs)
    # Kernels run in an order where every producer (and every reader of memory that a
    # kernel overwrites) comes first; ties go to the kernel holding the earliest node.
    index = {id(g): gi for gi, g in enumerate(groups)}
    dag = nx.relabel_nodes(_group_dag(graph, groups, group_of), index)
    order = list(nx.lexicographical_topological_sort(dag, key=lambda gi: min(groups[gi].nodes)))
    kernels = []
    for k, gi in enumerate(order):
        g = groups[gi]
        nodes = sorted(g.nodes)
        reads: list[int] = []
        for n in nodes:
            for i in graph[n].inputs:
                if i in g.nodes or i in reads:
                    continue
                if not is_inline_source(graph[_root(graph, i)]):
                    reads.append(i)
        outs = [n for n in nodes
                if n in outputs or any(u not in g.nodes for u in _consumers(graph, users, n))]
        ops = [graph[n].op for n in nodes]
        name = f"k{k}_" + "_".join(_dedupe(ops))[:48]
        kernels.append(Kernel(g.kind, g.space, g.reduce_axes, nodes, reads, outs, ops, name))
    return kernels


def _consumers(graph: Graph, users, n: int) -> list[int]:
    """Users of n; a view user counts as outside any kernel (it reads n's memory)."""
    return users[n]


def _root(graph: Graph, i: int) -> int:
    while OPS[graph[i].op].kind == VIEW:
        i = graph[i].inputs[0]
    return i


def _dedupe(items):
    return list(dict.fromkeys(items))


__all__ = ["Kernel", "fuse", "broadcast_map", "input_map", "row_map", "node_map", "Dim"]
