"""CPU code generation: kernels as LLVM IR functions, the whole plan as one entry point.

Exported symbols (the runtime's ABI, see runtime/graphc_runtime/cpu.py):
    int32_t graphc_abi_version(void)
    int64_t graphc_workspace_size(const int64_t *dims)
    int32_t graphc_run(void **buffers, void *workspace, const int64_t *dims)
    void graphc_set_num_threads(int32_t n), int32_t graphc_get_num_threads(void)  (threads.c)
Kernels are internal `noinline` functions named after the ops they fuse, so the assembly
shows one function per kernel. Their pointer arguments are `noalias`: the plan never gives a
kernel's inputs and outputs overlapping memory (an in-place update reads and writes the same
element only). Each kernel takes [lo, hi) of its outermost loop; graphc_run hands every
kernel to graphc_parallel_for (threads.c), which runs small ones inline and splits big ones
between threads. Matmul kernels are built by gemm.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir
from graphc_runtime.abi import ABI_VERSION, BUFFER_ALIGN as WORKSPACE_ALIGN

from ..ir.graph import Graph
from ..ir.types import ITEMSIZE, Dim, Size, numel, size_mul
from ..ops.registry import ELEMENTWISE, LAYOUT, MATMUL, OPS, REDUCE
from ..passes.fusion import Kernel
from ..passes.plan import Plan
from . import math_cpu
from .emitter import F32, F64, I32, I64, MEM, REG, Emitter, Val
from .lower import (Access, access_for, collapse, contiguous_strides, is_elem, is_inline,
                    reads_of)

PTR = ir.PointerType()


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
    """Emits one kernel function. Values flow as `Val`s; memory is addressed by `Access`."""

    column_sums = True   # reductions over leading axes may loop column-wise (threads: lo/hi)

    def __init__(self, module: ir.Module, graph: Graph, plan: Plan, kernel: Kernel,
                 symbols: tuple[str, ...], vector_bits: int = 128):
        self.module, self.graph, self.plan, self.kernel = module, graph, plan, kernel
        self.vector_bits = vector_bits
        self.symbols = symbols
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
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.e = Emitter(self.b, self.math_table())
        self._dims: dict[str, ir.Value] = {}
        for k, sym in enumerate(symbols):  # loaded once in the entry block; unused ones die
            p = self.b.gep(self.dims_arg, [ir.Constant(I64, k)], inbounds=True, source_etype=I64)
            self._dims[sym] = self.b.load(p, name=f"dim_{sym}", align=8, typ=I64)

    def math_table(self):
        return math_cpu.MATH

    def make_function(self) -> ir.Function:
        # kernel(buffers..., dims, lo, hi): [lo, hi) is this call's share of the outermost
        # (parallel) loop; `task` unpacks a pointer array for the thread pool.
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * len(self.roots) + [PTR, I64, I64])
        fn = ir.Function(self.module, fnty, self.kernel.name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("nounwind")
        self.lo, self.hi = fn.args[-2:]
        return fn

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

    def parallel_nest(self, sizes: list[Size], body, name="i", quantum: int = 1):
        """Nested loops whose outermost one is split between threads (this call runs
        [lo, hi) of it); `quantum` keeps chunk bounds at multiples (vector alignment)."""
        if not sizes:
            return body([], [])
        self.parallel = (sizes[0], quantum)
        return self.loop(self.hi, [], lambda i, c: self.nest(
            [self.size(s) for s in sizes[1:]], c, body, (i,), name),
            name=f"{name}0", start=self.lo)

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

    def leaf(self, value: int, strides, coords, axis_of) -> Val:
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

    # ---------------------------------------------------------------- elementwise evaluation
    def evaluate(self, n: int, memo: dict, load) -> Val:
        """The value of in-kernel node n; `load(node, k)` reads an input from outside."""
        if n in memo:
            return memo[n]
        node = self.graph[n]
        op = OPS[node.op]
        args = [self.evaluate(i, memo, load) if i in self.members else load(n, k)
                for k, i in enumerate(node.inputs)]
        if n in self._reciprocals:
            out = self.e.mul(args[0], self._reciprocals[n])
        elif op.kind == ELEMENTWISE:
            out = op.scalar(self.e, *args, **node.attrs)
        elif op.kind == LAYOUT:
            out = args[0]  # the read already used the permuted / broadcast address
        else:
            raise AssertionError(f"{node.op} cannot be evaluated inside a loop body")
        assert out.dtype == node.dtype, f"{node.op}: emitted {out.dtype}, declared {node.dtype}"
        memo[n] = out
        return out

    def store(self, n: int, strides, coords, val: Val):
        self.e.store(val, self.address(Access(n, ()), strides, coords))

    @property
    def members(self):
        return self._members

    # ---------------------------------------------------------------- kernels
    def build(self):
        self._members = set(self.kernel.nodes)
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

    def map_layout(self):
        """(reads, outputs, loop sizes, loop strides per access, flat strides) of a map
        kernel: its space collapsed (lower.collapse); `flat` turns loop coordinates into the
        element's index in the whole space."""
        g, k = self.graph, self.kernel
        accesses, outs = self.accesses()
        pinned = {s for key, acc in accesses.items()
                  if OPS[g[self.plan.roots[acc.value]].op].source == "iota"
                  for s, st in enumerate(acc.strides) if st != 0}
        sizes, strides, axis_of = collapse(k.space, [*accesses.values(), *outs.values()], pinned)
        flat = [numel([k.space[a] for a in range(len(k.space)) if axis_of[a] > li]) for li in
                range(len(sizes))] if k.space else []
        return accesses, outs, sizes, strides, flat

    def build_map(self):
        g, k = self.graph, self.kernel
        accesses, outs, sizes, strides, flat = self.map_layout()

        def body(coords, carried):
            memo: dict = {}
            load = lambda n, i: self.leaf(g[n].inputs[i], strides[accesses[(n, i)]],  # noqa
                                          coords, None)
            self.e.element_index = lambda: self.offset(flat, coords)  # noqa: B023
            for n in k.outputs:
                self.store(n, strides[outs[n]], coords, self.evaluate(n, memo, load))
            return []

        self.work = size_mul(numel(k.space), len(k.nodes))
        self.parallel_nest(list(sizes), body, quantum=64 if len(sizes) == 1 else 1)

    # ---------------------------------------------------------------- rows (shared with ptx.py)
    def row_layout(self) -> "RowLayout":
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

    def row_loader(self, rl: "RowLayout", coords):
        g = self.graph
        return lambda n, i: self.leaf(g[n].inputs[i], rl.accesses[(n, i)].strides, coords, None)

    def ready_rows(self, rl: "RowLayout", row_memo: dict, load) -> None:
        """Evaluates the row values whose reductions are all known."""
        for n in rl.row_nodes:
            if n not in row_memo and all(
                    d in row_memo for d in self._reduction_deps(n, rl.reductions)):
                self.evaluate(n, row_memo, load)

    def row_element(self, rl: "RowLayout", coords, row_memo, load, phase_reds, accs,
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
            src = g[r].inputs[0]
            x = self.evaluate(src, memo, load) if src in self._members else load(r, 0)
            new.append(OPS[g[r].op].combine(self.e, acc, x))
        if last_phase and rl.cached:
            value, out = rl.cached
            self.store(out, rl.outs[out].strides, coords, memo[value])
        if with_stores:
            for n in rl.elem_outs:
                self.store(n, rl.outs[n].strides, coords, self.evaluate(n, memo, load))
        return new

    def row_inits(self, phase_reds) -> list:
        g = self.graph
        return [self.e.const(OPS[g[r].op].identity(g[r].dtype), g[r].dtype) for r in phase_reds]

    def set_reciprocals(self, row_memo) -> None:
        """x / (row value): one division per row, then multiplications."""
        g, k = self.graph, self.kernel
        self._reciprocals = {
            n: self.e.div(self.e.const(1, g[n].dtype), row_memo[g[n].inputs[1]])
            for n in k.nodes if OPS[g[n].op].divides and is_elem(g, k, n)
            and g[n].inputs[1] in row_memo and g[n].dtype.startswith("float")}

    def build_rows(self):
        g, k = self.graph, self.kernel
        rl = self.row_layout()
        if self.column_sums and rl.red == list(range(len(rl.red))) and len(rl.kept) == 1 and \
                not rl.row_nodes and set(rl.depth.values()) == {1} and \
                set(rl.reductions) <= set(k.outputs) and \
                not any(self._reduction_deps(n, rl.reductions) for n in rl.elem_outs):
            return self._build_column_sums(rl.accesses, rl.outs, rl.reductions, rl.elem_outs)

        def row_body(kc, carried):
            coords = [None] * rl.rank
            for a, c in zip(rl.kept, kc):
                coords[a] = c
            row_memo: dict = {}
            load = self.row_loader(rl, coords)

            def inner(phase_reds, with_stores, last_phase=False):
                def body(rc, accs):
                    for a, c in zip(rl.red, rc):
                        coords[a] = c
                    return self.row_element(rl, coords, row_memo, load, phase_reds, accs,
                                            with_stores, last_phase)

                result = self.nest([self.size(k.space[a]) for a in rl.red],
                                   self.row_inits(phase_reds), body, name="r")
                for a in rl.red:
                    coords[a] = None
                return result

            self.ready_rows(rl, row_memo, load)
            for d in rl.depths:
                phase = [r for r in rl.reductions if rl.depth[r] == d]
                for r, v in zip(phase, inner(phase, False, d == rl.depths[-1])):
                    row_memo[r] = v
                self.ready_rows(rl, row_memo, load)
            if rl.elem_outs:
                self.set_reciprocals(row_memo)
                inner([], True)
                self._reciprocals = {}
            for n in k.outputs:
                if not is_elem(g, k, n):
                    self.store(n, rl.outs[n].strides, coords, row_memo[n])
            return []

        self.work = size_mul(numel(k.space), len(k.nodes))
        self.parallel_nest([k.space[a] for a in rl.kept], row_body, name="row")

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
            if depth[r] != last or value not in self._members or not is_elem(g, k, value):
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
            if m in out or m in reductions or m not in self._members:
                continue
            out.add(m)
            stack.extend(self.graph[m].inputs)
        return out

    def _costly(self, n: int, reductions) -> bool:
        return any(OPS[self.graph[m].op].costly
                   for m in self._elem_ancestors(n, reductions))

    def _build_column_sums(self, accesses, outs, reductions, elem_outs):
        """Reductions over the leading axes (e.g. a bias gradient: sums over the batch).
        The kept (last) axis is innermost so loads and accumulators are contiguous vectors:
        the sums accumulate in their output arrays, columns split between threads."""
        g, k = self.graph, self.kernel
        rank = len(k.space)
        space_strides = contiguous_strides(k.space)
        kept_size = k.space[-1]
        self.parallel = (kept_size, 64)
        self.work = size_mul(numel(k.space), len(k.nodes))
        coords: list = [None] * rank

        def init(c, _):
            coords[-1] = c
            for r in reductions:
                ident = self.e.const(OPS[g[r].op].identity(g[r].dtype), g[r].dtype)
                self.store(r, outs[r].strides, coords, ident)
            return []
        self.loop(self.hi, [], init, name="init", start=self.lo)

        def load(n, i):
            return self.leaf(g[n].inputs[i], accesses[(n, i)].strides, coords, None)

        def body(rc, _):
            for a, c in enumerate(rc):
                coords[a] = c

            def column(c, __):
                coords[-1] = c
                memo: dict = {}
                self.e.element_index = lambda: self.offset(space_strides, coords)
                for r in reductions:
                    src = g[r].inputs[0]
                    x = self.evaluate(src, memo, load) if src in self._members else load(r, 0)
                    ptr = self.address(Access(r, ()), outs[r].strides, coords)
                    acc = self.e.load(ptr, g[r].dtype)
                    self.e.store(OPS[g[r].op].combine(self.e, acc, x), ptr)
                for n in elem_outs:
                    self.store(n, outs[n].strides, coords, self.evaluate(n, memo, load))
                return []
            self.loop(self.hi, [], column, name="col", start=self.lo)
            return []
        self.nest([self.size(d) for d in k.space[:-1]], [], body, name="r")

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
            stack.extend(i for i in self.graph[m].inputs if i in self._members)
        return out

    def _reduction_depths(self, reductions) -> dict[int, int]:
        depth: dict[int, int] = {}
        for r in reductions:  # topological order
            deps = self._reduction_deps(r, reductions)
            depth[r] = 1 + max((depth[d] for d in deps), default=0)
        return depth

    def build_matmul(self):
        g, k = self.graph, self.kernel
        c_id = next(n for n in k.nodes if OPS[g[n].op].kind == MATMUL)
        if g[c_id].dtype in ("float32", "float64"):
            from .gemm import GemmBuilder
            GemmBuilder(self, self.vector_bits).build()
        else:
            self._build_matmul_loops(c_id)

    def _build_matmul_loops(self, c_id: int):
        """Integer matmul: C[..., m, n] = sum_k A[..., m, k] B[..., k, n]; the n loop
        vectorizes (operands read from memory, no epilogue)."""
        g = self.graph
        node = g[c_id]
        a_id, b_id = node.inputs
        dtype = node.dtype
        shape_c = node.shape
        batch = len(shape_c) - 2
        M, N = shape_c[-2], shape_c[-1]
        K = g[a_id].shape[-1]

        def batch_strides(v):
            shape = g[v].shape
            cs = [numel(shape[i + 1:]) for i in range(len(shape))]
            off = batch - (len(shape) - 2)
            out = [0] * batch
            for j in range(len(shape) - 2):
                if not (shape[j] == 1 and shape_c[j + off] != 1):
                    out[j + off] = cs[j]
            return out

        sa, sb, sc = batch_strides(a_id), batch_strides(b_id), batch_strides(c_id)
        zero = self.e.const(0, dtype)

        def body(coords, carried):
            *bc, m = coords
            if True:
                def clear(n, __):
                    self.e.store(zero, self._at(c_id, sc, bc, [(m, N), (n, 1)]))
                    return []
                self.loop(self.size(N), [], clear, name="n0")

                def kstep(kk, __):
                    a = self.e.load(self._at(a_id, sa, bc, [(m, K), (kk, 1)]), dtype)

                    def inner(n, ___):
                        ptr = self._at(c_id, sc, bc, [(m, N), (n, 1)])
                        bv = self.e.load(self._at(b_id, sb, bc, [(kk, N), (n, 1)]), dtype)
                        prod = self.e.mul(a, bv)
                        cv = self.e.load(ptr, dtype)
                        if prod.is_float:
                            s = Val(self.b.fadd(cv.v, prod.v, flags=("contract",)), dtype)
                        else:
                            s = self.e.add(cv, prod)
                        self.e.store(s, ptr)
                        return []
                    self.loop(self.size(N), [], inner, name="n")
                    return []
                self.loop(self.size(K), [], kstep, name="k")
            return []

        self.work = numel([*shape_c, K])
        self.parallel_nest([*shape_c[:batch], M], body, name="m")

    def _at(self, value, batch_strides, batch_coords, terms):
        """Pointer into `value` at batch coords plus (index, stride) terms."""
        coords = list(batch_coords) + [t[0] for t in terms]
        strides = list(batch_strides) + [t[1] for t in terms]
        return self.address(Access(value, ()), strides, coords)

    def build_concat(self):
        g, k = self.graph, self.kernel
        (out_id,) = k.nodes
        node = g[out_id]
        axis = node.attrs["axis"]
        outer = numel(node.shape[:axis])
        inner = numel(node.shape[axis + 1:])
        total = node.shape[axis]
        offset = 0
        for v in node.inputs:
            width = g[v].shape[axis]
            if is_inline(g, v):
                raise AssertionError("simplify materializes inline values before concatenate")

            def body(coords, _, v=v, width=width, offset=offset):
                o, j = coords
                val = self.e.load(self.address(Access(v, ()), [numel([width, inner]), 1],
                                               [o, j]), node.dtype)
                dst = self.address(Access(out_id, ()), [numel([total, inner]), 1],
                                   [o, self.b.add(j, self.size(numel([offset, inner])))])
                self.e.store(val, dst)
                return []
            self.nest([self.size(outer), self.size(numel([width, inner]))], [], body, name="c")
            offset += width


    def build_slice(self):
        """out[i] = x[i + starts]: a nested copy loop over the output."""
        g, k = self.graph, self.kernel
        (out_id,) = k.nodes
        node = g[out_id]
        (x_id,) = node.inputs
        starts = node.attrs["starts"]
        x_strides = [numel(g[x_id].shape[i + 1:]) for i in range(len(node.shape))]
        out_strides = [numel(node.shape[i + 1:]) for i in range(len(node.shape))]

        def body(coords, _):
            src = [c if a == 0 else self.b.add(c, ir.Constant(I64, a))
                   for c, a in zip(coords, starts)]
            val = self.e.load(self.address(Access(x_id, ()), x_strides, src), node.dtype)
            self.e.store(val, self.address(Access(out_id, ()), out_strides, coords))
            return []
        self.work = numel(node.shape)
        self.parallel_nest(list(node.shape), body, name="s")


def build_module(graph: Graph, plan: Plan, symbols: tuple[str, ...], triple: str,
                 data_layout: str, interface: str, vector_bits: int = 128) -> ir.Module:
    """`interface`: the signature text the runtime checks the library against;
    `vector_bits`: the target's widest vectors (sizes the matmul register tiles)."""
    module = ir.Module(name=graph.name)
    module.triple = triple
    module.data_layout = data_layout
    text = bytearray(interface.encode() + b"\0")
    blob = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(8), len(text)), "graphc_interface_text")
    blob.initializer = ir.Constant(ir.ArrayType(ir.IntType(8), len(text)), text)
    blob.global_constant = True
    blob.linkage = "internal"
    get = ir.Function(module, ir.FunctionType(PTR, []), "graphc_interface")
    ir.IRBuilder(get.append_basic_block()).ret(blob)
    kernels = [KernelBuilder(module, graph, plan, k, symbols, vector_bits) for k in plan.kernels]
    for kb in kernels:
        kb.build()

    abi = ir.Function(module, ir.FunctionType(I32, []), "graphc_abi_version")
    ir.IRBuilder(abi.append_basic_block()).ret(ir.Constant(I32, ABI_VERSION))

    ws = ir.Function(module, ir.FunctionType(I64, [PTR]), "graphc_workspace_size")
    b = ir.IRBuilder(ws.append_basic_block("entry"))
    offsets = _slot_offsets(b, plan, symbols, ws.args[0])
    b.ret(offsets[-1])

    run = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR]), "graphc_run")
    bufs, workspace, dims = run.args
    bufs.name, workspace.name, dims.name = "buffers", "workspace", "dims"
    b = ir.IRBuilder(run.append_basic_block("entry"))
    offsets = _slot_offsets(b, plan, symbols, dims)
    parallel_for = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, I64]),
                               "graphc_parallel_for")
    take_error = ir.Function(module, ir.FunctionType(I32, []), "graphc_take_error")
    size = _size_of(b, symbols, dims)
    n_in, n_const = len(graph.inputs), len(plan.constants)
    for kb in kernels:
        ctx = b.alloca(PTR, size=len(kb.roots) + 1, name=f"{kb.fn.name}.args")
        for k, root in enumerate(kb.roots + [None]):
            if root is None:
                arg = dims
            elif plan.location[root].space == "slot":
                arg = b.gep(workspace, [offsets[plan.location[root].index]], inbounds=True,
                            source_etype=ir.IntType(8))
            else:
                loc = plan.location[root]
                index = loc.index + {"input": 0, "const": n_in, "output": n_in + n_const}[loc.space]
                p = b.gep(bufs, [ir.Constant(I64, index)], inbounds=True, source_etype=PTR)
                arg = b.load(p, align=8, typ=PTR)
            b.store(arg, b.gep(ctx, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR))
        trips, quantum = kb.parallel
        b.call(parallel_for, [_task(module, kb), ctx, size(trips), ir.Constant(I64, quantum),
                              size(kb.work)])
    b.ret(b.call(take_error, []))
    return module


def _task(module: ir.Module, kb: "KernelBuilder") -> ir.Function:
    """task(void **args, lo, hi): the thread pool's view of a kernel."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]), f"{kb.fn.name}.task")
    fn.linkage = "internal"
    args, lo, hi = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ptrs = [b.load(b.gep(args, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR),
                   align=8, typ=PTR) for k in range(len(kb.roots) + 1)]
    b.call(kb.fn, ptrs + [lo, hi])
    b.ret_void()
    return fn


def _size_of(b: ir.IRBuilder, symbols, dims):
    """A function Size -> i64 value, loading each symbol from `dims` once."""
    cache: dict[str, ir.Value] = {}

    def size(s: Size) -> ir.Value:
        if not isinstance(s, Dim):
            return ir.Constant(I64, int(s))
        v = ir.Constant(I64, s.coef)
        for sym in s.syms:
            if sym not in cache:
                p = b.gep(dims, [ir.Constant(I64, symbols.index(sym))], source_etype=I64)
                cache[sym] = b.load(p, align=8, typ=I64)
            v = b.mul(v, cache[sym])
        return v
    return size


def _slot_offsets(b: ir.IRBuilder, plan: Plan, symbols, dims) -> list:
    """Offsets of each workspace slot, then the total size; slots are 64-byte aligned."""
    size = _size_of(b, symbols, dims)
    offsets = [ir.Constant(I64, 0)]
    for sizes in plan.slots:
        need = size(sizes[0])
        for s in sizes[1:]:
            other = size(s)
            need = b.select(b.icmp_signed(">", other, need), other, need)
        aligned = b.and_(b.add(need, ir.Constant(I64, WORKSPACE_ALIGN - 1)),
                         ir.Constant(I64, -WORKSPACE_ALIGN))
        offsets.append(b.add(offsets[-1], aligned))
    return offsets


__all__ = ["build_module", "KernelBuilder", "ITEMSIZE", "F32", "F64", "REG"]
