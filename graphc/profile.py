"""Compiled.profile: where the time of a call goes, kernel by kernel.

The timings come from an instrumented build of the same plan (CpuTarget(instrument=True):
codegen/cpu.py reads a monotonic clock around each kernel inside graphc_run and adds the
difference to a counter per kernel), cached like any build, so the normal build pays
nothing. Bytes and FLOPs come from the graph and the call's sizes: bytes are what a kernel
reads and writes once (its reads and outputs), FLOPs count a multiply-add as two and any
other elementwise or reduction op as one per element.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from graphc_runtime.signature import bind_inputs

from .errors import GraphcError
from .ir.types import ITEMSIZE, numel, size_eval
from .ops.registry import ATTENTION, CONV, ELEMENTWISE, MATMUL, OPS, REDUCE


@dataclass
class ProfileRow:
    kernel: str            # the kernel's name, as in compiled.kernels (scan bodies: theirs)
    ops: list[str]
    lines: list[str]       # the user's source lines its ops came from
    time: float            # median seconds per call (a scan body's kernel: all its steps)
    share: float           # time / Profile.total
    bytes: int             # read and written once per call
    flops: int
    calls: int = 1         # per graph call (a scan body's kernel: once a step)
    inside: str = ""       # the scan kernel whose loop runs it ("" at the top level)

    @property
    def gbps(self) -> float:
        return self.bytes / self.time / 1e9 if self.time > 0 else 0.0

    @property
    def gflops(self) -> float:
        return self.flops / self.time / 1e9 if self.time > 0 else 0.0


@dataclass
class Profile:
    rows: list[ProfileRow]      # in the plan's order; a scan's body kernels after it
    total: float                # median seconds of a whole uninstrumented call
    repeat: int
    untimed: list[str] = field(default_factory=list)   # body kernels run in bands of rows

    def to_json(self) -> dict:
        return {"total": self.total, "repeat": self.repeat, "untimed": list(self.untimed),
                "rows": [{**asdict(r), "gbps": r.gbps, "gflops": r.gflops}
                         for r in self.rows]}

    def __str__(self) -> str:
        top = sum(r.time for r in self.rows if not r.inside)
        lines = [f"profile: {self.total * 1e3:.3f} ms a call (median of {self.repeat}); "
                 f"kernels {top * 1e3:.3f} ms",
                 f"  {'kernel':44s} {'ms':>9s} {'share':>6s} {'GB/s':>7s} {'GFLOP/s':>8s}  ops"]
        for r in sorted(self.rows, key=lambda r: -r.time):
            name = ("  " if r.inside else "") + r.kernel
            lines.append(f"  {name[:44]:44s} {r.time * 1e3:9.3f} {r.share:6.1%} "
                         f"{r.gbps:7.1f} {r.gflops:8.1f}  {' '.join(r.ops)[:60]}")
        if self.untimed:
            lines.append(f"  (run in bands of rows, timed with their loop: "
                         f"{', '.join(self.untimed)})")
        return "\n".join(lines)

    __repr__ = __str__

    def save_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    def plot(self, path: str) -> str:
        """A horizontal bar chart of the kernels' times (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("Profile.plot needs matplotlib (pip install matplotlib)") from err
        rows = sorted(self.rows, key=lambda r: r.time)
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
        ax.barh([("  " if r.inside else "") + r.kernel for r in rows],
                [r.time * 1e3 for r in rows])
        ax.set_xlabel("ms per call (median)")
        ax.set_title(f"{self.total * 1e3:.3f} ms a call")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def profile(compiled, *inputs, repeat: int = 20) -> Profile:
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise GraphcError(f"profile: repeat must be an integer >= 1, got {repeat!r}")
    options = compiled.options
    if not hasattr(options, "instrument"):
        raise GraphcError(f"profile: per-kernel times of target={compiled.target!r} builds "
                          f"are not measured yet (target='cpu' is)")
    inst = instrumented(compiled)
    counters = inst.executable.profile_counters()
    flat = compiled.signature.flatten_args(inputs)
    checked, env = bind_inputs(compiled.signature, flat)
    # inputs updated in place (a training step) are updated in copies, not the caller's
    for _, i in compiled.signature.aliases:
        checked[i] = checked[i].copy()
    # each library has its own thread pool: the two builds run in turns, not interleaved
    # (the idle pool's spinning workers would take cores from the other)
    run, run_inst = compiled.executable.call_flat, inst.executable.call_flat
    per_call = np.zeros((repeat, len(counters)), np.int64)
    for r in range(-2, repeat):
        counters[:] = 0
        run_inst(*checked)
        if r >= 0:
            per_call[r] = counters
    totals = []
    for r in range(-2, repeat):
        start = time.perf_counter()
        run(*checked)
        if r >= 0:
            totals.append(time.perf_counter() - start)
    times = np.median(per_call, axis=0) / 1e9
    total = float(np.median(totals))
    return _rows(compiled, env, times, total, repeat)


def instrumented(compiled):
    """The same plan built with timestamps around every kernel (cached like any build)."""
    from .cache import release_with
    from .compiler import Build, Compiled, _build
    options = replace(compiled.options, instrument=True)
    b = _build(Build(compiled.graph, (), None, compiled.fuse_ops, compiled.backend, options,
                     True, graph=compiled.graph, signature=compiled.signature,
                     kernels=compiled.kernels, plan=compiled.plan))
    inst = Compiled(compiled.graph, compiled.kernels, compiled.plan, compiled.signature,
                    compiled.backend, options, b.entry, compiled.fuse_ops, compiled.settings)
    release_with(inst, b.entry)
    return inst


def _rows(compiled, env, times, total, repeat) -> Profile:
    from .codegen.cpu import profile_slots, row_separable
    plan = compiled.plan
    rows, untimed = [], []
    for k, slot in enumerate(profile_slots(plan)):
        t = slot[0]
        if len(slot) == 1:
            kernel, graph, steps, inside = plan.kernels[t], compiled.graph, 1, ""
        else:
            loop = plan.loops[t]
            node = compiled.graph[plan.kernels[t].nodes[0]]
            kernel, graph = loop.plan.kernels[slot[1]], loop.graph
            steps, inside = size_eval(node.attrs["length"], env), plan.kernels[t].name
            if row_separable(loop.graph, loop.plan.kernels, node.attrs["num_carry"],
                             node.attrs["num_xs"]) is not None:
                untimed.append(kernel.name)
        nbytes, flops = _cost(graph, kernel, env)
        rows.append(ProfileRow(kernel.name, list(kernel.ops), _lines(graph, kernel),
                               float(times[k]), float(times[k]) / total if total else 0.0,
                               nbytes * steps, flops * steps, steps, inside))
    for t, loop in plan.loops.items():   # a loop's cost: its body's over all its steps
        body = [r for r in rows if r.inside == plan.kernels[t].name]
        top = next(r for r in rows if r.kernel == plan.kernels[t].name and not r.inside)
        top.bytes, top.flops = sum(r.bytes for r in body), sum(r.flops for r in body)
    return Profile(rows, total, repeat, untimed)


def _lines(graph, kernel) -> list[str]:
    out: list[str] = []
    for n in kernel.nodes:
        loc = graph[n].loc
        if loc and loc.splitlines()[0] not in out:
            out.append(loc.splitlines()[0])
    return out


def _cost(graph, kernel, env) -> tuple[int, int]:
    """(bytes read and written once, FLOPs) of one run of a kernel."""
    def count(v) -> int:
        return size_eval(numel(graph[v].shape), env)

    nbytes = sum(count(v) * ITEMSIZE[graph[v].dtype]
                 for v in dict.fromkeys([*kernel.reads, *kernel.outputs]))
    flops = 0
    for n in kernel.nodes:
        node = graph[n]
        kind = OPS[node.op].kind
        if kind == MATMUL:
            flops += 2 * count(n) * size_eval(graph[node.inputs[0]].shape[-1], env)
        elif kind == CONV:
            flops += 2 * count(n) * size_eval(numel(graph[node.inputs[1]].shape[1:]), env)
        elif kind == ATTENTION:   # q k^T and p v: 2 (E + Ev) per query row and key
            q, k, v = (graph[i].shape for i in node.inputs[:3])
            rows_ = size_eval(numel(q[:-1]), env)
            flops += 2 * rows_ * size_eval(k[-2], env) * size_eval(q[-1], env) + \
                2 * rows_ * size_eval(k[-2], env) * size_eval(v[-1], env)
        elif kind == ELEMENTWISE:
            flops += count(n)
        elif kind == REDUCE:
            flops += count(node.inputs[0])
    return nbytes, flops


__all__ = ["Profile", "ProfileRow", "profile", "instrumented"]
