"""NVIDIA GPU code generation: the CPU target's fused kernels, as PTX (LLVM's NVPTX back end).

Every kernel is a `ptx_kernel` function kernel(buffers..., dims) over the same plan as on
the CPU (same fusion, same buffers, same scalar code from the op registry and the same
inline exp/log/tanh). Parallel structure:
  map:    grid-stride loop over the (collapsed) space, 4 consecutive elements per thread
          with vector loads and stores where alignment allows, else one element;
  slice, concat: one thread per element, grid-stride loop;
  rows:   one block per row (grid-stride over rows); the block's threads split each pass
          (float sums: each thread's share in blocks, added with compensation), and
          reductions combine by warp shuffles, then across warps in shared memory;
  matmul: 128x128 or 64x64 tiles of C per block; A and B tiles staged in shared memory;
          each thread keeps an 8x8 or 4x4 piece of C in registers (or, with tf32, each
          warp a 64x32 piece as tensor-core mma tiles); the epilogue runs as C is written.

Kernels are written as a sequence of regions (code each thread runs) separated by
barriers, with shared memory and per-thread arrays made explicit (`region`, `barrier`,
`shared`, `private`). That makes the same kernel bodies buildable for the CPU too
(simulated=True: one call per block, each region a loop over the block's threads), which is
how tests/gpu_sim.py checks the kernels' logic without a GPU; ptxas checks the PTX.

Launch configuration: each kernel records its trip count (a symbolic size), or a grid shape
(sizes divided by a tile); the runtime evaluates them with the bound sizes. Grids are capped;
grid-stride loops cover the rest.
"""
from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from graphc_runtime.launch import KernelLaunch, LaunchPlan, LoopLaunch

from ..ir.graph import Graph
from ..ir.types import ITEMSIZE, Size, numel, size_mul
from ..ops.registry import MATMUL, OPS
from ..passes.plan import Plan
from ..signature import size_json
from . import math_cpu
from .builder import PTR, KernelBuilder, Target
from .emitter import I32, I64, MEM, Val
from .gemm import operand_access
from .lower import Access, is_inline

TRIPLE = "nvptx64-nvidia-cuda"
BLOCK = 256
# A thread's strided share of a row pass is summed THREAD_BLOCK elements at a time and the
# block sums added with compensation (blocked_loop), so a long row's per-thread partial
# sums do not gather one rounding error per element.
THREAD_BLOCK = 16
VECTOR = 4   # map kernels: elements per thread per step where loads and stores vectorize
PTX_VERSION = {"sm_80": 70, "sm_86": 71, "sm_89": 78, "sm_90": 78}   # PTX ISA 7.0 ...
ARCHS = tuple(PTX_VERSION)
INDEX = ("tid", "ntid", "ctaid", "nctaid")   # thread, threads per block, block, blocks


def cuda_target(simulated: bool = False, tf32: bool = False) -> Target:
    """An NVIDIA GPU (`simulated`: its kernels built for the host, see tests/gpu_sim.py). The
    math is the CPU's table: plain arithmetic, which NVPTX compiles as well."""
    return Target("cuda", threading="simulated-grid" if simulated else "grid",
                  vector_bits=128, math=math_cpu.MATH, tf32=tf32)


class GpuKernelBuilder(KernelBuilder):
    """A GPU kernel: kernel(buffers..., dims), run by a grid of blocks of BLOCK threads."""

    def __init__(self, module: ir.Module, graph: Graph, plan: Plan, kernel, symbols,
                 target: Target):
        assert target.threading in ("grid", "simulated-grid"), f"a GPU kernel for {target}"
        self.blocks = None   # [(size, per block)]: grid = prod(ceil(size / per)); else trips
        self.per_thread = 1  # elements a thread takes per turn of a map's grid-stride loop
        self._tid = None     # this thread's index, inside a region
        self._mma_swap = None   # simulated mma.sync: the warp's fragments, in shared memory
        super().__init__(module, graph, plan, kernel, symbols, target)

    @property
    def simulated(self) -> bool:
        """Built for the host: one call per block, the block's threads as loops."""
        return self.target.threading == "simulated-grid"

    def make_function(self) -> ir.Function:
        # simulated: one call per block, (ntid, ctaid, nctaid) as arguments; the threads of
        # the block are loops around each region of per-thread code (see `region`)
        extra = [I64] * 3 if self.simulated else []
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * len(self.roots) + [PTR] + extra)
        fn = ir.Function(self.module, fnty, self.kernel.name)
        if self.simulated:
            fn.attributes.add("noinline")
            self._index_args = dict(zip(INDEX[1:], fn.args[-3:]))
        else:
            fn.calling_convention = "ptx_kernel"
        fn.attributes.add("nounwind")
        return fn

    def index(self, name: str) -> ir.Value:
        """tid.x (inside a region only), ntid.x, ctaid.x or nctaid.x as i64."""
        if self.simulated:
            if name == "tid":
                assert self._tid is not None, "the thread index is only defined in a region"
                return self._tid
            return self._index_args[name]
        fname = f"llvm.nvvm.read.ptx.sreg.{name}.x"
        fn = self.module.globals.get(fname) or ir.Function(
            self.module, ir.FunctionType(I32, []), fname)
        return self.b.zext(self.b.call(fn, []), I64)

    def strided_loop(self, start, n, step, body, name: str, init=None):
        """for i = start; i < n; i += step: body(i), or carried = body(i, carried) with init
        (a list of Val); returns the final carried values."""
        if init is None:
            return self.loop(n, [], lambda i, _: (body(i), [])[1], name=name, start=start,
                             step=step)
        return self.loop(n, init, body, name=name, start=start, step=step)

    # ---------------------------------------------------------------- block-level structure
    def region(self, body) -> None:
        """Code each thread of the block runs, body(tid). On the GPU every thread runs it
        once; simulated, a loop runs it for each thread of the block in turn, which is what
        the GPU computes as long as regions are separated by barriers."""
        if not self.simulated:
            if self._tid is None:   # read once, in the entry block (dominates every region)
                here = self.b.block
                self.b.position_at_start(self.fn.entry_basic_block)
                self._tid = self.index("tid")
                self.b.position_at_end(here)
            body(self._tid)
            return

        def each(t, _):
            self._tid = t
            body(t)
            return []
        self.loop(self.index("ntid"), [], each, name="thread")
        self._tid = None

    def barrier(self) -> None:
        if self.simulated:
            return   # regions already run one after another
        fn = self.module.globals.get("llvm.nvvm.barrier0") or ir.Function(
            self.module, ir.FunctionType(ir.VoidType(), []), "llvm.nvvm.barrier0")
        self.b.call(fn, [])

    def shared(self, dtype: str, count: int, name: str):
        """Block-shared memory for `count` values (GPU: .shared; simulated: a stack array)."""
        ty = MEM[dtype]
        if self.simulated:
            here = self.b.block
            self.b.position_at_start(self.fn.entry_basic_block)
            ptr = self.b.alloca(ty, size=count, name=name)
            ptr.align = 16   # vector loads
            self.b.position_at_end(here)
            return ptr
        gv = ir.GlobalVariable(self.module, ir.ArrayType(ty, count),
                               self.module.get_unique_name(f"{self.fn.name}.{name}"),
                               addrspace=3)
        gv.linkage = "internal"
        gv.align = 16   # vector loads
        gv.initializer = ir.Constant(ir.ArrayType(ty, count), ir.Undefined)
        gv.type = ir.PointerType(addrspace=3)   # opaque: indexed by element like the rest
        return gv

    def at(self, base, index, dtype: str):
        return self.b.gep(base, [index], inbounds=True, source_etype=MEM[dtype])

    def shuffle_xor(self, value: Val, lane_mask: int) -> Val:
        """The value held by lane (lane ^ lane_mask) of this warp (shfl.sync.bfly); 64-bit
        values travel as two 32-bit halves."""
        b = self.b
        i32 = ir.IntType(32)
        name = "llvm.nvvm.shfl.sync.bfly.i32"
        fn = self.module.globals.get(name) or ir.Function(
            self.module, ir.FunctionType(i32, [i32, i32, i32, i32]), name)
        args = [ir.Constant(i32, -1), None, ir.Constant(i32, lane_mask), ir.Constant(i32, 31)]
        ty = value.v.type
        bits = ty.width if isinstance(ty, ir.IntType) else (32 if ty == ir.FloatType() else 64)
        word = b.bitcast(value.v, ir.IntType(bits)) if not isinstance(ty, ir.IntType) else value.v
        if bits == 64:
            halves = b.bitcast(word, ir.VectorType(i32, 2))
            out = ir.Constant(ir.VectorType(i32, 2), None)
            for k in range(2):
                args[1] = b.extract_element(halves, ir.Constant(i32, k))
                out = b.insert_element(out, b.call(fn, list(args)), ir.Constant(i32, k))
            word = b.bitcast(out, ir.IntType(64))
        else:
            args[1] = b.zext(word, i32) if bits < 32 else word
            word = b.call(fn, args)
            word = b.trunc(word, ir.IntType(bits)) if bits < 32 else word
        return Val(word if isinstance(ty, ir.IntType) else b.bitcast(word, ty), value.dtype)

    def warp_reduce(self, op, dtype: str, value) -> None:
        """Combines `value` (a private slot) across the lanes of each warp: butterfly
        exchanges over lane distances 16..1. On the GPU a register shuffle; simulated, the
        exchange goes through shared memory (same result: each step reads the partner's
        value from before the step). Lanes beyond the block (small simulated blocks) are
        skipped."""
        b = self.b
        swap = self.shared(dtype, BLOCK, "swap") if self.simulated else None
        for distance in (16, 8, 4, 2, 1):
            if not self.simulated:
                def step(tid, distance=distance):
                    mine = self.e.load(value(0), dtype)
                    self.e.store(op.combine(self.e, mine, self.shuffle_xor(mine, distance)),
                                 value(0))
                self.region(step)
                continue
            self.region(lambda tid: self.e.store(self.e.load(value(0), dtype),
                                                 self.at(swap, tid, dtype)))

            def combine(tid, distance=distance):
                partner = b.xor(tid, ir.Constant(I64, distance))
                with b.if_then(b.icmp_signed("<", partner, self.index("ntid"))):
                    other = self.e.load(self.at(swap, partner, dtype), dtype)
                    mine = self.e.load(value(0), dtype)
                    self.e.store(op.combine(self.e, mine, other), value(0))
            self.region(combine)

    def block_reduce(self, op, dtype: str, smem, value) -> Val:
        """Combines one value per thread (the private slot `value`) into one value every
        thread gets: a shuffle reduction within each warp, the warps' results through shared
        memory, then a shuffle reduction of those in the first warp. Two barriers."""
        b = self.b
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        self.warp_reduce(op, dtype, value)

        def publish(tid):
            with b.if_then(b.icmp_signed("==", b.and_(tid, c(31)), c(0))):
                self.e.store(self.e.load(value(0), dtype), self.at(smem, b.lshr(tid, c(5)),
                                                                     dtype))
        self.region(publish)
        self.barrier()
        warps = b.lshr(b.add(self.index("ntid"), c(31)), c(5))

        def gather(tid):
            inside = b.icmp_signed("<", tid, warps)
            ident = self.e.const(op.identity(dtype), dtype)
            loaded = self.e.load(self.at(smem, b.select(inside, tid, c(0)), dtype), dtype)
            self.e.store(Val(b.select(inside, loaded.v, ident.v), dtype), value(0))
        self.region(gather)
        self.warp_reduce(op, dtype, value)
        self.barrier()   # every warp result has been read before smem[0] is written

        def total_out(tid):
            with b.if_then(b.icmp_signed("==", tid, c(0))):
                self.e.store(self.e.load(value(0), dtype), self.at(smem, c(0), dtype))
        self.region(total_out)
        self.barrier()
        total = self.e.load(self.at(smem, c(0), dtype), dtype)
        self.barrier()   # everyone has read the total before smem is written again
        return total

    def parallel_nest(self, sizes: list[Size], body, name="i", quantum: int = 1):
        """One thread per point of the nest (flattened), in a grid-stride loop."""
        total = numel(sizes)
        self.parallel = (total, 1)
        dims = [self.size(s) for s in sizes]
        n = self.size(total)

        def point(flat):
            body(self.unflatten(flat, dims), [])

        def per_thread(tid):
            first, step = self.grid_stride(tid)
            self.strided_loop(first, n, step, point, f"{name}.g")
        self.region(per_thread)

    def grid_stride(self, tid) -> tuple[ir.Value, ir.Value]:
        """(this thread's index in the whole grid, the number of threads in the grid): where
        a grid-stride loop starts and how far it steps."""
        b = self.b
        ntid, ctaid, nctaid = (self.index(x) for x in INDEX[1:])
        return b.add(b.mul(ctaid, ntid), tid), b.mul(ntid, nctaid)

    def build_map(self):
        """One thread per element in a grid-stride loop; where the buffers allow it, a
        thread takes VECTOR consecutive elements instead: reads that are contiguous along the
        innermost axis become one vector load (ld.global.v4), outputs one vector store, and
        the lanes are computed as scalars (a GPU thread has no SIMD). Checked at run time:
        every such buffer aligned for the vector, the innermost extent a multiple of VECTOR
        (or a 1-D space, whose remainder the scalar loop takes)."""
        g, k = self.graph, self.kernel
        b = self.b
        accesses, outs, sizes, strides, flat = self.map_layout()
        self.work = size_mul(numel(k.space), len(k.nodes))
        self.parallel = (numel(k.space), 1)
        dims = [self.size(s) for s in sizes]
        n = self.size(numel(k.space))
        W = VECTOR
        c = lambda v: ir.Constant(I64, v)  # noqa: E731

        def contiguous(acc) -> bool:
            return bool(sizes) and strides[acc][-1] == 1 and not is_inline(g, acc.value)

        def align(acc) -> int:
            return min(self.target.vector_bits // 8, W * np.dtype(g[acc.value].dtype).itemsize)

        read_strides = {key: strides[acc] for key, acc in accesses.items()}

        def point(i):
            coords = self.unflatten(i, dims)
            vals = dict(self.map_values(coords, flat, self.reader(read_strides, coords)))
            for o, v in vals.items():
                self.store(o, strides[outs[o]], coords, v)

        def group(gi):
            first = self.unflatten(b.mul(gi, c(W)), dims)
            lanes: dict = {}   # access -> its W values, one vector load

            def read(n_, p, coords, j):
                acc = accesses[(n_, p)]
                if not contiguous(acc):
                    return self.leaf(g[n_].inputs[p], strides[acc], coords)
                if acc not in lanes:
                    lanes[acc] = self.e.load_lanes(self.address(acc, strides[acc], first),
                                                   g[acc.value].dtype, W, align(acc))
                return lanes[acc][j]
            results = {o: [] for o in k.outputs}
            for j in range(W):
                coords = [*first[:-1], b.add(first[-1], c(j)) if j else first[-1]]
                for o, v in self.map_values(coords, flat, lambda n_, p, coords=coords, j=j:
                                            read(n_, p, coords, j)):
                    results[o].append((coords, v))
            for o, pairs in results.items():
                if contiguous(outs[o]):
                    self.e.store_lanes([v for _, v in pairs],
                                       self.address(outs[o], strides[outs[o]], first),
                                       align(outs[o]))
                else:
                    for coords, v in pairs:
                        self.store(o, strides[outs[o]], coords, v)

        vector = [a for a in [*accesses.values(), *outs.values()] if contiguous(a)]
        static_ok = bool(sizes) and bool(vector) and not (
            len(sizes) > 1 and isinstance(sizes[-1], int) and sizes[-1] % W)
        groups = c(0)
        self.per_thread = W if static_ok else 1   # elements a thread takes per turn
        if static_ok:
            ok = ir.Constant(ir.IntType(1), 1)
            checks = [b.urem(dims[-1], c(W))] if len(sizes) > 1 else []
            for acc in dict.fromkeys(vector):   # each vector's start: aligned address
                checks += [b.urem(self.size(st), c(W)) for st in strides[acc][:-1] if st != 0]
                ptr = self.ptr[self.plan.roots[acc.value]]
                checks.append(b.and_(b.ptrtoint(ptr, I64), c(align(acc) - 1)))
            for x in checks:
                if not (isinstance(x, ir.Constant) and x.constant == 0):
                    ok = b.and_(ok, b.icmp_unsigned("==", x, c(0)))
            groups = b.select(ok, b.udiv(n, c(W)), c(0))

        def per_thread(tid):
            first, step = self.grid_stride(tid)
            if static_ok:
                self.strided_loop(first, groups, step, group, "v.g")
            self.strided_loop(b.add(b.mul(groups, c(W)), first), n, step, point, "i.g")
        self.region(per_thread)

    def unflatten(self, flat, dims) -> list:
        b = self.b
        coords = []
        for d in reversed(dims[1:]):
            coords.append(b.urem(flat, d))
            flat = b.udiv(flat, d)
        coords.append(flat)
        return coords[::-1]

    def build_rows(self):
        """One block per row (grid-stride over rows): the block's threads split each pass over
        the row, and each reduction is combined in shared memory (block_reduce)."""
        g, k = self.graph, self.kernel
        b = self.b
        rl = self.row_layout()
        rows_total = numel([k.space[a] for a in rl.kept])
        kept_dims = [self.size(k.space[a]) for a in rl.kept]
        red_dims = [self.size(k.space[a]) for a in rl.red]
        red_total = self.size(numel([k.space[a] for a in rl.red]))
        self.parallel = (size_mul(rows_total, BLOCK), 1)    # one block per row
        self.work = size_mul(numel(k.space), len(k.nodes))
        smem = {r: self.shared(g[r].dtype, BLOCK // 32, f"red{r}") for r in rl.reductions}
        part = {r: self.private(g[r].dtype, 1, f"part{r}") for r in rl.reductions}

        def per_row(row):
            coords = [None] * rl.rank
            for a, c in zip(rl.kept, self.unflatten(row, kept_dims) if rl.kept else []):
                coords[a] = c

            def elements(tid, phase_reds, element):
                """This thread's share of one pass over the row; returns its partials."""
                def body(j, accs):
                    for a, c in zip(rl.red, self.unflatten(j, red_dims) if rl.red else []):
                        coords[a] = c
                    return element(accs)
                if any(self.compensated(r) for r in phase_reds):
                    result = self.block_results(phase_reds, self.blocked_loop(
                        red_total, self.block_totals(phase_reds), phase_reds, body,
                        THREAD_BLOCK, start=tid, step=self.index("ntid")))
                else:
                    result = self.strided_loop(tid, red_total, self.index("ntid"), body, "j",
                                               init=self.row_inits(phase_reds))
                for a in rl.red:
                    coords[a] = None
                return result

            def row_pass(phase_reds, element):
                if not phase_reds:   # the elementwise outputs
                    self.region(lambda tid: elements(tid, [], element))
                    return []

                def accumulate(tid):
                    for r, v in zip(phase_reds, elements(tid, phase_reds, element)):
                        self.e.store(v, part[r](0))
                self.region(accumulate)
                return [self.block_reduce(OPS[g[r].op], g[r].dtype, smem[r], part[r])
                        for r in phase_reds]

            row_memo = self.emit_row(rl, coords, row_pass)
            row_outs = self.row_outputs()
            if row_outs:
                def store_rows(tid):
                    with b.if_then(b.icmp_signed("==", tid, ir.Constant(I64, 0))):
                        for n in row_outs:
                            self.store(n, rl.outs[n].strides, coords, row_memo[n])
                self.region(store_rows)
            self.barrier()   # the next row reuses shared memory

        self.strided_loop(self.index("ctaid"), self.size(rows_total), self.index("nctaid"),
                          per_row, "row")

    def private(self, dtype: str, count: int, name: str):
        """`count` values per thread that live across regions: an array in registers on the
        GPU (constant indices, so LLVM keeps it in registers), one slice per thread
        simulated. Returns at(i) -> pointer to this thread's value i (inside a region)."""
        ty = MEM[dtype]
        here = self.b.block
        self.b.position_at_start(self.fn.entry_basic_block)
        size = count * (BLOCK if self.simulated else 1)
        base = self.b.alloca(ty, size=size, name=name)
        self.b.position_at_end(here)

        def at(i: int):
            idx = ir.Constant(I64, i)
            if self.simulated:
                idx = self.b.add(self.b.mul(self._tid, ir.Constant(I64, count)), idx)
            return self.at(base, idx, dtype)
        return at

    def build_matmul(self):
        """C tiles of T x T per block (grid-stride over tiles), K in steps of TK. The block
        stages an A tile (stored k-major) and a B tile in shared memory, rows padded against
        bank conflicts; the next step's tiles are loaded into registers while this step
        computes (double buffering through registers). The product itself is one of:
          FMA: each of the 16x16 threads accumulates a U x U piece of C in registers,
               reading its A and B values as 4-wide vectors (ld.shared.v4): U*U FMAs per
               U/2 vector loads. A thread owns rows and columns {h*64 + t*4 + i : h < U/4,
               i < 4} (t: its row or column in the 16x16 grid).
          tf32 tensor cores (float32 with tf32=True): 8 warps as 2x4, each a 64x32 piece of
               C as 4x4 mma.sync.m16n8k8 tiles; A and B are rounded to tf32 as they are
               staged.
        The epilogue runs as C is written."""
        g, k = self.graph, self.kernel
        b = self.b
        mm = next(n for n in k.nodes if OPS[g[n].op].kind == MATMUL)
        node = g[mm]
        space = tuple(node.shape)
        nb = len(space) - 2
        dtype = node.dtype
        A = operand_access(g, set(k.nodes), node.inputs[0], space[:nb])
        B = operand_access(g, set(k.nodes), node.inputs[1], space[:nb])
        K = g[node.inputs[0]].shape[-1]
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        tensor = self.target.tf32 and dtype == "float32"
        T, TK = (128, 8) if tensor else matmul_tile(space, dtype)
        R = T + (8 if tensor else 4)       # tile row stride: fragment or vector loads
        per_thread = T * TK // BLOCK       # tile values each thread loads per step
        self.parallel = (numel(space), 1)
        self.blocks = [(d, 1) for d in space[:nb]] + [(space[-2], T), (space[-1], T)]
        self.work = numel([*space, K])
        M, N, Kv = self.size(space[-2]), self.size(space[-1]), self.size(K)
        a_tile = self.shared(dtype, TK * R, "a_tile")   # [k][m]
        b_tile = self.shared(dtype, TK * R, "b_tile")   # [k][n]
        core = (self._mma_core if tensor else self._fma_core)(T, TK, R, dtype, a_tile, b_tile)
        acc = core["acc"]
        next_a = self.private(dtype, per_thread, "next_a")
        next_b = self.private(dtype, per_thread, "next_b")
        zero = self.e.const(0, dtype)
        tiles_m = b.sdiv(b.add(M, c(T - 1)), c(T))
        tiles_n = b.sdiv(b.add(N, c(T - 1)), c(T))
        steps = b.sdiv(b.add(Kv, c(TK - 1)), c(TK))
        batch_dims = [self.size(d) for d in space[:nb]]
        n_tiles = b.mul(b.mul(tiles_m, tiles_n), self.size(numel(space[:nb])))
        # consecutive threads walk the operand's contiguous axis (coalesced global reads)
        a_k_fast = A.strides[-1] == 1 or A.strides[-2] != 1
        b_n_fast = B.strides[-1] == 1 or B.strides[-2] != 1

        def tile_positions(tid, e, cols_fast, rows, cols):
            """(row, col) in a [rows x cols] operand tile of this thread's e-th value;
            consecutive threads walk the cols when cols_fast, else the rows."""
            idx = b.add(tid, c(e * BLOCK))
            if cols_fast:
                return b.udiv(idx, c(cols)), b.urem(idx, c(cols))
            return b.urem(idx, c(rows)), b.udiv(idx, c(rows))

        def per_tile(t):
            *bc, tm, tn = self.unflatten(t, batch_dims + [tiles_m, tiles_n])
            m0, n0 = b.mul(tm, c(T)), b.mul(tn, c(T))

            def fetch(kb):   # the step's A and B values into this thread's registers
                k0 = b.mul(kb, c(TK))

                def body(tid):
                    for e in range(per_thread):
                        m, q = tile_positions(tid, e, a_k_fast, T, TK)        # A: T x TK
                        self._guarded_load(A, [*bc, b.add(m0, m), b.add(k0, q)], [M, Kv],
                                           dtype, next_a(e))
                        r, n = tile_positions(tid, e, b_n_fast, TK, T)        # B: TK x T
                        self._guarded_load(B, [*bc, b.add(k0, r), b.add(n0, n)], [Kv, N],
                                           dtype, next_b(e))
                self.region(body)

            def stage(tid):   # registers -> shared memory
                convert = self.to_tf32 if tensor else (lambda v: v)
                for e in range(per_thread):
                    m, q = tile_positions(tid, e, a_k_fast, T, TK)
                    self.e.store(convert(self.e.load(next_a(e), dtype)),
                                 self.at(a_tile, b.add(b.mul(q, c(R)), m), dtype))
                    r, n = tile_positions(tid, e, b_n_fast, TK, T)
                    self.e.store(convert(self.e.load(next_b(e), dtype)),
                                 self.at(b_tile, b.add(b.mul(r, c(R)), n), dtype))

            def clear(tid):
                for i in range(core["count"]):
                    self.e.store(zero, acc(i))
            self.region(clear)
            fetch(c(0))
            self.region(stage)
            self.barrier()

            def k_step(kb, _):
                more = b.icmp_signed("<", b.add(kb, c(1)), steps)
                with b.if_then(more):      # uniform branch: every thread takes the same way
                    fetch(b.add(kb, c(1)))
                core["multiply"]()
                self.barrier()             # everyone is done reading the tiles
                with b.if_then(more):
                    self.region(stage)
                self.barrier()
                return []
            self.loop(steps, [], k_step, name="kt")

            def epilogue(tid):
                for i, row, col in core["owned"](tid):
                    m, n = b.add(m0, row), b.add(n0, col)
                    inside = b.and_(b.icmp_signed("<", m, M), b.icmp_signed("<", n, N))
                    with b.if_then(inside):
                        self.epilogue(mm, self.e.load(acc(i), dtype), [*bc, m, n])
            self.region(epilogue)

        self.strided_loop(self.index("ctaid"), n_tiles, self.index("nctaid"), per_tile, "tile")

    def _fma_core(self, T, TK, R, dtype, a_tile, b_tile) -> dict:
        """Each thread: a U x U piece of C, U*U FMAs per k from 4-wide shared loads."""
        b = self.b
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        U = T // 16
        acc = self.private(dtype, U * U, "acc")
        vec_align = min(16, 4 * np.dtype(dtype).itemsize)

        def madd(x, y, z):
            return self.e.fma(x, y, z) if x.is_float else self.e.add(z, self.e.mul(x, y))

        def owned(t):   # rows (or columns) of the tile a thread at grid position t owns
            return [b.add(b.mul(t, c(4)), c(h * 64 + i)) for h in range(U // 4) for i in range(4)]

        def multiply():
            def body(tid):
                ty, tx = b.udiv(tid, c(16)), b.urem(tid, c(16))
                for kk in range(TK):
                    a, bv = [], []
                    for h in range(U // 4):
                        a += self.e.load_lanes(self.at(a_tile, b.add(
                            b.mul(ty, c(4)), c(kk * R + h * 64)), dtype), dtype, 4, vec_align)
                        bv += self.e.load_lanes(self.at(b_tile, b.add(
                            b.mul(tx, c(4)), c(kk * R + h * 64)), dtype), dtype, 4, vec_align)
                    for i in range(U):
                        for j in range(U):
                            p = acc(i * U + j)
                            self.e.store(madd(a[i], bv[j], self.e.load(p, dtype)), p)
            self.region(body)

        def owned_outputs(tid):
            ty, tx = b.udiv(tid, c(16)), b.urem(tid, c(16))
            return [(i * U + j, row, col) for i, row in enumerate(owned(ty))
                    for j, col in enumerate(owned(tx))]
        return {"acc": acc, "count": U * U, "multiply": multiply, "owned": owned_outputs}

    def _mma_core(self, T, TK, R, dtype, a_tile, b_tile) -> dict:
        """Warps as 2 x 4, each a 64x32 piece of C: MI x NI tiles of m16n8, K in steps of
        8. Fragment layouts (PTX ISA, mma.m16n8k8 .tf32), with g = lane/4, t = lane%4:
        A a[r] = (row g + 8*(r&1), k t + 4*(r>>1)); B b[r] = (k t + 4*r, col g);
        C c[r] = (row g + 8*(r>>1), col 2t + (r&1)). With rows R = T + 8 apart in shared
        memory, the 32 lanes of a fragment load hit 32 different banks."""
        b = self.b
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        MI, NI = 4, 4
        acc = self.private(dtype, MI * NI * 4, "acc")
        a_frag = self.private(dtype, MI * 4, "a_frag")
        b_frag = self.private(dtype, NI * 2, "b_frag")

        def where(tid):   # (first row of the warp's piece, its first column, g, t)
            warp, lane = b.lshr(tid, c(5)), b.and_(tid, c(31))
            return (b.mul(b.lshr(warp, c(2)), c(64)), b.mul(b.and_(warp, c(3)), c(32)),
                    b.lshr(lane, c(2)), b.and_(lane, c(3)))

        def multiply():
            for k8 in range(TK // 8):
                def load(tid, k8=k8):
                    wm, wn, gi, ti = where(tid)
                    for mi in range(MI):
                        for r in range(4):
                            row = b.add(wm, b.add(gi, c(mi * 16 + 8 * (r & 1))))
                            kk = b.add(ti, c(k8 * 8 + 4 * (r >> 1)))
                            self.e.store(self.e.load(self.at(a_tile, b.add(
                                b.mul(kk, c(R)), row), dtype), dtype), a_frag(mi * 4 + r))
                    for ni in range(NI):
                        for r in range(2):
                            kk = b.add(ti, c(k8 * 8 + 4 * r))
                            col = b.add(wn, b.add(gi, c(ni * 8)))
                            self.e.store(self.e.load(self.at(b_tile, b.add(
                                b.mul(kk, c(R)), col), dtype), dtype), b_frag(ni * 2 + r))
                self.region(load)
                self.warp_mma_tf32(a_frag, b_frag, acc, MI, NI)

        def owned_outputs(tid):
            wm, wn, gi, ti = where(tid)
            return [((mi * NI + ni) * 4 + r,
                     b.add(wm, b.add(gi, c(mi * 16 + 8 * (r >> 1)))),
                     b.add(wn, b.add(b.mul(ti, c(2)), c(ni * 8 + (r & 1)))))
                    for mi in range(MI) for ni in range(NI) for r in range(4)]
        return {"acc": acc, "count": MI * NI * 4, "multiply": multiply, "owned": owned_outputs}

    def to_tf32(self, v: Val) -> Val:
        """v rounded to tf32 (10-bit mantissa, to nearest, ties away from zero), as float32."""
        b = self.b
        if self.simulated:
            bits = b.bitcast(v.v, I32)
            bits = b.and_(b.add(bits, ir.Constant(I32, 0x1000)), ir.Constant(I32, -0x2000))
        else:
            name = "llvm.nvvm.f2tf32.rna"
            fn = self.module.globals.get(name) or ir.Function(
                self.module, ir.FunctionType(I32, [ir.FloatType()]), name)
            bits = b.call(fn, [v.v])
        return Val(b.bitcast(bits, ir.FloatType()), v.dtype)

    def warp_mma_tf32(self, a_frag, b_frag, acc, MI, NI) -> None:
        """acc tile (mi, ni) += A tile mi x B tile ni for every pair: mma.sync.m16n8k8 with
        tf32 inputs and float32 accumulators, a warp-wide operation. Simulated, the warp's
        fragments go through shared memory and each thread computes its own four results
        from them by the documented layouts (see _mma_core)."""
        b = self.b
        c = lambda v: ir.Constant(I64, v)  # noqa: E731
        f32 = "float32"
        if not self.simulated:
            name = "llvm.nvvm.mma.m16n8k8.row.col.tf32"
            f = ir.FloatType()
            fn = self.module.globals.get(name) or ir.Function(
                self.module, ir.FunctionType(ir.LiteralStructType([f] * 4), [I32] * 6 + [f] * 4),
                name)

            def body(tid):
                bits = lambda p: b.bitcast(self.e.load(p, f32).v, I32)  # noqa: E731
                for mi in range(MI):
                    for ni in range(NI):
                        cs = [acc((mi * NI + ni) * 4 + r) for r in range(4)]
                        d = b.call(fn, [bits(a_frag(mi * 4 + r)) for r in range(4)]
                                   + [bits(b_frag(ni * 2 + r)) for r in range(2)]
                                   + [self.e.load(p, f32).v for p in cs])
                        for r, p in enumerate(cs):
                            self.e.store(Val(b.extract_value(d, r), f32), p)
            self.region(body)
            return
        if self._mma_swap is None:
            self._mma_swap = (self.shared(f32, BLOCK * MI * 4, "swap_a"),
                              self.shared(f32, BLOCK * NI * 2, "swap_b"))
        swap_a, swap_b = self._mma_swap

        def publish(tid):
            for i in range(MI * 4):
                self.e.store(self.e.load(a_frag(i), f32),
                             self.at(swap_a, b.add(b.mul(tid, c(MI * 4)), c(i)), f32))
            for i in range(NI * 2):
                self.e.store(self.e.load(b_frag(i), f32),
                             self.at(swap_b, b.add(b.mul(tid, c(NI * 2)), c(i)), f32))
        self.region(publish)

        def compute(tid):
            lane = b.and_(tid, c(31))
            base = b.sub(tid, lane)
            gi, ti = b.lshr(lane, c(2)), b.and_(lane, c(3))
            for mi in range(MI):
                for ni in range(NI):
                    for r in range(4):
                        p = acc((mi * NI + ni) * 4 + r)
                        total = self.e.load(p, f32)
                        col = b.add(b.mul(ti, c(2)), c(r & 1))
                        for kk in range(8):
                            a_lane = b.add(base, b.add(b.mul(gi, c(4)), c(kk % 4)))
                            a_val = self.e.load(self.at(swap_a, b.add(
                                b.mul(a_lane, c(MI * 4)), c(mi * 4 + (r >> 1) + 2 * (kk // 4))),
                                f32), f32)
                            b_lane = b.add(base, b.add(b.mul(col, c(4)), c(kk % 4)))
                            b_val = self.e.load(self.at(swap_b, b.add(
                                b.mul(b_lane, c(NI * 2)), c(ni * 2 + kk // 4)), f32), f32)
                            total = self.e.fma(a_val, b_val, total)
                        self.e.store(total, p)
        self.region(compute)

    def _guarded_load(self, acc: Access, coords, limits, dtype, dst) -> None:
        """dst = operand[coords] where the last two coordinates are inside `limits`, else 0."""
        b = self.b
        inside = b.and_(b.icmp_signed("<", coords[-2], limits[0]),
                        b.icmp_signed("<", coords[-1], limits[1]))
        with b.if_else(inside) as (then, otherwise):
            with then:
                self.e.store(self.e.load(self.address(acc, list(acc.strides), coords), dtype),
                             dst)
            with otherwise:
                self.e.store(self.e.const(0, dtype), dst)

    def build_concat(self):
        """One thread per output element; it copies from the input that covers it."""
        g, k = self.graph, self.kernel
        (out_id,) = k.nodes
        node = g[out_id]
        axis = node.attrs["axis"]
        inner = numel(node.shape[axis + 1:])
        row = numel([node.shape[axis], inner])
        b = self.b

        def element(coords, _):
            o, j = coords
            dst = self.address(Access(out_id, ()), [row, 1], [o, j])
            lo = self.size(0)   # (an IR value: symbolic widths add up to no one Size)
            for v in node.inputs:
                width = numel([g[v].shape[axis], inner])
                hi = b.add(lo, self.size(width))
                inside = b.and_(b.icmp_signed(">=", j, lo), b.icmp_signed("<", j, hi))
                with b.if_then(inside):
                    val = self.e.load(self.address(Access(v, ()), [width, 1],
                                                   [o, b.sub(j, lo)]), node.dtype)
                    self.e.store(val, dst)
                lo = hi
            return []
        self.parallel_nest([numel(node.shape[:axis]), row], element, name="c")


def matmul_tile(space, dtype: str) -> tuple[int, int]:
    """(T, TK): T x T tiles of C per block, K in steps of TK. 128 (8x8 per thread) when C is
    known to be big enough to give every multiprocessor several tiles; else 64 (4x4). 8-byte
    types keep 64: 64 accumulators of 8 bytes alone would fill the 128 registers a thread
    gets (ptxas spilled 784 bytes)."""
    if (all(isinstance(d, int) for d in space) and numel(space) >= 1 << 22
            and np.dtype(dtype).itemsize == 4):
        return 128, 8
    return 64, 16


def build_gpu_module(graph: Graph, plan: Plan, symbols: tuple[str, ...], triple: str,
                     data_layout: str, simulated: bool = False,
                     tf32: bool = False) -> tuple[ir.Module, LaunchPlan]:
    """The kernels as one module, and the launch plan the runtime follows. A scan kernel
    becomes a LoopLaunch: the runtime steps the loop and launches its body's kernels."""
    module = ir.Module(name=graph.name)
    module.triple = triple
    module.data_layout = data_layout
    target = cuda_target(simulated, tf32)

    def launch(g, p, k, args):
        kb = GpuKernelBuilder(module, g, p, k, symbols, target)
        kb.build()
        if kb.blocks is not None and not simulated:
            # exactly BLOCK threads, two blocks per multiprocessor: ptxas keeps the kernel
            # within 128 registers a thread
            module.add_named_metadata("nvvm.annotations", [
                kb.fn, ir.MetaDataString(module, "maxntidx"), ir.Constant(I32, BLOCK),
                ir.MetaDataString(module, "minctasm"), ir.Constant(I32, 2)])
        blocks = None if kb.blocks is None else tuple((size_json(d), per) for d, per in kb.blocks)
        return KernelLaunch(kb.fn.name, tuple(args(root) for root in kb.roots),
                            size_json(kb.parallel[0]), kb.per_thread, blocks,
                            BLOCK if kb.blocks is not None else None)   # (a fixed grid: BLOCK)

    def outer(root):
        return (plan.location[root].space, plan.location[root].index)

    launches = []
    for t, k in enumerate(plan.kernels):
        if t in plan.loops:
            launches.append(_loop_launch(graph, plan, k, plan.loops[t], outer, launch))
        else:
            launches.append(launch(graph, plan, k, outer))
    slots = tuple(tuple(size_json(s) for s in sizes) for sizes in plan.slots)
    return module, LaunchPlan(BLOCK, tuple(symbols), tuple(launches), slots, tf32=tf32)


def _loop_launch(graph: Graph, plan: Plan, kernel, loop, outer, launch) -> LoopLaunch:
    """A scan kernel's loop: where each body buffer lives in the outer plan (the same rules
    as the CPU entry's scan, codegen/cpu.py), step slices as (space, index, bytes per step)."""
    node = graph[kernel.nodes[0]]
    body, nc, nx = loop.graph, node.attrs["num_carry"], node.attrs["num_xs"]
    roots = lambda v: outer(plan.roots[v])  # noqa: E731
    results = {graph[r].attrs["index"]: r for r in kernel.outputs}

    def step_bytes(type_):
        return size_json(size_mul(numel(type_.shape), ITEMSIZE[type_.dtype]))

    inputs = [("carry", k) for k in range(nc)]
    inputs += [roots(v) + (step_bytes(body[i].type),)
               for v, i in zip(node.inputs[nc:nc + nx], body.inputs[nc:nc + nx])]
    inputs += [roots(v) for v in node.inputs[nc + nx:]]
    outputs = [("next", k) for k in range(nc)]
    outputs += [roots(results[k]) + (step_bytes(body[body.outputs[k]].type),) if k in results
                else ("slot", loop.spare[k]) for k in range(nc, len(body.outputs))]

    def inner(root):
        return loop.resolve(root, inputs, outputs, lambda k: ("const", k), lambda s: ("slot", s))

    body_launches = tuple(launch(body, loop.plan, bk, inner) for bk in loop.plan.kernels)
    carry = tuple((a, b, step_bytes(body[body.inputs[k]].type))
                  for k, (a, b) in enumerate(loop.carry))
    return LoopLaunch(size_json(node.attrs["length"]), bool(node.attrs["reverse"]), carry,
                      tuple(roots(v) for v in node.inputs[:nc]),
                      tuple(roots(results[k]) if k in results else None for k in range(nc)),
                      body_launches)


__all__ = ["build_gpu_module", "cuda_target", "GpuKernelBuilder", "TRIPLE", "ARCHS", "BLOCK",
           "PTX_VERSION"]
