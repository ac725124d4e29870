"""The target-neutral kernel builder: what every target's kernel code is made of.

A `KernelBuilder` emits one kernel (a fused group of the plan) as one LLVM function: loops,
addressing, reads of the kernel's inputs, the scalar body of its fused nodes (each op's
`scalar` rule, see emitter.py), stores, and the skeleton of a rows kernel (reduction phases,
then the elementwise outputs). Each target is a sibling subclass (cpu.py, ptx.py) that says
how a kernel's work is split between threads: its function signature, its parallel loop, its
passes over a row, and the kernels whose whole structure differs (maps with vector lanes,
matmul tiles). What a builder needs to know about its target beyond that (threading model,
vector width, math table, GPU options) is the explicit `Target` it is handed.

Fused expressions are emitted without recursion (an explicit stack), so a chain of thousands
of fused elementwise ops is as safe as a short one.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import llvmlite.ir as ir
import numpy as np

from ..ir.graph import Graph
from ..ir.types import ITEMSIZE, Dim, Size, numel, size_mul
from ..ops.registry import CONV, ELEMENTWISE, GATHER, LAYOUT, OPS, REDUCE
from ..passes.fusion import Kernel, broadcast_map
from ..passes.plan import Plan
from .emitter import I32, I64, MEM, REG, Emitter, Val
from .lower import (Access, access_for, collapse, contiguous_strides, is_elem, is_inline,
                    reads_of)

PTR = ir.PointerType()
THREADING = ("pool", "grid", "simulated-grid")


@dataclass(frozen=True)
class Target:
    """What a kernel builder is told about the machine it emits code for.

    threading: "pool" (host threads each run [lo, hi) of a kernel's outermost loop),
    "grid" (GPU blocks of threads), or "simulated-grid" (the GPU kernels built for the host:
    one call per block, the block's threads as loops; see tests/gpu_sim.py).
    vector_bits: the widest vector registers (CPU: sizes the matmul register tiles) or loads
    (GPU: 128-bit ld.global.v4).  math: the math table the emitter asks (exp, log, tanh,
    pow, erf, sin, ...).
    tf32: float32 matmuls on tensor cores with inputs rounded to tf32 (GPU only).
    """
    name: str
    threading: str
    vector_bits: int
    math: Mapping[str, Callable]
    tf32: bool = False
    vector_regs: int = 16   # vector registers (x86: 32 with AVX-512; AArch64: 32)

    def __post_init__(self):
        assert self.threading in THREADING, f"unknown threading model {self.threading!r}"
        assert not (self.tf32 and self.threading == "pool"), "tf32 is for GPU targets"


@dataclass
class RowLayout:
    """What a rows kernel's code needs to know about its nodes (see build_rows)."""
    accesses: dict
    outs: dict
    rank: int
    space_strides: list
    kept: list            # axes with one value per row
    red: list             # reduced axes
    reductions: list
    depth: dict           # reduction -> phase (1: reads no other reduction)
    depths: list
    row_nodes: list       # per-row values computed between phases
    elem_outs: list
    cached: tuple | None  # (value, output): see _cached_in_output


class KernelBuilder:
    """Emits one kernel function. Values flow as `Val`s; memory is addressed by `Access`.
    Each target's subclass provides make_function, parallel_nest and the build_<kind>
    methods (map, rows, matmul, concat) whose threading is its own; the kernels of the other
    kinds (scatter, attention, conv) are shared."""

    def __init__(self, module: ir.Module, graph: Graph, plan: Plan, kernel: Kernel,
                 symbols: tuple[str, ...], target: Target):
        self.module, self.graph, self.plan, self.kernel = module, graph, plan, kernel
        self.target = target
        self.symbols = symbols
        self.members = frozenset(kernel.nodes)
        roots: list[int] = []
        for v in list(kernel.reads) + list(kernel.outputs):
            r = plan.roots[v]
            if r not in roots:
                roots.append(r)
        self.roots = roots
        self.fn = self.make_function()
        for arg in self.fn.args[:len(roots)]:
            arg.add_attribute("noalias")
        self.ptr = {r: self.fn.args[k] for k, r in enumerate(roots)}
        self.dims_arg = self.fn.args[len(roots)]
        self.parallel: tuple[Size, int] = (1, 1)   # outer trip count, chunk quantum
        self._reciprocals: dict[int, Val] = {}     # divide node -> 1 / its row-value divisor
        self.work: Size = 1                        # cost estimate (scalar operations)
        self.split_rows = False                    # matmul: threads split rows, never columns
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.e = Emitter(self.b, target.math)
        self._dims: dict[str, ir.Value] = {}
        for k, sym in enumerate(symbols):  # loaded once in the entry block; unused ones die
            p = self.b.gep(self.dims_arg, [ir.Constant(I64, k)], inbounds=True, source_etype=I64)
            self._dims[sym] = self.b.load(p, name=f"dim_{sym}", align=8, typ=I64)

    def elementwise_work(self) -> Size:
        """Cost estimate of one pass over the kernel's space, in scalar operations: a
        transcendental (costly) op costs about 20 vectorized adds, a division about 10. A
        step of an LSTM cell (4096 elements, 5 transcendentals each) is worth splitting."""
        per = sum(20 if OPS[self.graph[n].op].costly else
                  10 if OPS[self.graph[n].op].divides else 1 for n in self.kernel.nodes)
        return size_mul(numel(self.kernel.space), per)

    def make_function(self) -> ir.Function:
        """The kernel's LLVM function: buffers (one per storage root), dims, then whatever
        the threading model passes."""
        raise NotImplementedError

    def parallel_nest(self, sizes: list[Size], body, name="i", quantum: int = 1):
        """Nested loops over `sizes`, body(coords, carried) at each point, split between
        threads the target's way."""
        raise NotImplementedError

    # ---------------------------------------------------------------- sizes
    def size(self, s: Size) -> ir.Value:
        if not isinstance(s, Dim):
            return ir.Constant(I64, int(s))
        v = None if s.coef == 1 else ir.Constant(I64, s.coef)
        for sym in s.syms:
            v = self._dims[sym] if v is None else self.b.mul(v, self._dims[sym], flags=("nsw",))
        return v

    # ---------------------------------------------------------------- loops
    def loop(self, n: ir.Value, init: list, body, name: str = "i", start=None, step=None):
        """for i in range(start or 0, n, step or 1) with loop-carried values; returns their
        final values."""
        b = self.b
        pre = b.block
        head = self.fn.append_basic_block(f"{name}.head")
        body_bb = self.fn.append_basic_block(f"{name}.body")
        exit_bb = self.fn.append_basic_block(f"{name}.exit")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=name)
        i.add_incoming(ir.Constant(I64, 0) if start is None else start, pre)
        phis = []
        for v in init:
            p = b.phi(v.v.type)
            p.add_incoming(v.v, pre)
            phis.append(Val(p, v.dtype))
        b.cbranch(b.icmp_signed("<", i, n), body_bb, exit_bb)
        b.position_at_end(body_bb)
        new = body(i, phis)
        nxt = b.add(i, ir.Constant(I64, 1), name=f"{name}.next", flags=("nuw", "nsw")) \
            if step is None else b.add(i, step, name=f"{name}.next", flags=("nsw",))
        latch = b.block
        i.add_incoming(nxt, latch)
        for p, v in zip(phis, new):
            p.v.add_incoming(v.v, latch)
        b.branch(head)
        b.position_at_end(exit_bb)
        return phis

    def nest(self, sizes: list, init: list, body, coords=(), name="i"):
        """Nested loops over `sizes` (outermost first); body(coords, carried) -> carried."""
        if not sizes:
            return body(list(coords), init)
        return self.loop(sizes[0], init, lambda i, c: self.nest(
            sizes[1:], c, body, (*coords, i), name), name=f"{name}{len(coords)}")

    def unrolled_nest(self, sizes: list, init: list, body):
        """nest() over constant sizes written out in full: body at each point in order."""
        carried = init
        for point in itertools.product(*(range(int(s.constant)) for s in sizes)):
            carried = body([ir.Constant(I64, c) for c in point], carried)
        return carried

    # ---------------------------------------------------------------- memory
    def offset(self, strides, coords) -> ir.Value:
        """sum(coords * strides) as i64 (element units)."""
        off = ir.Constant(I64, 0)
        for c, s in zip(coords, strides):
            if s == 0:
                continue
            assert c is not None, "a row value read an element of the row"
            term = c if s == 1 else self.b.mul(c, self.size(s), flags=("nsw",))
            off = term if (isinstance(off, ir.Constant) and off.constant == 0) else \
                self.b.add(off, term, flags=("nsw",))
        return off

    def address(self, acc: Access, strides, coords) -> ir.Value:
        """Pointer to acc's element at `coords` (one i64 per loop axis)."""
        off = self.offset(strides, coords)
        dtype = self.graph[acc.value].dtype
        return self.b.gep(self.ptr[self.plan.roots[acc.value]], [off], inbounds=True,
                          source_etype=MEM[dtype])

    def leaf(self, value: int, strides, coords) -> Val:
        """An input value read from memory, or computed inline (constants, iota, sizes)."""
        node = self.graph[value]
        root = self.graph[self.plan.roots[value]]
        if is_inline(self.graph, value):
            if OPS[root.op].source == "constant":
                return self.e.const(root.attrs["value"].reshape(-1)[0].item(), root.dtype)
            if OPS[root.op].source == "size":
                n = self.size(root.attrs["value"])
                return self.e.cast(Val(n, "int64"), root.dtype)
            # iota: its value is the coordinate of the loop axis it follows
            axis = next((k for k, s in enumerate(strides) if s != 0), None)
            if axis is None:
                return self.e.const(0, root.dtype)
            return self.e.cast(Val(coords[axis], "int64"), root.dtype)
        return self.e.load(self.address(Access(value, ()), strides, coords), node.dtype)

    def reader(self, strides: Mapping, coords):
        """read(node, k): input k of `node`, from outside the kernel, at `coords`;
        `strides[(node, k)]` addresses it. (`coords`, a list that may change as loops
        advance, is also where in-kernel gathers find their element: self.coords.)"""
        g = self.graph
        self.coords = coords
        return lambda n, k: self.leaf(g[n].inputs[k], strides[(n, k)], coords)

    def store(self, n: int, strides, coords, val: Val):
        self.e.store(val, self.address(Access(n, ()), strides, coords))

    # ---------------------------------------------------------------- elementwise evaluation
    def evaluate(self, n: int, memo: dict, read) -> Val:
        """The value of in-kernel node n; `read(node, k)` reads input k of a node from outside
        the kernel. Values already in `memo` are reused; new ones are added to it.

        Depth-first over the inputs, left to right, with an explicit stack: each frame is a
        node and the values of its first inputs (no recursion, whatever the chain's length)."""
        if n in memo:
            return memo[n]
        stack: list[tuple[int, list[Val]]] = [(n, [])]
        while stack:
            m, args = stack[-1]
            inputs = self.graph[m].inputs
            if OPS[self.graph[m].op].kind == GATHER:   # reads its inputs itself
                inputs = ()
            if len(args) < len(inputs):
                i = inputs[len(args)]
                if i not in self.members:
                    args.append(read(m, len(args)))
                elif i in memo:
                    args.append(memo[i])
                else:
                    stack.append((i, []))
                continue
            stack.pop()
            memo[m] = self.emit_node(m, args)
            if stack:
                stack[-1][1].append(memo[m])
        return memo[n]

    def emit_node(self, n: int, args: list[Val]) -> Val:
        """One in-kernel node's value from its inputs' values."""
        node = self.graph[n]
        op = OPS[node.op]
        if n in self._reciprocals:
            out = self.e.mul(args[0], self._reciprocals[n])
        elif op.kind == ELEMENTWISE:
            out = op.scalar(self.e, *args, **node.attrs)
        elif op.kind == LAYOUT:
            out = args[0]  # the read already used the permuted / broadcast address
        elif op.kind == GATHER:
            # the node's own coordinates, from the kernel's (its axis map)
            zero = ir.Constant(I64, 0)
            at = [zero if a is None else self.coords[a] for a in self.kernel.maps[n]]
            out = op.gather(Indexer(self, node), at, **node.attrs)
        else:
            raise AssertionError(f"{node.op} cannot be evaluated inside a loop body")
        assert out.dtype == node.dtype, f"{node.op}: emitted {out.dtype}, declared {node.dtype}"
        return out

    def input_value(self, n: int, k: int, memo: dict, read) -> Val:
        """Input k of node n: computed in the kernel, or read from outside."""
        i = self.graph[n].inputs[k]
        return self.evaluate(i, memo, read) if i in self.members else read(n, k)

    # ---------------------------------------------------------------- kernels
    def build(self):
        getattr(self, f"build_{self.kernel.kind}")()
        self.b.ret_void()
        return self.fn

    def accesses(self):
        """Addressing of every input read (keyed by (node, input position)) and every output."""
        g, k = self.graph, self.kernel
        reads, maps = reads_of(g, k)
        rank = len(k.space)
        accesses = {key: access_for(g, g[key[0]].inputs[key[1]], m, rank)
                    for key, m in reads.items()}
        outs = {n: access_for(g, n, maps[n], rank) for n in k.outputs}
        return accesses, outs

    # ---------------------------------------------------------------- maps
    def map_layout(self):
        """(reads, outputs, loop sizes, loop strides per access, flat strides) of a map
        kernel: its space collapsed (lower.collapse); `flat` turns loop coordinates into the
        element's index in the whole space."""
        g, k = self.graph, self.kernel
        accesses, outs = self.accesses()
        pinned = {s for key, acc in accesses.items()
                  if OPS[g[self.plan.roots[acc.value]].op].source == "iota"
                  for s, st in enumerate(acc.strides) if st != 0}
        if any(OPS[g[n].op].kind == GATHER for n in k.nodes):
            pinned = set(range(len(k.space)))   # a gather rule needs every coordinate
        sizes, strides, axis_of = collapse(k.space, [*accesses.values(), *outs.values()], pinned)
        flat = [numel([k.space[a] for a in range(len(k.space)) if axis_of[a] > li]) for li in
                range(len(sizes))] if k.space else []
        return accesses, outs, sizes, strides, flat

    def map_values(self, coords, flat, read) -> Iterator[tuple[int, Val]]:
        """(output, value) of a map kernel's element at `coords`, one output at a time."""
        memo: dict = {}
        self.e.element_index = lambda: self.offset(flat, coords)
        self.coords = coords
        for o in self.kernel.outputs:
            yield o, self.evaluate(o, memo, read)

    # ---------------------------------------------------------------- rows
    def row_layout(self) -> RowLayout:
        g, k = self.graph, self.kernel
        accesses, outs = self.accesses()
        rank = len(k.space)
        reductions = [n for n in k.nodes if OPS[g[n].op].kind == REDUCE]
        depth = self._reduction_depths(reductions)
        elem_outs = [n for n in k.outputs if is_elem(g, k, n)]
        return RowLayout(
            accesses, outs, rank, contiguous_strides(k.space),
            [a for a in range(rank) if a not in k.reduce_axes], list(k.reduce_axes),
            reductions, depth, sorted(set(depth.values())),
            [n for n in k.nodes if not is_elem(g, k, n) and n not in reductions], elem_outs,
            self._cached_in_output(reductions, depth, elem_outs))

    def row_loader(self, rl: RowLayout, coords):
        return self.reader({key: acc.strides for key, acc in rl.accesses.items()}, coords)

    def emit_row(self, rl: RowLayout, coords, row_pass) -> dict:
        """One row (its kept coordinates set in `coords`): the reduction phases in order, each
        one pass over the row, then a pass that stores the elementwise outputs. Returns the
        row values (reductions and what is computed from them); the caller stores those that
        are outputs. `row_pass(phase_reds, element)` runs one pass the target's way: it calls
        element(accs) -> new accs at each element of the row (the reduced coordinates set in
        `coords`, unset after) and returns the phase's combined reductions."""
        row_memo: dict = {}
        read = self.row_loader(rl, coords)

        def one_pass(phase_reds, with_stores, last_phase):
            return row_pass(phase_reds, lambda accs: self.row_element(
                rl, coords, row_memo, read, phase_reds, accs, with_stores, last_phase))

        self.ready_rows(rl, row_memo, read)
        for d in rl.depths:
            phase = [r for r in rl.reductions if rl.depth[r] == d]
            for r, v in zip(phase, one_pass(phase, False, d == rl.depths[-1])):
                row_memo[r] = v
            self.ready_rows(rl, row_memo, read)
        if rl.elem_outs:
            self.set_reciprocals(row_memo)
            one_pass([], True, False)
            self._reciprocals = {}
        return row_memo

    def ready_rows(self, rl: RowLayout, row_memo: dict, read) -> None:
        """Evaluates the row values whose reductions are all known."""
        for n in rl.row_nodes:
            if n not in row_memo and all(
                    d in row_memo for d in self._reduction_deps(n, rl.reductions)):
                self.evaluate(n, row_memo, read)

    def row_element(self, rl: RowLayout, coords, row_memo, read, phase_reds, accs,
                    with_stores: bool, last_phase: bool) -> list:
        """One element of a pass over the row (coords set): folds it into the phase's
        reductions, keeps the cached value (last phase) or stores the elementwise outputs."""
        g = self.graph
        memo = dict(row_memo)
        self.e.element_index = lambda: self.offset(rl.space_strides, coords)
        if with_stores and rl.cached:
            value, out = rl.cached
            memo[value] = self.e.load(self.address(
                Access(out, ()), rl.outs[out].strides, coords), g[value].dtype)
        new = []
        for r, acc in zip(phase_reds, accs):
            new.append(OPS[g[r].op].combine(self.e, acc, self.input_value(r, 0, memo, read)))
        if last_phase and rl.cached:
            value, out = rl.cached
            self.store(out, rl.outs[out].strides, coords, memo[value])
        if with_stores:
            for n in rl.elem_outs:
                self.store(n, rl.outs[n].strides, coords, self.evaluate(n, memo, read))
        return new

    def row_inits(self, phase_reds) -> list:
        g = self.graph
        return [self.e.const(OPS[g[r].op].identity(g[r].dtype), g[r].dtype) for r in phase_reds]

    # ---------------------------------------------------------------- blocked sums
    def compensated(self, r: int) -> bool:
        """Whether reduction r's rounding errors add up (a float sum): see blocked_loop."""
        return OPS[self.graph[r].op].compensated and self.graph[r].dtype.startswith("float")

    def block_totals(self, phase_reds) -> list[Val]:
        """The starting totals of blocked_loop: each reduction's identity, then a zero
        compensation for each compensated one (flat, as loops carry them)."""
        totals = []
        for r, ident in zip(phase_reds, self.row_inits(phase_reds)):
            totals.append(ident)
            if self.compensated(r):
                totals.append(self.e.const(0, self.graph[r].dtype))
        return totals

    def add_blocks(self, phase_reds, totals: list[Val], blocks: list[Val]) -> list[Val]:
        """The totals with one block's results added: Neumaier's compensated sum for the
        compensated reductions, the op's own combine for the others (exact)."""
        g, rest, out = self.graph, iter(totals), []
        for r, block in zip(phase_reds, blocks):
            total = next(rest)
            if self.compensated(r):
                out.extend(self.neumaier(total, next(rest), block))
            else:
                out.append(OPS[g[r].op].combine(self.e, total, block))
        return out

    def neumaier(self, total: Val, lost: Val, x: Val) -> list[Val]:
        """(total + x, lost + the rounding error of that addition): the error is exact,
        (big - sum) + small with |big| >= |small|. Plain fadds: reassociating them
        would cancel the error term to zero."""
        b = self.b
        t = b.fadd(total.v, x.v, name="total")
        first_bigger = b.fcmp_ordered(">=", self.e.intrinsic("fabs", t.type, [total.v]),
                                      self.e.intrinsic("fabs", t.type, [x.v]))
        big = b.select(first_bigger, total.v, x.v)
        small = b.select(first_bigger, x.v, total.v)
        error = b.fadd(b.fsub(big, t), small, name="error")
        return [Val(t, total.dtype), Val(b.fadd(lost.v, error, name="lost"), total.dtype)]

    def block_results(self, phase_reds, totals: list[Val]) -> list[Val]:
        """Each reduction's value from blocked_loop's totals: total + compensation, or the
        total alone where the compensation is not finite (an inf or NaN was added: the
        total already holds numpy's answer, and inf - inf in the error term would not)."""
        b, rest, out = self.b, iter(totals), []
        for r in phase_reds:
            total = next(rest)
            if self.compensated(r):
                lost = next(rest)
                inf = ir.Constant(lost.v.type, float("inf"))
                finite = b.fcmp_ordered("<", self.e.intrinsic("fabs", lost.v.type, [lost.v]),
                                        inf)
                total = Val(b.select(finite, b.fadd(total.v, lost.v), total.v,
                                     name="sum"), total.dtype)
            out.append(total)
        return out

    def blocked_loop(self, n: ir.Value, totals: list[Val], phase_reds, body, block: int,
                     start=None, step=None) -> list[Val]:
        """for j in range(start or 0, n, step or 1) folding elements into the phase's
        reductions (body(j, accs) -> accs), in blocks of `block` iterations: each block
        starts from fresh accumulators (LLVM vectorizes its loop into a few vector
        accumulators) and its results are added to `totals` (add_blocks). Rounding error
        then grows with the block length and not with n, where one running sum's grows
        with n. Returns the new totals (block_results gives the reductions' values)."""
        b = self.b
        span = ir.Constant(I64, block) if step is None else \
            b.mul(step, ir.Constant(I64, block), flags=("nsw",))

        def one_block(first, carried):
            stop = b.add(first, span, flags=("nsw",))
            stop = b.select(b.icmp_signed("<", stop, n), stop, n, name="block.stop")
            accs = self.loop(stop, self.row_inits(phase_reds), body, name="blk", start=first,
                             step=step)
            return self.add_blocks(phase_reds, carried, accs)
        return self.loop(n, totals, one_block, name="blocks", start=start, step=span)

    def row_outputs(self) -> list[int]:
        """The outputs with one value per row (reductions, values computed from them)."""
        g, k = self.graph, self.kernel
        return [n for n in k.outputs if not is_elem(g, k, n)]

    def set_reciprocals(self, row_memo) -> None:
        """x / (row value): one division per row, then multiplications."""
        g, k = self.graph, self.kernel
        self._reciprocals = {
            n: self.e.div(self.e.const(1, g[n].dtype), row_memo[g[n].inputs[1]])
            for n in k.nodes if OPS[g[n].op].divides and is_elem(g, k, n)
            and g[n].inputs[1] in row_memo and g[n].dtype.startswith("float")}

    def _cached_in_output(self, reductions, depth, elem_outs):
        """(value, output): a costly elementwise value that the last reduction phase computes
        (softmax's exp(x - max)) and an output that depends on it. The last phase stores
        the value in the output's memory, and the final pass reads it back instead of
        computing it again (then overwrites it with the output's value)."""
        g, k = self.graph, self.kernel
        if not reductions:
            return None
        last = max(depth.values())
        for r in reductions:
            value = g[r].inputs[0]
            if depth[r] != last or value not in self.members or not is_elem(g, k, value):
                continue
            if not self._costly(value, reductions):
                continue
            for out in elem_outs:
                if out != value and g[out].dtype == g[value].dtype and \
                        value in self._elem_ancestors(out, reductions):
                    return value, out
        return None

    def _elem_ancestors(self, n: int, reductions) -> set[int]:
        out, stack = set(), [n]
        while stack:
            m = stack.pop()
            if m in out or m in reductions or m not in self.members:
                continue
            out.add(m)
            stack.extend(self.graph[m].inputs)
        return out

    def _costly(self, n: int, reductions) -> bool:
        return any(OPS[self.graph[m].op].costly
                   for m in self._elem_ancestors(n, reductions))

    def _reduction_deps(self, n: int, reductions) -> set[int]:
        """Reductions that in-kernel node n depends on."""
        out, stack, seen = set(), [n], set()
        while stack:
            m = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            if m in reductions and m != n:
                out.add(m)
                continue
            stack.extend(i for i in self.graph[m].inputs if i in self.members)
        return out

    def _reduction_depths(self, reductions) -> dict[int, int]:
        depth: dict[int, int] = {}
        for r in reductions:  # topological order
            deps = self._reduction_deps(r, reductions)
            depth[r] = 1 + max((depth[d] for d in deps), default=0)
        return depth

    # ---------------------------------------------------------------- matmul epilogue
    def epilogue(self, matmul: int, value: Val, coords) -> None:
        """Stores the kernel's outputs at one element (`coords`) of the matmul's result C,
        whose value is `value`: the fused epilogue (bias, activation) reads its other inputs
        broadcast over C's space; outputs are laid out as C."""
        g = self.graph
        space = tuple(g[matmul].shape)
        out_strides = contiguous_strides(space)
        memo = {matmul: value}

        def read(n, k):
            src = g[n].inputs[k]
            amap = broadcast_map(g[src].shape, space, tuple(range(len(space))))
            return self.leaf(src, access_for(g, src, amap, len(space)).strides, coords)
        for o in self.kernel.outputs:
            self.store(o, out_strides, coords, self.evaluate(o, memo, read))

    # ---------------------------------------------------------------- scatter
    def build_scatter(self):
        """out[pre, i(j), post] += upd[pre, j, post] (scatter_add): threads split the `pre`
        rows; each row is zeroed, then its updates run in order, so duplicate indices add up
        without races. The innermost loop runs along `post` (contiguous in both)."""
        g, k = self.graph, self.kernel
        (out_id,) = k.nodes
        node = g[out_id]
        upd_id, idx_id = node.inputs
        axis, along = node.attrs["axis"], node.attrs["along"]
        dtype = node.dtype
        pre, n, post = node.shape[:axis], node.shape[axis], numel(node.shape[axis + 1:])
        j_count = numel(g[upd_id].shape[axis:axis + (1 if along else g[idx_id].type.rank)])
        b, ix = self.b, Indexer(self, node)
        size_n, size_post, size_j = self.size(n), self.size(post), self.size(j_count)
        out_ptr = self.ptr[self.plan.roots[out_id]]
        upd_ptr = self.ptr[self.plan.roots[upd_id]]
        idx_ptr = self.ptr[self.plan.roots[idx_id]]
        idx_dtype = g[idx_id].dtype
        # no updates land in an empty axis
        size_j = b.select(b.icmp_signed(">", size_n, ix.const(0)), size_j, ix.const(0))

        def at(ptr, ty, off):
            return b.gep(ptr, [off], inbounds=True, source_etype=MEM[ty])

        def row(coords, _):
            (p,) = coords
            out_row = b.mul(p, b.mul(size_n, size_post))
            self.nest([b.mul(size_n, size_post)], [], lambda c, _: self.e.store(
                self.e.const(0, dtype), at(out_ptr, dtype, b.add(out_row, c[0]))) or [],
                name="z")

            def update(jc, _):
                (j,) = jc
                src_row = b.mul(b.add(b.mul(p, size_j), j), size_post)
                if not along:
                    i = _kernel_index(ix, self.e.cast(self.e.load(
                        at(idx_ptr, idx_dtype, j), idx_dtype), "int64").v, size_n)
                    dst_row = b.add(out_row, b.mul(i, size_post))

                def one(qc, _):
                    (q,) = qc
                    src = b.add(src_row, q)
                    if along:
                        i = _kernel_index(ix, self.e.cast(self.e.load(
                            at(idx_ptr, idx_dtype, src), idx_dtype), "int64").v, size_n)
                        dst = b.add(out_row, b.add(b.mul(i, size_post), q))
                    else:
                        dst = b.add(dst_row, q)
                    acc = self.e.add(self.e.load(at(out_ptr, dtype, dst), dtype),
                                     self.e.load(at(upd_ptr, dtype, src), dtype))
                    self.e.store(acc, at(out_ptr, dtype, dst))
                    return []
                self.nest([size_post], [], one, name="q")
                return []
            self.nest([size_j], [], update, name="j")
            return []
        self.work = size_mul(numel(g[upd_id].shape), 3)
        self.parallel_nest([numel(pre)], row, name="r")

    # ---------------------------------------------------------------- attention
    def build_attention(self):
        """out[b, i] = softmax_j(q[b, i] . k[b, j] * scale + mask) v[b, j] (ops/flash.py).

        Threads split the (batch, query) rows. Each row walks its keys in blocks of
        ATTENTION_BLOCK keeping the running maximum m, the running sum l and its output row
        (online softmax): per block the scores go to a small scratch array, then the new
        maximum, one rescale of the row by exp(m_old - m_new), and p_j v_j added in.

        CPU fast path (vector registers, static Ev): a group of up to 4 query rows shares
        every block of keys and values it loads (flash attention's tiling, so K and V are
        read once per group from L2, not once per row); the scores of a block are vectors
        accumulated over the features (kt is contiguous along the keys), and the group's
        output rows are register tiles within a block. A block that is not full (the last
        one, or a causal row's own) runs the scalar path. A row with every key masked is
        zero, as in PyTorch."""
        g, k, b, e = self.graph, self.kernel, self.b, self.e
        (out_id,) = k.nodes
        node = g[out_id]
        attrs = node.attrs
        dtype = node.dtype
        q_id, k_id, v_id = node.inputs[:3]
        m_id = node.inputs[3] if attrs["mask"] != "none" else None
        batch = tuple(node.shape[:-2])
        L, Ev = node.shape[-2], node.shape[-1]
        S, E = g[k_id].shape[-1], g[q_id].shape[-1]
        # one space over (batch..., i, j, f, x): query i, key j, feature f of q and k,
        # feature x of v and out; every operand is addressed by its strides along it
        nb = len(batch)
        I, J, X, Y = nb, nb + 1, nb + 2, nb + 3

        def strides(value, sizes, last):
            amap = broadcast_map(g[value].shape, batch + sizes, tuple(range(nb)) + last)
            return access_for(g, value, amap, nb + 4).strides
        qs = strides(q_id, (L, E), (I, X))
        ks = strides(k_id, (E, S), (X, J))         # the keys transposed: kt (..., E, S)
        vs = strides(v_id, (S, Ev), (J, Y))
        os_ = strides(out_id, (L, Ev), (I, Y))
        ms = strides(m_id, (L, S), (I, J)) if m_id is not None else None
        block = ATTENTION_BLOCK[self.target.threading]
        lanes = max(1, self.target.vector_bits // (8 * ITEMSIZE[dtype]))
        mask_j = ms[J] if ms is not None else 0
        fast = (self.target.threading == "pool" and isinstance(Ev, int) and lanes > 1 and
                Ev % lanes == 0 and Ev // lanes <= 16 and block % lanes == 0 and
                vs[Y] == 1 and os_[Y] == 1 and ks[J] == 1 and mask_j in (0, 1))
        group = max(1, min(4, 16 // (Ev // lanes))) if fast else 1
        scratch = self._scratch(dtype, block * group, "scores")
        acc_mem = self._scratch(dtype, group * Ev, "acc") if fast else None
        c = lambda n: ir.Constant(I64, n)  # noqa: E731
        sz_L, sz_S, sz_E, sz_Ev = (self.size(x) for x in (L, S, E, Ev))
        scale = e.const(attrs["scale"], dtype)
        neg = e.const(-np.inf, dtype)
        zero = e.const(0.0, dtype)
        vty = ir.VectorType(REG[dtype], lanes)
        zvec = ir.Constant(vty, None)
        align = ITEMSIZE[dtype]

        def slot(t, base=scratch):
            return b.gep(base, [t], inbounds=True, source_etype=MEM[dtype])

        def vptr(p):
            return b.bitcast(p, vty.as_pointer())

        def splat(x: ir.Value) -> ir.Value:
            v = b.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(I32, 0))
            return b.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))

        def vload(p):
            return b.load(vptr(p), align=align, typ=vty)

        def splat_i8(x: ir.Value) -> ir.Value:
            ty = ir.VectorType(MEM["bool"], lanes)
            v = b.insert_element(ir.Constant(ty, ir.Undefined), x, ir.Constant(I32, 0))
            return b.shuffle_vector(v, ir.Constant(ty, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))

        def vfma(a, x, y):
            return e.intrinsic("fmuladd", vty, [a, x, y])

        def masked(s: Val, at_row, j) -> Val:
            """A score with the mask applied (scalar)."""
            if attrs["mask"] == "bool":
                return e.select(e.load(at_row(m_id, ms, j=j), "bool"), s, neg)
            if attrs["mask"] == "add":
                return e.add(s, e.load(at_row(m_id, ms, j=j), dtype))
            return s

        def online_update(m, l_, at_row, j0, cnt, scores):
            """Scores scores[0:cnt] (already scaled and masked) into probabilities; returns
            (m_new, l_new, corr): the output row is to be scaled by corr, then sum p v."""
            (top,) = self.loop(cnt, [neg], lambda t, a: [e.maximum(
                a[0], e.load(slot(t, scores), dtype), reduction=True)], name="m")
            m_new = e.maximum(m, top)
            # an all-masked prefix (m_new = -inf) must not give exp(-inf + inf) = NaN
            safe = e.select(e.cmp("==", m_new, neg), zero, m_new)
            corr = e.math("exp", e.sub(m, safe))

            def expo(t, a):
                p = e.math("exp", e.sub(e.load(slot(t, scores), dtype), safe))
                e.store(p, slot(t, scores))
                return [e.add(a[0], p, reduction=True)]
            (psum,) = self.loop(cnt, [zero], expo, name="p")
            return m_new, e.add(e.mul(l_, corr), psum), corr

        def scalar_blocks(at_row, n_keys, start, m, l_):
            """The scalar path over keys [start, n_keys), the output row in memory."""
            def per_block(j0, carried):
                m, l_ = carried
                left = b.sub(n_keys, j0)
                cnt = b.select(b.icmp_signed("<", left, c(block)), left, c(block))
                self.loop(cnt, [], lambda t, _: e.store(zero, slot(t)) or [], name="s0")

                def feature(f, _):
                    qf = e.load(at_row(q_id, qs, f=f), dtype)

                    def madd(t, _):
                        kv = e.load(at_row(k_id, ks, j=b.add(j0, t), f=f), dtype)
                        e.store(e.fma(qf, kv, e.load(slot(t), dtype)), slot(t))
                        return []
                    self.loop(cnt, [], madd, name="t")
                    return []
                self.loop(sz_E, [], feature, name="f")
                self.loop(cnt, [], lambda t, _: e.store(masked(
                    e.mul(e.load(slot(t), dtype), scale), at_row, b.add(j0, t)), slot(t))
                    or [], name="sm")
                m_new, l_new, corr = online_update(m, l_, at_row, j0, cnt, scratch)

                def rescale(x, _):
                    o = at_row(out_id, os_, x=x)
                    e.store(e.mul(e.load(o, dtype), corr), o)
                    return []
                self.loop(sz_Ev, [], rescale, name="r")

                def accumulate(t, _):
                    p = e.load(slot(t), dtype)
                    j = b.add(j0, t)

                    def axpy(x, _):
                        o = at_row(out_id, os_, x=x)
                        e.store(e.fma(p, e.load(at_row(v_id, vs, j=j, x=x), dtype),
                                      e.load(o, dtype)), o)
                        return []
                    self.loop(sz_Ev, [], axpy, name="v")
                    return []
                self.loop(cnt, [], accumulate, name="a")
                return [m_new, l_new]
            m, l_ = self.loop(n_keys, [m, l_], per_block, name="kb", step=c(block),
                              start=start)
            # a row with every key masked has l = 0 and a zero row: 0, as PyTorch gives
            inv = e.select(e.cmp("==", l_, zero), zero, e.div(e.const(1.0, dtype), l_))

            def normalize(x, _):
                o = at_row(out_id, os_, x=x)
                e.store(e.mul(e.load(o, dtype), inv), o)
                return []
            self.loop(sz_Ev, [], normalize, name="n")

        def vector_blocks(rows, n_full):
            """Full key blocks [0, n_full) for a group of rows; returns each row's (m, l),
            the unnormalized output rows left in acc_mem."""
            nv, nw = block // lanes, Ev // lanes
            for w in range(group * nw):
                b.store(zvec, vptr(slot(c(w * lanes), acc_mem)), align=align)

            def per_block(j0, carried):
                def feature(f, sv):
                    kv = [vload(rows[0](k_id, ks, j=b.add(j0, c(u * lanes)), f=f))
                          for u in range(nv)]
                    out = []
                    for r, at_row in enumerate(rows):
                        qf = splat(e.load(at_row(q_id, qs, f=f), dtype).v)
                        out += [Val(vfma(qf, kv[u], sv[r * nv + u].v), dtype)
                                for u in range(nv)]
                    return out
                sv = self.loop(sz_E, [Val(zvec, dtype)] * (group * nv), feature, name="ff")
                new, corrs = [], []
                for r, at_row in enumerate(rows):
                    scores = slot(c(r * block))
                    for u in range(nv):
                        x = b.fmul(sv[r * nv + u].v, splat(scale.v))
                        if attrs["mask"] != "none":
                            mp = at_row(m_id, ms, j=b.add(j0, c(u * lanes)))
                            if attrs["mask"] == "bool":
                                bty = ir.VectorType(MEM["bool"], lanes)
                                mv = b.load(b.bitcast(mp, bty.as_pointer()), align=1, typ=bty) \
                                    if mask_j == 1 else splat_i8(b.load(mp, typ=MEM["bool"]))
                                keep = b.icmp_unsigned("!=", mv, ir.Constant(mv.type, None))
                                x = b.select(keep, x, splat(neg.v))
                            else:
                                x = b.fadd(x, vload(mp) if mask_j == 1 else
                                           splat(e.load(mp, dtype).v))
                        b.store(x, vptr(slot(c(r * block + u * lanes))), align=align)
                    m_new, l_new, corr = online_update(carried[r], carried[group + r],
                                                       at_row, j0, c(block), scores)
                    new.append((m_new, l_new))
                    corrs.append(splat(corr.v))
                acc = [Val(b.fmul(b.load(vptr(slot(c(w * lanes), acc_mem)), align=align,
                                         typ=vty), corrs[w // nw]), dtype)
                       for w in range(group * nw)]

                def key(t, a):
                    j = b.add(j0, t)
                    vv = [vload(rows[0](v_id, vs, j=j, x=c(w * lanes))) for w in range(nw)]
                    out = []
                    for r in range(group):
                        p = splat(e.load(slot(b.add(c(r * block), t)), dtype).v)
                        out += [Val(vfma(p, vv[w], a[r * nw + w].v), dtype)
                                for w in range(nw)]
                    return out
                acc = self.loop(c(block), acc, key, name="fk")
                for w, a in enumerate(acc):
                    b.store(a.v, vptr(slot(c(w * lanes), acc_mem)), align=align)
                return [m for m, _ in new] + [l_ for _, l_ in new]
            carried = self.loop(n_full, [neg] * group + [zero] * group, per_block, name="fb",
                                step=c(block))
            return carried[:group], carried[group:]

        def body(coords, _):
            (r,) = coords
            i = b.urem(r, sz_L)
            rest = b.udiv(r, sz_L)
            bc = []
            for d in reversed(batch):
                n = self.size(d)
                bc.append(b.urem(rest, n))
                rest = b.udiv(rest, n)
            bc = bc[::-1]

            def row_at(ir_):
                base = list(bc) + [ir_, c(0), c(0), c(0)]

                def at_row(value, st, j=None, f=None, x=None):
                    cs = list(base)
                    for axis, coord in ((J, j), (X, f), (Y, x)):
                        if coord is not None:
                            cs[axis] = coord
                    return self.address(Access(value, ()), st, cs)
                return at_row

            def keys(ir_):       # keys row ir_ may see: all, or j <= i (causal)
                if not attrs["causal"]:
                    return sz_S
                lim = b.add(ir_, c(1))
                return b.select(b.icmp_signed("<", lim, sz_S), lim, sz_S)
            if group == 1:
                at_row = row_at(i)
                self.loop(sz_Ev, [], lambda x, _: e.store(zero, at_row(out_id, os_, x=x))
                          or [], name="z")
                scalar_blocks(at_row, keys(i), None, neg, zero)
                return []
            # the group's first row leads it; rows past the end repeat the last row
            with b.if_then(b.icmp_unsigned("==", b.urem(i, c(group)), c(0))):
                last = b.sub(sz_L, c(1))
                ids = [b.select(b.icmp_signed("<", b.add(i, c(r)), sz_L), b.add(i, c(r)), last)
                       for r in range(group)]
                rows = [row_at(x) for x in ids]
                n_full = b.mul(b.sdiv(keys(i), c(block)), c(block))
                ms_, ls_ = vector_blocks(rows, n_full)
                for r in range(group):
                    def copy(x, _, r=r):
                        e.store(e.load(slot(b.add(c(r * Ev), x), acc_mem), dtype),
                                rows[r](out_id, os_, x=x))
                        return []
                    self.loop(c(Ev), [], copy, name="o")
                    scalar_blocks(rows[r], keys(ids[r]), n_full, ms_[r], ls_[r])
            return []
        rows_total = numel(batch + (L,))
        self.work = size_mul(size_mul(rows_total, S), 2 * E + 2 * Ev + 8)
        self.parallel_nest([rows_total], body, name="q", quantum=group)

    # ---------------------------------------------------------------- direct convolution
    def build_conv(self):
        """out[n, o, h, :] = sum_{c, kh, kw} w[o, c, kh, kw] x[n, c, h sh + kh dh - lo, ...]
        (ops/conv.py conv_direct; column stride 1 or 2). Threads split the (n, output
        channel block, h) rows. CPU: a register tile of CONV_TILE_O output channels x
        CONV_TILE_V vectors of output columns (for narrow images, one vector in each of
        CONV_TILE_V output rows); per (c, kh, kw) one masked vector load of x per vector (the
        mask: padding, row and column edges) and one broadcast weight per channel, then the
        tile's multiply-adds; a fused epilogue runs on each stored vector's elements.
        Elsewhere one output element per point, a scalar loop. (The CPU builder runs
        convolutions with constant weights on codegen/conv_blocked.py where that applies.)"""
        g, k, b, e = self.graph, self.kernel, self.b, self.e
        (out_id,) = [n for n in k.nodes if OPS[g[n].op].kind == CONV]
        node = g[out_id]
        x_id, w_id = node.inputs
        at = node.attrs
        (KH, KW), (dh, dw), (lh, lw) = at["kernel"], at["dilation"], at["pad_lo"]
        sh, sw = at.get("stride", (1, 1))
        N, O, OH, OW = node.shape
        C, H, W = g[x_id].shape[1:]
        dtype = node.dtype
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        lanes = max(1, self.target.vector_bits // (8 * ITEMSIZE[dtype]))
        self.work = size_mul(numel(node.shape), C * KH * KW * 2)
        sz = {name: self.size(v) for name, v in
              (("C", C), ("H", H), ("W", W), ("OH", OH), ("OW", OW))}
        x_ptr = self.ptr[self.plan.roots[x_id]]
        w_ptr = self.ptr[self.plan.roots[w_id]]
        o_ptr = self.ptr[self.plan.roots[out_id]] if len(k.nodes) == 1 else None
        ety = MEM[dtype]

        def x_row(n, ch, ih):        # element offset of x[n, ch, ih, 0]
            return b.mul(b.add(b.mul(b.add(b.mul(n, sz["C"]), ch), sz["H"]), ih), sz["W"])

        if self.target.threading != "pool" or lanes == 1:
            ix = Indexer(self, node)

            def point(coords, _):
                n, o, h, w = coords

                def channel(ch, acc):
                    total = acc[0]
                    for a in range(KH):
                        for bb in range(KW):
                            ih = b.add(b.mul(h, c(sh)), c(a * dh - lh))
                            iw = b.add(b.mul(w, c(sw)), c(bb * dw - lw))
                            ok = ix.all([ix.ge(ih, c(0)), ix.lt(ih, sz["H"]),
                                         ix.ge(iw, c(0)), ix.lt(iw, sz["W"])])
                            xv = ix.read(0, [n, ch, ih, iw], ok, 0.0)
                            wv = ix.read(1, [o, ch, c(a), c(bb)])
                            total = e.fma(xv, wv, total)
                    return [total]
                (total,) = self.loop(sz["C"], [e.const(0.0, dtype)], channel, name="c")
                self.epilogue(out_id, total, coords)
                return []
            self.parallel_nest(list(node.shape), point, name="o")
            return

        # the tile's vectors: (output row offset, vector of columns) pairs. Narrow images
        # (one vector spans a row) take CONV_TILE_V rows: each broadcast weight then serves
        # CONV_TILE_V vectors, as in a wide row
        narrow = isinstance(OW, int) and OW <= lanes and isinstance(OH, int)
        TR, TV = (min(CONV_TILE_V, OH), 1) if narrow else (1, CONV_TILE_V)
        slots = [(r, v) for r in range(TR) for v in range(TV)]
        S = len(slots)
        to = min(CONV_TILE_O * CONV_TILE_V // S, O)
        o_blocks = -(-O // to)
        vty = ir.VectorType(REG[dtype], lanes)
        mty = ir.VectorType(ir.IntType(1), lanes)
        ivty = ir.VectorType(I64, lanes)
        steps = ir.Constant(ivty, list(range(lanes)))
        zvec = ir.Constant(vty, None)
        align = ir.Constant(I32, ITEMSIZE[dtype])
        mload = self._intrinsic(f"llvm.masked.load.v{lanes}{_fsuffix(dtype)}.p0", vty,
                                [PTR, I32, mty, vty])
        mstore = self._intrinsic(f"llvm.masked.store.v{lanes}{_fsuffix(dtype)}.p0",
                                 ir.VoidType(), [vty, PTR, I32, mty])
        fma = self._intrinsic(f"llvm.fmuladd.v{lanes}{_fsuffix(dtype)}", vty, [vty] * 3)

        def splat(v, ty):
            x = b.insert_element(ir.Constant(ty, ir.Undefined), v, ir.Constant(I32, 0))
            return b.shuffle_vector(x, ir.Constant(ty, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))

        def in_range(start, n):      # lanes start + i with 0 <= start + i < n
            idx = b.add(splat(start, ivty), steps)
            return b.and_(b.icmp_signed(">=", idx, ir.Constant(ivty, None)),
                          b.icmp_signed("<", idx, splat(n, ivty)))

        lane_tile = self._scratch(dtype, lanes, "lanes") if o_ptr is None else None

        def row(coords, _):
            n, ob, h0 = coords
            h0 = b.mul(h0, c(TR))
            o0 = b.mul(ob, c(to))
            ids = [b.select(b.icmp_signed("<", b.add(o0, c(t)), c(O)), b.add(o0, c(t)),
                            c(O - 1)) for t in range(to)]
            width = TV * lanes
            tiles = b.sdiv(b.add(sz["OW"], c(width - 1)), c(width))

            def tile(wt, _):
                w0 = b.mul(wt, c(width))
                # the loads' masks: they depend on the tile, kh and kw, not on the channel
                # (column stride 2: each vector of outputs reads 2 vectors of x, the even
                # lanes picked by one shuffle)
                masks = {}
                for a in range(KH):
                    for r in range(TR):
                        ih = b.add(b.mul(b.add(h0, c(r)), c(sh)), c(a * dh - lh))
                        row_ok = b.and_(b.icmp_signed(">=", ih, c(0)),
                                        b.icmp_signed("<", ih, sz["H"]))
                        for bb in range(KW):
                            for v in range(TV):
                                first = b.add(b.mul(w0, c(sw)),
                                              c(bb * dw - lw + v * lanes * sw))
                                masks[a, bb, r, v] = [
                                    (b.and_(in_range(b.add(first, c(u * lanes)), sz["W"]),
                                            splat(row_ok, mty)), ih,
                                     b.add(first, c(u * lanes)))
                                    for u in range(sw)]

                def channel(ch, acc):
                    acc = [a_.v for a_ in acc]
                    for a in range(KH):
                        for bb in range(KW):
                            xs = []
                            for r, v in slots:
                                parts = []
                                for mask, ih, start in masks[a, bb, r, v]:
                                    off = b.add(x_row(n, ch, ih), start)
                                    ptr = b.gep(x_ptr, [off], source_etype=ety)  # (masked
                                    parts.append(b.call(mload, [ptr, align, mask, zvec]))
                                xs.append(parts[0] if sw == 1 else b.shuffle_vector(  # lanes:
                                    parts[0], parts[1], ir.Constant(            # no access)
                                        ir.VectorType(I32, lanes), list(range(0, 2 * lanes,
                                                                              2)))))
                            for t in range(to):
                                woff = b.add(b.mul(b.add(b.mul(ids[t], sz["C"]), ch),
                                                   c(KH * KW)), c(a * KW + bb))
                                wv = b.load(b.gep(w_ptr, [woff], inbounds=True,
                                                  source_etype=ety), typ=ety)
                                ws = splat(wv, vty)
                                for j in range(S):
                                    acc[t * S + j] = b.call(fma, [ws, xs[j], acc[t * S + j]])
                    return [Val(a_, dtype) for a_ in acc]
                acc = self.loop(sz["C"], [Val(zvec, dtype)] * (to * S), channel, name="c")
                for t in range(to):
                    live = b.icmp_signed("<", b.add(o0, c(t)), c(O))
                    for j, (r, v) in enumerate(slots):
                        h = b.add(h0, c(r))
                        start = b.add(w0, c(v * lanes))
                        live_row = b.and_(live, b.icmp_signed("<", h, sz["OH"]))
                        if o_ptr is None:    # the epilogue, one element at a time
                            with b.if_then(live_row):
                                self._conv_epilogue(out_id, acc[t * S + j], lane_tile,
                                                    [n, b.add(o0, c(t)), h, start], sz["OW"])
                            continue
                        mask = b.and_(in_range(start, sz["OW"]), splat(live_row, mty))
                        off = b.add(b.mul(b.add(b.mul(b.add(b.mul(n, c(O)), ids[t]), sz["OH"]),
                                                h), sz["OW"]), start)
                        ptr = b.gep(o_ptr, [off], source_etype=ety)
                        b.call(mstore, [acc[t * S + j].v, ptr, align, mask])
                return []
            self.loop(tiles, [], tile, name="wt")
            return []
        self.parallel_nest([N, o_blocks, -(-OH // TR) if narrow else OH], row, name="r")

    def _conv_epilogue(self, conv: int, vector: Val, tile, coords, width) -> None:
        """The epilogue of the columns coords[-1].. of one output row (as many as are left
        of `width`, at most one vector), from the vector of their convolution sums."""
        b, dtype = self.b, vector.dtype
        lanes = vector.v.type.count
        b.store(vector.v, b.bitcast(tile, vector.v.type.as_pointer()))
        start = coords[-1]
        left = b.sub(width, start)
        count = b.select(b.icmp_signed("<", left, ir.Constant(I64, lanes)), left,
                         ir.Constant(I64, lanes))

        def lane(i, _):
            v = b.load(b.gep(tile, [i], inbounds=True, source_etype=MEM[dtype]),
                       typ=MEM[dtype])
            self.epilogue(conv, Val(v, dtype), coords[:-1] + [b.add(start, i)])
            return []
        self.loop(count, [], lane, name="lane")

    def _intrinsic(self, name: str, ret, args):
        fn = self.module.globals.get(name)
        return fn or ir.Function(self.module, ir.FunctionType(ret, args), name)

    def _scratch(self, dtype: str, count: int, name: str) -> ir.Value:
        """`count` values of per-thread scratch, allocated once in the entry block (CPU: the
        calling thread's stack; GPU: the thread's local memory; simulated: used by one
        simulated thread at a time, within one region)."""
        here = self.b.block
        self.b.position_at_start(self.fn.entry_basic_block)
        ptr = self.b.alloca(MEM[dtype], size=count, name=name)
        ptr.align = 64
        self.b.position_at_end(here)
        return ptr


# the direct convolution's register tile: output channels x vectors of output columns
CONV_TILE_O, CONV_TILE_V = 8, 2


def _fsuffix(dtype: str) -> str:
    return {"float32": "f32", "float64": "f64"}[dtype]


# key block of the attention kernel per threading model: a CPU block's scores stay in L1 and
# its exp vectorizes; a GPU thread's block lives in local memory, so it is kept small
ATTENTION_BLOCK = {"pool": 64, "grid": 16, "simulated-grid": 16}


def _kernel_index(ix: "Indexer", i, n):
    """graphc.ops.indexing's index rule: i + n where -n <= i < 0, then clamped to [0, n-1]."""
    i = ix.select(ix.lt(i, ix.const(0)), ix.add(i, n), i)
    return ix.clamp(i, n)


class Indexer:
    """What a gather rule builds an element from: i64 index arithmetic, and reads of the
    node's inputs that are guarded: a read whose `valid` is false never touches memory
    (the load is skipped) and gives `fill` instead."""

    def __init__(self, kb: KernelBuilder, node):
        self.kb, self.node, self.b, self.e = kb, node, kb.b, kb.e
        self.graph = kb.graph

    def const(self, n: int) -> ir.Value:
        return ir.Constant(I64, int(n))

    def size(self, s: Size) -> ir.Value:
        return self.kb.size(s)

    def shape(self, k: int):
        return self.graph[self.node.inputs[k]].shape

    def add(self, a, b):
        return self.b.add(a, b)

    def sub(self, a, b):
        return self.b.sub(a, b)

    def mul(self, a, b):
        return self.b.mul(a, b)

    def div(self, a, b):
        """a // b for b > 0 (floor division, so negative a rounds down)."""
        q = self.b.sdiv(a, b)
        fix = self.b.and_(self.b.icmp_signed("<", a, self.const(0)),
                          self.b.icmp_signed("!=", self.b.mul(q, b), a))
        return self.b.sub(q, self.b.zext(fix, I64))

    def mod(self, a, b):
        """a mod b for b > 0, in [0, b)."""
        return self.b.sub(a, self.b.mul(self.div(a, b), b))

    def lt(self, a, b):
        return self.b.icmp_signed("<", a, b)

    def ge(self, a, b):
        return self.b.icmp_signed(">=", a, b)

    def eq(self, a, b):
        return self.b.icmp_signed("==", a, b)

    def all(self, preds):
        out = None
        for p in preds:
            out = p if out is None else self.b.and_(out, p)
        return out

    def select(self, c, a, b):
        return self.b.select(c, a, b)

    def clamp(self, i, n):
        """i limited to [0, n - 1] (n > 0)."""
        i = self.b.select(self.lt(i, self.const(0)), self.const(0), i)
        top = self.b.sub(n, self.const(1))
        return self.b.select(self.lt(top, i), top, i)

    def wrap_clamp(self, i, n):
        return _kernel_index(self, i, n)

    def read(self, k: int, coords, valid=None, fill=0.0) -> Val:
        """Input k at `coords` (i64 values, one per axis); `fill` where `valid` is false."""
        kb, x = self.kb, self.node.inputs[k]
        dtype = self.graph[x].dtype
        strides = contiguous_strides(self.graph[x].shape)
        if valid is None:
            return kb.e.load(kb.address(Access(x, ()), strides, coords), dtype)
        # a load only where valid, as a branch: the loop vectorizer turns it into a masked
        # load (the address stays affine in the loop's index, so contiguous reads stay
        # contiguous); elsewhere `fill`
        b = self.b
        before = b.block
        with b.if_then(valid):
            inside = b.block
            val = kb.e.load(kb.address(Access(x, ()), strides, coords), dtype)
        phi = b.phi(val.v.type)
        phi.add_incoming(val.v, inside)
        phi.add_incoming(kb.e.const(fill, dtype).v, before)
        return Val(phi, dtype)

    def index(self, k: int, coords) -> ir.Value:
        """Input k (an integer tensor) at `coords`, as i64."""
        return self.e.cast(self.read(k, coords), "int64").v


__all__ = ["KernelBuilder", "Indexer", "RowLayout", "Target", "PTR"]
