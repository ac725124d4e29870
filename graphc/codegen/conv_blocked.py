"""The channel-blocked direct convolution (CPU): vectors along output channels.

out[n, o, h, w] = sum_{c, kh, kw} w[o, c, kh, kw] x[n, c, h sh + kh dh - lh, w sw + kw dw - lw]
(ops/conv.py conv_direct). The weights are a constant, packed at compile time
(packed_conv_weights) as [O / B][KH][C][KW][B], B = the block of output channels (one or
two vectors of lanes), zero-padded past O. One call of the kernel handles output rows
(n, h, channel block), x and the outputs staying NCHW:

    for each tile of P output columns of the row:
      P x B/lanes accumulator vectors (one vector of B channels per column) in registers
      for kh in the rows of the window inside x, for c in C:
        the KW x B/lanes weight vectors, then per column and kw one scalar of x,
        broadcast, and B/lanes multiply-adds (columns whose x lies in the padding are left
        out: the tile's column offset is known at compile time, or the tile lies inside)
      the accumulators go to a stack row [OW][B]
    the row transposed in registers to [B][OW], then the fused epilogue (bias, activation,
    residual...) channel by channel along the row, where NCHW is contiguous

No load of x is masked or shuffled: strides and dilation are scalar addressing. Rows of the
window outside x are skipped by the kh loop's bounds. Each step prefetches the lines the next
output row reads (rows a channel apart, which the hardware prefetchers miss).
"""
from __future__ import annotations

import llvmlite.ir as ir
import numpy as np

from ..ir.types import ITEMSIZE, size_mul
from ..ops.registry import CONV, OPS
from ..passes.simplify import is_inline_source
from .emitter import I32, I64, MEM, REG, Val

PTR = ir.PointerType()
# the largest stack row of accumulators (bytes): wider rows keep the column-vector kernel
ROW_BYTES_MAX = 1 << 17


def conv_tile(dtype: str, vector_bits: int, o: int, kw: int, ow: int,
              regs: int | None = None) -> tuple[int, int, int]:
    """(lanes, vectors of channels per block V, columns per tile P) for O output channels,
    KW columns of window and OW output columns: P * V accumulators, KW * V weight vectors
    and two broadcasts fit in the vector registers. Two vectors a block where that wastes
    no more lanes than one (fewer loads per multiply-add) and leaves 4 columns a tile."""
    lanes = max(1, vector_bits // (8 * ITEMSIZE[dtype]))
    regs = regs or (32 if vector_bits >= 512 else 16)
    v = 2 if (_used(o, 2 * lanes) >= _used(o, lanes) and
              (regs - 2 * kw - 2) // 2 >= 4) else 1
    p_max = max(2, (regs - kw * v - 2) // v)
    tiles = -(-ow // p_max)
    return lanes, v, -(-ow // tiles)


def _used(o: int, block: int) -> float:
    """The fraction of the blocks' channels that are real output channels."""
    return o / (-(-o // block) * block)


def blocked_shape(graph, kernel, vector_bits: int, regs: int | None = None):
    """The conv node of a kernel the blocked kernel runs, else None: float, static sizes
    but the batch, at least 32 multiply-adds an output and at least 3/4 of the blocks'
    lanes real channels. (A 3-channel 3x3 layer, 27 an output, and 20 output channels in
    blocks of 32 ran faster on the column-vector kernel, builder.build_conv: there the
    row's transposition and epilogue, or the wasted lanes, outweigh what it saves.)"""
    if kernel.kind != "conv":
        return None
    (cid,) = [n for n in kernel.nodes if OPS[graph[n].op].kind == CONV]
    node = graph[cid]
    x_id = node.inputs[0]
    if node.dtype not in ("float32", "float64"):
        return None
    sizes = (*node.shape[1:], *graph[x_id].shape[1:])
    if not all(isinstance(s, int) and s > 0 for s in sizes):
        return None
    (_, o, _, ow), (c, _, _) = node.shape, graph[x_id].shape[1:]
    kh, kw = node.attrs["kernel"]
    lanes, v, _ = conv_tile(node.dtype, vector_bits, o, kw, ow, regs)
    if lanes < 4 or c * kh * kw < 32 or _used(o, v * lanes) < 0.75 or \
            -(-ow // lanes) * v * vector_bits // 8 > ROW_BYTES_MAX:
        return None
    return cid


def packed_conv_weights(graph, kernel, vector_bits: int, regs: int | None = None):
    """For a conv kernel the blocked kernel runs, with a constant weight: (the weight's node
    id, the weights as [O / B][KH][C][KW][B], zero-padded past O), else None."""
    cid = blocked_shape(graph, kernel, vector_bits, regs)
    if cid is None:
        return None
    node = graph[cid]
    w_id = node.inputs[1]
    wnode = graph[w_id]
    if OPS[wnode.op].source != "constant" or is_inline_source(wnode):
        return None
    w = np.asarray(wnode.attrs["value"], dtype=node.dtype)
    O, C, KH, KW = w.shape
    lanes, v, _ = conv_tile(node.dtype, vector_bits, O, KW, node.shape[3], regs)
    B = v * lanes
    blocks = -(-O // B)
    padded = np.zeros((blocks * B, C, KH, KW), node.dtype)
    padded[:O] = w
    # [ob, b, c, kh, kw] -> [ob, kh, c, kw, b]
    packed = padded.reshape(blocks, B, C, KH, KW).transpose(0, 3, 2, 4, 1)
    return w_id, np.ascontiguousarray(packed)


def build_blocked_conv(kb) -> bool:
    """Emits the kernel into kb (a CPU KernelBuilder) when its weights were packed at compile
    time; False (nothing emitted) otherwise."""
    cid = blocked_shape(kb.graph, kb.kernel, kb.target.vector_bits, kb.target.vector_regs)
    index = next(t for t, k in enumerate(kb.plan.kernels) if k is kb.kernel)
    if cid is None or index not in kb.plan.packed:
        return False
    _BlockedConv(kb, cid).build()
    return True


class _BlockedConv:
    def __init__(self, kb, cid: int):
        self.kb, self.b, self.cid = kb, kb.b, cid
        g = kb.graph
        node = g[cid]
        self.x_id, w_id = node.inputs
        at = node.attrs
        (self.KH, self.KW), (self.dh, self.dw), (self.lh, self.lw) = \
            at["kernel"], at["dilation"], at["pad_lo"]
        self.sh, self.sw = at.get("stride", (1, 1))
        self.N, self.O, self.OH, self.OW = node.shape
        self.C, self.H, self.W = g[self.x_id].shape[1:]
        self.dtype = node.dtype
        self.lanes, self.v, self.P = conv_tile(self.dtype, kb.target.vector_bits, self.O,
                                               self.KW, self.OW, kb.target.vector_regs)
        self.B = self.v * self.lanes
        self.ety = MEM[self.dtype]
        self.vty = ir.VectorType(REG[self.dtype], self.lanes)
        self.isz = ITEMSIZE[self.dtype]
        self.x_ptr = kb.ptr[kb.plan.roots[self.x_id]]
        self.w_ptr = kb.ptr[kb.plan.roots[w_id]]
        suffix = {"float32": "f32", "float64": "f64"}[self.dtype]
        self._prefetch = kb._intrinsic("llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
        self.fma = kb._intrinsic(f"llvm.fmuladd.v{self.lanes}{suffix}", self.vty,
                                 [self.vty] * 3)

    def c(self, v: int) -> ir.Constant:
        return ir.Constant(I64, v)

    def build(self):
        kb = self.kb
        # the row's sums, column-major then (transpose) channel-major; columns padded to
        # whole vectors
        self.OWpad = -(-self.OW // self.lanes) * self.lanes
        self.row_acc = kb._scratch(self.dtype, self.OWpad * self.B, "conv_row")
        self.row_t = kb._scratch(self.dtype, self.OWpad * self.B, "conv_row_t")
        blocks = -(-self.O // self.B)
        kb.work = size_mul(self.N, self.O * self.OH * self.OW * self.C * self.KH * self.KW * 2)
        self.blocks = blocks
        # one flat loop over the (n, h, block) rows, so that threads share a batch of one
        kb.parallel_nest([size_mul(self.N, blocks * self.OH)], self.row, name="r")

    # ------------------------------------------------------------------ one output row
    def row(self, coords, _):
        b, c = self.b, self.c
        (r,) = coords
        # (n, h, block): the blocks of a row run one after another, on x rows still in L1
        ob = b.urem(r, c(self.blocks))
        rest = b.udiv(r, c(self.blocks))
        h, n = b.urem(rest, c(self.OH)), b.udiv(rest, c(self.OH))
        # the window's rows inside x: kh in [lo, hi), from h sh + kh dh - lh in [0, H)
        top = b.sub(c(self.lh), b.mul(h, c(self.sh)))          # kh dh >= top
        lo = b.select(b.icmp_signed(">", top, c(0)),
                      b.sdiv(b.add(top, c(self.dh - 1)), c(self.dh)), c(0))
        bottom = b.add(top, c(self.H - 1))                      # kh dh <= bottom
        below = b.icmp_signed("<", bottom, c(0))
        hi = b.select(below, c(0), b.add(b.sdiv(b.select(below, c(0), bottom), c(self.dh)),
                                         c(1)))
        hi = b.select(b.icmp_signed(">", hi, c(self.KH)), c(self.KH), hi)
        for w0, count, width in self.runs():
            if count == 1:
                self.tile(n, ob, h, lo, hi, c(w0), width)
            else:
                kb = self.kb
                kb.loop(c(count), [], lambda i, _, w0=w0, width=width: self.tile(
                    n, ob, h, lo, hi, b.add(c(w0), b.mul(i, c(width))), width) or [],
                    name="wt")
        self.epilogue(n, ob, h)
        return []

    def runs(self):
        """The row's tiles as (first column, count, width): consecutive tiles whose columns
        all read inside x share one loop; the others (at the padding) are written out."""
        tiles = [(w0, min(self.P, self.OW - w0)) for w0 in range(0, self.OW, self.P)]
        out: list[list[int]] = []
        for w0, width in tiles:
            inside = not self.skipped(w0, width)
            if out and inside and out[-1][3] and out[-1][2] == width:
                out[-1][1] += 1
            else:
                out.append([w0, 1, width, inside])
        return [(w0, count, width) for w0, count, width, _ in out]

    def skipped(self, w0: int, width: int) -> set:
        """(column in tile, kw) pairs of a tile at column w0 whose x lies in the padding."""
        return {(p, kw) for p in range(width) for kw in range(self.KW)
                if not 0 <= (w0 + p) * self.sw + kw * self.dw - self.lw < self.W}

    def tile(self, n, ob, h, lo, hi, w0, width: int):
        """Accumulates one tile of `width` columns and stores it in the row's stack array."""
        b, c, kb = self.b, self.c, self.kb
        skip = self.skipped(w0.constant, width) if isinstance(w0, ir.Constant) else set()
        zero = Val(ir.Constant(self.vty, None), self.dtype)
        C, H, W, KW, B = self.C, self.H, self.W, self.KW, self.B

        span = (width - 1) * self.sw + (KW - 1) * self.dw + 1      # columns of x read

        def kh_step(kh, acc):
            ih = b.add(b.sub(b.mul(h, c(self.sh)), c(self.lh)), b.mul(kh, c(self.dh)))
            # x[n, 0, ih, w0 sw - lw] and w[ob, kh, 0, 0, 0]
            x_base = b.add(b.mul(b.add(b.mul(n, c(C * H)), ih), c(W)),
                           b.sub(b.mul(w0, c(self.sw)), c(self.lw)))
            w_base = b.mul(b.add(b.mul(ob, c(self.KH)), kh), c(C * KW * B))

            def channel(ch, acc):
                acc = [a.v for a in acc]
                x_row = b.add(x_base, b.mul(ch, c(H * W)))
                # this tap's x for the next output row (sh rows down): streams of rows a
                # channel (4 KB and more) apart, which the hardware prefetchers miss
                for col in sorted({0, span - 1}):
                    self.prefetch(self.x_ptr, b.add(x_row, c(self.sh * W + col)), write=False)
                w_row = b.add(w_base, b.mul(ch, c(KW * B)))
                # every kw's weights stay in registers while the columns run in order: the
                # broadcast x of column p, tap kw is the one of column p + 1, tap kw - 1
                ws = [[b.load(b.gep(self.w_ptr, [b.add(w_row, c(kw * B + j * self.lanes))],
                                    inbounds=True, source_etype=self.ety),
                              typ=self.vty, align=self.isz) for j in range(self.v)]
                      for kw in range(KW)]
                for p in range(width):
                    for kw in range(KW):
                        if (p, kw) in skip:
                            continue
                        off = b.add(x_row, c(p * self.sw + kw * self.dw))
                        xs = b.load(b.gep(self.x_ptr, [off], inbounds=True,
                                          source_etype=self.ety), typ=self.ety)
                        xv = self.splat(xs)
                        for j in range(self.v):
                            k = p * self.v + j
                            acc[k] = b.call(self.fma, [ws[kw][j], xv, acc[k]])
                return [Val(a, self.dtype) for a in acc]
            return kb.loop(c(C), acc, channel, name="c")
        acc = kb.loop(hi, [zero] * (width * self.v), kh_step, name="kh", start=lo)
        for p in range(width):
            for j in range(self.v):
                off = b.add(b.mul(b.add(w0, c(p)), c(B)), c(j * self.lanes))
                ptr = b.gep(self.row_acc, [off], inbounds=True, source_etype=self.ety)
                b.store(acc[p * self.v + j].v, b.bitcast(ptr, self.vty.as_pointer()),
                        align=self.isz)

    def prefetch(self, ptr, offset, write: bool):
        """A hint to fetch the line of element `offset` of ptr into L1. Past the end of the
        buffer (the last rows) is harmless: a prefetch never faults, and its gep is not
        inbounds."""
        at = self.b.gep(ptr, [offset], source_etype=self.ety)
        self.b.call(self._prefetch, [at, ir.Constant(I32, int(write)), ir.Constant(I32, 3),
                                     ir.Constant(I32, 1)])

    def splat(self, scalar):
        b = self.b
        i32 = ir.IntType(32)
        x = b.insert_element(ir.Constant(self.vty, ir.Undefined), scalar, ir.Constant(i32, 0))
        return b.shuffle_vector(x, ir.Constant(self.vty, ir.Undefined),
                                ir.Constant(ir.VectorType(i32, self.lanes), [0] * self.lanes))

    def transpose(self):
        """The row's accumulators, [OWpad][B], to channel-major [B][OWpad] in the second
        stack array: lanes x lanes blocks, each transposed in registers (log2(lanes) rounds of
        two-source shuffles that swap the off-diagonal sub-blocks)."""
        b, c, L = self.b, self.c, self.lanes
        i32 = ir.IntType(32)
        vptr = self.vty.as_pointer()

        def vec(base, off):                     # the vector at element `off` of base
            return b.bitcast(b.gep(base, [off], inbounds=True, source_etype=self.ety), vptr)

        def block_column(wb, _):                # (a loop: wide rows stay short code)
            w0 = b.mul(wb, c(L))
            for cb in range(self.B // L):
                rows = [b.load(vec(self.row_acc, b.add(b.mul(b.add(w0, c(i)), c(self.B)),
                                                       c(cb * L))),
                               typ=self.vty, align=self.isz) for i in range(L)]
                half = L // 2
                while half >= 1:
                    low = [j for j in range(L) if not j & half]
                    lo_mask = ir.Constant(ir.VectorType(i32, L), [
                        j if not j & half else L + j - half for j in range(L)])
                    hi_mask = ir.Constant(ir.VectorType(i32, L), [
                        j + half if not j & half else L + j for j in range(L)])
                    out = list(rows)
                    for i in low:
                        a, z = rows[i], rows[i + half]
                        out[i] = b.shuffle_vector(a, z, lo_mask)
                        out[i + half] = b.shuffle_vector(a, z, hi_mask)
                    rows = out
                    half //= 2
                for i in range(L):
                    b.store(rows[i], vec(self.row_t, b.add(c((cb * L + i) * self.OWpad), w0)),
                            align=self.isz)
            return []
        self.kb.loop(c(self.OWpad // L), [], block_column, name="wb")

    def streams(self):
        """(pointer, written) of the kernel's outputs and of the epilogue's inputs with the
        convolution's shape: the buffers the epilogue runs along row by row."""
        kb, g = self.kb, self.kb.graph
        space = tuple(g[self.cid].shape)
        out = [(kb.ptr[kb.plan.roots[o]], True) for o in kb.kernel.outputs
               if g[o].dtype == self.dtype]
        reads = [v for v in kb.kernel.reads if v not in g[self.cid].inputs and
                 tuple(g[v].shape) == space]
        return out + [(kb.ptr[kb.plan.roots[v]], False) for v in reads]

    def epilogue(self, n, ob, h):
        """The fused epilogue of the row's channels of this block, along the row (each
        channel's outputs are contiguous in NCHW, and in the transposed stack array)."""
        b, c, kb = self.b, self.c, self.kb
        self.transpose()
        o0 = b.mul(ob, c(self.B))
        left = b.sub(c(self.O), o0)
        count = b.select(b.icmp_signed("<", left, c(self.B)), left, c(self.B))

        streams = self.streams()
        line = max(1, 64 // self.isz)

        def channel(j, _):
            # the next row's lines of the outputs and of the epilogue's full-size inputs
            # (residuals), as for the rows of x
            nxt = b.mul(b.add(b.mul(b.add(b.mul(n, c(self.O)), b.add(o0, j)), c(self.OH)),
                              b.add(h, c(1))), c(self.OW))
            for ptr, write in streams:
                for col in range(0, self.OW, line):
                    self.prefetch(ptr, b.add(nxt, c(col)), write)

            def column(w, _):
                ptr = b.gep(self.row_t, [b.add(b.mul(j, c(self.OWpad)), w)], inbounds=True,
                            source_etype=self.ety)
                value = Val(b.load(ptr, typ=self.ety), self.dtype)
                kb.epilogue(self.cid, value, [n, b.add(o0, j), h, w])
                return []
            kb.loop(c(self.OW), [], column, name="ow")
            return []
        kb.loop(count, [], channel, name="oc")
