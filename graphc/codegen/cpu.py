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
between threads. Matmul kernels are built by gemm.py, convolutions with constant weights by
conv_blocked.py.
"""
from __future__ import annotations

import llvmlite.ir as ir
from graphc_runtime.abi import ABI_VERSION, BUFFER_ALIGN as WORKSPACE_ALIGN

from ..errors import CompileError
from ..ir.graph import Graph
from ..ir.types import ITEMSIZE, Dim, Size, numel, size_mul
from ..ops.registry import GATHER, MATMUL, OPS, REDUCE
from ..passes.fusion import input_map
from ..passes.plan import Location, Plan, storage_root
from . import math_cpu
from .threads import SERIAL_WORK
from .builder import PTR, KernelBuilder, Target
from .conv_blocked import build_blocked_conv
from .emitter import I32, I64, MEM, REG, Emitter, Val
from .lower import Access, contiguous_strides, is_inline



# Elements summed into fresh accumulators before the compensated addition to the total
# (blocked_loop): long enough that the per-block work (combining the vector accumulators,
# the compensated addition, the loop's setup) costs ~1% (1024: ~10% on one thread for a
# 2**24 sum), short enough that each of the vector loop's lanes (4 accumulators of 8 or
# 16 floats) adds only 64-128 values in sequence.
ROW_BLOCK = 4096
# Column sums (_build_column_sums): columns per tile (a thread's share of a bias gradient's
# columns, or part of it: each row's part of the tile is one contiguous read, and tiles of
# 512 columns made one thread's 8192x1024 sum 40% slower) and rows summed into the block
# array before the compensated addition to the outputs. The tile's two stack arrays take
# 32 KB (float32) or 64 KB (float64).
COLUMN_TILE = 4096
# Reductions over at most this many elements, with kept axes inside them (pooling windows),
# are written out in full (build_rows)
SMALL_WINDOW = 16
COLUMN_BLOCK = 128


def cpu_target(vector_bits: int = 128, vector_regs: int | None = None) -> Target:
    """A CPU: a thread pool splits each kernel's outermost loop; `vector_bits`: its widest
    SIMD registers, `vector_regs` how many there are (default: x86's, 32 with AVX-512)."""
    return Target("cpu", threading="pool", vector_bits=vector_bits,
                  math=math_cpu.MATH_AVX512 if vector_bits == 512 else math_cpu.MATH,
                  vector_regs=vector_regs or x86_vector_regs(vector_bits))


def x86_vector_regs(vector_bits: int) -> int:
    return 32 if vector_bits >= 512 else 16


class CpuKernelBuilder(KernelBuilder):
    """A CPU kernel: kernel(buffers..., dims, lo, hi) runs [lo, hi) of its outermost loop,
    one scalar element per iteration for LLVM's loop vectorizer (matmul: gemm.py)."""

    def make_function(self) -> ir.Function:
        # kernel(buffers..., dims, lo, hi): [lo, hi) is this call's share of the outermost
        # (parallel) loop; `task` unpacks a pointer array for the thread pool.
        assert self.target.threading == "pool", f"a CPU kernel for {self.target}"
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * len(self.roots) + [PTR, I64, I64])
        fn = ir.Function(self.module, fnty, self.kernel.name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("nounwind")
        self.lo, self.hi = fn.args[-2:]
        return fn

    def parallel_nest(self, sizes: list[Size], body, name="i", quantum: int = 1):
        """Nested loops whose outermost one is split between threads (this call runs
        [lo, hi) of it); `quantum` keeps chunk bounds at multiples (vector alignment)."""
        if not sizes:
            return body([], [])
        self.parallel = (sizes[0], quantum)
        return self.loop(self.hi, [], lambda i, c: self.nest(
            [self.size(s) for s in sizes[1:]], c, body, (i,), name),
            name=f"{name}0", start=self.lo)

    # ---------------------------------------------------------------- kernels
    def build_map(self):
        """A loop nest over the map's collapsed space, one element per innermost iteration
        (LLVM vectorizes it); threads split the outermost loop at multiples of 64 when it
        is the only one."""
        accesses, outs, sizes, strides, flat = self.map_layout()
        read_strides = {key: strides[acc] for key, acc in accesses.items()}

        def body(coords, carried):
            read = self.reader(read_strides, coords)
            for n, value in self.map_values(coords, flat, read):
                self.store(n, strides[outs[n]], coords, value)
            return []

        self.work = self.elementwise_work()
        self.parallel_nest(list(sizes), body, quantum=64 if len(sizes) == 1 else 1)

    def build_rows(self):
        """Rows split between threads, each row's passes a loop nest over its reduced axes
        (or, for sums over the leading axes, column-wise: _build_column_sums)."""
        k = self.kernel
        rl = self.row_layout()
        if self._column_sums(rl):
            return self._build_column_sums(rl.accesses, rl.outs, rl.reductions, rl.elem_outs)
        pool = self._pool_window(rl)
        if pool is not None:
            return self._build_pool(pool)

        def row_body(kc, carried):
            coords = [None] * rl.rank
            for a, c in zip(rl.kept, kc):
                coords[a] = c

            def row_pass(phase_reds, element):
                sizes = [self.size(k.space[a]) for a in rl.red]
                if not sizes or not any(self.compensated(r) for r in phase_reds):
                    def body(rc, accs):
                        for a, c in zip(rl.red, rc):
                            coords[a] = c
                        return element(accs)
                    if self._small_window(rl):
                        result = self.unrolled_nest(sizes, self.row_inits(phase_reds), body)
                    else:
                        result = self.nest(sizes, self.row_inits(phase_reds), body, name="r")
                else:
                    result = self.block_results(phase_reds, self.nest(
                        sizes[:-1], self.block_totals(phase_reds),
                        lambda rc, totals: self._blocked_row(rl, coords, rc, sizes[-1],
                                                             totals, phase_reds, element),
                        name="r"))
                for a in rl.red:
                    coords[a] = None
                return result

            row_memo = self.emit_row(rl, coords, row_pass)
            for n in self.row_outputs():
                self.store(n, rl.outs[n].strides, coords, row_memo[n])
            return []

        self.work = self.elementwise_work()
        self.parallel_nest([k.space[a] for a in rl.kept], row_body, name="row")

    def _small_window(self, rl) -> bool:
        """A few reduced elements (a pooling window) followed by kept axes: the reduction is
        written out in full, so the innermost kept loop is a plain loop the vectorizer takes
        (a loop over the window inside it would keep every output scalar)."""
        sizes = [self.kernel.space[a] for a in rl.red]
        return bool(rl.kept) and max(rl.kept) > max(rl.red) and \
            all(isinstance(s, int) for s in sizes) and numel(sizes) <= SMALL_WINDOW

    def _pool_window(self, rl):
        """The window node when the kernel is a pooling that _build_pool vectorizes: a 2-d
        window (unit input spacing, column stride 1 or 2, not channels-last) of a float input
        read from memory, reductions over its entries, elementwise ops on entries (shaped as
        the window) and on reduced rows (shaped as the result, keepdims or not) whose rules run
        on vectors (OpDef.vector_rule), and nothing else read from memory. Else None."""
        g, k = self.graph, self.kernel
        windows = [n for n in k.nodes if OPS[g[n].op].sliding_window]
        if len(windows) != 1 or not rl.reductions:
            return None
        (w,) = windows
        at, shape = g[w].attrs, g[w].shape
        dtype = g[w].dtype
        if g[w].inputs[0] in k.nodes or at.get("channels_last") or len(at["kernel"]) != 2 or \
                tuple(at["lhs_dilation"]) != (1, 1) or at["stride"][1] not in (1, 2) or \
                dtype not in ("float32", "float64") or tuple(k.reduce_axes) != (2, 3) or \
                tuple(k.space) != tuple(shape) or \
                self.target.vector_bits // (8 * ITEMSIZE[dtype]) < 2:
            return None
        entry = tuple(shape)
        row = entry[:2] + entry[4:]
        keep = entry[:2] + (1, 1) + entry[4:]
        for n in k.nodes:
            node = g[n]
            if n == w:
                continue
            if OPS[node.op].kind == REDUCE:
                ok = tuple(node.attrs["axis"]) == (2, 3) \
                    and node.inputs[0] in k.nodes and tuple(g[node.inputs[0]].shape) == entry
            elif OPS[node.op].vector_rule:
                # entry-shaped ops read entries and rows (kept dims); row-shaped ops rows
                allowed = (entry, keep) if tuple(node.shape) == entry else (row, keep)
                ok = tuple(node.shape) in (entry, row, keep) and all(
                    (i in k.nodes and tuple(g[i].shape) in allowed) or
                    _splat_constant(g, i) is not None for i in node.inputs)
            else:
                ok = False
            if not ok:
                return None
        return w

    def _build_pool(self, w: int):
        """Pooling, vectorized along output columns: threads split the (n, c, output row)
        rows; each vector of output columns loads each window entry once (a masked load of
        input columns, or two and a shuffle of their even lanes for column stride 2; padding
        and the row's edges masked to the window's fill), then the kernel's nodes run in
        order on vectors: entry-shaped ones once per entry, reductions folding the entries,
        row-shaped ones once. (The loop vectorizer gathers each entry instead: its loop, a row
        of output columns, is short.)"""
        g, b, k = self.graph, self.b, self.kernel
        x = g[w].inputs[0]
        at = g[w].attrs
        (KH, KW), (sh, sw), (dh, dw), (lh, lw) = (at[a] for a in ("kernel", "stride",
                                                                    "dilation", "pad_lo"))
        dtype = g[w].dtype
        N, C, _, _, OH, OW = g[w].shape
        H, W = g[x].shape[2:]
        lanes = self.target.vector_bits // (8 * ITEMSIZE[dtype])
        e = _VectorEmitter(b, self.e.math_table, lanes)
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        sz = {name: self.size(v) for name, v in
              (("C", C), ("H", H), ("W", W), ("OH", OH), ("OW", OW))}
        ivty = ir.VectorType(I64, lanes)
        mty = ir.VectorType(ir.IntType(1), lanes)
        steps = ir.Constant(ivty, list(range(lanes)))
        align = ir.Constant(I32, ITEMSIZE[dtype])
        xty = ir.VectorType(MEM[dtype], lanes)
        mload = self._intrinsic(f"llvm.masked.load.v{lanes}{_SUFFIX[dtype]}.p0", xty,
                                [PTR, I32, mty, xty])
        fill = e.const(float(at["fill"]), dtype).v
        x_ptr = self.ptr[self.plan.roots[x]]
        entry_shape = tuple(g[w].shape)
        self.work = size_mul(numel(g[w].shape), len(k.nodes))

        def in_range(start, n):      # lanes start + i with 0 <= start + i < n
            idx = b.add(e.splat(start, ivty), steps)
            return b.and_(b.icmp_signed(">=", idx, ir.Constant(ivty, None)),
                          b.icmp_signed("<", idx, e.splat(n, ivty)))

        def store(n, value: Val, offset, mask):
            mem = MEM[g[n].dtype]
            vty = ir.VectorType(mem, lanes)
            v = b.zext(value.v, vty) if g[n].dtype == "bool" else value.v
            fn = self._intrinsic(f"llvm.masked.store.v{lanes}{_SUFFIX.get(g[n].dtype, 'i8')}"
                                 f".p0", ir.VoidType(), [vty, PTR, I32, mty])
            ptr = b.gep(self.ptr[self.plan.roots[n]], [offset], source_etype=mem)
            b.call(fn, [v, ptr, ir.Constant(I32, ITEMSIZE[g[n].dtype]), mask])

        def row(coords, _):
            n, ch, oh = coords
            plane = b.add(b.mul(n, sz["C"]), ch)

            def columns(t, __):
                ow0 = b.mul(t, c(lanes))
                live = in_range(ow0, sz["OW"])
                entries = []
                for kh in range(KH):
                    ih = b.add(b.mul(oh, c(sh)), c(kh * dh - lh))
                    row_ok = e.splat(b.and_(b.icmp_signed(">=", ih, c(0)),
                                            b.icmp_signed("<", ih, sz["H"])), mty)
                    at_row = b.mul(b.add(b.mul(plane, sz["H"]), ih), sz["W"])
                    for kw in range(KW):
                        first = b.add(b.mul(ow0, c(sw)), c(kw * dw - lw))
                        parts = []
                        for u in range(sw):
                            start = b.add(first, c(u * lanes))
                            ptr = b.gep(x_ptr, [b.add(at_row, start)], source_etype=MEM[dtype])
                            mask = b.and_(in_range(start, sz["W"]), row_ok)   # (masked lanes:
                            parts.append(b.call(mload, [ptr, align, mask, fill]))  # no access)
                        entries.append(Val(parts[0] if sw == 1 else b.shuffle_vector(
                            parts[0], parts[1], ir.Constant(ir.VectorType(I32, lanes),
                                                            list(range(0, 2 * lanes, 2)))),
                            dtype))
                per_entry = {w: entries}      # node -> its vector at each entry
                rows: dict[int, Val] = {}     # node -> its vector for the row
                for m in k.nodes:
                    node = g[m]
                    if m == w:
                        continue
                    if OPS[node.op].kind == REDUCE:
                        acc = e.const(OPS[node.op].identity(node.dtype), node.dtype)
                        for v in per_entry[node.inputs[0]]:
                            acc = OPS[node.op].combine(e, acc, v)
                        rows[m] = acc
                        continue
                    arg = [(per_entry.get(i), rows.get(i), i) for i in node.inputs]
                    if tuple(node.shape) == entry_shape:
                        per_entry[m] = [OPS[node.op].scalar(e, *[
                            ev[j] if ev is not None else rv if rv is not None else
                            e.const(_splat_constant(g, i), g[i].dtype) for ev, rv, i in arg], **node.attrs)
                            for j in range(KH * KW)]
                    else:
                        rows[m] = OPS[node.op].scalar(e, *[
                            rv if rv is not None else e.const(_splat_constant(g, i), g[i].dtype)
                            for _, rv, i in arg],
                            **node.attrs)
                row_at = b.add(b.mul(b.add(b.mul(plane, sz["OH"]), oh), sz["OW"]), ow0)
                for o in k.outputs:
                    if o in rows:
                        store(o, rows[o], row_at, live)
                        continue
                    for j, (kh, kw) in enumerate((a, bb) for a in range(KH) for bb in range(KW)):
                        entry_at = b.add(b.mul(b.add(b.mul(b.add(b.mul(b.add(
                            b.mul(plane, c(KH)), c(kh)), c(KW)), c(kw)), sz["OH"]), oh),
                            sz["OW"]), ow0)
                        store(o, per_entry[o][j], entry_at, live)
                return []
            self.loop(b.sdiv(b.add(sz["OW"], c(lanes - 1)), c(lanes)), [], columns, name="ow")
            return []
        self.parallel_nest([N, C, OH], row, name="row")

    def _blocked_row(self, rl, coords, outer, n, totals, phase_reds, element):
        """The innermost reduced axis (its outer ones at `outer`) in blocks (blocked_loop)."""
        for a, c in zip(rl.red, outer):
            coords[a] = c

        def body(j, accs):
            coords[rl.red[-1]] = j
            return element(accs)
        return self.blocked_loop(n, totals, phase_reds, body, ROW_BLOCK)

    def _column_sums(self, rl) -> bool:
        """Reductions over every axis but the last (a bias gradient), all in one phase and
        all outputs, nothing in the kernel computed from them: these loop column-wise."""
        return rl.red == list(range(len(rl.red))) and len(rl.kept) == 1 and \
            not rl.row_nodes and set(rl.depth.values()) == {1} and \
            set(rl.reductions) <= set(self.kernel.outputs) and \
            not any(self._reduction_deps(n, rl.reductions) for n in rl.elem_outs)

    def _build_column_sums(self, accesses, outs, reductions, elem_outs):
        """Reductions over the leading axes (e.g. a bias gradient: sums over the batch).
        The kept (last) axis is innermost so loads and accumulators are contiguous vectors,
        columns split between threads and taken COLUMN_TILE at a time. The sums accumulate
        in their output arrays; float sums accumulate COLUMN_BLOCK rows at a time in a
        block array, whose values are then added to the outputs with compensation (kept in
        a second array): the rows' rounding errors do not add up over a long batch."""
        g, k, b = self.graph, self.kernel, self.b
        rank = len(k.space)
        space_strides = contiguous_strides(k.space)
        self.parallel = (k.space[-1], 64)
        self.work = self.elementwise_work()
        coords: list = [None] * rank
        read = self.reader({key: acc.strides for key, acc in accesses.items()}, coords)
        blocked = [r for r in reductions if self.compensated(r)]
        block = {r: self._scratch(g[r].dtype, COLUMN_TILE, f"block{r}") for r in blocked}
        lost = {r: self._scratch(g[r].dtype, COLUMN_TILE, f"lost{r}") for r in blocked}
        tile = ir.Constant(I64, COLUMN_TILE)

        def out_ptr(r):
            return self.address(Access(r, ()), outs[r].strides, coords)

        def at(array, r, i):
            return b.gep(array[r], [i], inbounds=True, source_etype=MEM[g[r].dtype])

        def per_tile(first, _):
            stop = b.add(first, tile, flags=("nsw",))
            stop = b.select(b.icmp_signed("<", stop, self.hi), stop, self.hi, name="tile.stop")

            def columns(body, name):
                """body(i) at each column of the tile (coords[-1] set, i: index in the tile)."""
                def column(c, __):
                    coords[-1] = c
                    body(b.sub(c, first))
                    return []
                self.loop(stop, [], column, name=name, start=first)

            def init(i):
                for r in reductions:
                    ident = self.e.const(OPS[g[r].op].identity(g[r].dtype), g[r].dtype)
                    self.e.store(ident, out_ptr(r))
                for r in blocked:
                    self.e.store(self.e.const(0, g[r].dtype), at(block, r, i))
                    self.e.store(self.e.const(0, g[r].dtype), at(lost, r, i))

            def add_block(i):
                for r in blocked:
                    x = self.e.load(at(block, r, i), g[r].dtype)
                    total, error = self.neumaier(self.e.load(out_ptr(r), g[r].dtype),
                                                 self.e.load(at(lost, r, i), g[r].dtype), x)
                    self.e.store(total, out_ptr(r))
                    self.e.store(error, at(lost, r, i))
                    self.e.store(self.e.const(0, g[r].dtype), at(block, r, i))

            def finish(i):
                for r in blocked:
                    total = self.e.load(out_ptr(r), g[r].dtype)
                    error = self.e.load(at(lost, r, i), g[r].dtype)
                    self.e.store(self.block_results([r], [total, error])[0], out_ptr(r))

            def element(i):
                memo: dict = {}
                self.e.element_index = lambda: self.offset(space_strides, coords)
                for r in reductions:
                    x = self.input_value(r, 0, memo, read)
                    ptr = at(block, r, i) if r in block else out_ptr(r)
                    acc = self.e.load(ptr, g[r].dtype)
                    self.e.store(OPS[g[r].op].combine(self.e, acc, x), ptr)
                for n in elem_outs:
                    self.store(n, outs[n].strides, coords, self.evaluate(n, memo, read))

            def row(rc, carried):
                for a, c in enumerate(rc):
                    coords[a] = c
                columns(element, "col")
                count = b.add(carried[0].v, ir.Constant(I64, 1), name="rows")
                full = b.icmp_signed("==", count, ir.Constant(I64, COLUMN_BLOCK))
                if blocked:
                    with b.if_then(full):
                        columns(add_block, "add")
                return [Val(b.select(full, ir.Constant(I64, 0), count), "int64")]

            columns(init, "init")
            self.nest([self.size(d) for d in k.space[:-1]], [self.e.const(0, "int64")], row,
                      name="r")
            if blocked:
                columns(add_block, "add")
                columns(finish, "sum")
            return []
        self.loop(self.hi, [], per_tile, name="tile", start=self.lo, step=tile)

    def build_conv(self):
        """The channel-blocked kernel where its weights were packed at compile time, else
        the column-vector one (KernelBuilder.build_conv)."""
        if not build_blocked_conv(self):
            super().build_conv()

    def build_matmul(self):
        g, k = self.graph, self.kernel
        c_id = next(n for n in k.nodes if OPS[g[n].op].kind == MATMUL)
        if g[c_id].dtype in ("float32", "float64"):
            from .gemm import GemmBuilder
            GemmBuilder(self).build()
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
                    self.e.store(self.e.add(self.e.load(ptr, dtype), prod), ptr)
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


def build_module(graph: Graph, plan: Plan, symbols: tuple[str, ...], triple: str,
                 data_layout: str, interface: str, vector_bits: int = 128,
                 instrument: bool = False, vector_regs: int | None = None) -> ir.Module:
    """`interface`: the signature text the runtime checks the library against;
    `vector_bits`: the target's widest vectors (sizes the matmul register tiles);
    `instrument`: time every kernel into counters (profile_slots gives their order)."""
    module = ir.Module(name=graph.name)
    module.triple = triple
    module.data_layout = data_layout
    text = bytearray(interface.encode() + b"\0")
    text_type = ir.ArrayType(ir.IntType(8), len(text))
    blob = ir.GlobalVariable(module, text_type, "graphc_interface_text")
    blob.initializer = ir.Constant(text_type, text)
    blob.global_constant = True
    blob.linkage = "internal"
    get = ir.Function(module, ir.FunctionType(PTR, []), "graphc_interface")
    ir.IRBuilder(get.append_basic_block()).ret(blob)
    target = cpu_target(vector_bits, vector_regs)
    kernels: dict[int, CpuKernelBuilder] = {}       # outer kernel index -> its builder
    bodies: dict[int, list[CpuKernelBuilder]] = {}  # scan kernel index -> its body's builders
    banded: dict[int, Size] = {}   # scan kernel index -> its batch, rows independent (see _band)
    for t, k in enumerate(plan.kernels):
        if t in plan.loops:
            loop = plan.loops[t]
            missing = set(graph[k.nodes[0]].attrs["size_names"]) - set(symbols)
            if missing:
                raise CompileError(f"{graph.name}: the body of {k.name} uses the sizes "
                                   f"{', '.join(sorted(missing))}, which no input has")
            bodies[t] = [CpuKernelBuilder(module, loop.graph, loop.plan, bk, symbols, target)
                         for bk in loop.plan.kernels]
            node = graph[k.nodes[0]]
            batch = row_separable(loop.graph, loop.plan.kernels, node.attrs["num_carry"],
                                  node.attrs["num_xs"])
            if batch is not None:
                banded[t] = batch
                for kb in bodies[t]:
                    kb.split_rows = True
        else:
            kernels[t] = CpuKernelBuilder(module, graph, plan, k, symbols, target)
    _build_deduplicated(module, list(kernels.values()) +
                        [kb for body in bodies.values() for kb in body])
    bands = {t: band for t, batch in banded.items()
             if (band := _band(bodies[t], batch)) is not None}

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
    size = _size_of(b, symbols, dims)
    for sym in symbols:  # loaded in the entry block: loops below use them
        size(Dim((sym,)))
    entry = _Entry(module, b, bufs, workspace, dims, offsets, size, len(graph.inputs),
                   len(plan.constants))
    entry.plan, entry.symbols = plan, symbols
    slots = profile_slots(plan)
    entry.timer = _Timer(module, len(slots)) if instrument else None
    entry.slot_of = {key: k for k, key in enumerate(slots)}

    def outer(root):
        return entry.pointer(plan.location[root])

    take_error = ir.Function(module, ir.FunctionType(I32, []), "graphc_take_error")
    for t, kernel in enumerate(plan.kernels):
        if t in plan.loops:
            entry.timed((t,), lambda t=t, kernel=kernel: entry.scan(
                graph, kernel, plan.loops[t], bodies[t], lambda v: outer(plan.roots[v]),
                bands.get(t), t))
        else:
            entry.timed((t,), lambda t=t: entry.launch(kernels[t], outer))
    b.ret(b.call(take_error, []))
    return module


def profile_slots(plan: Plan) -> list[tuple]:
    """The instrumented build's counters, in order: (t,) for kernel t of the plan (a scan:
    its whole loop), each followed by (t, j) for the scan's body kernel j (summed over the
    steps; not timed when the loop runs in bands of rows, on several threads at once)."""
    out = []
    for t in range(len(plan.kernels)):
        out.append((t,))
        if t in plan.loops:
            out += [(t, j) for j in range(len(plan.loops[t].plan.kernels))]
    return out


class _Timer:
    """int64 counters in the library (graphc_profile_ns / graphc_profile_count), each
    adding up the nanoseconds of one kernel's calls (monotonic clock, read around them)."""

    def __init__(self, module: ir.Module, count: int):
        ty = ir.ArrayType(I64, max(count, 1))
        self.counters = ir.GlobalVariable(module, ty, "graphc_profile_counters")
        self.counters.initializer = ir.Constant(ty, None)
        self.counters.linkage = "internal"
        self.clock = ir.Function(module, ir.FunctionType(I64, []), "graphc_clock_ns")
        get = ir.Function(module, ir.FunctionType(PTR, []), "graphc_profile_ns")
        ir.IRBuilder(get.append_basic_block()).ret(self.counters)
        n = ir.Function(module, ir.FunctionType(I32, []), "graphc_profile_count")
        ir.IRBuilder(n.append_basic_block()).ret(ir.Constant(I32, count))

    def around(self, b: ir.IRBuilder, index: int, emit) -> None:
        start = b.call(self.clock, [])
        emit()
        took = b.sub(b.call(self.clock, []), start)
        p = self.counters.gep([ir.Constant(I32, 0), ir.Constant(I32, index)])
        b.store(b.add(b.load(p, typ=I64, align=8), took), p, align=8)


class _Entry:
    """graphc_run's body: kernel launches through the thread pool, and scan loops."""

    def __init__(self, module, b, bufs, workspace, dims, offsets, size, n_in, n_const):
        self.module, self.b, self.bufs, self.workspace, self.dims = module, b, bufs, workspace, dims
        self.offsets, self.size, self.n_in, self.n_const = offsets, size, n_in, n_const
        self.entry_block = b.block
        self.parallel_for = module.globals.get("graphc_parallel_for") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, I64]),
            "graphc_parallel_for")
        self.memcpy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])

    timer: "_Timer | None" = None
    slot_of: dict = {}

    def timed(self, key: tuple, emit) -> None:
        """emit(), between two timestamps in an instrumented build (the counter of `key`)."""
        if self.timer is None:
            emit()
        else:
            self.timer.around(self.b, self.slot_of[key], emit)

    def pointer(self, loc) -> ir.Value:
        """The address of an outer plan location."""
        b = self.b
        if loc.space == "slot":
            return self.slot(loc.index)
        index = loc.index + {"input": 0, "const": self.n_in,
                             "output": self.n_in + self.n_const}[loc.space]
        p = b.gep(self.bufs, [ir.Constant(I64, index)], inbounds=True, source_etype=PTR)
        return b.load(p, align=8, typ=PTR)

    def slot(self, index: int) -> ir.Value:
        return self.b.gep(self.workspace, [self.offsets[index]], inbounds=True,
                          source_etype=ir.IntType(8))

    def launch(self, kb: CpuKernelBuilder, pointer) -> None:
        """One kernel through graphc_parallel_for; pointer(root) gives each buffer. A kernel
        whose work is known to be below the pool's threshold is called directly (XOR's
        training step: 14 kernels, each would pay the pool's call and checks)."""
        b = self.b
        trips, quantum = kb.parallel
        if isinstance(kb.work, int) and kb.work < SERIAL_WORK:
            b.call(kb.fn, [pointer(r) for r in kb.roots] +
                   [self.dims, ir.Constant(I64, 0), self.size(trips)])
            return
        here = b.block
        b.position_at_start(self.entry_block)  # stack arrays once per call, not per step
        ctx = b.alloca(PTR, size=len(kb.roots) + 1, name=f"{kb.fn.name}.args")
        b.position_at_end(here)
        for k, root in enumerate(kb.roots + [None]):
            arg = self.dims if root is None else pointer(root)
            b.store(arg, b.gep(ctx, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR))
        b.call(self.parallel_for, [_task(self.module, kb), ctx, self.size(trips),
                                   ir.Constant(I64, quantum), self.size(kb.work)])

    def copy(self, dst, src, nbytes) -> None:
        self.b.call(self.memcpy, [dst, src, self.size(nbytes), ir.Constant(ir.IntType(1), 0)])

    def scan(self, graph: Graph, kernel, loop, builders, value_ptr, band=None,
             index: int = 0) -> None:
        """The loop of a scan kernel: per step, the body's kernels on the current carry
        buffers and the step's slices of xs and ys; the carry buffers swap every step.
        With a `band` (_band: the body treats its batch rows independently) the whole loop
        is one task of the thread pool, split by batch rows: each thread runs every step on
        its rows, with no barrier between steps."""
        b = self.b
        node = graph[kernel.nodes[0]]
        body, nc = loop.graph, node.attrs["num_carry"]
        carry_bytes = [_nbytes(body[i].type) for i in body.inputs[:nc]]
        first = [self.slot(a) for a, _ in loop.carry]
        second = [self.slot(c) for _, c in loop.carry]
        for k in range(nc):
            self.copy(first[k], value_ptr(node.inputs[k]), carry_bytes[k])
        if band is None:
            def launch(kb, pointer):   # (timed per body kernel in an instrumented build)
                self.timed((index, builders.index(kb)), lambda: self.launch(kb, pointer))
            swapped = self.steps(graph, kernel, loop, builders, value_ptr, launch)
        else:
            self.banded(graph, kernel, loop, builders, band)
            swapped = b.trunc(self.size(node.attrs["length"]), ir.IntType(1))   # odd length
        results = {graph[r].attrs["index"]: r for r in kernel.outputs}
        for k in range(nc):
            if k in results:
                final = b.select(swapped, second[k], first[k], name=f"final{k}")
                self.copy(value_ptr(results[k]), final, carry_bytes[k])

    def banded(self, graph: Graph, kernel, loop, builders, band) -> None:
        """The scan's steps as a task over batch rows (`band`: batch, per-kernel row
        factors, chunk quantum), called through graphc_parallel_for."""
        batch, factors, quantum = band
        module, plan = self.module, self.plan
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]),
                         f"{kernel.name}.rows")
        fn.linkage = "internal"
        ctx, lo, hi = fn.args
        tb = ir.IRBuilder(fn.append_basic_block("entry"))
        bufs, workspace, dims = [tb.load(tb.gep(ctx, [ir.Constant(I64, k)], inbounds=True,
                                                source_etype=PTR), align=8, typ=PTR)
                                 for k in range(3)]
        sub = _Entry(module, tb, bufs, workspace, dims, _slot_offsets(tb, plan, self.symbols,
                                                                        dims),
                     _size_of(tb, self.symbols, dims), self.n_in, self.n_const)
        sub.plan, sub.symbols = plan, self.symbols
        index = {id(kb): k for k, kb in enumerate(builders)}

        def launch(kb, pointer):
            c = sub.size(factors[index[id(kb)]])
            tb.call(kb.fn, [pointer(r) for r in kb.roots] + [dims, tb.mul(lo, c),
                                                               tb.mul(hi, c)])
        sub.steps(graph, kernel, loop, builders,
                  lambda v: sub.pointer(plan.location[plan.roots[v]]), launch)
        tb.ret_void()

        b = self.b
        here = b.block
        b.position_at_start(self.entry_block)
        args = b.alloca(PTR, size=3, name=f"{kernel.name}.rows.args")
        b.position_at_end(here)
        for k, v in enumerate((self.bufs, self.workspace, self.dims)):
            b.store(v, b.gep(args, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR))
        work = ir.Constant(I64, 0)
        for kb in builders:
            work = b.add(work, self.size(kb.work))
        work = b.mul(work, self.size(graph[kernel.nodes[0]].attrs["length"]))
        b.call(self.parallel_for, [fn, args, self.size(batch), ir.Constant(I64, quantum),
                                   work])

    def steps(self, graph: Graph, kernel, loop, builders, value_ptr, launch) -> ir.Value:
        """The step loop (launch(kb, pointer) runs a body kernel); returns whether the
        carry buffers ended swapped."""
        b, size = self.b, self.size
        node = graph[kernel.nodes[0]]
        body, nc, nx = loop.graph, node.attrs["num_carry"], node.attrs["num_xs"]
        first = [self.slot(a) for a, _ in loop.carry]
        second = [self.slot(c) for _, c in loop.carry]
        results = {graph[r].attrs["index"]: r for r in kernel.outputs}
        xs = [value_ptr(i) for i in node.inputs[nc:nc + nx]]
        captured = [value_ptr(i) for i in node.inputs[nc + nx:]]
        ys = {k: value_ptr(r) for k, r in results.items() if k >= nc}
        spare = {k: self.slot(s) for k, s in loop.spare.items()}
        x_bytes = [_nbytes(body[i].type) for i in body.inputs[nc:nc + nx]]
        y_bytes = {k: _nbytes(body[body.outputs[k]].type) for k in range(nc, len(body.outputs))}
        length = size(node.attrs["length"])

        fn = b.function
        pre = b.block
        head = fn.append_basic_block(f"{kernel.name}.head")
        step_bb = fn.append_basic_block(f"{kernel.name}.step")
        done = fn.append_basic_block(f"{kernel.name}.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name="step")
        swapped = b.phi(ir.IntType(1), name="swapped")
        i.add_incoming(ir.Constant(I64, 0), pre)
        swapped.add_incoming(ir.Constant(ir.IntType(1), 0), pre)
        b.cbranch(b.icmp_signed("<", i, length), step_bb, done)

        b.position_at_end(step_bb)
        t = b.sub(b.sub(length, ir.Constant(I64, 1)), i) if node.attrs["reverse"] else i
        cur = [b.select(swapped, c, a, name=f"carry{k}") for k, (a, c) in
               enumerate(zip(first, second))]
        nxt = [b.select(swapped, a, c, name=f"next{k}") for k, (a, c) in
               enumerate(zip(first, second))]

        def at(base, nbytes):
            return b.gep(base, [b.mul(t, size(nbytes))], inbounds=True,
                         source_etype=ir.IntType(8))

        inputs = cur + [at(x, n) for x, n in zip(xs, x_bytes)] + captured
        outputs = nxt + [at(ys[k], y_bytes[k]) if k in ys else spare[k]
                         for k in range(nc, len(body.outputs))]

        def inner(root):
            return loop.resolve(root, inputs, outputs,
                                lambda k: self.pointer(Location("const", k)), self.slot)

        for kb in builders:
            launch(kb, inner)
        end = b.block
        i.add_incoming(b.add(i, ir.Constant(I64, 1)), end)
        swapped.add_incoming(b.xor(swapped, ir.Constant(ir.IntType(1), 1)), end)
        b.branch(head)
        b.position_at_end(done)
        return swapped


def row_separable(body: Graph, kernels, nc: int, nx: int) -> Size | None:
    """The batch size B when a scan body treats the rows (axis 0) of its carries, xs and ys
    independently, so that threads may each run the whole loop on a band of rows (ONNX
    Runtime's LSTM splits its batch the same way); None otherwise. Conservative: the body's
    kernels are maps, reductions over other axes and 2-D matmuls over (B, ...) that write
    per-row values along their space's axis 0 and read them only there; weights (constants,
    captured values and what is computed from them alone) may be read anywhere."""
    ins = list(body.inputs)
    rows = ins[:nc + nx] + list(body.outputs)
    if not rows or any(body[v].type.rank == 0 for v in rows):
        return None
    batch = body[ins[0]].shape[0]
    if batch == 1 or any(body[v].shape[0] != batch for v in rows):
        return None
    free = set(ins[nc + nx:])
    for node in body.nodes:
        if OPS[node.op].source == "constant" or (
                not OPS[node.op].source and node.inputs and
                all(i in free for i in node.inputs)):
            free.add(node.id)
    for k in kernels:
        if k.kind not in ("map", "matmul", "rows") or not k.space or k.space[0] != batch or \
                (k.kind == "matmul" and len(k.space) != 2) or 0 in k.reduce_axes:
            return None
        if any(o in free or not k.maps.get(o) or k.maps[o][0] != 0 for o in k.outputs):
            return None
        maps = k.maps
        for n in k.nodes:
            node = body[n]
            kind = OPS[node.op].kind
            for i, v in enumerate(node.inputs):
                if v in free:
                    continue
                if kind == GATHER:   # reads at computed indices: the op says which rows
                    keeps = OPS[node.op].keeps_rows
                    if keeps is None or not keeps(body[v].shape, **node.attrs) or \
                            not maps.get(n) or maps[n][0] != 0:
                        return None
                if v in maps:   # computed in the kernel, at this node's coordinates
                    if kind == MATMUL:   # A transposed in place
                        return None
                    continue
                if not _same_rows(body, v, batch):
                    return None
                if kind == MATMUL:   # row r of C reads row r of A; B is a weight
                    if i != 0:
                        return None
                elif kind != GATHER and (not maps.get(n) or
                                         input_map(body, node, i, maps[n])[0] != 0):
                    return None
    return batch


def _same_rows(body: Graph, v: int, batch) -> bool:
    """Row r of v (a view or not) is row r of its storage: both lead with the batch and
    have rows of one size (views are contiguous)."""
    root = storage_root(body, v)
    return body[v].type.rank > 0 and body[v].shape[0] == batch and \
        body[root].type.rank > 0 and body[root].shape[0] == batch and \
        numel(body[v].shape[1:]) == numel(body[root].shape[1:])


def _band(builders, batch):
    """(batch, row factor per body kernel, chunk quantum) for a row-separable scan body
    whose built kernels each split a loop of batch x (factor) iterations; None if one
    splits something else (a matmul split by columns, a collapsed loop that is not)."""
    factors, quantum = [], 1
    for kb in builders:
        trips, q = kb.parallel
        space = kb.kernel.space
        factor = next((numel(space[1:j]) for j in range(1, len(space) + 1)
                       if numel(space[:j]) == trips), None)
        if factor is None:
            return None
        factors.append(factor)
        if kb.kernel.kind == "matmul":
            quantum = max(quantum, q)
    return batch, factors, quantum


def _nbytes(type_) -> Size:
    return size_mul(numel(type_.shape), ITEMSIZE[type_.dtype])


def _build_deduplicated(module: ir.Module, kernels: list[CpuKernelBuilder]) -> None:
    """Builds every kernel's function; a kernel whose code is the same as an earlier one's
    (a repeated layer: the same ops, shapes and strides; buffers are arguments) calls that
    one instead, so LLVM optimizes and emits each distinct kernel once. An unrolled 200-layer
    MLP step has about a thousand kernels but a handful of distinct ones."""
    seen: dict[str, ir.Function] = {}
    for kb in kernels:
        before = set(module.globals)
        kb.build()
        name = kb.fn.name
        # the kernel's function (made with its builder) and what its build added for it
        own = [name] + [g for g in module.globals
                        if g not in before and g != name and g.startswith(name)]
        key = "\n".join(str(module.globals[g]).replace(name, "@kernel") for g in own)
        if key in seen:
            for g in own:
                del module.globals[g]
            kb.fn = seen[key]
        else:
            seen[key] = kb.fn


def _task(module: ir.Module, kb: CpuKernelBuilder) -> ir.Function:
    """task(void **args, lo, hi): the thread pool's view of a kernel (one per function)."""
    existing = module.globals.get(f"{kb.fn.name}.task")
    if existing is not None:
        return existing
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


__all__ = ["build_module", "cpu_target", "CpuKernelBuilder"]


_SUFFIX = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "i8"}


class _VectorEmitter(Emitter):
    """An Emitter whose values are vectors of `lanes` elements: constants are splats and
    casts cast vectors (what ops with OpDef.vector_rule need)."""

    def __init__(self, builder, math_table, lanes: int):
        super().__init__(builder, math_table)
        self.lanes = lanes

    def splat(self, v, ty):
        one = self.b.insert_element(ir.Constant(ty, ir.Undefined), v, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(ty, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, self.lanes),
                                                 [0] * self.lanes))

    def const(self, value, dtype: str) -> Val:
        scalar = super().const(value, dtype).v
        return Val(ir.Constant(ir.VectorType(scalar.type, self.lanes), [scalar] * self.lanes),
                   dtype)

    def cast(self, a: Val, dtype: str) -> Val:
        if a.dtype == dtype:
            return a
        if dtype == "bool":
            return self.cmp("!=", a, self.const(0, a.dtype))
        ty = ir.VectorType(REG[dtype], self.lanes)
        b, src = self.b, a.dtype
        if src == "bool":
            return Val(b.uitofp(a.v, ty) if dtype.startswith("float") else b.zext(a.v, ty), dtype)
        if src.startswith("float") and dtype.startswith("float"):
            return Val(b.fpext(a.v, ty) if dtype == "float64" else b.fptrunc(a.v, ty), dtype)
        return Val(b.fptosi(a.v, ty) if src.startswith("float") else b.sitofp(a.v, ty), dtype)


def _splat_constant(graph: Graph, value: int):
    """The number a 1-element constant (through views) holds, else None."""
    node = graph[storage_root(graph, value)]
    if OPS[node.op].source == "constant" and node.attrs["value"].size == 1:
        return node.attrs["value"].reshape(-1)[0].item()
    return None
