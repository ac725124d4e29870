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
  conv:   one direct convolution and an elementwise epilogue over its output (bias, batch
          norm, activation, residual: computed as its register tiles are stored);
  concat, scatter, attention: one node, operands read from memory;
  scan:   a loop node and its results; its body is fused into kernels of its own (`body`).
A gather (slice, pad, window, take, flip) starts a map kernel of its own shape (it reads its
inputs from memory at computed indices, so it never joins their kernels); its consumers join
it, so a pooling's max or an embedding's scaling runs in the loop that gathers.
Views (reshape) never get a kernel: they alias their input's memory.

Each kernel carries what fusion decided: the axis map of every node (`Kernel.maps`) and every
producer -> consumer edge into it that was not fused, with the rule that declined it
(`Kernel.declined`; `passes/explain.py` prints them). A kernel holds at most
MAX_KERNEL_NODES nodes, and a rows kernel at most MAX_ROW_PHASES reduction phases (cost
rules: see below).

Cost stays near linear in graph size: a node joining a kernel is checked by the edges that
change (its own, and those between the kernels it merges), not the whole kernel's; the cycle
check walks only the kernels downstream of the merged ones; nothing recurses on graph depth.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import networkx as nx

from ..errors import CompileError
from ..ir.graph import Graph, Node
from ..ir.types import Dim, fmt_shape
from ..ops.registry import (ATTENTION, CONCAT, CONV, ELEMENTWISE, GATHER, LAYOUT, LOOP,
                            MATMUL, OPS, REDUCE, RESULT, SCATTER, SOURCE, VIEW)
from .simplify import is_inline_source

# Cost rule: LLVM's time per kernel grows with the size of its loop body, and past a few
# hundred ops a longer body saves no memory traffic worth having (the split costs one store
# and one load per element). See benchmarks/NOTES.md, "Compile time at scale".
MAX_KERNEL_NODES = 256
# Cost rule: a rows kernel runs one loop over each row per reduction phase (a reduction that
# reads another one's result starts a new phase), and every phase recomputes the elementwise
# values it reads from the row's inputs. A chain of D softmaxes in one kernel is O(D^2) code
# and work; past this many phases the chain starts a new kernel (one store and load).
MAX_ROW_PHASES = 16
COST_RULE = "cost rule:"


@dataclass(frozen=True)
class Declined:
    """A producer -> consumer edge that fusion left between two kernels, and why.

    `reason` reads "<rule>: <details>"; the rules: cycle, reduction boundary, size mismatch,
    cost rule, layout, gather, view, kernel kind, in place, per-element, disabled.
    """
    producer: int
    consumer: int
    reason: str

    @property
    def rule(self) -> str:
        return self.reason.split(":", 1)[0]

    def __str__(self) -> str:
        return f"%{self.producer} -> %{self.consumer}: {self.reason}"


@dataclass(eq=False)
class Kernel:
    kind: str                          # "map" | "rows" | "matmul" | "concat" | "scatter"
                                       # | "attention" | "conv" | "scan"
    space: tuple                       # the iteration space (shape)
    reduce_axes: tuple = ()            # rows: the reduced axes of `space`
    nodes: list[int] = field(default_factory=list)    # in topological order
    reads: list[int] = field(default_factory=list)    # values read from memory (may be views)
    outputs: list[int] = field(default_factory=list)  # nodes written to memory
    ops: list[str] = field(default_factory=list)
    name: str = ""
    # node -> which axis of `space` each of its axes follows (None: broadcast; the whole map
    # is None for a node without one, e.g. a transpose read in place by a matmul)
    maps: dict[int, tuple | None] = field(default_factory=dict, repr=False)
    declined: list[Declined] = field(default_factory=list, repr=False)  # edges into it, unfused
    # scan: the loop's body graph and its own kernels (run once per step; see ops/control.py)
    body: tuple[Graph, list[Kernel]] | None = field(default=None, repr=False)

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
    op = OPS[node.op]
    if op.permutation is not None:
        out = [None] * src.type.rank
        for i, a in enumerate(op.permutation(**node.attrs)):
            out[a] = node_map[i]
        return tuple(None if src.shape[a] == 1 and node.shape[i] != 1 else out[a]
                     for i, a in enumerate(range(src.type.rank)))
    if op.kind == REDUCE:
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

_serial = itertools.count()


@dataclass(eq=False)
class Group:
    kind: str
    space: tuple
    reduce_axes: tuple = ()
    nodes: set = field(default_factory=set)
    uid: int = field(default_factory=lambda: next(_serial))  # a key that is never reused

    def loop(self) -> tuple:
        return self.kind, tuple(self.space), tuple(self.reduce_axes)


@dataclass
class Edges:
    """The graph's edges as every check needs them, computed once per fuse()."""
    users: dict[int, list[int]]
    consumers: dict[int, list[int]]        # users, seen through views (a view is no kernel)
    writers: dict[int, int]                # in_place_writers
    readers: dict[int, list[tuple[int, int]]]  # storage root -> (node, input position) reading it


def edges_of(graph: Graph) -> Edges:
    users = graph.users()
    consumers: dict[int, list[int]] = {}
    readers: dict[int, list[tuple[int, int]]] = {n.id: [] for n in graph.nodes}
    for node in reversed(graph.nodes):  # a view's consumers are known before its input's
        out: list[int] = []
        for u in users[node.id]:
            if OPS[graph[u].op].kind == VIEW:
                out.extend(consumers[u])
            else:
                out.append(u)
        consumers[node.id] = out
    for node in graph.nodes:
        if OPS[node.op].kind not in (SOURCE, VIEW):
            for k, i in enumerate(node.inputs):
                readers[_root(graph, i)].append((node.id, k))
    return Edges(users, consumers, in_place_writers(graph), readers)


def in_place_writers(graph: Graph) -> dict[int, int]:
    """Node that writes an aliased output -> the input node whose memory it overwrites."""
    return {graph.outputs[o]: graph.inputs[i] for o, i in graph.aliases.items()}


def node_map(graph: Graph, group: Group, node_id: int):
    """The axis map of an in-group node, or None if the node cannot live in this group."""
    node = graph[node_id]
    if _same(node.shape, group.space) and OPS[node.op].kind != REDUCE:
        return tuple(range(len(group.space)))
    if group.kind == "rows":
        return row_map(node.shape, group.space, group.reduce_axes)
    return None


# ------------------------------------------------------------------ validity

def why_invalid(graph: Graph, group: Group, check=None, edges: Edges | None = None) -> str | None:
    """Why the loop code cannot evaluate `group`'s in-group edges in registers (None: it can).

    `check`: only the edges of these nodes (the rest were checked in a group with the same
    kind, space and reduced axes, and none of them reads a node of `check`).
    """
    edges = edges or edges_of(graph)
    nodes = group.nodes if check is None else check
    if group.kind == "matmul":
        return _why_not_matmul(graph, group, nodes, edges)
    if group.kind == CONV and len(group.nodes) > 1:
        return _why_not_conv(graph, group, nodes)
    if group.kind not in ("map", "rows"):
        return None if len(group.nodes) == 1 else f"kernel kind: a {group.kind} holds one op"
    if edges.writers:
        reason = _unsafe_write(graph, group, nodes, edges)
        if reason:
            return reason
    for nid in nodes:
        reason = _why_not_node(graph, group, nid)
        if reason:
            return reason
    return None


def _why_not_node(graph: Graph, group: Group, nid: int) -> str | None:
    """Why node `nid` and its in-group edges cannot be evaluated in `group`'s loops."""
    node = graph[nid]
    kind = OPS[node.op].kind
    space = fmt_shape(group.space)
    own = node_map(graph, group, nid)
    if own is None:
        return (f"size mismatch: %{nid} {node.op} computes {fmt_shape(node.shape)}, which is "
                f"neither the loop space {space} nor one value per row of it")
    if kind == REDUCE:
        axes = tuple(node.attrs["axis"])
        if group.kind != "rows" or axes != group.reduce_axes:
            return (f"reduction boundary: %{nid} {node.op} reduces axes {axes}, the loops "
                    f"reduce {group.reduce_axes}")
        if not _same(graph[node.inputs[0]].shape, group.space):
            return (f"size mismatch: %{nid} {node.op} reduces "
                    f"{fmt_shape(graph[node.inputs[0]].shape)}, the loop space is {space}")
    is_elem = _same(node.shape, group.space) and kind != REDUCE
    if OPS[node.op].per_element and not is_elem:
        return (f"per-element: %{nid} {node.op} uses each element's position in the whole "
                f"space")
    for k, i in enumerate(node.inputs):
        if i not in group.nodes:
            if _root(graph, i) in group.nodes:
                return (f"view: %{nid} would read %{_root(graph, i)} through a view, from "
                        f"memory the same kernel writes")
            continue
        if kind == LAYOUT:
            return f"layout: {node.op} reads its input from memory at a permuted index"
        if kind == GATHER:
            return f"gather: {node.op} reads its input from memory at computed indices"
        src_map = node_map(graph, group, i)
        src_is_elem = _same(graph[i].shape, group.space) and OPS[graph[i].op].kind != REDUCE
        if src_map is None:
            return f"size mismatch: %{i} does not fit the loop space {space}"
        if src_is_elem and not (is_elem or kind == REDUCE):
            return (f"reduction boundary: %{nid} is one value per row and cannot read the "
                    f"whole row %{i}")
        want = input_map(graph, node, k, own)
        if len(want) != len(src_map) or any(
                w is not None and w != s for w, s in zip(want, src_map)):
            return f"size mismatch: %{nid} reads %{i} at other indices than the loop gives it"
        if not src_is_elem and None in [w for w, s in zip(want, src_map) if s is not None]:
            return f"size mismatch: %{nid} broadcasts the row value %{i} along a kept axis"
    return None


def _targets(group: Group, writers: dict[int, int]) -> set[int]:
    if len(writers) < len(group.nodes):
        return {t for w, t in writers.items() if w in group.nodes}
    return {writers[n] for n in group.nodes if n in writers}


def _unsafe_write(graph: Graph, group: Group, nodes, edges: Edges) -> str | None:
    """A kernel may overwrite an input only if it reads that input at the very element it writes."""
    targets = _targets(group, edges.writers)
    if not targets:
        return None
    if group.kind not in ("map", "matmul"):
        return "in place: only a map or matmul kernel overwrites an input in place"
    if nodes is group.nodes:
        examine = [(n, k) for n in nodes for k in range(len(graph[n].inputs))]
    else:  # the new nodes' reads, and every read of an input they newly overwrite
        examine = [(n, k) for n in nodes for k in range(len(graph[n].inputs))]
        for t in {edges.writers[n] for n in nodes if n in edges.writers}:
            examine += [(n, k) for n, k in edges.readers[t] if n in group.nodes]
    identity = tuple(range(len(group.space)))
    for n, k in examine:
        node = graph[n]
        i = node.inputs[k]
        if _root(graph, i) not in targets:
            continue
        op = OPS[node.op]
        if op.kind == MATMUL or op.permutation is not None or \
                not _same(graph[i].shape, group.space) or \
                input_map(graph, node, k, identity) != identity:
            return (f"in place: %{n} {node.op} reads other elements of %{_root(graph, i)} than "
                    f"the ones the kernel overwrites")
    return None


def _why_not_matmul(graph: Graph, group: Group, nodes, edges: Edges) -> str | None:
    found = [n for n in group.nodes if OPS[graph[n].op].kind == MATMUL]
    if len(found) != 1:
        return "kernel kind: a matmul kernel holds exactly one matmul"
    (mm,) = found
    if len(group.nodes) == 1:
        return None
    if graph[mm].dtype not in ("float32", "float64"):
        return "kernel kind: integer matmuls run a plain loop nest without epilogue"
    if any(w in group.nodes for w in edges.writers):
        # (a kernel that writes in place runs K in one block: codegen/gemm.py)
        reason = _unsafe_write(graph, group, nodes, edges)
        if reason:
            return reason
    identity = tuple(range(len(group.space)))
    for n in nodes:
        if n == mm:
            continue
        node = graph[n]
        op = OPS[node.op]
        if op.permutation is not None:
            if n not in graph[mm].inputs or not _batch_preserving(node):
                return ("layout: only a transpose of a matmul operand that swaps its last "
                        "two axes is read in place")
            continue
        reason = _epilogue_refusal(node, n, group, "matmul")
        if reason:
            return reason
        for k, i in enumerate(node.inputs):
            if i in group.nodes:
                if OPS[graph[i].op].permutation is not None or \
                        input_map(graph, node, k, identity) != identity:
                    return f"size mismatch: %{n} reads %{i} broadcast or permuted in a tile"
            elif _root(graph, i) in group.nodes:
                return (f"view: %{n} would read %{_root(graph, i)} through a view, from "
                        f"memory the same kernel writes")
    return None


def _epilogue_refusal(node: Node, n: int, group: Group, what: str) -> str | None:
    """Why `node` cannot run in the epilogue of a tiled `what` (matmul, convolution)."""
    op = OPS[node.op]
    if op.kind != ELEMENTWISE:
        return f"kernel kind: only elementwise ops join a {what}'s epilogue, not {node.op}"
    if op.per_element:
        return f"per-element: {node.op} uses each element's position, unknown in a tile"
    if not _same(node.shape, group.space):
        return (f"size mismatch: %{n} {node.op} computes {fmt_shape(node.shape)}, the "
                f"{what} {fmt_shape(group.space)}")
    return None


def _why_not_conv(graph: Graph, group: Group, nodes) -> str | None:
    """A direct convolution with an elementwise epilogue over its output (bias, batch norm,
    activation, residual: computed as each register tile is stored)."""
    (conv,) = [n for n in group.nodes if OPS[graph[n].op].kind == CONV]
    for n in nodes:
        if n == conv:
            continue
        node = graph[n]
        reason = _epilogue_refusal(node, n, group, "convolution")
        if reason:
            return reason
        identity = tuple(range(len(group.space)))
        for k, i in enumerate(node.inputs):
            if i in group.nodes and input_map(graph, node, k, identity) != identity:
                return f"size mismatch: %{n} reads %{i} broadcast in a tile"
            if i not in group.nodes and _root(graph, i) in group.nodes:
                return (f"view: %{n} would read %{_root(graph, i)} through a view, from "
                        f"memory the same kernel writes")
    return None


def _batch_preserving(node: Node) -> bool:
    """A transpose that only permutes the last two axes (a matmul reads it with strides)."""
    axes = tuple(OPS[node.op].permutation(**node.attrs))
    r = len(axes)
    return r >= 2 and axes[:r - 2] == tuple(range(r - 2)) and set(axes[r - 2:]) == {r - 2, r - 1}


# ------------------------------------------------------------------ the pass

def fuse(graph: Graph, enabled: bool = True) -> list[Kernel]:
    """Greedy producer-consumer fusion in topological order, then sibling merging.

    Returns the kernels in execution order; each says which nodes it computes, the axis map
    of each, and why each producer -> consumer edge into it was not fused.
    `enabled=False`: one op per kernel (the "eager" baseline).
    >>> g = simplify(trace(lambda x: graphc.exp(x) * 2, graphc.tensor((8,))))
    >>> fuse(g)
    [k0_exp_multiply: map over (8): exp multiply [reads %0 -> writes %3]]
    """
    return _Fusion(graph, enabled).run()


class _Fusion:
    def __init__(self, graph: Graph, enabled: bool):
        self.graph = graph
        self.enabled = enabled
        self.edges = edges_of(graph)
        self.group_of: dict[int, Group] = {}
        self.groups: dict[int, Group] = {}          # uid -> group, in creation order
        self.declined: dict[tuple[int, int], str] = {}
        # rows kernels started where a cost rule cut a chain (uid -> how many cuts came
        # before): the ops after a cut join the latest one first (joining the kernel before
        # the cut would be a cycle)
        self.restarted: dict[int, int] = {}

    def run(self) -> list[Kernel]:
        graph = self.graph
        for node in graph.nodes:
            kind = OPS[node.op].kind
            if kind in (SOURCE, VIEW):
                continue
            if kind == MATMUL:
                g = Group("matmul", node.shape, (), {node.id})
                if self.enabled:
                    self._absorb_transposes(node, g)
                self._decline_all(node, "kernel kind: a matmul reads its operands from memory")
            elif kind == GATHER:
                g = Group("map", node.shape, (), {node.id})
                self._decline_all(node, f"gather: a {node.op} reads its input from memory "
                                        f"at computed indices")
            elif kind in (CONCAT, SCATTER, ATTENTION, CONV):
                g = Group(kind, node.shape, (), {node.id})
                self._decline_all(node, f"kernel kind: a {node.op} reads its operands from "
                                        f"memory")
            elif kind == LOOP:  # the loop node and its results: one kernel
                g = Group("scan", (), (), {node.id, *self.edges.users[node.id]})
                self._decline_all(node, f"kernel kind: a {node.op} reads its operands from "
                                        f"memory")
            elif kind == RESULT:
                continue
            else:
                g = self._join(node) if self.enabled else None
                if g is None:
                    if kind == REDUCE:
                        g = Group("rows", graph[node.inputs[0]].shape,
                                  tuple(node.attrs["axis"]), {node.id})
                    else:
                        g = Group("map", node.shape, (), {node.id})
            self.groups.setdefault(g.uid, g)
            for n in g.nodes:
                self.group_of[n] = g
        if self.enabled:
            self._merge_siblings()
        self._separate_unordered_writers()
        return self._kernels()

    # -------------------------------------------------------------- declined edges
    def _decline(self, node: Node, groups, reasons: dict[int, str]) -> None:
        """Records why `node` was not fused with each of its producers in `groups`."""
        uids = {g.uid for g in groups}
        for i in node.inputs:
            p = _producer(self.graph, i)
            g = self.group_of.get(p) if p is not None else None
            if g is not None and g.uid in uids:
                self.declined.setdefault((p, node.id), reasons.get(g.uid, "no rule recorded"))

    def _decline_all(self, node: Node, reason: str) -> None:
        for i in node.inputs:
            p = _producer(self.graph, i)
            if p is not None:
                self.declined.setdefault((p, node.id), reason)

    # -------------------------------------------------------------- producer -> consumer
    def _join(self, node: Node) -> Group | None:
        """The group `node` joins (merging producer groups when that is legal), or None."""
        graph = self.graph
        kind = OPS[node.op].kind
        cands = _candidates(node, self.group_of)
        for i in node.inputs:
            p = _producer(graph, i)
            if p is not None and p != i:
                self.declined.setdefault((p, node.id), f"view: %{node.id} reads %{p} through a "
                                                       f"{graph[i].op}, from memory")
        # candidate uid -> why it was not joined: a rule found below, or the greedy default
        reasons = {g.uid: f"kernel kind: %{node.id} joined another kernel first (the first "
                          f"legal choice wins)" for g in cands}
        options = []
        if kind == LAYOUT:
            for g in cands:
                reasons[g.uid] = (f"layout: {node.op} reads its input from memory at a "
                                  f"permuted index")
        elif kind == REDUCE:
            options = self._reduce_options(node, reasons)
        else:
            options = self._elementwise_options(node, cands, reasons)
        for merge, proto in options:
            trial = Group(proto.kind, proto.space, proto.reduce_axes,
                          set().union(*[g.nodes for g in merge]) | {node.id})
            reason = self._why_not_merge(trial, merge, node)
            if reason is None:
                for g in merge:
                    self.groups.pop(g.uid, None)
                self.groups[trial.uid] = trial
                cut = max((self.restarted.get(g.uid, -1) for g in merge), default=-1)
                if cut >= 0:
                    self.restarted[trial.uid] = cut
                self._decline(node, [g for g in cands if g not in merge], reasons)
                return trial
            for g in merge:
                reasons[g.uid] = reason
        self._decline(node, cands, reasons)
        if kind == REDUCE and any(r.startswith(COST_RULE) for r in reasons.values()):
            alone = Group("rows", graph[node.inputs[0]].shape, tuple(node.attrs["axis"]),
                          {node.id})
            self.restarted[alone.uid] = max(self.restarted.values(), default=-1) + 1
            self.groups[alone.uid] = alone
            return alone
        return None

    def _reduce_options(self, node: Node, reasons: dict[int, str]) -> list:
        graph = self.graph
        x = node.inputs[0]
        src = self.group_of.get(x)
        axes = tuple(node.attrs["axis"])
        if src is None:
            return []
        if not _same(src.space, graph[x].shape):
            reasons[src.uid] = (f"size mismatch: %{x} is one value per row of loops over "
                                f"{fmt_shape(src.space)}; {node.op} reduces all of it")
        elif src.kind == "map" or (src.kind == "rows" and src.reduce_axes == axes):
            return [([src], Group("rows", src.space, axes))]
        elif src.kind == "rows":
            reasons[src.uid] = (f"reduction boundary: %{x}'s kernel reduces axes "
                                f"{src.reduce_axes}, {node.op} reduces {axes}")
        else:
            reasons[src.uid] = f"kernel kind: a {src.kind} kernel has no loop to reduce in"
        return []

    def _elementwise_options(self, node: Node, cands, reasons: dict[int, str]) -> list:
        options = []
        fusable = [g for g in cands if g.kind in ("map", "rows")]
        rows = sorted((g for g in fusable if g.kind == "rows"),
                      key=lambda g: -self.restarted.get(g.uid, -1))  # stable: else input order
        target = rows[0] if rows else (fusable[0] if fusable else None)
        epilogue = [g for g in cands if g.kind in ("matmul", CONV) and
                    _same(g.space, node.shape)]
        if epilogue and not rows:
            target = None  # the matmul's (or convolution's) epilogue, below
            for g in fusable:
                reasons[g.uid] = (f"kernel kind: %{node.id} joins a {g.kind}'s epilogue; "
                                  f"other kernels' nodes stay out of its tile loop")
        if target is not None:
            base = Group(target.kind, target.space, target.reduce_axes)
            mergeable = [g for g in fusable if g is target or (
                g.kind == "map" and _same(g.space, target.space))]
            options.append((mergeable, base))
            if len(mergeable) > 1:
                options.append(([target], base))
            for g in fusable:
                if g in mergeable:
                    continue
                reasons[g.uid] = (
                    f"reduction boundary: %{node.id} reads two reductions' kernels and can "
                    f"join only one"
                    if g.kind == "rows" else
                    f"size mismatch: loops over {fmt_shape(g.space)}; %{node.id} joins loops "
                    f"over {fmt_shape(target.space)}")
        # other kernels' nodes stay out of the tile loop: only the matmul group merges
        options += [([g], Group(g.kind, g.space)) for g in epilogue]
        # where the preferred kernel is illegal (a cycle: it belongs to the forward pass,
        # the node to the backward one), a map kernel over the same space may still take it
        alone = {merge[0].uid for merge, _ in options if len(merge) == 1}
        options += [([g], Group("map", g.space)) for g in fusable
                    if g.kind == "map" and g.uid not in alone and _same(g.space, node.shape)]
        for g in cands:
            if g.kind in ("matmul", CONV) and g not in epilogue:
                reasons[g.uid] = (f"size mismatch: the {g.kind} computes "
                                  f"{fmt_shape(g.space)}, %{node.id} {fmt_shape(node.shape)}")
            elif g.kind in (CONCAT, SCATTER, ATTENTION, "scan"):
                reasons[g.uid] = f"kernel kind: a {g.kind} kernel holds one op"
        return options

    def _why_not_merge(self, trial: Group, merge: list[Group], node: Node) -> str | None:
        if len(trial.nodes) > MAX_KERNEL_NODES:
            return (f"{COST_RULE} the kernel would hold {len(trial.nodes)} nodes, more than "
                    f"MAX_KERNEL_NODES ({MAX_KERNEL_NODES})")
        if trial.kind == "rows" and (OPS[node.op].kind == REDUCE or len(merge) > 1):
            reason = _too_many_phases(self.graph, trial)
            if reason:
                return reason
        reason = why_invalid(self.graph, trial, self._changed(trial, merge, node), self.edges)
        if reason:
            return reason
        third = self._cycle_through(trial.nodes, merge, node)
        if third is not None:
            return (f"cycle: the merged kernel would both feed and wait for the kernel of "
                    f"%{third}")
        return None

    def _changed(self, trial: Group, merge: list[Group], node: Node | None):
        """The nodes whose in-group edges differ from those in the biggest merged group with
        the trial's loops (None: check them all)."""
        same = [g for g in merge if g.loop() == trial.loop()]
        if not same:
            return None
        base = max(same, key=lambda g: len(g.nodes))
        new = set().union(*[g.nodes for g in merge if g is not base])
        out = set(new)
        if node is not None:
            out.add(node.id)
        for m in new:
            out.update(u for u in self.edges.consumers[m] if u in base.nodes)
        return out

    def _cycle_through(self, merged: set[int], merge: list[Group], node: Node) -> int | None:
        """A node of a third kernel on a path from the merged kernel back into it, or None."""
        graph = self.graph
        producers = [_producer(graph, i) for i in node.inputs]
        if len(merge) <= 1 and all(p is None or self.group_of.get(p) in merge for p in producers):
            return None  # no edge from a third kernel into the merged one
        seen: set[int] = set()
        stack: list[Group] = []

        def visit(n: int) -> bool:
            """Follows n's consumers; True when one is back in the merged kernel."""
            for u in self.edges.consumers[n]:
                g = self.group_of.get(u)
                if g is None or u in merged:
                    if u in merged and n not in merged:
                        return True
                    continue
                if g.uid not in seen:
                    seen.add(g.uid)
                    stack.append(g)
            return False

        for g in merge:
            for n in g.nodes:
                visit(n)
        while stack:
            g = stack.pop()
            for n in g.nodes:
                if visit(n):
                    return n
        return None

    def _absorb_transposes(self, node: Node, group: Group) -> None:
        """Operands that are transposes used only by this matmul are read in place."""
        graph = self.graph
        for i in sorted(set(node.inputs)):
            t = graph[i]
            if OPS[t.op].permutation is None:
                continue
            g = self.group_of.get(i)
            reason = None
            if i in graph.outputs:
                reason = f"layout: %{i} is a graph output, written to memory anyway"
            elif not _batch_preserving(t):
                reason = f"layout: %{i} permutes more than the last two axes"
            elif g is None or g.nodes != {i}:
                reason = f"layout: %{i} shares a kernel with other ops"
            elif any(u != node.id for u in self.edges.users[i]):
                reason = f"layout: %{i} has other users, which read it from memory"
            else:
                trial = Group("matmul", group.space, (), group.nodes | {i})
                reason = why_invalid(graph, trial, edges=self.edges)
                if reason is None:
                    self.groups.pop(g.uid)
                    group.nodes.add(i)
                    self.group_of[i] = group
                    continue
            self.declined.setdefault((i, node.id), reason)

    # -------------------------------------------------------------- siblings
    def _merge_siblings(self) -> None:
        """Horizontal fusion: loops over the same space that read the same memory become one.

        Each input is then read once for all of them (e.g. several functions of x, or the row
        sums and row maxima of one matrix). Merging needs no path between the two kernels
        through a third one, or the merged kernel would both feed and wait for it.
        Merges the first legal pair in kernel order, then looks again. A pair that cannot
        merge never can later (merging others only adds paths), so it is tried once.
        """
        order = list(self.groups.values())
        reads = {g.uid: self._reads(g) for g in order}
        readers: dict[int, list[int]] = {}
        for g in order:
            if g.kind in ("map", "rows"):
                for root in reads[g.uid]:
                    readers.setdefault(root, []).append(g.uid)
        succ = self._group_dag(order)
        pred: dict[int, set[int]] = {g.uid: set() for g in order}
        for a, bs in succ.items():
            for b in bs:
                pred[b].add(a)
        failed: set[tuple[int, int]] = set()
        while True:
            pair = self._first_sibling_pair(order, reads, readers, succ, failed)
            if pair is None:
                break
            a, b, trial = pair
            order = [g for g in order if g is not a and g is not b] + [trial]
            reads[trial.uid] = reads[a.uid] | reads[b.uid]
            for root in reads[trial.uid]:
                readers.setdefault(root, []).append(trial.uid)
            _contract(succ, pred, a.uid, b.uid, trial.uid)
            for n in trial.nodes:
                self.group_of[n] = trial
        self.groups = {g.uid: g for g in order}

    def _first_sibling_pair(self, order, reads, readers, succ, failed):
        position = {g.uid: k for k, g in enumerate(order)}
        for a in order:
            if a.kind not in ("map", "rows"):
                continue
            others = {u for root in reads[a.uid] for u in readers.get(root, ())
                      if position.get(u, -1) > position[a.uid]}
            for uid in sorted(others, key=position.__getitem__):
                b = order[position[uid]]
                if (a.uid, uid) in failed:
                    continue
                trial = self._sibling_trial(a, b, succ)
                if trial is not None:
                    return a, b, trial
                failed.add((a.uid, uid))
        return None

    def _sibling_trial(self, a: Group, b: Group, succ) -> Group | None:
        if a.loop() != b.loop() or len(a.nodes) + len(b.nodes) > MAX_KERNEL_NODES:
            return None
        trial = Group(a.kind, a.space, a.reduce_axes, a.nodes | b.nodes)
        if trial.kind == "rows" and _too_many_phases(self.graph, trial):
            return None
        if why_invalid(self.graph, trial, self._changed(trial, [a, b], None), self.edges):
            return None
        if _indirect_path(succ, a.uid, b.uid):
            return None
        return trial

    def _reads(self, g: Group) -> set[int]:
        """Storage roots of the memory a group reads (inline sources excluded)."""
        out = set()
        for n in g.nodes:
            for i in self.graph[n].inputs:
                root = _root(self.graph, i)
                if root not in g.nodes and not is_inline_source(self.graph[root]):
                    out.add(root)
        return out

    def _group_dag(self, groups) -> dict[int, set[int]]:
        """Kernel dependencies (uid -> successors): data edges, plus every reader of an
        overwritten input before its writer (in-place state)."""
        succ: dict[int, set[int]] = {g.uid: set() for g in groups}
        for g in groups:
            for n in g.nodes:
                for u in self.edges.consumers[n]:
                    h = self.group_of.get(u)
                    if h is not None and h is not g:
                        succ[g.uid].add(h.uid)
        for writer, target in self.edges.writers.items():
            w = self.group_of[writer]
            for n, _ in self.edges.readers[target]:
                h = self.group_of.get(n)
                if h is not None and h is not w:
                    succ[h.uid].add(w.uid)
        return succ

    def _separate_unordered_writers(self) -> None:
        """If overwriting an input in place cannot be ordered after its readers, the overwrite
        becomes a copy kernel of its own, which always can (nothing depends on it)."""
        for writer, target in self.edges.writers.items():
            dag = nx.DiGraph(self._group_dag(self.groups.values()))
            if nx.is_directed_acyclic_graph(dag):
                return
            g = self.group_of[writer]
            if len(g.nodes) > 1:
                g.nodes.discard(writer)
                alone = Group("map", self.graph[writer].shape, (), {writer})
                self.groups[alone.uid] = alone
                self.group_of[writer] = alone
                for i in self.graph[writer].inputs:
                    p = _producer(self.graph, i)
                    if p is not None:  # the final word on this edge: replaces any earlier
                        self.declined[(p, writer)] = (
                            f"cycle: overwriting %{target} in place must wait for every kernel "
                            f"that reads it, and %{writer}'s kernel feeds one of them")

    # -------------------------------------------------------------- kernels
    def _kernels(self) -> list[Kernel]:
        graph = self.graph
        groups = list(self.groups.values())
        users = self.edges.users
        outputs = set(graph.outputs)
        # Kernels run in an order where every producer (and every reader of memory that a
        # kernel overwrites) comes first; ties go to the kernel holding the earliest node.
        by_uid = {g.uid: g for g in groups}
        dag = nx.DiGraph(self._group_dag(groups))
        order = list(nx.lexicographical_topological_sort(
            dag, key=lambda uid: min(by_uid[uid].nodes)))
        kernels = []
        kernel_of: dict[int, Kernel] = {}
        for k, uid in enumerate(order):
            g = by_uid[uid]
            nodes = sorted(g.nodes)
            reads: list[int] = []
            for n in nodes:
                for i in graph[n].inputs:
                    if i in g.nodes or i in reads:
                        continue
                    if not is_inline_source(graph[_root(graph, i)]):
                        reads.append(i)
            outs = [n for n in nodes if n in outputs or any(u not in g.nodes for u in users[n])]
            ops = [graph[n].op for n in nodes]
            name = f"k{k}_" + "_".join(_dedupe(ops))[:48]
            maps = {n: node_map(graph, g, n) for n in nodes}
            kernel = Kernel(g.kind, g.space, g.reduce_axes, nodes, reads, outs, ops, name, maps)
            if g.kind == "scan":
                kernel.body = self._body(graph[nodes[0]])
            kernels.append(kernel)
            for n in nodes:
                kernel_of[n] = kernel
        self._attach_declined(kernel_of)
        return kernels

    def _body(self, loop: Node) -> tuple[Graph, list[Kernel]]:
        """A loop's body and its kernels, named s<loop id>_k<n>_... (fused like any graph)."""
        body = loop.attrs["body"]
        if any(OPS[n.op].kind == LOOP for n in body.nodes):
            raise CompileError(f"%{loop.id} {loop.op}: a loop inside a loop's body is not "
                               f"supported", op=loop.op, loc=loop.loc,
                               fix="unroll the inner loop with a Python for loop")
        kernels = fuse(body, self.enabled)
        for kernel in kernels:
            kernel.name = f"s{loop.id}_{kernel.name}"
        return body, kernels

    def _attach_declined(self, kernel_of: dict[int, Kernel]) -> None:
        """Every producer -> consumer edge between two kernels, with its reason, on the
        consumer's kernel."""
        fallback = ("disabled: fuse_ops=False, one op per kernel" if not self.enabled
                    else "no rule recorded")
        seen: set[tuple[int, int]] = set()
        for n, kernel in kernel_of.items():
            for i in self.graph[n].inputs:
                p = _producer(self.graph, i)
                if p is None or kernel_of[p] is kernel or (p, n) in seen:
                    continue
                seen.add((p, n))
                reason = self.declined.get((p, n), fallback) if self.enabled else fallback
                kernel.declined.append(Declined(p, n, reason))
        for kernel in set(kernel_of.values()):
            kernel.declined.sort(key=lambda d: (d.consumer, d.producer))


def _too_many_phases(graph: Graph, group: Group) -> str | None:
    """The cost rule on a rows kernel's reduction phases (codegen: _reduction_depths)."""
    depth: dict[int, int] = {}
    for n in sorted(group.nodes):
        node = graph[n]
        d = max((depth[i] for i in node.inputs if i in depth), default=0)
        depth[n] = d + 1 if OPS[node.op].kind == REDUCE else d
    phases = max(depth.values(), default=0)
    if phases <= MAX_ROW_PHASES:
        return None
    return (f"{COST_RULE} the kernel would run {phases} reduction phases, more than "
            f"MAX_ROW_PHASES ({MAX_ROW_PHASES}); each phase recomputes what it reads")


def _contract(succ, pred, a: int, b: int, t: int) -> None:
    """Replaces kernels a and b in the dependency graph by their merge t."""
    succ[t] = (succ.pop(a) | succ.pop(b)) - {a, b}
    pred[t] = (pred.pop(a) | pred.pop(b)) - {a, b}
    for x in pred[t]:
        succ[x] -= {a, b}
        succ[x].add(t)
    for x in succ[t]:
        pred[x] -= {a, b}
        pred[x].add(t)


def _indirect_path(succ, a: int, b: int) -> bool:
    """A path between a and b (either way) through at least one other kernel."""
    for src, dst in ((a, b), (b, a)):
        stack = [s for s in succ[src] if s != dst]
        seen = set(stack)
        while stack:
            x = stack.pop()
            for y in succ[x]:
                if y == dst:
                    return True
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
    return False


def _candidates(node: Node, group_of) -> list[Group]:
    out = []
    for i in node.inputs:
        g = group_of.get(i)
        if g is not None and g not in out:
            out.append(g)
    return out


def _producer(graph: Graph, i: int) -> int | None:
    """The kernel-computed node behind value i (through views), or None for sources."""
    i = _root(graph, i)
    return None if OPS[graph[i].op].kind == SOURCE else i


def _root(graph: Graph, i: int) -> int:
    while OPS[graph[i].op].kind == VIEW:
        i = graph[i].inputs[0]
    return i


def _dedupe(items):
    return list(dict.fromkeys(items))


__all__ = ["Kernel", "Declined", "fuse", "broadcast_map", "input_map", "row_map", "node_map",
           "MAX_KERNEL_NODES", "MAX_ROW_PHASES", "Dim"]
