"""plan_buffers: where every value lives, and which workspace slots intermediates share.

Assumes kernels in execution order (from `fuse`). Guarantees: each kernel-written value has
exactly one location: a graph output buffer, or a workspace slot that no value live at the
same time uses. Views live where their root lives. Slot sizes are symbolic (bytes), so the
plan serves every binding of the symbolic dims; the generated code takes their maximum.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir.graph import Graph
from ..ir.types import ITEMSIZE, Size, numel, size_mul
from ..ops.registry import OPS, VIEW
from .fusion import Kernel
from .simplify import is_inline_source


@dataclass(frozen=True)
class Location:
    space: str     # "input" | "const" | "output" | "slot"
    index: int

    def __str__(self) -> str:
        return f"{self.space}[{self.index}]"


@dataclass
class Plan:
    kernels: list[Kernel]
    location: dict[int, Location]          # storage root node id -> location
    slots: list[list[Size]] = field(default_factory=list)   # candidate byte sizes per slot
    constants: list[np.ndarray] = field(default_factory=list)
    roots: dict[int, int] = field(default_factory=dict)     # value id -> storage root id

    def where(self, value_id: int) -> Location:
        return self.location[self.roots[value_id]]

    def __str__(self) -> str:
        lines = [f"plan: {len(self.kernels)} kernels, {len(self.slots)} workspace slots"]
        for k in self.kernels:
            reads = ", ".join(f"%{i}@{self.where(i)}" for i in k.reads) or "-"
            writes = ", ".join(f"%{i}@{self.where(i)}" for i in k.outputs)
            lines.append(f"  {k.name}: {reads} -> {writes}")
        for s, sizes in enumerate(self.slots):
            lines.append(f"  slot[{s}]: max({', '.join(map(str, sizes))}) bytes")
        return "\n".join(lines)

    __repr__ = __str__


def storage_root(graph: Graph, i: int) -> int:
    while OPS[graph[i].op].kind == VIEW:
        i = graph[i].inputs[0]
    return i


def plan_buffers(graph: Graph, kernels: list[Kernel]) -> Plan:
    roots = {n.id: storage_root(graph, n.id) for n in graph.nodes}
    plan = Plan(kernels, {}, roots=roots)
    for k, i in enumerate(graph.inputs):
        plan.location[i] = Location("input", k)
    for node in graph.nodes:
        if OPS[node.op].source == "constant" and not is_inline_source(node):
            plan.location[node.id] = Location("const", len(plan.constants))
            plan.constants.append(node.attrs["value"])
    for k, o in enumerate(graph.outputs):
        if k in graph.aliases:  # written in place into an input's array
            plan.location[roots[o]] = Location("input", graph.aliases[k])
        else:
            plan.location.setdefault(roots[o], Location("output", k))

    last_use: dict[int, int] = {}
    for t, kernel in enumerate(kernels):
        for i in kernel.reads:
            last_use[roots[i]] = t
    free: list[int] = []
    for t, kernel in enumerate(kernels):
        for o in kernel.outputs:
            if o in plan.location:
                continue
            nbytes = size_mul(numel(graph[o].shape), ITEMSIZE[graph[o].dtype])
            slot = next((s for s in free if nbytes in plan.slots[s]), None)
            if slot is None and free:
                slot = free[0]
            if slot is None:
                plan.slots.append([])
                slot = len(plan.slots) - 1
            else:
                free.remove(slot)
            if nbytes not in plan.slots[slot]:
                plan.slots[slot].append(nbytes)
            plan.location[o] = Location("slot", slot)
        for o in kernel.outputs:
            if plan.location[o].space == "slot" and last_use.get(o, -1) <= t:
                free.append(plan.location[o].index)  # written but never read again
        for i in {roots[i] for i in kernel.reads}:
            loc = plan.location[i]
            if loc.space == "slot" and last_use[i] == t:
                free.append(loc.index)
    return plan
