"""The scalar emitter: what op scalar rules call to build one element's computation.

Values are `Val(ir_value, dtype)`. Every op's `scalar` rule is written against this class;
the target's math table (math_cpu.py) provides exp/log/tanh/pow/erf/sin/cos as plain
arithmetic so the loop vectorizer can see through them.
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.ir as ir

F32, F64 = ir.FloatType(), ir.DoubleType()
I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
REG = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I1}
MEM = {**REG, "bool": I8}  # numpy stores bool as one byte
INT_OF = {"float32": I32, "float64": I64}
REDUCE_FLAGS = ("reassoc",)  # lets LLVM reorder (and so vectorize) a sum; NaN/inf still exact


@dataclass(frozen=True)
class Val:
    v: ir.Value
    dtype: str

    @property
    def is_float(self) -> bool:
        return self.dtype in ("float32", "float64")


class Emitter:
    def __init__(self, builder: ir.IRBuilder, math_table):
        self.b = builder
        self.module = builder.module
        self.math_table = math_table
        # () -> i64 flat index of the element being computed; set by the loop being emitted
        self.element_index = None

    def random_uniform(self, key: Val) -> Val:
        """A float32 in [0, 1) from hash(flat element index, key): counter-based, so every
        element of every call is independent and reproducible (numpy reference: ops/random.py)."""
        assert self.element_index is not None, "random numbers need an element index"
        b = self.b
        i32 = ir.IntType(32)
        idx = b.trunc(self.element_index(), i32)
        lo = b.trunc(key.v, i32)
        hi = b.trunc(b.lshr(key.v, ir.Constant(I64, 32)), i32)
        h = b.add(_fmix32(b, b.xor(idx, lo)), hi)
        h = _fmix32(b, h)
        top = b.lshr(h, ir.Constant(i32, 8))
        return Val(b.fmul(b.uitofp(top, F32), ir.Constant(F32, 2.0 ** -24)), "float32")

    # -- constants and intrinsics
    def const(self, value, dtype: str) -> Val:
        if dtype == "bool":
            return Val(ir.Constant(I1, int(bool(value))), dtype)
        if dtype.startswith("float"):
            return Val(ir.Constant(REG[dtype], float(value)), dtype)
        return Val(ir.Constant(REG[dtype], int(value)), dtype)

    def intrinsic(self, name: str, ty, args, fastmath=()):
        fnty = ir.FunctionType(ty, [a.type for a in args])
        fname = f"llvm.{name}.{_suffix(ty)}"
        fn = self.module.globals.get(fname) or ir.Function(self.module, fnty, fname)
        return self.b.call(fn, args, fastmath=fastmath)

    # -- arithmetic
    def add(self, a: Val, b: Val, reduction: bool = False) -> Val:
        if a.is_float:
            return Val(self.b.fadd(a.v, b.v, flags=REDUCE_FLAGS if reduction else ()), a.dtype)
        return Val(self.b.add(a.v, b.v), a.dtype)

    def sub(self, a: Val, b: Val) -> Val:
        return Val(self.b.fsub(a.v, b.v) if a.is_float else self.b.sub(a.v, b.v), a.dtype)

    def mul(self, a: Val, b: Val) -> Val:
        return Val(self.b.fmul(a.v, b.v) if a.is_float else self.b.mul(a.v, b.v), a.dtype)

    def div(self, a: Val, b: Val) -> Val:
        assert a.is_float, "integer division is promoted to float at trace time"
        return Val(self.b.fdiv(a.v, b.v), a.dtype)

    def floordiv(self, a: Val, b: Val) -> Val:
        """numpy's integer a // b: rounds down; x // 0 is 0 and x // -1 is -x (wrapping), as
        numpy gives, where the hardware would trap."""
        assert not a.is_float, "floor division is declared for integers"
        zero, minus_one = self.cmp("==", b, self.const(0, b.dtype)), \
            self.cmp("==", b, self.const(-1, b.dtype))
        safe = self.select(self.lor(zero, minus_one), self.const(1, b.dtype), b)
        q = Val(self.b.sdiv(a.v, safe.v), a.dtype)
        r = Val(self.b.srem(a.v, safe.v), a.dtype)
        # sdiv truncates toward zero: one less where the remainder's sign differs from b's
        signs_differ = self.cmp("!=", self.cmp("<", r, self.const(0, a.dtype)),
                                self.cmp("<", safe, self.const(0, b.dtype)))
        inexact = self.cmp("!=", r, self.const(0, a.dtype))
        q = self.select(self.land(inexact, signs_differ), self.sub(q, self.const(1, a.dtype)), q)
        q = self.select(minus_one, self.neg(a), q)
        return self.select(zero, self.const(0, a.dtype), q)

    def ipow(self, a: Val, b: Val) -> Val:
        """Integer a ** b, exact modulo 2^bits as numpy's (square and multiply over every bit
        of b, unrolled: straight-line code the vectorizer keeps). A negative b gives
        1 / a^-b truncated: 1 for a = 1, +-1 for a = -1, else 0."""
        assert not a.is_float, "ipow is the integer power"
        bits = a.v.type.width
        one = self.const(1, a.dtype)
        out, base, e = one, a, b.v
        for k in range(bits - 1):         # the sign bit is handled below
            bit = Val(self.b.trunc(e, I1), "bool")
            out = self.select(bit, self.mul(out, base), out)
            if k < bits - 2:
                base = self.mul(base, base)
                e = self.b.lshr(e, ir.Constant(e.type, 1))
        odd = Val(self.b.trunc(b.v, I1), "bool")
        minus_one = self.select(odd, self.const(-1, a.dtype), one)
        negative = self.select(self.cmp("==", a, one), one,
                               self.select(self.cmp("==", a, self.const(-1, a.dtype)),
                                           minus_one, self.const(0, a.dtype)))
        return self.select(self.cmp("<", b, self.const(0, b.dtype)), negative, out)

    def fma(self, a: Val, b: Val, c: Val) -> Val:
        # fmuladd, not fma: one fused instruction where the CPU has FMA, a multiply and an add
        # where it has not (llvm.fma would become a call to libm's fmaf there)
        return Val(self.intrinsic("fmuladd", a.v.type, [a.v, b.v, c.v]), a.dtype)

    def neg(self, a: Val) -> Val:
        return Val(self.b.fneg(a.v) if a.is_float else self.b.neg(a.v), a.dtype)

    def abs(self, a: Val) -> Val:
        if a.is_float:
            return Val(self.intrinsic("fabs", a.v.type, [a.v]), a.dtype)
        return self.select(self.cmp("<", a, self.const(0, a.dtype)), self.neg(a), a)

    def maximum(self, a: Val, b: Val, reduction: bool = False) -> Val:
        if a.is_float:
            # a reduction keeps llvm.maximum: the loop vectorizer knows it as one
            # (nsz: which zero a max of +0 and -0 is does not matter here, and ordering
            # them costs 4 of llvm.maximum's 7 instructions)
            return Val(self.intrinsic("maximum", a.v.type, [a.v, b.v], ("nsz",)), a.dtype) \
                if reduction else self._pick(a, b, "ogt")
        return Val(self.intrinsic("smax", a.v.type, [a.v, b.v]), a.dtype)

    def minimum(self, a: Val, b: Val, reduction: bool = False) -> Val:
        if a.is_float:
            return Val(self.intrinsic("minimum", a.v.type, [a.v, b.v], ("nsz",)), a.dtype) \
                if reduction else self._pick(a, b, "olt")
        return Val(self.intrinsic("smin", a.v.type, [a.v, b.v]), a.dtype)

    def _pick(self, a: Val, b: Val, pred: str) -> Val:
        """numpy's maximum/minimum: a if a > b (a < b), else b; NaN if either is NaN.
        `a > b ? a : b` is one x86 max/min instruction (it gives b when either is NaN, so b's
        NaN passes); a second select passes a's NaN. Like numpy it returns b for -0 vs +0,
        and it costs 3 instructions where llvm.maximum costs 7."""
        op = {"ogt": ">", "olt": "<"}[pred]
        r = self.b.select(self.b.fcmp_ordered(op, a.v, b.v), a.v, b.v)
        return Val(self.b.select(self.b.fcmp_unordered("uno", a.v, a.v), a.v, r), a.dtype)

    def cmp(self, pred: str, a: Val, b: Val) -> Val:
        if a.is_float:
            # numpy: every comparison with NaN is False, except != which is True
            if pred == "!=":
                return Val(self.b.fcmp_unordered("!=", a.v, b.v), "bool")
            return Val(self.b.fcmp_ordered(pred, a.v, b.v), "bool")
        if a.dtype == "bool":
            return Val(self.b.icmp_unsigned(pred, a.v, b.v), "bool")
        return Val(self.b.icmp_signed(pred, a.v, b.v), "bool")

    def select(self, c: Val, a: Val, b: Val) -> Val:
        return Val(self.b.select(c.v, a.v, b.v), a.dtype)

    def land(self, a: Val, b: Val) -> Val:
        return Val(self.b.and_(a.v, b.v), "bool")

    def lor(self, a: Val, b: Val) -> Val:
        return Val(self.b.or_(a.v, b.v), "bool")

    def lnot(self, a: Val) -> Val:
        return Val(self.b.xor(a.v, ir.Constant(I1, 1)), "bool")

    def cast(self, a: Val, dtype: str) -> Val:
        if a.dtype == dtype:
            return a
        src, dst, b = a.dtype, dtype, self.b
        ty = REG[dst]
        if dst == "bool":
            zero = self.const(0, src)
            return self.cmp("!=", a, zero)
        if src == "bool":
            return Val(b.uitofp(a.v, ty) if dst.startswith("float") else b.zext(a.v, ty), dst)
        sf, df = src.startswith("float"), dst.startswith("float")
        if sf and df:
            return Val(b.fpext(a.v, ty) if dst == "float64" else b.fptrunc(a.v, ty), dst)
        if sf:
            return Val(b.fptosi(a.v, ty), dst)
        if df:
            return Val(b.sitofp(a.v, ty), dst)
        if ty.width > a.v.type.width:
            return Val(b.sext(a.v, ty), dst)
        return Val(b.trunc(a.v, ty), dst)

    def math(self, name: str, *args: Val) -> Val:
        return self.math_table[name](self, *args)

    # -- memory
    def load(self, ptr, dtype: str) -> Val:
        v = self.b.load(ptr, align=_align(dtype), typ=MEM[dtype])
        if dtype == "bool":
            v = self.b.icmp_unsigned("!=", v, ir.Constant(I8, 0))
        return Val(v, dtype)

    def store(self, val: Val, ptr):
        v = val.v
        if val.dtype == "bool":
            v = self.b.zext(v, I8)
        self.b.store(v, ptr, align=_align(val.dtype))


    def load_lanes(self, ptr, dtype: str, width: int, align: int) -> list[Val]:
        """`width` consecutive values from ptr as one vector load (aligned to `align`)."""
        vec = self.b.load(ptr, align=align, typ=ir.VectorType(MEM[dtype], width))
        out = []
        for j in range(width):
            v = self.b.extract_element(vec, ir.Constant(I32, j))
            if dtype == "bool":
                v = self.b.icmp_unsigned("!=", v, ir.Constant(I8, 0))
            out.append(Val(v, dtype))
        return out

    def store_lanes(self, vals: list[Val], ptr, align: int):
        """Consecutive values to ptr as one vector store."""
        dtype = vals[0].dtype
        vec = ir.Constant(ir.VectorType(MEM[dtype], len(vals)), ir.Undefined)
        for j, val in enumerate(vals):
            v = self.b.zext(val.v, I8) if dtype == "bool" else val.v
            vec = self.b.insert_element(vec, v, ir.Constant(I32, j))
        self.b.store(vec, ptr, align=align)


def _align(dtype: str) -> int:
    return {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}[dtype]


def _suffix(ty) -> str:
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{_suffix(ty.element)}"
    if ty == F32:
        return "f32"
    if ty == F64:
        return "f64"
    return f"i{ty.width}"


def _fmix32(b: ir.IRBuilder, h):
    """murmur3's 32-bit finalizer: a bijection that mixes every input bit into every output bit."""
    i32 = ir.IntType(32)
    h = b.xor(h, b.lshr(h, ir.Constant(i32, 16)))
    h = b.mul(h, ir.Constant(i32, 0x85EBCA6B))
    h = b.xor(h, b.lshr(h, ir.Constant(i32, 13)))
    h = b.mul(h, ir.Constant(i32, 0xC2B2AE35))
    return b.xor(h, b.lshr(h, ir.Constant(i32, 16)))
