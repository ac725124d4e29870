"""plan_buffers: where every value lives, and which workspace slots intermediates share.

Assumes kernels in execution order (from `fuse`). Guarantees: each kernel-written value has
exactly one location: a graph output buffer, or a workspace slot that no value live at the
same time uses. Views live where their root lives. Slot sizes are symbolic (bytes), so the
plan serves every binding of the symbolic dims; the generated code takes their maximum.

A backend may ask for constant operands stored in the layout its kernels read (`prepack`):
the CPU backend stores a matmul's constant B in the micro-kernel's panels, and a
convolution's constant weights in blocks of output channels, so no call packs them again.
The plan then holds that array in the constant's place.
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
class LoopPlan:
    """Where a scan kernel's body runs: the body's own plan, and the outer workspace slots and
    constants it uses. Body slot s is outer slot `slots[s]`; body constant k is outer constant
    `constants[k]`; carry leaf k alternates between outer slots `carry[k]` (step t reads one
    and writes the other); body output k in `spare` (a y whose stacked result nobody reads)
    is written to that outer slot, one slice a step."""

    graph: Graph
    plan: Plan
    slots: list[int] = field(default_factory=list)
    constants: list[int] = field(default_factory=list)
    carry: list[tuple[int, int]] = field(default_factory=list)
    spare: dict[int, int] = field(default_factory=dict)

    def resolve(self, root: int, inputs: list, outputs: list, const, slot):
        """Where a body buffer lives, in the caller's terms: body input k is inputs[k] (the
        step's carry, slice of xs or captured value), body output k is outputs[k]; constants
        and slots are the outer ones, through const(outer index) and slot(outer index)."""
        loc = self.plan.location[root]
        if loc.space == "input":
            return inputs[loc.index]
        if loc.space == "output":
            return outputs[loc.index]
        if loc.space == "const":
            return const(self.constants[loc.index])
        return slot(self.slots[loc.index])

    def scratch(self) -> list[int]:
        """Every outer slot the loop uses while it runs."""
        out = list(self.slots) + list(self.spare.values())
        return out + [s for pair in self.carry for s in pair]


@dataclass
class Plan:
    kernels: list[Kernel]
    location: dict[int, Location]          # storage root node id -> location
    slots: list[list[Size]] = field(default_factory=list)   # candidate byte sizes per slot
    constants: list[np.ndarray] = field(default_factory=list)
    roots: dict[int, int] = field(default_factory=dict)     # value id -> storage root id
    loops: dict[int, LoopPlan] = field(default_factory=dict)  # scan kernel's index -> its body
    # kernel index -> the constant (index) that holds its operand prepacked (see prepack)
    packed: dict[int, int] = field(default_factory=dict)

    def where(self, value_id: int) -> Location:
        return self.location[self.roots[value_id]]

    def __str__(self) -> str:
        lines = [f"plan: {len(self.kernels)} kernels, {len(self.slots)} workspace slots"]
        for k in self.kernels:
            reads = ", ".join(f"%{i}@{self.where(i)}" for i in k.reads) or "-"
            writes = ", ".join(f"%{i}@{self.where(i)}" for i in k.outputs)
            lines.append(f"  {k.name}: {reads} -> {writes}")
        for t, loop in self.loops.items():
            lines.append(f"  {self.kernels[t].name}: body {loop.graph.name} in slots "
                         f"{loop.scratch()}")
            lines += ["  " + line for line in str(loop.plan).splitlines()]
        for s, sizes in enumerate(self.slots):
            lines.append(f"  slot[{s}]: max({', '.join(map(str, sizes))}) bytes")
        return "\n".join(lines)

    __repr__ = __str__


def storage_root(graph: Graph, i: int) -> int:
    while OPS[graph[i].op].kind == VIEW:
        i = graph[i].inputs[0]
    return i


def plan_buffers(graph: Graph, kernels: list[Kernel], prepack=None) -> Plan:
    """`prepack(graph, kernel)`: the backend's layout for a kernel's constant operand, as
    (the constant's node id, the array to store instead), or None (scan bodies too)."""
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
    if prepack is not None:
        _prepack(graph, kernels, plan, prepack)

    last_use: dict[int, int] = {}
    for t, kernel in enumerate(kernels):
        for i in kernel.reads:
            last_use[roots[i]] = t
    free: list[int] = []

    def take(nbytes: Size) -> int:
        """A free slot (one that held this size before, if any), grown to `nbytes`."""
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
        return slot

    for t, kernel in enumerate(kernels):
        for o in kernel.outputs:
            if o in plan.location:
                continue
            plan.location[o] = Location("slot", take(_nbytes(graph[o].type)))
        if kernel.body is not None:
            plan.loops[t] = _plan_loop(graph, kernel, plan, take, prepack)
        for o in kernel.outputs:
            if plan.location[o].space == "slot" and last_use.get(o, -1) <= t:
                free.append(plan.location[o].index)  # written but never read again
        for i in {roots[i] for i in kernel.reads}:
            loc = plan.location[i]
            if loc.space == "slot" and last_use[i] == t:
                free.append(loc.index)
        if t in plan.loops:
            free.extend(plan.loops[t].scratch())
    return plan


def _nbytes(type_) -> Size:
    return size_mul(numel(type_.shape), ITEMSIZE[type_.dtype])


def _prepack(graph: Graph, kernels: list[Kernel], plan: Plan, prepack) -> None:
    """Stores a constant in the layout its one reader asks for. A constant read anywhere else
    (another kernel, twice by one, a graph output) keeps its plain layout."""
    readers: dict[int, int] = {}
    for kernel in kernels:
        for i in kernel.reads:
            readers[plan.roots[i]] = readers.get(plan.roots[i], 0) + 1
    for o in graph.outputs:
        readers[plan.roots[o]] = readers.get(plan.roots[o], 0) + 1
    for t, kernel in enumerate(kernels):
        got = prepack(graph, kernel)
        if got is None:
            continue
        root, array = got
        loc = plan.location.get(root)
        if loc is not None and loc.space == "const" and readers.get(root) == 1:
            plan.constants[loc.index] = array
            plan.packed[t] = loc.index


def _plan_loop(graph: Graph, kernel: Kernel, plan: Plan, take, prepack) -> LoopPlan:
    """The body's plan (its buffers live in outer slots, taken while the loop runs)."""
    body, body_kernels = kernel.body
    loop = graph[kernel.nodes[0]]
    inner = plan_buffers(body, body_kernels, prepack)
    out = LoopPlan(body, inner)
    for value in inner.constants:
        out.constants.append(len(plan.constants))
        plan.constants.append(value)
    for sizes in inner.slots:
        slot = take(sizes[0])
        plan.slots[slot].extend(s for s in sizes[1:] if s not in plan.slots[slot])
        out.slots.append(slot)
    nc = loop.attrs["num_carry"]
    for k in range(nc):
        nbytes = _nbytes(body[body.inputs[k]].type)
        out.carry.append((take(nbytes), take(nbytes)))
    used = {graph[r].attrs["index"] for r in kernel.outputs}
    for k in range(nc, len(body.outputs)):
        if k not in used:
            out.spare[k] = take(_nbytes(body[body.outputs[k]].type))
    return out
