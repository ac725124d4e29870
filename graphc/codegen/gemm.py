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
Packed panels are zero-padded, so the micro-kernel always runs full tiles; partial tiles
only show in the write-back loop (plain scalar code that LLVM vectorizes).
"""
from __future__ import annotations

import math

import llvmlite.ir as ir

from ..ir.types import ITEMSIZE, numel
from ..passes.fusion import broadcast_map
from .emitter import I32, I64, MEM, Val
from .lower import Access, access_for, contiguous_strides

PTR = ir.PointerType()
KC_MAX = 512          # depth of one packed block
MC_ROWS = 96          # rows of A packed at once
NC_MAX = 2048         # columns of B packed at once
# (vector registers, vectors per B row) -> rows of the register tile
TILE_ROWS = {(32, 4): 6, (32, 3): 8, (32, 2): 12, (32, 1): 16, (16, 2): 6, (16, 1): 8}


def tile_shape(dtype: str, vector_bits: int, n) -> tuple[int, int, int]:
    """(MR, NR, lanes) for a C with n columns (an int, or a symbolic size)."""
    lanes = max(1, vector_bits // (8 * ITEMSIZE[dtype]))
    regs = 32 if vector_bits >= 512 else 16
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
    if value in members and graph[value].op == "transpose":
        src_map = [None] * len(shape)
        for i, a in enumerate(graph[value].attrs["axes"]):
            src_map[a] = vmap[i]
        return access_for(graph, graph[value].inputs[0], src_map, rank)
    return access_for(graph, value, vmap, rank)


class GemmBuilder:
    def __init__(self, kb, vector_bits: int):
        self.kb, self.b, self.e = kb, kb.b, kb.e
        g, k = kb.graph, kb.kernel
        self.g = g
        self.mm = next(n for n in k.nodes if g[n].op == "matmul")
        node = g[self.mm]
        self.dtype = node.dtype
        self.space = tuple(node.shape)
        self.nb = len(self.space) - 2
        a_id, b_id = node.inputs
        batch = self.space[:self.nb]
        self.A = operand_access(g, set(k.nodes), a_id, batch)
        self.B = operand_access(g, set(k.nodes), b_id, batch)
        self.M, self.N = self.space[-2], self.space[-1]
        self.K = g[a_id].shape[-1]
        self.mr, self.nr, self.lanes = tile_shape(self.dtype, vector_bits, self.N)
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
        if self.acc_out is None:
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
        return self.b.select(self.b.icmp_signed("<", x, y), x, y)

    def max(self, x, y):
        return self.b.select(self.b.icmp_signed(">", x, y), x, y)

    def cdiv(self, x, y):
        return self.b.sdiv(self.b.add(x, self.b.sub(y, self.c(1))), y)

    def gep(self, base, index):
        return self.b.gep(base, [index], inbounds=True, source_etype=self.ety)

    def loop(self, n, body, name, start=None):
        self.kb.loop(n, [], lambda i, _: (body(i), [])[1], name=name, start=start)

    def operand_ptr(self, acc: Access, batch_coords, row, col):
        strides = list(acc.strides)
        return self.kb.address(acc, strides, list(batch_coords) + [row, col])

    # ------------------------------------------------------------ the kernel
    def build(self):
        kb, b = self.kb, self.b
        M, N, K = kb.size(self.M), kb.size(self.N), kb.size(self.K)
        rows_total = numel(self.space[:-1])
        kb.parallel = (rows_total, self.mr)
        kb.work = numel([*self.space, self.K])
        # scratch: packed B block, then packed A block
        kc = K if self.kc_max is None else self.min(K, self.c(self.kc_max))
        kc_alloc = self.max(kc, self.c(1))
        b_elems = b.mul(kc_alloc, self.c(self.nc))
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

        lo, hi = kb.lo, kb.hi
        nk = self.max(self.cdiv(K, kc_alloc), self.c(1))
        first_batch = b.sdiv(lo, M)
        last_batch = b.add(b.sdiv(b.sub(hi, self.c(1)), M), self.c(1))

        def per_batch(bi):
            bcoords = self._unflatten(bi)
            base = b.mul(bi, M)
            m_lo = self.max(b.sub(lo, base), self.c(0))
            m_hi = self.min(b.sub(hi, base), M)

            def per_nblock(jb):
                n0 = b.mul(jb, self.c(self.nc))
                ncur = self.min(self.c(self.nc), b.sub(N, n0))
                npan = self.cdiv(ncur, self.c(self.nr))

                def per_kblock(pb):
                    k0 = b.mul(pb, kc_alloc)
                    kcur = self.min(kc, b.sub(K, k0))
                    first = b.icmp_signed("==", pb, self.c(0))
                    last = b.icmp_signed("==", pb, b.sub(nk, self.c(1)))
                    self.pack_b(bpack, bcoords, n0, ncur, k0, kcur, N)
                    nmb = self.cdiv(b.sub(m_hi, m_lo), self.c(self.mc))

                    def per_mblock(ib):
                        m0 = b.add(m_lo, b.mul(ib, self.c(self.mc)))
                        mcur = self.min(self.c(self.mc), b.sub(m_hi, m0))
                        mpan = self.cdiv(mcur, self.c(self.mr))
                        self.pack_a(apack, bcoords, m0, mcur, k0, kcur)

                        def per_bpanel(jp):
                            bp = self.gep(bpack, b.mul(jp, b.mul(kcur, self.c(self.nr))))
                            col = b.add(n0, b.mul(jp, self.c(self.nr)))
                            cols = self.min(self.c(self.nr), b.sub(ncur, b.mul(jp, self.c(self.nr))))

                            def per_apanel(ip):
                                ap = self.gep(apack, b.mul(ip, b.mul(kcur, self.c(self.mr))))
                                row = b.add(m0, b.mul(ip, self.c(self.mr)))
                                rows = self.min(self.c(self.mr),
                                                b.sub(mcur, b.mul(ip, self.c(self.mr))))
                                self.micro(ap, bp, kcur, tile)
                                self.write_back(tile, bcoords, row, rows, col, cols, first, last)
                            self.loop(mpan, per_apanel, "ir")
                        self.loop(npan, per_bpanel, "jr")
                    self.loop(nmb, per_mblock, "ic")
                self.loop(nk, per_kblock, "pc")
            self.loop(self.cdiv(N, self.c(self.nc)), per_nblock, "jc")

        self.loop(last_batch, per_batch, "batch", start=first_batch)

    def _unflatten(self, bi):
        """Batch coordinates of flat batch index bi."""
        coords = []
        for d in reversed(self.space[:self.nb]):
            size = self.kb.size(d)
            coords.append(self.b.srem(bi, size))
            bi = self.b.sdiv(bi, size)
        return coords[::-1]

    # ------------------------------------------------------------ packing
    def pack_b(self, dst, bcoords, n0, ncur, k0, kcur, N):
        """dst[p][k][j] = B[k0 + k, n0 + p*NR + j], zero past the last column."""
        b, nr = self.b, self.nr
        zero = ir.Constant(self.ety, 0)
        contiguous_n = self.B.strides[-1] == 1

        def element(p, kk, j):
            n = b.add(b.add(n0, b.mul(p, self.c(nr))), j)
            src = self.operand_ptr(self.B, bcoords, b.add(k0, kk), n)
            d = self.gep(dst, b.add(b.mul(b.add(b.mul(p, kcur), kk), self.c(nr)), j))
            return n, src, d

        def full(p):
            def copy(kk, j):
                _, src, d = element(p, kk, j)
                b.store(b.load(src, align=self.isz, typ=self.ety), d, align=self.isz)
            self._loops2(kcur, self.c(nr), copy, contiguous_n)

        def partial(p):
            def copy(kk, j):
                n, src, d = element(p, kk, j)
                inside = b.icmp_signed("<", n, b.add(n0, ncur))
                with b.if_else(inside) as (then, otherwise):
                    with then:
                        b.store(b.load(src, align=self.isz, typ=self.ety), d, align=self.isz)
                    with otherwise:
                        b.store(zero, d, align=self.isz)
            self._loops2(kcur, self.c(nr), copy, True)

        full_panels = b.sdiv(ncur, self.c(nr))
        self.loop(full_panels, full, "pb")
        with b.if_then(b.icmp_signed("!=", b.srem(ncur, self.c(nr)), self.c(0))):
            partial(full_panels)

    def pack_a(self, dst, bcoords, m0, mcur, k0, kcur):
        """dst[p][k][i] = A[m0 + p*MR + i, k0 + k], zero past the last row."""
        b, mr = self.b, self.mr
        zero = ir.Constant(self.ety, 0)
        contiguous_k = self.A.strides[-1] == 1

        def element(p, kk, i):
            m = b.add(b.add(m0, b.mul(p, self.c(mr))), i)
            src = self.operand_ptr(self.A, bcoords, m, b.add(k0, kk))
            d = self.gep(dst, b.add(b.mul(b.add(b.mul(p, kcur), kk), self.c(mr)), i))
            return m, src, d

        def full(p):
            def copy(kk, i):
                _, src, d = element(p, kk, i)
                b.store(b.load(src, align=self.isz, typ=self.ety), d, align=self.isz)
            # k innermost when A is row-major: contiguous reads
            self._loops2(kcur, self.c(mr), copy, not contiguous_k)

        def partial(p):
            def copy(kk, i):
                m, src, d = element(p, kk, i)
                inside = b.icmp_signed("<", m, b.add(m0, mcur))
                with b.if_else(inside) as (then, otherwise):
                    with then:
                        b.store(b.load(src, align=self.isz, typ=self.ety), d, align=self.isz)
                    with otherwise:
                        b.store(zero, d, align=self.isz)
            self._loops2(kcur, self.c(mr), copy, True)

        full_panels = b.sdiv(mcur, self.c(mr))
        self.loop(full_panels, full, "pa")
        with b.if_then(b.icmp_signed("!=", b.srem(mcur, self.c(mr)), self.c(0))):
            partial(full_panels)

    def _loops2(self, n_outer, n_inner, body, inner_last: bool):
        """for k < n_outer: for j < n_inner: body(k, j), or with the loops swapped."""
        if inner_last:
            self.loop(n_outer, lambda kk: self.loop(n_inner, lambda j: body(kk, j), "pj"), "pk")
        else:
            self.loop(n_inner, lambda j: self.loop(n_outer, lambda kk: body(kk, j), "pk"), "pj")

    # ------------------------------------------------------------ micro-kernel
    def micro(self, ap, bp, kcur, tile):
        """tile[MR][NR] = sum_k ap[k][:MR] (outer) bp[k][:NR], in vector registers."""
        b, mr, nrv, lanes = self.b, self.mr, self.nrv, self.lanes
        suffix = {"float32": "f32", "float64": "f64"}[self.dtype]
        fmuladd = _declare(b.module, f"llvm.fmuladd.v{lanes}{suffix}", self.vty, [self.vty] * 3)
        zero = ir.Constant(self.vty, None)
        splat_mask = ir.Constant(ir.VectorType(I32, lanes), [0] * lanes)
        vec_align = lanes * self.isz

        def step(kk, accs):
            row = b.mul(kk, self.c(self.nr))
            bv = [b.load(self.gep(bp, b.add(row, self.c(j * lanes))), align=vec_align,
                         typ=self.vty) for j in range(nrv)]
            arow = b.mul(kk, self.c(mr))
            out = []
            for i in range(mr):
                a = b.load(self.gep(ap, b.add(arow, self.c(i))), align=self.isz, typ=self.ety)
                splat = b.shuffle_vector(b.insert_element(ir.Constant(self.vty, ir.Undefined), a,
                                                          ir.Constant(I32, 0)),
                                         ir.Constant(self.vty, ir.Undefined), splat_mask)
                for j in range(nrv):
                    acc = accs[i * nrv + j]
                    out.append(Val(b.call(fmuladd, [splat, bv[j], acc.v]), self.dtype))
            return out

        accs = self.kb.loop(kcur, [Val(zero, self.dtype)] * (mr * nrv), step, name="k")
        for t, acc in enumerate(accs):
            p = b.gep(tile, [self.c(t)], inbounds=True, source_etype=self.vty)
            b.store(acc.v, p, align=vec_align)

    # ------------------------------------------------------------ write-back and epilogue
    def write_back(self, tile, bcoords, row, rows, col, cols, first, last):
        kb, b, g = self.kb, self.b, self.g
        k = kb.kernel

        def value(i, j):
            t = self.gep(tile, b.add(b.mul(i, self.c(self.nr)), j))
            v = b.load(t, align=self.isz, typ=self.ety)
            if self.acc_out is None:
                return v, None
            coords = list(bcoords) + [b.add(row, i), b.add(col, j)]
            p = kb.address(Access(self.acc_out, ()), self.out_strides, coords)
            prev = b.load(p, align=self.isz, typ=self.ety)
            prev = b.select(first, ir.Constant(self.ety, 0), prev)
            return b.fadd(prev, v), p

        def finish(i, j):
            v, _ = value(i, j)
            coords = list(bcoords) + [b.add(row, i), b.add(col, j)]
            memo = {self.mm: Val(v, self.dtype)}

            def load(n, pos):
                src = g[n].inputs[pos]
                amap = broadcast_map(g[src].shape, self.space, tuple(range(len(self.space))))
                acc = access_for(g, src, amap, len(self.space))
                return kb.leaf(src, acc.strides, coords, None)
            for o in k.outputs:
                kb.store(o, self.out_strides, coords, kb.evaluate(o, memo, load))

        def partial_sum(i, j):
            v, p = value(i, j)
            b.store(v, p, align=self.isz)

        if self.acc_out is None:  # K is not blocked: every block is the last
            self.loop(rows, lambda i: self.loop(cols, lambda j: finish(i, j), "wj"), "wi")
            return
        with b.if_else(last) as (then, otherwise):
            with then:
                self.loop(rows, lambda i: self.loop(cols, lambda j: finish(i, j), "wj"), "wi")
            with otherwise:
                self.loop(rows, lambda i: self.loop(cols, lambda j: partial_sum(i, j), "sj"), "si")


def _declare(module, name, ret, args):
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, ir.FunctionType(ret, args), name)


__all__ = ["GemmBuilder", "tile_shape", "operand_access", "math"]
