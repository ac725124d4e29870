"""Compiled.profile: where the time of a call goes, kernel by kernel.

Each backend says how its kernels are timed (Backend.profiler). On the CPU: an instrumented
build of the same plan (CpuTarget(instrument=True): codegen/cpu.py reads a monotonic clock
around each kernel inside graphc_run and adds the difference to a counter per kernel),
cached like any build, so the normal build pays nothing. On CUDA: the module itself, with
CUDA events recorded between its launches (graphc_runtime/cuda.py). graphc_runtime/profile.py
measures and tabulates, the same for both. Bytes and FLOPs come from the
graph as symbolic sizes (profile_meta, also kept in exported artifacts for `graphc
profile`): bytes are what a kernel reads and writes once (its reads and outputs), FLOPs
count a multiply-add as two and any other elementwise or reduction op as one per element.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from graphc_runtime.profile import Profile, ProfileRow, profile_call

from .errors import GraphcError
from .ir.types import ITEMSIZE, numel, size_mul
from .ops.registry import ATTENTION, CONV, ELEMENTWISE, MATMUL, OPS, REDUCE
from .signature import size_json


@dataclass(frozen=True)
class Profiler:
    """How a backend times its kernels (Backend.profiler): `timed.call_timed(*arrays)` gives
    a call's outputs and the seconds of each row of `rows` (profile_meta); `host_ceilings`:
    whether the host CPU's copy and sgemm rates are the kernels' ceilings (not a GPU's)."""

    timed: object
    rows: list[dict]
    host_ceilings: bool = True


def profile(compiled, *inputs, repeat: int = 20) -> Profile:
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise GraphcError(f"profile: repeat must be an integer >= 1, got {repeat!r}")
    p = compiled.backend.profiler(compiled)
    return profile_call(compiled.signature, p.timed, compiled.executable,
                        compiled.signature.flatten_args(inputs), p.rows, repeat,
                        ceilings=p.host_ceilings)


def instrumented(compiled):
    """The same plan built with timestamps around every kernel (cached like any build)."""
    from .cache import release_with
    from .compiler import Build, Compiled, _build
    if not hasattr(compiled.options, "instrument"):
        raise GraphcError(f"profile: target={compiled.target!r} has no instrumented builds "
                          f"(target='cpu' does)")
    options = replace(compiled.options, instrument=True)
    b = _build(Build(compiled.graph, (), None, compiled.fuse_ops, compiled.backend, options,
                     True, graph=compiled.graph, signature=compiled.signature,
                     kernels=compiled.kernels, plan=compiled.plan))
    inst = Compiled(compiled.graph, compiled.kernels, compiled.plan, compiled.signature,
                    compiled.backend, options, b.entry, compiled.fuse_ops, compiled.settings)
    release_with(inst, b.entry)
    return inst


def profile_meta(compiled, banding: bool = True) -> list[dict]:
    """A row per kernel, a scan's body kernels after it (codegen.cpu.profile_slots: the
    instrumented build's counters; the CUDA launch plan's profile_rows are in the same
    order), as JSON data: kernel, ops, lines, inside (its scan kernel), banded (run in bands
    of rows, so not timed on its own: only where `banding`, as the CPU build does), calls
    per graph call, and bytes and flops per call as lists of sizes to add."""
    from .codegen.cpu import profile_slots, row_separable
    plan, graph = compiled.plan, compiled.graph
    out = []
    for slot in profile_slots(plan):
        t = slot[0]
        if len(slot) == 1:
            kernel, g, calls, inside, banded = plan.kernels[t], graph, 1, "", False
        else:
            loop = plan.loops[t]
            node = graph[plan.kernels[t].nodes[0]]
            kernel, g = loop.plan.kernels[slot[1]], loop.graph
            calls, inside = node.attrs["length"], plan.kernels[t].name
            banded = banding and row_separable(loop.graph, loop.plan.kernels,
                                               node.attrs["num_carry"],
                                               node.attrs["num_xs"]) is not None
        nbytes, flops = _cost(g, kernel)
        out.append({"kernel": kernel.name, "ops": list(kernel.ops), "lines": _lines(g, kernel),
                    "inside": inside, "banded": banded, "calls": size_json(calls),
                    "bytes": [size_json(s) for s in nbytes],
                    "flops": [size_json(s) for s in flops]})
    return out


def _lines(graph, kernel) -> list[str]:
    out: list[str] = []
    for n in kernel.nodes:
        loc = graph[n].loc
        if loc and loc.splitlines()[0] not in out:
            out.append(loc.splitlines()[0])
    return out


def _cost(graph, kernel) -> tuple[list, list]:
    """(bytes read and written once, FLOPs) of one run of a kernel, as sizes to add."""
    def count(v):
        return numel(graph[v].shape)

    nbytes = [size_mul(count(v), ITEMSIZE[graph[v].dtype])
              for v in dict.fromkeys([*kernel.reads, *kernel.outputs])]
    flops = []
    for n in kernel.nodes:
        node = graph[n]
        kind = OPS[node.op].kind
        if kind == MATMUL:
            flops.append(size_mul(2, size_mul(count(n), graph[node.inputs[0]].shape[-1])))
        elif kind == CONV:
            flops.append(size_mul(2, size_mul(count(n), numel(graph[node.inputs[1]].shape[1:]))))
        elif kind == ATTENTION:   # q k^T and p v: 2 (E + Ev) per query row and key
            q, k, v = (graph[i].shape for i in node.inputs[:3])
            per_key = size_mul(2, numel(q[:-1]))
            flops += [size_mul(size_mul(per_key, k[-2]), q[-1]),
                      size_mul(size_mul(per_key, k[-2]), v[-1])]
        elif kind == ELEMENTWISE:
            flops.append(count(n))
        elif kind == REDUCE:
            flops.append(count(node.inputs[0]))
    return nbytes, flops


__all__ = ["Profile", "ProfileRow", "Profiler", "profile", "instrumented", "profile_meta"]
