"""Loop structure of a kernel: loop axes, and how each value read is addressed.

An Access is one value read (or written) by a kernel: its storage root, and its element stride
along each loop axis (0: broadcast). Map kernels merge adjacent axes when every access is
contiguous across them, so (B, 10) + (10,) runs as one loop of B*10 where it can.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from ..ir.types import Size, numel, size_mul
from ..ops.registry import GATHER, LAYOUT, OPS, REDUCE, VIEW
from ..passes.fusion import Kernel, input_map
from ..passes.simplify import is_inline_source


@dataclass(frozen=True)
class Access:
    value: int                  # the value read (a node id; may be a view)
    strides: tuple[Size, ...]   # element stride along each space axis


def contiguous_strides(shape) -> list[Size]:
    return [numel(shape[i + 1:]) for i in range(len(shape))]


def access_for(graph: Graph, value: int, axis_map, rank: int) -> Access:
    """How value (laid out contiguously) is addressed from a space of `rank` axes."""
    strides: list[Size] = [0] * rank
    cs = contiguous_strides(graph[value].shape)
    for j, s in enumerate(axis_map):
        if s is not None:
            strides[s] = _add(strides[s], cs[j])
    return Access(value, tuple(strides))


def _add(a: Size, b: Size) -> Size:
    if a == 0:
        return b
    if b == 0:
        return a
    raise AssertionError("two axes of one value follow the same loop axis")


def own_maps(graph: Graph, kernel: Kernel) -> dict[int, tuple]:
    """Axis map of every in-kernel node: fusion decided them (Kernel.maps)."""
    return kernel.maps


def reads_of(graph: Graph, kernel: Kernel):
    """(node, input position) -> axis map of every input read from memory or computed inline."""
    maps = own_maps(graph, kernel)
    out = {}
    for n in kernel.nodes:
        node = graph[n]
        if OPS[node.op].kind == GATHER:   # its rule reads its inputs at computed indices
            continue
        for k, i in enumerate(node.inputs):
            if i in maps:
                continue
            out[(n, k)] = input_map(graph, node, k, maps[n])
    return out, maps


def collapse(space, accesses: list[Access], pinned: set[int]):
    """Merges adjacent space axes that every access walks contiguously.

    Returns (loop sizes, {access: loop strides}, space axis -> loop axis).
    `pinned` axes (an iota's) keep their own loop so their coordinate stays available.
    """
    groups = [[a] for a in range(len(space))]
    i = 0
    while i + 1 < len(groups):
        a, b = groups[i][-1], groups[i + 1][0]
        ok = a not in pinned and b not in pinned and all(
            acc.strides[a] == size_mul(acc.strides[b], space[b]) for acc in accesses)
        if ok:
            groups[i] = groups[i] + groups.pop(i + 1)
        else:
            i += 1
    sizes = [numel([space[a] for a in g]) for g in groups]
    strides = {acc: tuple(acc.strides[g[-1]] for g in groups) for acc in accesses}
    axis_of = {a: li for li, g in enumerate(groups) for a in g}
    return sizes, strides, axis_of


def is_inline(graph: Graph, value: int) -> bool:
    node = graph[value]
    while OPS[node.op].kind == VIEW:
        node = graph[node.inputs[0]]
    return is_inline_source(node)


def is_elem(graph: Graph, kernel: Kernel, n: int) -> bool:
    return tuple(graph[n].shape) == tuple(kernel.space) and OPS[graph[n].op].kind != REDUCE


__all__ = ["Access", "access_for", "collapse", "reads_of", "own_maps", "is_inline", "is_elem",
           "contiguous_strides", "LAYOUT"]
