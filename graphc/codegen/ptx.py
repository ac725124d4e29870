"""NVIDIA GPU code generation: the CPU target's fused kernels, as PTX (LLVM's NVPTX back end).

Every kernel is a `ptx_kernel` function kernel(buffers..., dims) over the same plan as on
the CPU (same fusion, same buffers, same scalar code from the op registry and the same
inline exp/log/tanh). Parallel structure, first version:
  map, slice, concat: one thread per element of the (collapsed) space, grid-stride loop;
  rows:               one thread per row, the row's passes as loops (grid-stride over rows);
  matmul:             one thread per element of C, the K loop, then the epilogue.
No kernel uses barriers or shared memory yet, so the same kernel bodies also run on the CPU
with the thread and block indices as arguments (`simulate`): tests check the GPU kernels'
logic against the numpy reference on machines without a GPU, and ptxas checks the PTX.

Launch configuration: each kernel records its trip count (a symbolic size); the runtime
evaluates it with the bound sizes and launches ceil(trips / BLOCK) blocks (capped; the
grid-stride loops cover the rest).
"""
from __future__ import annotations

import llvmlite.ir as ir

from ..ir.graph import Graph
from ..ir.types import Dim, Size, numel
from ..passes.fusion import broadcast_map
from ..passes.plan import Plan
from .cpu import KernelBuilder, PTR
from .emitter import I32, I64, MEM, Val
from .gemm import operand_access
from .lower import Access, access_for, contiguous_strides

TRIPLE = "nvptx64-nvidia-cuda"
BLOCK = 256
MAX_BLOCKS = 65535
ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
INDEX = ("tid", "ntid", "ctaid", "nctaid")   # thread, threads per block, block, blocks


class GpuKernelBuilder(KernelBuilder):
    column_sums = False   # that CPU strategy splits columns between host threads

    def __init__(self, *args, simulated: bool = False, **kwargs):
        self.simulated = simulated
        super().__init__(*args, **kwargs)

    def make_function(self) -> ir.Function:
        extra = [I64] * 4 if self.simulated else []
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * len(self.roots) + [PTR] + extra)
        fn = ir.Function(self.module, fnty, self.kernel.name)
        if self.simulated:
            fn.attributes.add("noinline")
            self._index_args = dict(zip(INDEX, fn.args[-4:]))
        else:
            fn.calling_convention = "ptx_kernel"
        fn.attributes.add("nounwind")
        return fn

    def index(self, name: str) -> ir.Value:
        """tid.x, ntid.x, ctaid.x or nctaid.x as i64."""
        if self.simulated:
            return self._index_args[name]
        fname = f"llvm.nvvm.read.ptx.sreg.{name}.x"
        fn = self.module.globals.get(fname) or ir.Function(
            self.module, ir.FunctionType(I32, []), fname)
        return self.b.zext(self.b.call(fn, []), I64)

    def strided_loop(self, start, n, step, body, name: str):
        """for i = start; i < n; i += step: body(i)."""
        b = self.b
        pre = b.block
        head = self.fn.append_basic_block(f"{name}.head")
        body_bb = self.fn.append_basic_block(f"{name}.body")
        exit_bb = self.fn.append_basic_block(f"{name}.exit")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=name)
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, n), body_bb, exit_bb)
        b.position_at_end(body_bb)
        body(i)
        i.add_incoming(b.add(i, step, flags=("nsw",)), b.block)
        b.branch(head)
        b.position_at_end(exit_bb)

    def parallel_nest(self, sizes: list[Size], body, name="i", quantum: int = 1):
        """One thread per point of the nest (flattened), in a grid-stride loop."""
        b = self.b
        total = numel(sizes)
        self.parallel = (total, 1)
        tid, ntid, ctaid, nctaid = (self.index(n) for n in INDEX)
        first = b.add(b.mul(ctaid, ntid), tid)
        step = b.mul(ntid, nctaid)
        dims = [self.size(s) for s in sizes]

        def point(flat):
            coords = []
            rest = flat
            for d in reversed(dims[1:]):
                coords.append(b.urem(rest, d))
                rest = b.udiv(rest, d)
            coords.append(rest)
            body(coords[::-1], [])
        self.strided_loop(first, self.size(total), step, point, f"{name}.g")

    def build_matmul(self):
        """One thread per element of C: the K loop, then the elementwise epilogue."""
        g, k = self.graph, self.kernel
        mm = next(n for n in k.nodes if g[n].op == "matmul")
        node = g[mm]
        space = tuple(node.shape)
        nb = len(space) - 2
        A = operand_access(g, set(k.nodes), node.inputs[0], space[:nb])
        B = operand_access(g, set(k.nodes), node.inputs[1], space[:nb])
        K = g[node.inputs[0]].shape[-1]
        out_strides = contiguous_strides(space)
        dtype = node.dtype
        self.work = numel([*space, K])

        def element(coords, _):
            *bc, m, n = coords

            def step(kk, acc):
                a = self.e.load(self.address(A, list(A.strides), [*bc, m, kk]), dtype)
                bv = self.e.load(self.address(B, list(B.strides), [*bc, kk, n]), dtype)
                if a.is_float:
                    return [self.e.fma(a, bv, acc[0])]
                return [self.e.add(acc[0], self.e.mul(a, bv))]
            (total,) = self.loop(self.size(K), [self.e.const(0, dtype)], step, name="k")
            memo = {mm: Val(total.v, dtype)}

            def load(nid, pos):
                src = g[nid].inputs[pos]
                amap = broadcast_map(g[src].shape, space, tuple(range(len(space))))
                return self.leaf(src, access_for(g, src, amap, len(space)).strides, coords, None)
            for o in k.outputs:
                self.store(o, out_strides, coords, self.evaluate(o, memo, load))
            return []
        self.parallel_nest(list(space), element, name="c")

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
            offset: Size = 0
            for v in node.inputs:
                width = numel([g[v].shape[axis], inner])
                lo = self.size(offset)
                inside = b.and_(b.icmp_signed(">=", j, lo),
                                b.icmp_signed("<", j, b.add(lo, self.size(width))))
                with b.if_then(inside):
                    val = self.e.load(self.address(Access(v, ()), [width, 1],
                                                   [o, b.sub(j, lo)]), node.dtype)
                    self.e.store(val, dst)
                offset = _add_sizes(offset, width)
            return []
        self.parallel_nest([numel(node.shape[:axis]), row], element, name="c")


def _add_sizes(a: Size, b: Size) -> Size:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    raise NotImplementedError("concatenate of several symbolic widths on the GPU")


def size_json(s: Size):
    return s if isinstance(s, int) else {"coef": s.coef, "syms": list(s.syms)}


def build_gpu_module(graph: Graph, plan: Plan, symbols: tuple[str, ...], triple: str,
                     data_layout: str, simulated: bool = False):
    """The kernels as one module, and the launch plan the runtime follows:
    {"block": threads per block, "kernels": [{"name", "args": [[space, index], ...],
     "trips": size}], "slots": [[size, ...], ...] (bytes)}."""
    module = ir.Module(name=graph.name)
    module.triple = triple
    module.data_layout = data_layout
    kernels = []
    for k in plan.kernels:
        kb = GpuKernelBuilder(module, graph, plan, k, symbols, simulated=simulated)
        kb.build()
        kernels.append(kb)
    launch = {"block": BLOCK, "symbols": list(symbols), "kernels": [], "slots": [
        [size_json(s) for s in sizes] for sizes in plan.slots]}
    for kb in kernels:
        args = []
        for root in kb.roots:
            loc = plan.location[root]
            args.append([loc.space, loc.index])
        launch["kernels"].append({"name": kb.fn.name, "args": args,
                                  "trips": size_json(kb.parallel[0])})
    return module, launch


__all__ = ["build_gpu_module", "GpuKernelBuilder", "TRIPLE", "ARCHS", "BLOCK", "MEM", "Dim"]


_nvptx_ready = False


def nvptx_machine(arch: str):
    """An LLVM target machine for `arch` (sm_80 ...)."""
    global _nvptx_ready
    import llvmlite.binding as llvm
    if not _nvptx_ready:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        _nvptx_ready = True
    # PTX ISA 7.0 runs on every driver that knows sm_80; sm_90 needs 7.8
    ptx = "+ptx78" if arch >= "sm_90" else "+ptx70"
    return llvm.Target.from_triple(TRIPLE).create_target_machine(cpu=arch, features=ptx, opt=3)


def emit_ptx(graph: Graph, plan: Plan, symbols: tuple[str, ...], arch: str):
    """(PTX text, optimized LLVM IR, launch plan) for the whole plan."""
    import llvmlite.binding as llvm
    machine = nvptx_machine(arch)
    module, launch = build_gpu_module(graph, plan, symbols, TRIPLE, str(machine.target_data))
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_unrolling = False
    pb = llvm.create_pass_builder(machine, pto)
    pb.getModulePassManager().run(mod, pb)
    launch["arch"] = arch
    return machine.emit_assembly(mod), str(mod), launch
