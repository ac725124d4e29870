"""Blocked matrix multiplication: packing, a register-tiled micro-kernel, a fused epilogue.

C[b, m, n] = sum_k A[b, m, k] B[b, k, n], then the kernel's elementwise epilogue per element
of C (bias, activation, residual...). The loops follow GotoBLAS / BLIS. One call handles
the flat rows [lo, hi) of C (batch-major), which is how the thread pool splits the work:

    for each batch b touched:                      (operands addressed with any strides:
      for jc in N step NC:                          a transposed operand is just packed
        for pc in K step KC:                        differently, never materialized)
          pack B[pc:pc+KC, jc:jc+NC] into NR-wide panels           (per thread, L2/L3)
          for ic in this call's rows step MC:
            pack A[ic:ic+MC, pc:pc+KC] into MR-high panels         (L2)
            for each B panel, for each A panel:
              micro-kernel: MR x NR accumulators in vector registers, one vector FMA per
                            (row, vector of the B panel) per k
              write back: add the previous KC blocks' partial sums (kept in the output
                          buffer); on the last KC block apply the epilogue and store.

Tile sizes come from the target's vector width and register count: MR * NR/lanes
accumulators plus NR/lanes B vectors plus a broadcast must fit in the vector registers.
Packed panels are zero-padded, so the micro-kernel runs full-width tiles; a last row panel
of one row (or, for a static M, of M % MR rows) has a micro-kernel of its own height, other
short ones are packed with zero rows. Partial tiles show in the write-back loop (plain
scalar code that LLVM vectorizes). A constant B is packed at compile time (packed_operand).
"""
from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from ..ir.types import ITEMSIZE, numel
from ..ops.registry import MATMUL, OPS
from ..passes.plan import storage_root
from ..passes.simplify import is_inline_source
from .emitter import I32, I64, MEM, Val
from .lower import Access, access_for, contiguous_strides
from .threads import SERIAL_WORK

PTR = ir.PointerType()
KC_MAX = 512          # depth of one packed block
MC_ROWS = 96          # rows of A packed at once
NC_MAX = 2048         # columns of B packed at once
SMALL_PRODUCT = 4096  # multiply-adds (M*N*K) up to which a product is not blocked
assert SMALL_PRODUCT < SERIAL_WORK   # small products always run as one call (small_product)
# (vector registers, vectors per B row) -> rows of the register tile
TILE_ROWS = {(32, 4): 6, (32, 3): 8, (32, 2): 12, (32, 1): 16, (16, 2): 6, (16, 1): 8}


def tile_shape(dtype: str, vector_bits: int, n, regs: int | None = None) -> tuple[int, int, int]:
    """(MR, NR, lanes) for a C with n columns (an int, or a symbolic size), on `regs` vector
    registers (default: x86's for that width)."""
    lanes = max(1, vector_bits // (8 * ITEMSIZE[dtype]))
    regs = regs or (32 if vector_bits >= 512 else 16)
    widest = 4 if regs == 32 else 2
    nrv = widest if not isinstance(n, int) else max(1, min(widest, -(-n // lanes)))
    return TILE_ROWS[(regs, nrv)], nrv * lanes, lanes


def operand_access(graph, members, value, batch_shape) -> Access:
    """How the kernel reads a matmul operand over [*batch, rows, cols]; a transpose inside
    the kernel becomes strides of its input."""
    rank = len(batch_shape) + 2
    shape = graph[value].shape
    off = rank - len(shape)
    vmap = [None if (j < len(shape) - 2 and shape[j] == 1 and batch_shape[j + off] != 1)
            else j + off for j in range(len(shape))]
    if value in members and OPS[graph[value].op].permutation is not None:
        src_map = [None] * len(shape)
        for i, a in enumerate(graph[value].attrs["axes"]):
            src_map[a] = vmap[i]
        return access_for(graph, graph[value].inputs[0], src_map, rank)
    return access_for(graph, value, vmap, rank)


def packed_operand(graph, kernel, vector_bits: int, regs: int | None = None):
    """For a matmul kernel whose B is a constant with static sizes, the same matrix for every
    batch entry: (the constant's node id, B as the micro-kernel reads it: NR-wide column
    panels over all of K, panel p = B[:, p*NR:(p+1)*NR] row-major, zero-padded past N).
    Stored in the constant's place (plan_buffers), it spares every call packing B: ONNX
    Runtime prepacks its weights the same way. The KC and NC blocks are slices of it: block
    (n0, k0) starts at element n0*K + k0*NR, its panels K*NR apart."""
    if kernel.kind != "matmul":
        return None
    mm = next(n for n in kernel.nodes if OPS[graph[n].op].kind == MATMUL)
    node = graph[mm]
    if node.dtype not in ("float32", "float64"):
        return None
    nb = len(node.shape) - 2
    acc = operand_access(graph, set(kernel.nodes), node.inputs[1], tuple(node.shape[:nb]))
    root = storage_root(graph, acc.value)
    K, N = graph[node.inputs[0]].shape[-1], node.shape[-1]
    if OPS[graph[root].op].source != "constant" or is_inline_source(graph[root]) or \
            any(st != 0 for st in acc.strides[:nb]) or \
            not all(isinstance(v, int) for v in (K, N, *acc.strides[nb:])):
        return None
    flat = np.ascontiguousarray(graph[root].attrs["value"], dtype=node.dtype).reshape(-1)
    s_k, s_n = acc.strides[nb:]
    if K == 0 or N == 0 or (K - 1) * s_k + (N - 1) * s_n >= flat.size:
        return None
    b = np.lib.stride_tricks.as_strided(flat, (K, N), (s_k * flat.itemsize,
                                                         s_n * flat.itemsize), writeable=False)
    nr = tile_shape(node.dtype, vector_bits, N, regs)[1]
    panels = -(-N // nr)
    padded = np.zeros((K, panels * nr), node.dtype)
    padded[:, :N] = b
    return root, np.ascontiguousarray(padded.reshape(K, panels, nr).transpose(1, 0, 2))


class GemmBuilder:
    def __init__(self, kb):
        self.kb, self.b, self.e = kb, kb.b, kb.e
        g, k = kb.graph, kb.kernel
        self.g = g
        self.mm = next(n for n in k.nodes if OPS[g[n].op].kind == MATMUL)
        node = g[self.mm]
        self.dtype = node.dtype
        self.space = tuple(node.shape)
        self.nb = len(self.space) - 2
        a_id, b_id = node.inputs
        batch = self.space[:self.nb]
        self.A = operand_access(g, set(k.nodes), a_id, batch)
        self.B = operand_access(g, set(k.nodes), b_id, batch)
        self.M, self.N = self.space[-2], self.space[-1]
        # B is the same matrix for every batch entry (broadcast, or no batch axes)
        self.shared_b = self.nb > 0 and all(st == 0 for st in self.B.strides[:self.nb])
        # B stored in panels at compile time (packed_operand)
        self.prepacked = next((t for t, k in enumerate(kb.plan.kernels) if k is kb.kernel),
                              None) in kb.plan.packed
        self.K = g[a_id].shape[-1]
        self.mr, self.nr, self.lanes = tile_shape(self.dtype, kb.target.vector_bits, self.N,
                                                  kb.target.vector_regs)
        self.nrv = self.nr // self.lanes
        self.ety = MEM[self.dtype]
        self.vty = ir.VectorType(self.ety, self.lanes)
        self.isz = ITEMSIZE[self.dtype]
        # the partial sums of earlier KC blocks live in an output of C's dtype (outputs are
        # never the memory of an input); without one, K is not blocked
        self.acc_out = next((o for o in k.outputs if g[o].dtype == self.dtype), None)
        if isinstance(self.K, int):
            blocks = max(1, -(-self.K // KC_MAX))
            self.kc_max = max(1, -(-self.K // blocks))   # equal blocks
        else:
            self.kc_max = KC_MAX
        # An output written over an input (an in-place update in the epilogue) must see the
        # input intact when it is computed: K then runs in one block, with no partial sums.
        in_place = any(kb.plan.location[kb.plan.roots[o]].space == "input" for o in k.outputs)
        if self.acc_out is None or in_place:
            self.kc_max = None
        n_cap = NC_MAX if not isinstance(self.N, int) else min(NC_MAX, self.N)
        self.nc = max(self.nr, -(-n_cap // self.nr) * self.nr)
        self.mcp = max(1, MC_ROWS // self.mr)        # A panels per packed block
        self.mc = self.mcp * self.mr
        self.out_strides = contiguous_strides(self.space)

    # ------------------------------------------------------------ small helpers
    def c(self, v: int) -> ir.Constant:
        return ir.Constant(I64, v)

    def min(self, x, y):
        return _min(self.b, x, y)

    def max(self, x, y):
        return self.b.select(self.b.icmp_signed(">", x, y), x, y)

    def cdiv(self, x, y):
        return self.b.sdiv(self.b.add(x, self.b.sub(y, self.c(1))), y)

    def gep(self, base, index):
        return self.b.gep(base, [index], inbounds=True, source_etype=self.ety)

    def loop(self, n, body, name, start=None):
        _loop(self.b, n, body, name, start)

    def operand(self, acc: Access, batch_coords):
        """(pointer to the operand's [b, 0, 0] element, row stride, column stride)."""
        kb = self.kb
        zero = self.c(0)
        base = kb.address(acc, list(acc.strides), list(batch_coords) + [zero, zero])
        return base, kb.size(acc.strides[-2]), kb.size(acc.strides[-1])

    # ------------------------------------------------------------ the kernel
    def build(self):
        kb, b = self.kb, self.b
        # The blocking loops only call the shared routines; the epilogue is O(M*N) beside the
        # product's O(M*N*K): compiled for size, it costs nothing measurable and compiles
        # faster.
        kb.fn.attributes.add("optsize")
        M, N, K = kb.size(self.M), kb.size(self.N), kb.size(self.K)
        rows_total = numel(self.space[:-1])
        products = numel([*self.space, self.K])
        if isinstance(products, int) and products <= SMALL_PRODUCT and not self.prepacked:
            kb.parallel, kb.work = (rows_total, 1), products
            self.small_product(kb.lo, kb.hi, self.c(0), N)
            return
        # Threads split the rows of C, each packing all of B for itself; or, when A is read
        # in place (row-major) and C is wider than tall, the columns: then nothing is packed
        # twice. (A scan body run in bands of rows, cpu.row_separable, splits rows.)
        split_n = not kb.split_rows and self.nb == 0 and self.A.strides[-1] == 1 and \
            isinstance(self.N, int) and \
            self.N >= 4 * self.nr and (not isinstance(self.M, int) or self.M <= self.N)
        kb.parallel = (self.N, self.nr) if split_n else (rows_total, self.mr)
        kb.work = products
        if not isinstance(products, int) and not self.prepacked and \
                products.coef <= SMALL_PRODUCT:   # (the static factors alone can be small)
            # symbolic sizes (a batch): small products take the plain loops at run time. They
            # are below the pool's threshold (SERIAL_WORK), so this call has the whole range.
            small = b.icmp_signed("<=", kb.size(products), self.c(SMALL_PRODUCT))
            with b.if_then(small, likely=False):
                self.small_product(self.c(0), kb.size(rows_total), self.c(0), N) if split_n \
                    else self.small_product(kb.lo, kb.hi, self.c(0), N)
                b.ret_void()
        # scratch: packed B block, then packed A block
        kc = K if self.kc_max is None else self.min(K, self.c(self.kc_max))
        kc_alloc = self.max(kc, self.c(1))
        b_elems = self.c(0) if self.prepacked else b.mul(kc_alloc, self.c(self.nc))
        nbytes = b.mul(b.add(b_elems, b.mul(kc_alloc, self.c(self.mc))), self.c(self.isz))
        scratch_fn = _declare(b.module, "graphc_scratch", PTR, [I64])
        fail_fn = _declare(b.module, "graphc_fail", ir.VoidType(), [I32])
        buf = b.call(scratch_fn, [nbytes])
        with b.if_then(b.icmp_unsigned("==", buf, ir.Constant(PTR, None)), likely=False):
            b.call(fail_fn, [ir.Constant(I32, 1)])
            b.ret_void()
        bpack = buf
        apack = self.gep(buf, b_elems)
        # the tile the micro-kernel leaves its accumulators in (entry block: one alloca)
        here = b.block
        b.position_at_start(kb.fn.entry_basic_block)
        tile = b.alloca(self.vty, size=self.mr * self.nrv, name="tile")
        b.position_at_end(here)
        # micro-kernels by height: whole panels, one row (batch 1: a matrix-vector product)
        # and, for a static M, its last panel's height. Other last panels are packed with
        # zero rows. (Each height costs ~25 ms of LLVM time in every module with a matmul.)
        heights = {self.mr, 1}
        if isinstance(self.M, int) and self.M % self.mr:
            heights.add(self.M % self.mr)
        micros = {r: self.micro_kernel(r) for r in sorted(heights)}
        pack_a = self.packer("a", self.mr)
        pack_b = None if self.prepacked else self.packer("b", self.nr)
        partial = self.partial_sums() if self.acc_out is not None else None

        lo, hi = kb.lo, kb.hi
        nk = self.max(self.cdiv(K, kc_alloc), self.c(1))
        if split_n:
            first_batch, last_batch = self.c(0), self.c(1)
        else:
            first_batch = b.sdiv(lo, M)
            last_batch = b.add(b.sdiv(b.sub(hi, self.c(1)), M), self.c(1))

        def batch_entry(bi):
            """(batch coords, C's row range in it, A's pointer and strides) of entry bi."""
            bcoords = self._unflatten(bi)
            if split_n:
                m_lo, m_hi = self.c(0), M
            else:
                base = b.mul(bi, M)
                m_lo = self.max(b.sub(lo, base), self.c(0))
                m_hi = self.min(b.sub(hi, base), M)
            return bcoords, m_lo, m_hi, self.operand(self.A, bcoords)

        def blocks(n_lo, n_hi, b_operand, inner):
            """The (n, k) blocks of C's columns n_lo..n_hi: B's block packed, then inner."""
            b_ptr, b_sk, b_sn = b_operand

            def per_nblock(jb):
                n0 = b.add(n_lo, b.mul(jb, self.c(self.nc)))
                ncur = self.min(self.c(self.nc), b.sub(n_hi, n0))

                def per_kblock(pb):
                    k0 = b.mul(pb, kc_alloc)
                    kcur = self.min(kc, b.sub(K, k0))
                    if self.prepacked:   # the block's panels, K*NR apart
                        panels = (self.gep(b_ptr, b.add(b.mul(n0, K),
                                                        b.mul(k0, self.c(self.nr)))),
                                  b.mul(K, self.c(self.nr)))
                    else:   # B^T is packed like A: its panels run along n
                        b.call(pack_b, [bpack, b_ptr, b_sn, b_sk, n0, ncur, k0, kcur])
                        panels = (bpack, b.mul(kcur, self.c(self.nr)))
                    inner(panels, n0, ncur, k0, kcur, b.icmp_signed("==", pb, self.c(0)),
                          b.icmp_signed("==", pb, b.sub(nk, self.c(1))))
                self.loop(nk, per_kblock, "pc")
            self.loop(self.cdiv(b.sub(n_hi, n_lo), self.c(self.nc)), per_nblock, "jc")

        def row_blocks(entry, panels, n0, ncur, k0, kcur, first, last):
            """C's rows of one batch entry against the packed block of B (its first panel,
            and the distance between panels)."""
            bcoords, m_lo, m_hi, (a_ptr, a_sm, a_sk) = entry
            npan = self.cdiv(ncur, self.c(self.nr))
            nmb = self.cdiv(b.sub(m_hi, m_lo), self.c(self.mc))

            def per_mblock(ib):
                m0 = b.add(m_lo, b.mul(ib, self.c(self.mc)))
                mcur = self.min(self.c(self.mc), b.sub(m_hi, m0))
                mpan = self.cdiv(mcur, self.c(self.mr))
                # A with contiguous rows is read in place by the micro-kernel (its rows are
                # L2-resident across the B panels). Other layouts are packed.
                direct = b.icmp_signed("==", a_sk, self.c(1))
                whole = b.sdiv(mcur, self.c(self.mr))
                tail = b.srem(mcur, self.c(self.mr))
                has_height = ir.Constant(ir.IntType(1), 0)
                for r in micros:
                    has_height = b.or_(has_height, b.icmp_signed("==", tail, self.c(r)))
                # panels [0, full) are read in place, the rest packed
                full = b.select(direct, b.select(has_height, mpan, whole), self.c(0))
                packed_from = b.add(m0, b.mul(full, self.c(self.mr)))
                rest = b.sub(b.add(m0, mcur), packed_from)
                with b.if_then(b.icmp_signed(">", rest, self.c(0))):
                    b.call(pack_a, [apack, a_ptr, a_sm, a_sk, packed_from, rest, k0, kcur])

                def per_bpanel(jp):
                    bp = self.gep(panels[0], b.mul(jp, panels[1]))
                    col = b.add(n0, b.mul(jp, self.c(self.nr)))
                    cols = self.min(self.c(self.nr), b.sub(ncur, b.mul(jp, self.c(self.nr))))

                    def per_apanel(ip):
                        row = b.add(m0, b.mul(ip, self.c(self.mr)))
                        in_place = b.icmp_signed("<", ip, full)
                        ap = b.select(in_place, self.gep(a_ptr, b.add(
                            b.mul(row, a_sm), k0)), self.gep(apack, b.mul(
                                b.sub(ip, full), b.mul(kcur, self.c(self.mr)))))
                        a_rs = b.select(in_place, a_sm, self.c(1))
                        a_ks = b.select(in_place, self.c(1), self.c(self.mr))
                        rows = self.min(self.c(self.mr),
                                        b.sub(mcur, b.mul(ip, self.c(self.mr))))
                        height = b.select(in_place, rows, self.c(self.mr))
                        self.call_micro(micros, height, [ap, a_rs, a_ks, bp, kcur, tile])
                        if partial is None:
                            self.finish(tile, bcoords, row, rows, col, cols, None)
                            return
                        with b.if_else(last) as (then, otherwise):
                            with then:
                                self.finish(tile, bcoords, row, rows, col, cols, first)
                            with otherwise:
                                coords = list(bcoords) + [row, col]
                                dst = kb.address(Access(self.acc_out, ()),
                                                 self.out_strides, coords)
                                b.call(partial, [tile, dst, N, rows, cols, first])
                    self.loop(mpan, per_apanel, "ir")
                self.loop(npan, per_bpanel, "jr")
            self.loop(nmb, per_mblock, "ic")

        if self.shared_b and not split_n:
            # one B for every batch entry (x @ W on (batch, T, C) inputs): each block of B is
            # packed once, and every batch entry's rows multiply it
            def entries(*block):
                self.loop(last_batch, lambda bi: row_blocks(batch_entry(bi), *block),
                          "batch", start=first_batch)
            blocks(self.c(0), N, self.operand(self.B, [self.c(0)] * self.nb), entries)
            return

        def per_batch(bi):
            entry = batch_entry(bi)
            n_lo, n_hi = (lo, hi) if split_n else (self.c(0), N)
            blocks(n_lo, n_hi, self.operand(self.B, entry[0]),
                   lambda *block: row_blocks(entry, *block))
        self.loop(last_batch, per_batch, "batch", start=first_batch)

    def small_product(self, row_lo, row_hi, col_lo, col_hi):
        """C's flat rows [row_lo, row_hi) x columns [col_lo, col_hi) of a product too small
        for blocking to pay (at most SMALL_PRODUCT multiply-adds: the XOR net's layers): per
        element of C, one dot product over K read in place, then the epilogue. Packing and
        the micro-kernel's fixed costs were ~2,000 instructions a step there."""
        kb, b = self.kb, self.b
        suffix = {"float32": "f32", "float64": "f64"}[self.dtype]
        fmuladd = _declare(b.module, f"llvm.fmuladd.{suffix}", self.ety, [self.ety] * 3)
        M, K = kb.size(self.M), kb.size(self.K)

        def per_row(r):
            bi = b.sdiv(r, M)
            m = b.srem(r, M)
            bcoords = self._unflatten(bi)
            a_ptr, a_sm, a_sk = self.operand(self.A, bcoords)
            b_ptr, b_sk, b_sn = self.operand(self.B, bcoords)
            a_row = self.gep(a_ptr, b.mul(m, a_sm))

            def per_col(n):
                b_col = self.gep(b_ptr, b.mul(n, b_sn))
                acc = _loop(b, K, lambda k, carried: [b.call(fmuladd, [
                    b.load(self.gep(a_row, b.mul(k, a_sk)), align=self.isz, typ=self.ety),
                    b.load(self.gep(b_col, b.mul(k, b_sk)), align=self.isz, typ=self.ety),
                    carried[0]])], "k", init=[ir.Constant(self.ety, 0)])[0]
                kb.epilogue(self.mm, Val(acc, self.dtype), list(bcoords) + [m, n])
            self.loop(col_hi, per_col, "n", start=col_lo)
        self.loop(row_hi, per_row, "row", start=row_lo)

    def call_micro(self, micros, rows, args):
        """micros[rows](*args): the whole-panel kernel, or a switch to the last panel's."""
        b = self.b
        whole = b.icmp_signed("==", rows, self.c(self.mr))
        with b.if_else(whole, likely=True) as (then, otherwise):
            with then:
                b.call(micros[self.mr], args)
            with otherwise:
                done = b.function.append_basic_block("micro.done")
                switch = b.switch(rows, done)
                for r, fn in micros.items():
                    if r == self.mr:
                        continue
                    case = b.function.append_basic_block(f"micro.{r}")
                    switch.add_case(self.c(r), case)
                    b.position_at_end(case)
                    b.call(fn, args)
                    b.branch(done)
                b.position_at_end(done)

    def _unflatten(self, bi):
        """Batch coordinates of flat batch index bi."""
        coords = []
        for d in reversed(self.space[:self.nb]):
            size = self.kb.size(d)
            coords.append(self.b.srem(bi, size))
            bi = self.b.sdiv(bi, size)
        return coords[::-1]

    # ------------------------------------------------------------ shared functions
    # One copy per module of each (dtype, tile) variant: every matmul kernel calls them.
    def _function(self, name, args):
        fn = self.b.module.globals.get(name)
        if fn is not None:
            return fn, None
        fn = ir.Function(self.b.module, ir.FunctionType(ir.VoidType(), args), name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("noinline")  # one copy, shared by every matmul kernel
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    def packer(self, which: str, width: int):
        """pack(dst, src, s_panel, s_k, p0, pcur, k0, kcur):
        dst[p][k][i] = src[(p0 + p*width + i) * s_panel + (k0 + k) * s_k], zero-padded past
        pcur. For A the panels run along rows (s_panel = row stride); for B along columns."""
        name = f"graphc_pack_{self.dtype}_{width}"
        fn, b = self._function(name, [PTR, PTR, I64, I64, I64, I64, I64, I64])
        if b is None:
            return fn
        # Packing is O(K*N) beside the O(M*N*K) product: keep it small to compile (minsize:
        # no unrolling or runtime-checked vector versions); the common layout gets explicit
        # vector copies below.
        fn.attributes.add("minsize")
        fn.attributes.add("optsize")
        dst, src, s_p, s_k, p0, pcur, k0, kcur = fn.args
        ety, isz = self.ety, self.isz
        c = self.c
        zero = ir.Constant(ety, 0)

        def at(base, idx):
            return b.gep(base, [idx], inbounds=True, source_etype=ety)

        def panel(p, valid, k_inner: bool, pad: bool):
            """Copies the first `valid` lines of panel p (with pad: zeros in the rest)."""
            first = b.add(p0, b.mul(p, c(width)))
            out = b.mul(p, b.mul(kcur, c(width)))

            def copy(kk, i):
                s = at(src, b.add(b.mul(b.add(first, i), s_p), b.mul(b.add(k0, kk), s_k)))
                d = at(dst, b.add(out, b.add(b.mul(kk, c(width)), i)))
                b.store(b.load(s, align=isz, typ=ety), d, align=isz)
            if pad and width % self.lanes == 0:
                # zero the panel with whole vectors first, then copy the valid lines over
                vty = ir.VectorType(ety, self.lanes)

                def clear(kk):
                    row = b.add(out, b.mul(kk, c(width)))
                    for v in range(width // self.lanes):
                        b.store(ir.Constant(vty, None), at(dst, b.add(row, c(v * self.lanes))),
                                align=self.lanes * isz)
                _loop(b, kcur, clear, "zk")
                pad = False
            if k_inner:   # contiguous along k: read rows, write strided
                _loop(b, valid, lambda i: _loop(b, kcur, lambda kk: copy(kk, i), "k"), "i")
            else:
                _loop(b, kcur, lambda kk: _loop(b, valid, lambda i: copy(kk, i), "i"), "k")
            if pad:
                def zeros(kk):
                    _loop(b, c(width), lambda i: b.store(
                        zero, at(dst, b.add(out, b.add(b.mul(kk, c(width)), i))), align=isz),
                        "z", start=valid)
                _loop(b, kcur, zeros, "zk")

        def vector_panel(p):
            """Lines contiguous in memory (s_p == 1): each k row of the panel is one copy."""
            first = b.add(p0, b.mul(p, c(width)))
            out = b.mul(p, b.mul(kcur, c(width)))
            lanes = self.lanes
            vty = ir.VectorType(ety, lanes)

            def row(kk):
                s = b.add(first, b.mul(b.add(k0, kk), s_k))
                d = b.add(out, b.mul(kk, c(width)))
                for v in range(width // lanes):
                    x = b.load(at(src, b.add(s, c(v * lanes))), align=isz, typ=vty)
                    b.store(x, at(dst, b.add(d, c(v * lanes))), align=lanes * isz)
            _loop(b, kcur, row, "k")

        full = b.sdiv(pcur, c(width))
        rest = b.srem(pcur, c(width))
        along_k = b.icmp_signed("==", s_k, c(1))
        if width % self.lanes == 0:
            with b.if_then(b.icmp_signed("==", s_p, c(1))):
                _loop(b, full, vector_panel, "p")
                with b.if_then(b.icmp_signed("!=", rest, c(0))):
                    panel(full, rest, False, True)
                b.ret_void()
        with b.if_else(along_k) as (then, otherwise):
            with then:
                _loop(b, full, lambda p: panel(p, c(width), True, False), "p")
                with b.if_then(b.icmp_signed("!=", rest, c(0))):
                    panel(full, rest, True, True)
            with otherwise:
                _loop(b, full, lambda p: panel(p, c(width), False, False), "p")
                with b.if_then(b.icmp_signed("!=", rest, c(0))):
                    panel(full, rest, False, True)
        b.ret_void()
        return fn

    def micro_kernel(self, mr: int):
        """micro(a, a_rs, a_ks, bp, kc, tile): tile[mr][NR] = sum_k a[:mr, k] (outer)
        bp[k][:NR], with a[i, k] at a[i*a_rs + k*a_ks] (a packed panel: a_rs=1, a_ks=MR;
        rows of A in place: a_rs=row stride, a_ks=1). The mr x NR/lanes accumulators stay in
        vector registers. mr = MR for whole panels; the last panel of a C whose rows are not
        a multiple of MR gets its own mr (batch 1, or 32 rows in 6-row panels), so no FMA
        is spent on zero rows."""
        nrv, lanes = self.nrv, self.lanes
        fn, b = self._function(f"graphc_micro_{self.dtype}_{mr}x{self.nr}",
                               [PTR, I64, I64, PTR, I64, PTR])
        if b is None:
            return fn
        ap, a_rs, a_ks, bp, kcur, tile = fn.args
        for arg in (ap, bp, tile):
            arg.add_attribute("noalias")
        suffix = {"float32": "f32", "float64": "f64"}[self.dtype]
        fmuladd = _declare(b.module, f"llvm.fmuladd.v{lanes}{suffix}", self.vty, [self.vty] * 3)
        zero = ir.Constant(self.vty, None)
        splat_mask = ir.Constant(ir.VectorType(I32, lanes), [0] * lanes)
        vec_align = lanes * self.isz
        c = self.c

        def at(base, idx, ty):
            return b.gep(base, [idx], inbounds=True, source_etype=ty)

        rows = [at(ap, b.mul(c(i), a_rs), self.ety) for i in range(mr)]

        def step(kk, accs):
            row = b.mul(kk, c(self.nr))
            # bp may be a prepacked constant, which a C caller need not align
            bv = [b.load(at(bp, b.add(row, c(j * lanes)), self.ety), align=self.isz,
                         typ=self.vty) for j in range(nrv)]
            ak = b.mul(kk, a_ks)
            out = []
            for i in range(mr):
                a = b.load(at(rows[i], ak, self.ety), align=self.isz, typ=self.ety)
                splat = b.shuffle_vector(b.insert_element(ir.Constant(self.vty, ir.Undefined), a,
                                                          ir.Constant(I32, 0)),
                                         ir.Constant(self.vty, ir.Undefined), splat_mask)
                for j in range(nrv):
                    out.append(b.call(fmuladd, [splat, bv[j], accs[i * nrv + j]]))
            return out

        accs = _loop(b, kcur, step, "k", init=[zero] * (mr * nrv))
        for t, acc in enumerate(accs):
            b.store(acc, at(tile, c(t), self.vty), align=vec_align)
        b.ret_void()
        return fn

    def partial_sums(self):
        """partial(tile, dst, ld, rows, cols, first): dst[i*ld + j] = tile[i][j]
        (+ dst[i*ld + j] unless first): the sums of the KC blocks so far."""
        fn, b = self._function(f"graphc_partial_{self.dtype}_{self.mr}x{self.nr}",
                               [PTR, PTR, I64, I64, I64, ir.IntType(1)])
        if b is None:
            return fn
        tile, dst, ld, rows, cols, first = fn.args
        for arg in (tile, dst):
            arg.add_attribute("noalias")
        ety, isz, c = self.ety, self.isz, self.c
        fn.attributes.add("optsize")

        def at(base, idx):
            return b.gep(base, [idx], inbounds=True, source_etype=ety)

        def element(i, j):
            v = b.load(at(tile, b.add(b.mul(i, c(self.nr)), j)), align=isz, typ=ety)
            p = at(dst, b.add(b.mul(i, ld), j))
            prev = b.select(first, ir.Constant(ety, 0), b.load(p, align=isz, typ=ety))
            b.store(b.fadd(prev, v), p, align=isz)

        def row(i):
            """A whole tile row: NR/lanes vector adds (a scalar loop cost as much as the
            micro-kernel's last 10% of K blocks)."""
            for v in range(self.nrv):
                t = b.load(at(tile, b.add(b.mul(i, c(self.nr)), c(v * self.lanes))),
                           align=self.lanes * isz, typ=self.vty)
                p = at(dst, b.add(b.mul(i, ld), c(v * self.lanes)))
                prev = b.select(first, ir.Constant(self.vty, None),
                                b.load(p, align=isz, typ=self.vty))
                b.store(b.fadd(prev, t), p, align=isz)
        with b.if_else(b.icmp_signed("==", cols, c(self.nr))) as (whole, edge):
            with whole:
                _loop(b, rows, row, "i")
            with edge:
                _loop(b, rows, lambda i: _loop(b, cols, lambda j: element(i, j), "j"), "i")
        b.ret_void()
        return fn

    # ------------------------------------------------------------ epilogue
    def finish(self, tile, bcoords, row, rows, col, cols, first):
        """The last KC block: C = partial sums + tile, then the epilogue, stored."""
        kb, b = self.kb, self.b

        def element(i, j):
            t = self.gep(tile, b.add(b.mul(i, self.c(self.nr)), j))
            v = b.load(t, align=self.isz, typ=self.ety)
            coords = list(bcoords) + [b.add(row, i), b.add(col, j)]
            if first is not None:
                p = kb.address(Access(self.acc_out, ()), self.out_strides, coords)
                prev = b.select(first, ir.Constant(self.ety, 0),
                                b.load(p, align=self.isz, typ=self.ety))
                v = b.fadd(prev, v)
            kb.epilogue(self.mm, Val(v, self.dtype), coords)
        self.loop(rows, lambda i: self.loop(cols, lambda j: element(i, j), "wj"), "wi")


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _loop(b: ir.IRBuilder, n, body, name, start=None, init=None):
    """for i in range(start or 0, n): body(i) (or carried = body(i, carried) with `init`)."""
    fn = b.function
    pre = b.block
    head = fn.append_basic_block(f"{name}.head")
    body_bb = fn.append_basic_block(f"{name}.body")
    exit_bb = fn.append_basic_block(f"{name}.exit")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name=name)
    i.add_incoming(ir.Constant(I64, 0) if start is None else start, pre)
    phis = []
    for v in init or []:
        p = b.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    b.cbranch(b.icmp_signed("<", i, n), body_bb, exit_bb)
    b.position_at_end(body_bb)
    new = body(i, phis) if init is not None else body(i)
    nxt = b.add(i, ir.Constant(I64, 1), flags=("nuw", "nsw"))
    latch = b.block
    i.add_incoming(nxt, latch)
    for p, v in zip(phis, new if init is not None else []):
        p.add_incoming(v, latch)
    b.branch(head)
    b.position_at_end(exit_bb)
    return phis


def _declare(module, name, ret, args):
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, ir.FunctionType(ret, args), name)


__all__ = ["GemmBuilder", "tile_shape", "operand_access"]
